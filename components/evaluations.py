"""What evaluation measures, per family of recipe; a recipe picks one for its Evaluation."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from components import scores
from components.recipe import Measuring


def predict(model, x, batch: int = 1000) -> np.ndarray:
    return np.concatenate([model(x[i:i + batch], training=False).numpy()
                           for i in range(0, len(x), batch)])


def classification(network: str) -> Callable[[Measuring], tuple[dict, dict]]:
    """Accuracy, loss and the confusion matrix of `network` on the eval split."""

    def measure(m: Measuring) -> tuple[dict, dict]:
        import tensorflow as tf

        model = m.nets[network]
        data = m.split(m.params.eval_split)
        x = data["image"].reshape((len(data["image"]),) + tuple(model.input_shape[1:]))
        logits = predict(model, x)
        y = data["label"]
        loss = float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
        pred = logits.argmax(1)
        k = logits.shape[1]
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (y, pred), 1)
        return {"accuracy": float((pred == y).mean()), "loss": loss, "examples": int(len(y))}, \
            {"confusion": confusion.tolist()}

    return measure


def generate(nets, z):
    """A GAN's images for the latent batch z: its exported generator, in inference mode."""
    return nets["generator"](z, training=False)


PR_NEIGHBOURS = 3  # k of the k-NN manifolds, as Kynkäänniemi et al. 2019 recommend


def generation(real_logit: Callable[[Any, Any], Any]) -> Callable[[Measuring], tuple[dict, dict]]:
    """In every feature space the recipe declares (keys name the space): the Fréchet distance
    of generated against real test images, and its floor (real train against real test: what a
    perfect generator would score) as KEY_floor, which sorts beside it. In the first space, the
    one the primary metric is taken in, also precision and recall (k-NN manifolds), each beside
    its value for real train images (KEY_real), and the classifier score. The checkerboard's
    lattice energy (scores.lattice_energy) beside real test images'. The discriminator's
    accuracy. The samples come from generate(); real_logit(nets, images) -> logits that are > 0
    where the discriminator judges an image real (each GAN orients its own)."""

    def measure(m: Measuring) -> tuple[dict, dict]:
        import tensorflow as tf

        p = m.params
        test = m.split(p.eval_split)["image"]
        train = m.split(p.train_splits[0], limit=len(test))["image"]
        n = min(p.num_samples, len(test))
        latent = m.nets["generator"].input_shape[-1]
        z = tf.random.stateless_normal([n, latent], seed=[p.seed, 7])
        fake = np.concatenate([generate(m.nets, z[i:i + p.batch_size]).numpy()
                               for i in range(0, n, p.batch_size)])
        out, uris = {}, {}
        for i, (name, space) in enumerate(m.spaces.items()):
            f_test, f_fake, f_train = space.embed(test), space.embed(fake), space.embed(train)
            out[f"frechet_distance_{name}"] = scores.frechet_distance(f_fake, f_test)
            out[f"frechet_distance_{name}_floor"] = scores.frechet_distance(f_train, f_test)
            if i == 0:  # equal sizes: a k-NN radius depends on how many rows its set has
                k = min(len(f_fake), len(f_train), len(f_test))
                out[f"precision_{name}"], out[f"recall_{name}"] = scores.precision_recall(
                    f_test[:k], f_fake[:k], PR_NEIGHBOURS)
                out[f"precision_{name}_real"], out[f"recall_{name}_real"] = scores.precision_recall(
                    f_test[:k], f_train[:k], PR_NEIGHBOURS)
                out["classifier_score"] = scores.classifier_score(space.logits(fake))
                out["classifier_score_real"] = scores.classifier_score(space.logits(test))
            uris[f"feature_model_{name}"] = space.uri
        # the checkerboard, measured: the share of power on the 2- and 4-pixel lattice, beside real images'
        out["lattice_energy"], out["lattice_energy_real"] = scores.lattice_energy(fake), scores.lattice_energy(test)
        real = np.concatenate([real_logit(m.nets, test[i:i + 1000]).numpy() for i in range(0, len(test), 1000)])
        faked = np.concatenate([real_logit(m.nets, fake[i:i + 1000]).numpy() for i in range(0, n, 1000)])
        return {**out, "disc_real_accuracy": float((real > 0).mean()),
                "disc_fake_accuracy": float((faked <= 0).mean()), "samples": int(n), **uris}, {}

    return measure


def translation(translate: Callable[[Any, Any], Any]) -> Callable[[Measuring], tuple[dict, dict]]:
    """L1, PSNR and SSIM of translate(nets, inputs) against the targets, and of the inputs
    themselves as the baseline."""

    def measure(m: Measuring) -> tuple[dict, dict]:
        data = m.split(m.params.eval_split)
        inp, tar = data["input"], data["image"]
        pred = np.concatenate([translate(m.nets, inp[i:i + 8]).numpy() for i in range(0, len(inp), 8)])
        model, base = scores.image_scores(pred, tar), scores.image_scores(inp, tar)
        return {**model, **{f"baseline_{k}": v for k, v in base.items()}, "examples": int(len(inp))}, {}

    return measure
