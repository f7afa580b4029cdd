"""All pipelines by name: the five built in, those of the modules $TAPELINE_PIPELINES names, and
any registered at run time."""
from __future__ import annotations

import importlib
import os
import re

from artifacts.errors import UserError
from components.pipeline import Pipeline

_MODULES = ("pipelines.mnist_classifier", "pipelines.mnist_gan", "pipelines.fashion_dcgan",
            "pipelines.pix2pix", "pipelines.cyclegan")
_REGISTERED: dict[str, Pipeline] = {}


def register(pipeline: Pipeline) -> Pipeline:
    """Add a pipeline defined outside this package (its module needs a PIPELINE-like Pipeline
    and a RECIPE); its flow and CLI verbs follow from here."""
    if pipeline.name in all_pipelines() and _REGISTERED.get(pipeline.name) is not pipeline:
        raise ValueError(f"a pipeline named {pipeline.name!r} is already registered")
    _REGISTERED[pipeline.name] = pipeline
    return pipeline


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def _env_modules() -> tuple[str, ...]:
    """$TAPELINE_PIPELINES: comma-separated modules, each with a PIPELINE (a recipe of one's own,
    found by every process of a run: the CLI, a Prefect worker, a training worker)."""
    text = os.environ.get("TAPELINE_PIPELINES", "")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", n):
            raise UserError(f"bad module name {n!r}", "TAPELINE_PIPELINES",
                            "name modules by their import path, comma-separated, e.g. mypkg.my_recipe")
    return names


def all_pipelines() -> dict[str, Pipeline]:
    out = {}
    for name in _MODULES + _env_modules():
        try:
            p = importlib.import_module(name).PIPELINE
        except (ImportError, AttributeError) as e:
            if name in _MODULES:
                raise
            raise UserError(f"cannot load a pipeline from {name!r}: {e}", "TAPELINE_PIPELINES",
                            "name a module on the Python path that defines PIPELINE") from None
        out[p.name] = p
    out.update(_REGISTERED)
    return out


def get(name: str) -> Pipeline:
    pipelines = all_pipelines()
    if name not in pipelines:
        raise UserError(f"unknown pipeline {name!r}", "command line",
                        f"use one of {', '.join(pipelines)}")
    return pipelines[name]
