"""What a pipeline is: its name, default config, recipe module and stages (a sequence of stage
values, TFX's Pipeline(components=[...])). Only recipes and the orchestrator import it: no stage
does, so a stage's code digest never covers the others' code."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from components import config as cfglib
from components import stages
from components.contract import Stage


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    module: str                                 # the recipe module: config, networks, its RECIPE
    default_config: Callable[[], Any]
    stages: tuple[Stage, ...] = stages.ALL      # in graph order

    def config(self, overrides: tuple[str, ...] | list[str] = ()) -> Any:
        return cfglib.apply(self.default_config(), overrides)

    @property
    def recipe(self):
        """The module's RECIPE (components.recipe.Recipe): all that the stages take from it."""
        return importlib.import_module(self.module).RECIPE

    def stage(self, name: str) -> Stage:
        """The stage of this pipeline called name (a Spec names its inputs' stages so)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.name} runs no stage {name!r}")
