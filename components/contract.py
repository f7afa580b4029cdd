"""The stage contract: each component's Spec, Params read from declared config keys, and the
Runtime kept out of them."""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Config sections that only the orchestrator reads (Prefect retries): never a stage's business.
ORCHESTRATOR_KEYS = ("flow",)


@dataclass(frozen=True)
class Spec:
    """What a component declares at its top (TFX's ComponentSpec), the one place the graph is
    derived from: where each input comes from, what it produces and how it is run."""
    output: str                                   # the artifact type it writes
    inputs: Mapping[str, str] = field(default_factory=dict)  # input name -> upstream stage
    # input name -> stage of a feature-model pipeline: given once per feature model the recipe
    # declares, named feature_input(name, space)
    feature_inputs: Mapping[str, str] = field(default_factory=dict)
    source: bool = False       # its one input is the data source its Params name (resolve_source)
    uses_recipe: bool = False  # calls recipe code: the recipe is in its code digest, rt.recipe set
    reuse: bool = True         # False: decides again every run (state outside any fingerprint)


@dataclass(frozen=True)
class Stage:
    """One stage as a value (TFX's component in a Pipeline's list): its name, its declaration,
    its Params type and its run. A pipeline's graph is its sequence of these; the stage's code,
    for the fingerprint, is the module its run lives in and what that module calls into."""
    name: str
    spec: Spec
    params: type                            # a StageParams subclass
    run: Callable[..., None]                # run(writer, inputs, params, runtime)
    # a source stage (Spec.source): the data source its Params name, as an InputRef
    resolve_source: Callable[[Any], Any] | None = None
    # a stage that keeps resumable state: what its work dir says about how far it got, or None
    progress: Callable[[str], dict | None] | None = None
    module: str = ""                        # its code, for the digest: run's module unless given

    def __post_init__(self) -> None:
        if not self.module:
            object.__setattr__(self, "module", self.run.__module__)


def feature_input(name: str, space: str) -> str:
    """The input name of one of Spec.feature_inputs for the feature space `space`."""
    return f"{name}.{space}"


def key(name: str) -> Any:
    """A Params field read from the config key (or section) `name`, e.g. key("data.image_size")."""
    return field(metadata={"key": name})


def from_recipe(attr: str) -> Any:
    """A Params field read from the recipe, e.g. from_recipe("evaluation.primary")."""
    return field(metadata={"recipe": attr})


def _get(obj: Any, dotted: str) -> Any:
    return operator.attrgetter(dotted)(obj)


@dataclass(frozen=True)
class StageParams:
    """Base of every component's Params: each field names where its value comes from, so the
    fields are exactly the keys the stage reads and exactly what its fingerprint covers."""

    @classmethod
    def from_config(cls, cfg: Any, recipe: Any = None) -> "StageParams":
        values = {}
        for f in dataclasses.fields(cls):
            if "key" in f.metadata:
                values[f.name] = _get(cfg, f.metadata["key"])
            elif "recipe" in f.metadata:
                values[f.name] = _get(recipe, f.metadata["recipe"])
            else:
                raise TypeError(f"{cls.__module__}.Params.{f.name} declares neither key() nor from_recipe()")
        return cls(**values)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys (or whole sections) this stage reads."""
        return tuple(f.metadata["key"] for f in dataclasses.fields(cls) if "key" in f.metadata)

    def as_dict(self) -> dict[str, Any]:
        """{dotted config key (or recipe.ATTR): value}, sections flattened: what the fingerprint
        and the manifest hold, and what `tapeline plan` compares."""
        from components import config as cfglib

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            name = f.metadata.get("key") or f"recipe.{f.metadata['recipe']}"
            if dataclasses.is_dataclass(value):
                # a section may say which of its keys act (a recipe's model: its variant's)
                value = value.fingerprinted() if hasattr(value, "fingerprinted") else value
                out.update(cfglib.flat(value, name + "."))
            else:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


def _read(cls, cfg: Any) -> dict[str, Any]:
    return {f.name: _get(cfg, f.metadata["key"]) for f in dataclasses.fields(cls) if "key" in f.metadata}


@dataclass(frozen=True)
class BeamEngine:
    """The Beam engine the data stages run on: every beam.* key but beam.shards (which decides
    the artifact's files and is ingest's Params). Every engine writes byte-identical payloads
    (tests/test_engines.py), so none of this is in a fingerprint."""
    runner: str = key("beam.runner")
    options: str = key("beam.options")
    dask_address: str = key("beam.dask_address")
    partitions: int = key("beam.partitions")
    job_endpoint: str = key("beam.job_endpoint")
    worker_pool: str = key("beam.worker_pool")

    @classmethod
    def from_config(cls, cfg: Any) -> "BeamEngine":
        return cls(**_read(cls, cfg))


@dataclass(frozen=True)
class Runtime:
    """How a stage runs, never what it produces: kept out of every fingerprint (the same inputs
    give the same artifact on any engine, at any log rate, with or without a progress callback)."""
    beam: BeamEngine
    log_every: int = key("train.log_every")
    # set by the orchestrator per stage: the pipeline the node belongs to and its recipe
    pipeline: str = ""
    recipe: Any = None
    on_progress: Callable[[int, int], None] | None = None  # (step, total) at each train log line

    @classmethod
    def from_config(cls, cfg: Any, on_progress: Callable[[int, int], None] | None = None) -> "Runtime":
        return cls(beam=BeamEngine.from_config(cfg), **_read(cls, cfg), on_progress=on_progress)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.metadata["key"] for c in (BeamEngine, cls) for f in dataclasses.fields(c)
                     if "key" in f.metadata)

    def progress(self, step: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(step, total)
