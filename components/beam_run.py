"""Running a Beam pipeline with the config's runner and options, errors made one-line."""
from __future__ import annotations

import shlex
from typing import Callable

from artifacts.errors import UserError


def options(cfg):
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = [f"--runner={cfg.beam.runner}"] + shlex.split(cfg.beam.options)
    return PipelineOptions(flags)


def run(cfg, build: Callable) -> None:
    """build(pipeline) adds the transforms; the pipeline runs to completion here.
    A UserError raised inside a worker comes back through Beam's wrapping as itself."""
    import apache_beam as beam

    try:
        with beam.Pipeline(options=options(cfg)) as p:
            build(p)
    except Exception as exc:
        user = UserError.find(exc)
        if user is not None:
            raise user from None
        raise


def user_errors(fn):
    """Decorate DoFn bodies: a UserError survives Beam's re-raising as a tagged message."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):  # a DoFn body that yields runs only when Beam iterates it
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except UserError as e:
                raise RuntimeError(e.tagged()) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise RuntimeError(e.tagged()) from None
    return wrapper
