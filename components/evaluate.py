"""evaluate (Evaluator): test metrics per kind of recipe, compared with the champion: a blessing."""
from __future__ import annotations

import tempfile

import numpy as np

from artifacts import gfile
from components import metrics, records

OUTPUT = "ModelEvaluation"
INPUTS = {"model": "Model", "transformed": "TransformedExamples",
          "classifier": "Model (GANs: the feature classifier)",
          "classifier_transform": "TransformedExamples (the classifier's)"}


def load_models(model_art) -> dict:
    import keras

    out = {}
    for path in gfile.glob(model_art.path("models", "*.keras")):
        name = path.rsplit("/", 1)[-1][: -len(".keras")]
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{name}.keras"
            gfile.copy(path, local)
            out[name] = keras.saving.load_model(local, compile=False, safe_mode=True)  # no Lambda bytecode from a root
    return out


def _renormalize(x, src: dict, dst: dict):
    """Map images from one recorded normalization to another (through 0..255)."""
    raw = (x - src["offset"]) / src["scale"]
    return raw * dst["scale"] + dst["offset"]


def _predict(model, x, batch=1000):
    return np.concatenate([model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)])


def evaluate_classifier(nets, art, cfg):
    import tensorflow as tf

    data = records.arrays(art, cfg.data.eval_split)
    x = data["image"].reshape(len(data["image"]), -1)
    logits = _predict(nets["classifier"], x)
    y = data["label"]
    loss = float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    pred = logits.argmax(1)
    k = logits.shape[1]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    return {"accuracy": float((pred == y).mean()), "loss": loss, "examples": int(len(y))}, \
        {"confusion": confusion.tolist()}


def evaluate_gan(nets, art, cfg, mod, inputs):
    import tensorflow as tf

    from pipelines.mnist_classifier import features

    clf_nets = load_models(inputs["classifier"])
    clf = clf_nets["classifier"]
    feat = features(clf)
    src = records.load_transform(art)["normalize"]
    dst = records.load_transform(inputs["classifier_transform"])["normalize"]
    test = records.arrays(art, cfg.data.eval_split)["image"]
    train = records.arrays(art, cfg.data.train_splits[0], limit=len(test))["image"]
    n = min(cfg.eval.num_samples, len(test))
    z = tf.random.stateless_normal([n, mod.latent_dim(cfg)], seed=[cfg.seed, 7])
    fake = np.concatenate([mod.generate(nets, z[i:i + cfg.eval.batch_size]).numpy()
                           for i in range(0, n, cfg.eval.batch_size)])

    def f(x):
        return _predict(feat, _renormalize(x, src, dst).reshape(len(x), -1))

    f_test, f_fake, f_train = f(test), f(fake), f(train)
    real_logit = np.concatenate([mod.real_logit(nets, test[i:i + 1000]).numpy() for i in range(0, len(test), 1000)])
    fake_logit = np.concatenate([mod.real_logit(nets, fake[i:i + 1000]).numpy() for i in range(0, n, 1000)])
    fake_clf = _predict(clf, _renormalize(fake, src, dst).reshape(n, -1))
    return {"frechet_distance": metrics.frechet_distance(f_fake, f_test),
            "frechet_floor_train_vs_test": metrics.frechet_distance(f_train, f_test),
            "classifier_score": metrics.classifier_score(fake_clf),
            "classifier_score_real": metrics.classifier_score(_predict(clf, _renormalize(test, src, dst).reshape(len(test), -1))),
            "disc_real_accuracy": float((real_logit > 0).mean()),
            "disc_fake_accuracy": float((fake_logit <= 0).mean()),
            "samples": int(n), "feature_model": inputs["classifier"].uri}, {}


def evaluate_translation(nets, art, cfg, mod):
    data = records.arrays(art, cfg.data.eval_split)
    inp, tar = data["input"], data["image"]
    pred = np.concatenate([mod.translate(nets, inp[i:i + 8]).numpy() for i in range(0, len(inp), 8)])

    model, base = metrics.image_scores(pred, tar), metrics.image_scores(inp, tar)
    return {**model, **{f"baseline_{k}": v for k, v in base.items()}, "examples": int(len(inp))}, {}


def run(out, inputs, cfg, pipeline) -> None:
    from pipelines.registry import recipe

    mod = recipe(pipeline)
    nets = load_models(inputs["model"])
    art = inputs["transformed"]
    if mod.KIND == "classifier":
        result, extra = evaluate_classifier(nets, art, cfg)
    elif mod.KIND == "gan":
        result, extra = evaluate_gan(nets, art, cfg, mod, inputs)
    else:
        result, extra = evaluate_translation(nets, art, cfg, mod)
    champion = out.store.champion(pipeline.name)
    blessed, why = metrics.bless(mod.KIND, result, champion, cfg.eval.tolerance)
    gfile.write_json(out.file("metrics.json"), result)
    gfile.write_json(out.file("blessing.json"), {"blessed": blessed, "why": why,
                                                 "champion": champion["version"] if champion else None})
    if extra:
        gfile.write_json(out.file("details.json"), extra)
    out.metadata.update(metrics=result, blessed=blessed)
