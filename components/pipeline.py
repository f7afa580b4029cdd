"""What a pipeline is: its name, default config, recipe module and stages (a sequence of stage
values, TFX's Pipeline(components=[...])). Only recipes and the orchestrator import it: no stage
does, so a stage's code digest never covers the others' code."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from artifacts.errors import UserError
from components import config as cfglib
from components import stages
from components.contract import Stage


@dataclass(frozen=True)
class TestRuns:
    """How the test suite runs this recipe small, declared beside it, so every per-pipeline test
    (a flow and its reuse, a small run, kills, Ctrl-C, SIGTERM) covers a new pipeline unedited:
    the public data set it reads (by name: the suite knows where it lies) and three sizes."""
    data: str                             # mnist | fashion-mnist | pix2pix-people
    tiny: tuple[str, ...]                 # --set strings: the fastest run through every stage
    # little data at the recipe's own batch size, buffer and checkpoint intervals (kills, resume)
    small: tuple[str, ...]
    longer: tuple[str, ...] = ()          # on top of small: training long enough for a signal to land in
    image_size: int | None = None         # for every size above, where the default is too slow on CPUs


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    module: str                                 # the recipe module: config, networks, its RECIPE
    default_config: Callable[[], Any]
    stages: tuple[Stage, ...] = stages.ALL      # in graph order
    tests: TestRuns | None = None

    def config(self, overrides: tuple[str, ...] | list[str] = ()) -> Any:
        """The default config with overrides applied, each checked against its field's range, and
        the whole against what the recipe's networks accept (its image sizes)."""
        cfg = cfglib.apply(self.default_config(), overrides)
        sizes, size = self.recipe.image_sizes, cfg.data.image_size
        if not sizes.ok(size):
            near = " or ".join(map(str, sizes.nearest(size)))
            raise UserError(f"bad value {size} for data.image_size: {self.name}'s networks take {sizes.text()}",
                            "--set", f"use {near}" if near else f"use {sizes.text()}")
        return cfg

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
