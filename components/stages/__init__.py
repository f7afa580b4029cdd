"""The eight stages, one module each (its Spec, Params, run and STAGE), and ALL: their values in
graph order, the sequence a pipeline runs unless its recipe names fewer."""
from __future__ import annotations

from components.stages import animate, evaluate, ingest, preprocess, promote, render, train, validate

ALL = (ingest.STAGE, validate.STAGE, preprocess.STAGE, train.STAGE, evaluate.STAGE, render.STAGE,
       animate.STAGE, promote.STAGE)


def without(*names: str) -> tuple:
    """ALL less the stages named (a recipe that has no use for one, e.g. no GIF to animate)."""
    unknown = set(names) - {s.name for s in ALL}
    if unknown:
        raise ValueError(f"no such stage: {sorted(unknown)}")
    return tuple(s for s in ALL if s.name not in names)
