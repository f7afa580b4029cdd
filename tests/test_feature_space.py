"""The GANs' feature space: mnist-classifier's convnet variant trains, resumes bit-exactly and
exports; in its space the Fréchet distance tells real images from shuffled pixels, and precision
and recall tell a collapsed generator from the real distribution."""
from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest

from tests.conftest import MNIST

# 500 train, 500 val (val_max_share 0.5), 1000 test: the val images stand for a perfect generator
CONVNET = [f"data.source=idx:{MNIST}", "data.max_examples=1000", "data.val_holdout=500", "data.val_max_share=0.5",
           "model.variant=convnet", "train.epochs=20", "train.max_steps=200"]
SAMPLES = 500


def brute_precision_recall(real, fake, k):
    """Straight from the paper's definitions, one pair at a time."""
    def radii(x):
        return [sorted(np.linalg.norm(x - row, axis=1))[k] for row in x]

    r_real, r_fake = radii(real), radii(fake)
    inside = lambda row, ref, r: any(np.linalg.norm(row - c) <= rc for c, rc in zip(ref, r))  # noqa: E731
    return np.mean([inside(f, real, r_real) for f in fake]), np.mean([inside(x, fake, r_fake) for x in real])


def test_precision_recall_match_the_definition_and_tell_collapse_from_coverage():
    from components.scores import precision_recall

    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 5))
    shifted = rng.normal(size=(120, 5)) * 0.7 + 0.8   # partly overlapping: neither 0 nor 1
    got = precision_recall(real, shifted, 3, batch=50)  # batches smaller than the sets
    assert got == pytest.approx(brute_precision_recall(real, shifted, 3))
    assert 0.1 < got[0] < 0.95 and 0.1 < got[1] < 0.95, got
    collapsed = np.repeat(real[:1], 120, axis=0)      # every sample one real point: its radius is 0
    precision, recall = precision_recall(real, collapsed, 3)
    assert precision == 1.0 and recall <= 1 / 120, (precision, recall)
    far = real + 100.0
    assert precision_recall(real, far, 3) == (0.0, 0.0)


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """The convnet variant trained on 500 MNIST digits, and its preprocess artifact."""
    from tests.helpers import run_stages

    done, _ = run_stages(str(tmp_path_factory.mktemp("convnet") / "root"), "mnist-classifier", CONVNET, "train")
    return done["mnist-classifier/train"], done["mnist-classifier/preprocess"]


class Replay:
    """A stand-in generator: hands out the given images in order, whatever the noise."""
    input_shape = (None, 4)

    def __init__(self, images):
        self.images, self.at = images, 0

    def __call__(self, z, training=False):
        import tensorflow as tf

        n = int(z.shape[0])
        self.at += n
        return tf.constant(self.images[self.at - n:self.at])


def measure(convnet, images):
    """The GANs' generation measure, with the trained convnet as its space (loaded the way
    evaluate loads it) and a generator that replays `images`."""
    import tensorflow as tf

    from components import evaluations, tfrecords
    from components.contract import feature_input
    from components.recipe import Measuring
    from components.stages import evaluate
    from pipelines.mnist_classifier import CONVNET_FEATURES

    model, pre = convnet
    inputs = {feature_input("feature_model", "convnet"): model, feature_input("feature_transform", "convnet"): pre}
    space = evaluate.feature_space(CONVNET_FEATURES, inputs, pre)
    params = evaluate.Params(seed=0, eval_split="test", train_splits=("train",), num_samples=SAMPLES, batch_size=100)
    m = Measuring(nets={"generator": Replay(images)}, params=params, spaces={"convnet": space},
                  split=lambda s, limit=None: tfrecords.arrays(pre, s, ("image",), limit))
    result, _ = evaluations.generation(lambda nets, x: tf.ones([len(x), 1]))(m)
    return result


def val_images(convnet):
    from components import tfrecords

    return tfrecords.arrays(convnet[1], "val", ("image",))["image"]


def test_convnet_space_fd_of_real_images_is_near_its_floor_and_of_shuffled_pixels_far(convnet):
    real = val_images(convnet)
    assert len(real) == SAMPLES
    perm = np.random.default_rng(0).permutation(real[0].size)  # one shuffle of pixel places for all
    shuffled = real.reshape(len(real), -1)[:, perm].reshape(real.shape)
    same, scrambled = measure(convnet, real), measure(convnet, shuffled)
    floor = same["frechet_distance_convnet_floor"]
    assert floor == scrambled["frechet_distance_convnet_floor"] > 0
    assert same["frechet_distance_convnet"] < 1.5 * floor, same
    assert scrambled["frechet_distance_convnet"] > 10 * floor, scrambled
    assert same["samples"] == SAMPLES and same["feature_model_convnet"] == convnet[0].uri


def test_precision_recall_of_one_training_image_and_of_real_images(convnet):
    from components import tfrecords

    one = tfrecords.arrays(convnet[1], "train", ("image",), limit=1)["image"]
    collapsed = measure(convnet, np.repeat(one, SAMPLES, axis=0))
    real = measure(convnet, val_images(convnet))
    # one image is a real-looking one (precision) and covers nothing else (recall)
    assert collapsed["precision_convnet"] > 0.9 and collapsed["recall_convnet"] < 0.02, collapsed
    assert real["precision_convnet"] > 0.6 and real["recall_convnet"] > 0.6, real
    # real images score as the train-vs-test reference does
    assert real["precision_convnet"] == pytest.approx(real["precision_convnet_real"], abs=0.1)
    assert real["recall_convnet"] == pytest.approx(real["recall_convnet_real"], abs=0.1)


def test_convnet_variant_learns_resumes_bit_exactly_and_exports(convnet, tmp_path):
    import keras
    import tensorflow as tf

    from components import export, tfrecords
    from components.contract import Runtime
    from components.stages import evaluate, preprocess, train
    from flows.registry import get
    from pipelines.mnist_classifier import RECIPE
    from tests.helpers import run_stages, weights

    model, pre = convnet
    # it learns: 200 steps on 500 digits classify most of the 1000 test digits
    net = evaluate.load_models(model)["classifier"]
    assert [layer.name for layer in net.layers][-2:] == ["features", "predictions"]
    test = tfrecords.arrays(pre, "test", ("image",))  # and its labels
    logits = net(test["image"], training=False).numpy()
    assert (logits.argmax(1) == test["label"]).mean() > 0.8

    sets = CONVNET[:-2] + ["train.epochs=2", "train.max_steps=12", "train.checkpoint_every=4", "train.log_every=2"]

    class Stop(Exception):
        pass

    def stop(step, total):
        if step >= 6:
            raise Stop()

    straight, _ = run_stages(str(tmp_path / "straight"), "mnist-classifier", sets, "train")
    with pytest.raises(Stop):
        run_stages(str(tmp_path / "stopped"), "mnist-classifier", sets, "train",
                   Runtime.from_config(get("mnist-classifier").config(sets), on_progress=stop))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        resumed, _ = run_stages(str(tmp_path / "stopped"), "mnist-classifier", sets, "train")
    resumed_at = re.search(r"^train: resumed from step (\d+) ", log.getvalue(), re.M)
    assert resumed_at and 0 < int(resumed_at[1]) < 12, log.getvalue()[-2000:]
    a, b = weights(straight["mnist-classifier/train"].uri), weights(resumed["mnist-classifier/train"].uri)
    assert a.keys() == b.keys() == {"classifier.keras"}
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))

    # exported: the SavedModel a user serves takes uint8 pixels and agrees with the Keras model
    nets = evaluate.load_models(model)
    export.save(RECIPE.serving, nets, preprocess.transform(pre), str(tmp_path / "saved"))
    served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    pixels = np.round(tfrecords.unnormalize(test["image"][:64], preprocess.transform(pre)["normalize"])).astype(np.uint8)
    out = served(images=tf.constant(pixels))
    assert np.array_equal(out["classes"].numpy(), logits[:64].argmax(1))
    path = train.model_files(model)["classifier"]
    assert keras.saving.load_model(path, safe_mode=True).input_shape == (None, 28, 28, 1)


def test_lattice_energy_sees_the_checkerboard_of_a_strided_transposed_convolution_and_not_of_resize():
    """The evaluate stage's checkerboard measure: real digits score alike in two halves; the same
    digits halved then doubled by a stride-2 Conv2DTranspose (kernel 3: uneven overlap, the
    checkerboard's cause) score far above them, and by the `resize` variant's UpSampling2D +
    Conv2D (either interpolation) near them."""
    import gzip

    import keras

    from components.scores import lattice_energy

    with gzip.open(f"{MNIST}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28).astype("float32") / 127.5 - 1
    real = lattice_energy(x[:1000])
    assert lattice_energy(x[1000:2000]) == pytest.approx(real, rel=0.1)
    small = x[:1000].reshape(-1, 14, 2, 14, 2).mean((2, 4))[..., None]

    def doubled(*layers):
        return keras.Sequential([keras.Input((14, 14, 1)), *layers])(small).numpy()

    ones = {"kernel_initializer": "ones", "use_bias": False}
    transposed = lattice_energy(doubled(keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same", **ones)))
    assert transposed > 10 * real, (transposed, real)
    for interpolation in ("nearest", "bilinear"):
        resized = lattice_energy(doubled(keras.layers.UpSampling2D(2, interpolation=interpolation),
                                         keras.layers.Conv2D(1, 3, padding="same", **ones)))
        assert resized < 2 * real, (interpolation, resized, real)
