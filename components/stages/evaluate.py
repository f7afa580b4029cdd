"""evaluate (Evaluator): measures the model as its recipe declares; it judges nothing (promote does)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

from artifacts import gfile
from components import tfrecords
from components.contract import Spec, Stage, StageParams, feature_input, key
from components.stages import preprocess, train

# feature inputs: from each feature model's pipeline the recipe declares (the GANs' classifiers),
# one pair per space; uses_recipe: its measure() is recipe code
SPEC = Spec(output="ModelEvaluation", inputs={"model": "train", "transformed": "preprocess"},
            feature_inputs={"feature_model": "train", "feature_transform": "preprocess"}, uses_recipe=True)


@dataclass(frozen=True)
class Params(StageParams):
    seed: int = key("seed")
    eval_split: str = key("data.eval_split")
    train_splits: tuple[str, ...] = key("data.train_splits")  # the first: the real-vs-real floor
    num_samples: int = key("eval.num_samples")
    batch_size: int = key("eval.batch_size")


def load_models(model_art) -> dict:
    import keras

    out = {}
    for name, path in train.model_files(model_art).items():
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{name}.keras"
            gfile.copy(path, local)
            out[name] = keras.saving.load_model(local, compile=False, safe_mode=True)  # no Lambda bytecode from a root
    return out


def _renormalize(x, src: dict, dst: dict):
    """Map images from one recorded normalization to another (through 0..255)."""
    return tfrecords.unnormalize(x, src) * dst["scale"] + dst["offset"]


def feature_space(fm, inputs, transformed, ref=lambda uri: uri):
    """One of the recipe's FeatureModels loaded from its artifacts, taking images in this
    pipeline's normalization (the feature model may have been trained in another); its uri as
    ref() writes it (relative to the root, as every reference a record holds)."""
    from components.evaluations import predict
    from components.recipe import FeatureSpace

    trained = inputs[feature_input("feature_model", fm.space)]
    model = load_models(trained)[fm.network]
    feat = fm.features(model)
    src = preprocess.transform(transformed)["normalize"]
    dst = preprocess.transform(inputs[feature_input("feature_transform", fm.space)])["normalize"]

    def prepare(x):
        return _renormalize(x, src, dst).reshape((len(x),) + tuple(model.input_shape[1:]))

    return FeatureSpace(uri=ref(trained.uri), embed=lambda x: predict(feat, prepare(x)),
                        logits=lambda x: predict(model, prepare(x)))


def run(out, inputs, params: Params, rt) -> None:
    from components.recipe import Measuring

    ev = rt.recipe.evaluation
    art = inputs["transformed"]
    spaces = {fm.space: feature_space(fm, inputs, art, out.store.ref) for fm in ev.feature_models}
    result, details = ev.measure(Measuring(nets=load_models(inputs["model"]),
                                           split=lambda s, limit=None: tfrecords.arrays(art, s, rt.recipe.layout.features, limit),
                                           params=params, spaces=spaces))
    gfile.write_json(out.file("metrics.json"), result)
    if details:
        gfile.write_json(out.file("details.json"), details)
    out.metadata.update(metrics=result)


def metrics(artifact) -> dict:
    """The recipe's measures: what promote judges and a run's summary shows."""
    return gfile.read_json(artifact.path("metrics.json"))


def details(artifact) -> dict | None:
    """What a measure keeps beside its metrics (the classifier's confusion matrix), if any."""
    path = artifact.path("details.json")
    return gfile.read_json(path) if gfile.exists(path) else None


STAGE = Stage("evaluate", SPEC, Params, run)
