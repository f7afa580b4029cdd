"""All pipelines by name: the five built in, and any registered at run time."""
from __future__ import annotations

import importlib

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


def all_pipelines() -> dict[str, Pipeline]:
    out = {}
    for name in _MODULES:
        p = importlib.import_module(name).PIPELINE
        out[p.name] = p
    out.update(_REGISTERED)
    return out


def get(name: str) -> Pipeline:
    pipelines = all_pipelines()
    if name not in pipelines:
        raise UserError(f"unknown pipeline {name!r}", "command line",
                        f"use one of {', '.join(pipelines)}")
    return pipelines[name]
