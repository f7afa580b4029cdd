"""What a pipeline is: its default config, its recipe module and its stages."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from components import config as cfglib

STAGES = ("ingest", "validate", "preprocess", "train", "evaluate", "render", "animate", "promote")


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    module: str                                 # the recipe module: config, networks, its RECIPE
    default_config: Callable[[], Any]
    stages: tuple[str, ...] = STAGES

    def config(self, overrides: tuple[str, ...] | list[str] = ()) -> Any:
        return cfglib.apply(self.default_config(), overrides)

    @property
    def recipe(self):
        """The module's RECIPE (components.recipe.Recipe): all that the stages take from it."""
        return importlib.import_module(self.module).RECIPE
