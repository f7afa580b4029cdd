"""What a pipeline is: its default config, its recipe module, its stages and their params."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines import config as cfglib

STAGES = ("ingest", "validate", "preprocess", "train", "evaluate", "render", "animate", "promote")

# The config slice each stage's fingerprint covers: changing a key re-runs exactly the stages
# that read it (and, through input fingerprints, everything downstream).
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("data.source", "data.max_examples", "data.layout", "beam.shards"),
    "validate": ("validate", "data.layout"),
    "preprocess": ("seed", "data.image_size", "data.channels", "data.layout", "data.normalize",
                   "data.jitter", "data.jitter_resize", "data.jitter_copies", "data.val_holdout",
                   "data.val_max_share",
                   "beam.shards"),
    "train": ("seed", "model", "train", "data.train_splits", "data.eval_split"),
    "evaluate": ("seed", "eval.num_samples", "eval.batch_size", "data.eval_split"),
    "render": ("render.max_triptychs",),
    "animate": ("render.gif_frame_seconds",),
    "promote": ("eval.tolerance",),
}
# Knobs that change how a stage runs, never what it produces.
# The Beam engine (beam.runner, beam.options, its addresses) is left out of STAGE_PARAMS for the
# same reason: every runner writes byte-identical payloads (tests/test_engines.py).
RUNTIME_KEYS = ("train.log_every",)
# Stages whose result depends on the recipe's own code (networks, steps, metrics).
RECIPE_STAGES = ("train", "evaluate", "render")


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    module: str                                 # the recipe module: config, networks, train step
    default_config: Callable[[], Any]
    stages: tuple[str, ...] = STAGES
    # cfg -> (pipeline name, its config) whose trained model evaluate needs (the GANs' classifier)
    upstream: Callable[[Any], tuple[str, Any]] | None = field(default=None)

    def config(self, overrides: tuple[str, ...] | list[str] = ()) -> Any:
        return cfglib.apply(self.default_config(), overrides)

    def stage_params(self, cfg: Any, stage: str) -> dict[str, Any]:
        params = cfglib.pick(cfg, *STAGE_PARAMS[stage])
        return {k: v for k, v in params.items() if k not in RUNTIME_KEYS}
