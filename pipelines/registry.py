"""All pipelines by name."""
from __future__ import annotations

import importlib

from artifacts.errors import UserError
from pipelines.base import Pipeline

_MODULES = ("pipelines.mnist_classifier", "pipelines.mnist_gan", "pipelines.fashion_dcgan",
            "pipelines.pix2pix")


def all_pipelines() -> dict[str, Pipeline]:
    out = {}
    for name in _MODULES:
        p = importlib.import_module(name).PIPELINE
        out[p.name] = p
    return out


def get(name: str) -> Pipeline:
    pipelines = all_pipelines()
    if name not in pipelines:
        raise UserError(f"unknown pipeline {name!r}", "command line",
                        f"use one of {', '.join(pipelines)}")
    return pipelines[name]


def recipe(pipeline: Pipeline):
    """The recipe module (networks, step, kind) of a pipeline."""
    return importlib.import_module(pipeline.module)
