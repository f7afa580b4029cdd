"""The stage contract: a stage's fingerprint covers exactly its Params, a stage sees nothing else,
promote judges every run, and a pipeline added from outside runs through its own flow."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from artifacts import gfile
from artifacts.store import ArtifactStore, InputRef
from components import config as cfglib
from components import drift, stages
from components.contract import ORCHESTRATOR_KEYS, Runtime, StageParams
from components.pipeline import Pipeline
from components.recipe import Evaluation, Recipe
from components.sections import (BeamConfig, DataConfig, EvalConfig, FlowConfig, PromoteConfig, RenderConfig,
                                 TrainConfig, ValidateConfig)
from flows import graph
from flows.registry import all_pipelines, get
from tests.conftest import MNIST, PEOPLE

PIPELINES = sorted(all_pipelines())


def _leaf_type(section, name):
    return typing.get_type_hints(type(section))[name]


def _changed(value, tp):
    """A different value of the same type (checks are not run: fingerprints only)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return {int: 7, float: 0.5, str: "x"}[inner] if value is None else _changed(value, inner)
    if origin is Literal:
        return next(a for a in args if a != value)
    if origin is tuple:
        return tuple(value) + ({int: 7, float: 0.5, str: "extra"}[args[0]],)
    if tp is bool:
        return not value
    return {int: lambda v: v + 1, float: lambda v: v + 0.5, str: lambda v: v + "-changed"}[tp](value)


def _set(cfg, dotted: str):
    head, _, rest = dotted.partition(".")
    value = getattr(cfg, head)
    new = _set(value, rest) if rest else _changed(value, _leaf_type(cfg, head))
    return dataclasses.replace(cfg, **{head: new})


def _acts(cfg, cfg2, dotted: str) -> bool:
    """Whether the key acts in its section (a GAN variant's keys act only in the fixes that name
    them: `fingerprinted()` holds the others at their defaults)."""
    head, _, rest = dotted.partition(".")
    a, b = getattr(cfg, head), getattr(cfg2, head)
    if not rest or not hasattr(a, "fingerprinted"):
        return True
    return cfglib.flat(a.fingerprinted()) != cfglib.flat(b.fingerprinted())


def _reads(keys, dotted: str) -> bool:
    return any(dotted == k or dotted.startswith(k + ".") for k in keys)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.fixture
def fast_fingerprints(monkeypatch):
    """Fingerprints without reading data sources or re-hashing code per config: the source is a
    constant input and code digests do not depend on the config."""
    monkeypatch.setattr(graph, "source_ref", lambda node: InputRef("source", "fixed"))
    real = graph.Node.code_modules
    code = functools.lru_cache(maxsize=None)(
        lambda pipeline, stage: real(graph.Node(get(pipeline), None, get(pipeline).stage(stage), {})))
    monkeypatch.setattr(graph.Node, "code_modules", lambda self: code(self.pipeline.name, self.stage))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_each_key_changes_exactly_the_stages_whose_params_hold_it_and_their_downstream(
        pipeline, fast_fingerprints):
    p = get(pipeline)
    cfg = p.config()
    before_nodes = graph.nodes(p, cfg)
    before = graph.fingerprints(before_nodes)
    runtime = Runtime.keys()
    for key in cfglib.flat_keys(cfg):
        cfg2 = _set(cfg, key)
        after_nodes = graph.nodes(p, cfg2)
        assert [n.key for n in after_nodes] == [n.key for n in before_nodes], key
        after = graph.fingerprints(after_nodes)
        expected: dict[str, bool] = {}
        for n, n2 in zip(before_nodes, after_nodes):
            declared = n.component.params.keys()
            if n.pipeline.name == pipeline:  # the key is this pipeline's: does the stage hold it?
                direct = _reads(declared, key) and _acts(cfg, cfg2, key)
            else:  # the feature model's stages: their config is derived from this one
                direct = any(_get(n.cfg, k) != _get(n2.cfg, k) for k in declared)
            expected[n.key] = direct or any(expected[i] for i in n.inputs.values())
        changed = {k: before[k][0] != after[k][0] for k in before}
        assert changed == expected, (key, {k for k in changed if changed[k] != expected[k]})
        if _reads(runtime, key) or _reads(ORCHESTRATOR_KEYS, key):
            assert not any(changed.values()), key


@pytest.mark.parametrize("pipeline", ["mnist-gan", "fashion-dcgan"])
def test_a_variant_key_enters_the_fingerprint_only_where_its_fix_acts(fast_fingerprints, pipeline):
    p = get(pipeline)

    def train(*sets):
        return graph.fingerprints(graph.nodes(p, p.config(list(sets))))[f"{pipeline}/train"][0]

    for key, value in (("model.upsample", "nearest"), ("model.ema_decay", "0.99"),
                       ("model.ttur_learning_rates", "1e-4,2e-4"), ("model.adam_learning_rate", "1e-3"),
                       ("model.adam_beta_1", "0.6")):
        fix = {"model.upsample": "resize", "model.ema_decay": "ema", "model.ttur_learning_rates": "ttur"}.get(key, "adam")
        assert train(f"{key}={value}") == train(), key  # faithful: the key does nothing, nothing retrains
        assert train(f"model.variant={fix}", f"{key}={value}") != train(f"model.variant={fix}"), key
        other = "spectral"
        assert train(f"model.variant={other}", f"{key}={value}") == train(f"model.variant={other}"), key


def test_every_config_key_is_read_by_a_stage_or_the_runtime():
    """A new key must be placed: in some stage's Params (fingerprinted) or in the Runtime /
    orchestrator (never fingerprinted). Nothing is read from the config outside those."""
    stage_keys = {k for s in stages.ALL for k in s.params.keys()}
    runtime = set(Runtime.keys())
    per_run = set(drift.Params.keys())  # judged every run against the champion: never fingerprinted
    assert not runtime & stage_keys and not per_run & (stage_keys | runtime)
    for name in PIPELINES:
        for key in cfglib.flat_keys(get(name).default_config()):
            assert _reads(stage_keys | runtime | per_run | set(ORCHESTRATOR_KEYS), key), (name, key)


@pytest.mark.parametrize("stage", stages.ALL, ids=lambda s: s.name)
def test_a_stage_gets_its_params_its_declared_inputs_and_a_runtime_never_the_config(stage):
    names = list(inspect.signature(stage.run).parameters)  # (out, inputs, params, runtime)
    assert len(names) == 4 and names[:2] == ["out", "inputs"] and not {"cfg", "config", "pipeline"} & set(names)
    assert issubclass(stage.params, StageParams) and stage.params.__dataclass_params__.frozen
    every = {s.name for s in stages.ALL}
    assert set(stage.spec.inputs.values()) | set(stage.spec.feature_inputs.values()) <= every - {stage.name}
    runtime_fields = {f.name for f in dataclasses.fields(Runtime)}
    assert runtime_fields == {"beam", "log_every", "pipeline", "recipe", "on_progress"}
    assert "beam.shards" not in Runtime.keys()  # it decides ingest's files: ingest's Params
    for name in PIPELINES:
        p = get(name)
        cfg = p.config()
        params = stage.params.from_config(cfg, p.recipe)
        with pytest.raises(dataclasses.FrozenInstanceError):
            params.seed = 1
        # every value is a declared key's value (the model section is the recipe's own keys)
        flat = cfglib.flat(cfg)
        for k, v in params.as_dict().items():
            assert k.startswith("recipe.") or flat[k] == v, (name, stage, k)
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            assert not hasattr(value, "data") and not hasattr(value, "train"), (name, stage, f.name)
        # every other key changed at once: the stage's Params do not change
        others = [k for k in flat if not _reads(stage.params.keys(), k)]
        cfg2 = functools.reduce(_set, others, cfg)
        assert stage.params.from_config(cfg2, p.recipe) == params


def test_the_graph_is_derived_from_the_components_specs():
    """Edges come from each SPEC; a GAN's evaluate gets each feature space's classifier train
    and preprocess, and only the classifier stages those need run upstream: the data stages the
    two spaces share once, a train per space."""
    gan = get("mnist-gan")
    assert graph.upstream(gan, ["train"]) == {"ingest", "validate", "preprocess", "train"}
    assert graph.upstream(gan, ["animate"]) == {s.name for s in stages.ALL} - {"promote"}
    ns = graph.nodes(get("mnist-gan"), get("mnist-gan").config())
    assert [n.key for n in ns[:5]] == [f"mnist-classifier/{s}" for s in ("ingest", "validate", "preprocess")] + \
        ["mnist-classifier[convnet]/train", "mnist-classifier[mlp]/train"]
    assert [n.cfg.model.variant for n in ns[3:5]] == ["convnet", "mlp"]
    evaluate = next(n for n in ns if n.key == "mnist-gan/evaluate")
    assert dict(evaluate.inputs) == {"model": "mnist-gan/train", "transformed": "mnist-gan/preprocess",
                                     "feature_model.convnet": "mnist-classifier[convnet]/train",
                                     "feature_transform.convnet": "mnist-classifier/preprocess",
                                     "feature_model.mlp": "mnist-classifier[mlp]/train",
                                     "feature_transform.mlp": "mnist-classifier/preprocess"}
    # each key one artifact: the two trains differ, nothing else is doubled
    local = graph.nodes(get("mnist-gan"), get("mnist-gan").config([f"data.source=idx:{MNIST}"]))
    fps = graph.fingerprints(local)
    assert len({(n.pipeline.name, fps[n.key][0]) for n in local}) == len(local) == len(ns)
    with pytest.raises(ValueError, match="does not run"):
        graph.nodes(dataclasses.replace(gan, stages=(stages.ingest.STAGE, stages.train.STAGE)), gan.config())


def test_changed_train_splits_rebuild_preprocess(tmp_path):
    """The drift this contract fixes: preprocess jitters data.train_splits, so changing them
    must not reuse the preprocess artifact."""
    from tests.helpers import run_stages

    root = str(tmp_path / "r")
    sets = [f"data.source=paired:{PEOPLE}", "data.max_examples=4", "data.image_size=32", "data.jitter_copies=1"]
    a, _ = run_stages(root, "pix2pix", sets, "preprocess")
    b, _ = run_stages(root, "pix2pix", sets + ["data.train_splits=train,val"], "preprocess")
    pa, pb = a["pix2pix/preprocess"], b["pix2pix/preprocess"]
    assert a["pix2pix/validate"].uri == b["pix2pix/validate"].uri and pa.uri != pb.uri
    assert gfile.read_json(pb.path("transform.json"))["jitter"]["splits"] == ["train", "val"]
    val = lambda art: [gfile.read_bytes(f) for f in sorted(gfile.glob(art.path("val", "copy-0", "*")))]  # noqa: E731
    assert val(pa) != val(pb)  # the val pairs are jittered now


def _artifact(store, stage, fp, rel: str, data: bytes):
    def build(w):
        gfile.makedirs(w.file(rel).rsplit("/", 1)[0])
        gfile.write_bytes(w.file(rel), data)
    return store.get_or_build("mnist-classifier", stage, fp, type=stage, params={}, inputs={},
                              code="test", build=build).artifact


def test_promote_judges_every_run_with_its_tolerance_and_the_champion_of_that_moment(tmp_path, monkeypatch):
    from components import export

    store = ArtifactStore(str(tmp_path / "root"))
    model = _artifact(store, "train", "m" * 64, "models/classifier.keras", b"weights")
    evaluation = _artifact(store, "evaluate", "e" * 64, "metrics.json", b'{"accuracy": 0.85}')
    transformed = _artifact(store, "preprocess", "t" * 64, "transform.json", b"{}")
    done = {"mnist-classifier/train": model, "mnist-classifier/evaluate": evaluation,
            "mnist-classifier/preprocess": transformed}
    # these models are bytes, not networks: the SavedModel is a stand-in (tests/test_serving.py pushes real ones)
    monkeypatch.setattr(export, "save", lambda spec, nets, transform, path: (
        gfile.makedirs(path), gfile.write_bytes(f"{path}/saved_model.pb", b"pb")))
    monkeypatch.setattr("components.stages.evaluate.load_models", lambda art: {})
    p = get("mnist-classifier")

    def promote(*sets):
        node = next(n for n in graph.nodes(p, p.config(list(sets))) if n.stage == "promote")
        run = graph.run_node(store, node, done)
        assert not run.reused  # a decision about the champion of now is never reused
        from components.stages.promote import decision

        return run.artifact, decision(run.artifact, store)

    store.set_champion("mnist-classifier", {"version": "v0", "metrics": {"accuracy": 0.9},
                                            "artifacts": {"model": "elsewhere"}})
    strict, decision = promote()
    assert decision["blessed"] is False and "not blessed" in decision["why"] and decision["champion"] == "v0"
    assert store.champion("mnist-classifier")["version"] == "v0"
    # the same model and evaluation, a new champion (worse than it): promote decides otherwise
    store.set_champion("mnist-classifier", {"version": "v1", "metrics": {"accuracy": 0.8},
                                            "artifacts": {"model": "elsewhere"}})
    again, decision = promote()
    assert again.fingerprint == strict.fingerprint and again.uri != strict.uri
    assert decision["blessed"] and decision["pushed"] and decision["champion"] == "v1"
    assert store.champion("mnist-classifier")["artifacts"]["model"] == model.uri
    assert gfile.read_bytes(again.path("exported", "classifier.keras")) == b"weights"
    # back to a better champion: a larger eval.tolerance blesses what 0 does not
    store.set_champion("mnist-classifier", {"version": "v2", "metrics": {"accuracy": 0.9},
                                            "artifacts": {"model": "elsewhere"}})
    assert promote()[1]["blessed"] is False
    assert promote("eval.tolerance=0.1")[1]["blessed"] is True
    # already the champion: nothing to push again
    _, decision = promote()
    assert decision == {**decision, "blessed": True, "pushed": False, "why": "already the champion"}


def test_tolerance_is_not_in_evaluate_and_champions_are_not_in_any_fingerprint(fast_fingerprints):
    p = get("mnist-classifier")
    a = graph.fingerprints(graph.nodes(p, p.config()))
    b = graph.fingerprints(graph.nodes(p, p.config(["eval.tolerance=0.5"])))
    assert {k for k in a if a[k] != b[k]} == {"mnist-classifier/promote"}


# -- a fifth pipeline, defined here, registered, run through its flow ------------------------------

@dataclass(frozen=True)
class TinyModel:
    code: int = 8
    learning_rate: float = 1e-2


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    data: DataConfig = DataConfig(source=f"idx:{MNIST}", max_examples=64)
    validate: ValidateConfig = ValidateConfig()
    train: TrainConfig = TrainConfig(batch_size=16, max_steps=3)
    model: TinyModel = TinyModel()
    eval: EvalConfig = EvalConfig()
    render: RenderConfig = RenderConfig()
    promote: PromoteConfig = PromoteConfig()
    beam: BeamConfig = BeamConfig(shards=1)
    flow: FlowConfig = FlowConfig()


def tiny_build(p, info):
    """An autoencoder 784-code-784 with a mean-squared reconstruction loss."""
    import keras
    import tensorflow as tf

    from components.recipe import TrainSetup, minimize, optimizer

    n = int(np.prod(info.image_shape))
    net = keras.Sequential([keras.Input((n,)), keras.layers.Dense(p.model.code, activation="relu"),
                            keras.layers.Dense(n)], name="autoencoder")
    opt = optimizer(keras.optimizers.Adam(p.model.learning_rate))

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(x, training=True) - x))
        minimize(tape, loss, net.trainable_weights, opt)
        return {"mse": loss}

    return TrainSetup(networks={"autoencoder": net}, optimizers={"autoencoder": opt}, step=step,
                      metrics=("mse",), batch=lambda rec: tf.reshape(rec["image"], [tf.shape(rec["image"])[0], -1]),
                      export={"autoencoder": net})


def tiny_measure(m):
    x = m.split(m.params.eval_split)["image"]
    x = x.reshape(len(x), -1)
    y = m.nets["autoencoder"](x, training=False).numpy()
    return {"mse": float(np.mean((y - x) ** 2)), "examples": len(x)}, {}


RECIPE = Recipe(build=tiny_build, evaluation=Evaluation(measure=tiny_measure, primary="mse",
                                                      higher_is_better=False))
TINY = Pipeline(name="tiny-autoencoder", summary="a test's autoencoder", module=__name__,
                default_config=TinyConfig,
                stages=stages.without("render", "animate"))


def test_a_fifth_pipeline_registered_here_runs_end_to_end_through_its_flow(harness, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    from flows import pipeline_flow, registry
    from tests.conftest import REPO

    registry.register(TINY)
    try:
        assert "tiny-autoencoder" in registry.all_pipelines()
        # its deployment entrypoint resolves, as prefect.yaml's do
        entry = load_flow_from_entrypoint(f"{REPO}/flows/pipeline_flow.py:tiny_autoencoder")
        assert entry.name == "tiny-autoencoder" and pipeline_flow.tiny_autoencoder.name == "tiny-autoencoder"
        summary = pipeline_flow.run_pipeline("tiny-autoencoder", [], str(tmp_path / "root"))
    finally:
        registry.unregister("tiny-autoencoder")
    assert list(summary["stages"]) == [f"tiny-autoencoder/{s}" for s in
                                       ("ingest", "validate", "preprocess", "train", "evaluate", "promote")]
    m = summary["metrics"]
    assert m["examples"] == 64
    assert summary["blessed"] and summary["champion"]
    # champion.json holds paths relative to the root; the store resolves them under it
    champion = ArtifactStore(str(tmp_path / "root")).champion("tiny-autoencoder")
    assert gfile.exists(champion["exported"] + "/autoencoder.keras") and champion["metrics"] == m
    # the mse is the trained autoencoder's on the test split: the exported model gives it again
    import keras

    from components import tfrecords

    test = tfrecords.arrays(ArtifactStore(str(tmp_path / "root")).load(summary["stages"]["tiny-autoencoder/preprocess"]["uri"]),
                          TinyConfig().data.eval_split, ("image",))["image"]
    x = test.reshape(len(test), -1)
    net = keras.saving.load_model(champion["exported"] + "/autoencoder.keras", compile=False)
    assert m["mse"] == pytest.approx(float(np.mean((net(x, training=False).numpy() - x) ** 2)), rel=1e-5)
