"""Metrics against independent computations, and blessing / promotion against the champion."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from components import scores
from tests.conftest import MNIST


def frechet_by_eigenvalues(a, b):
    """Independent: Tr((Sa Sb)^1/2) as the sum of square roots of the eigenvalues of Sa Sb."""
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_distance_zero_for_identical_sets_and_matches_scipy_free_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(1500, 16)) @ rng.normal(size=(16, 16)) * 0.3
    assert scores.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert scores.frechet_distance(a, b) == pytest.approx(frechet_by_eigenvalues(a, b), rel=1e-6)
    # one-dimensional closed form: (mu1-mu2)^2 + (s1 - s2)^2
    x, y = rng.normal(1.0, 2.0, size=(50000, 1)), rng.normal(-1.0, 0.5, size=(50000, 1))
    closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert scores.frechet_distance(x, y) == pytest.approx(closed, rel=1e-6)


def test_classifier_score_bounds():
    confident = np.eye(10)[np.arange(1000) % 10] * 50.0  # each class, certain: score = 10
    assert scores.classifier_score(confident) == pytest.approx(10.0, rel=1e-3)
    assert scores.classifier_score(np.zeros((1000, 10))) == pytest.approx(1.0)  # uniform: 1


def ssim_numpy(a, b, max_val=1.0, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Independent SSIM (Wang et al. 2004): an 11x11 Gaussian window (sigma 1.5) over every
    valid position, per image and channel, then the mean; written from the paper's formula."""
    from numpy.lib.stride_tricks import sliding_window_view

    r = np.arange(size) - (size - 1) / 2
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    scores = []
    for x, y in zip(np.asarray(a, np.float64), np.asarray(b, np.float64)):
        for c in range(x.shape[-1]):
            px = sliding_window_view(x[..., c], (size, size))  # (H-10, W-10, 11, 11)
            py = sliding_window_view(y[..., c], (size, size))
            mx, my = (px * w).sum((-2, -1)), (py * w).sum((-2, -1))
            vx = (px ** 2 * w).sum((-2, -1)) - mx ** 2
            vy = (py ** 2 * w).sum((-2, -1)) - my ** 2
            cov = (px * py * w).sum((-2, -1)) - mx * my
            m = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            scores.append(m.mean())
    return float(np.mean(scores))


def test_psnr_ssim_match_independent_computations_on_known_pairs():
    rng = np.random.default_rng(1)
    target = rng.uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    pred = np.clip(target + 0.1, -1, 1)
    s = scores.image_scores(pred, target)
    diff01 = (pred - target) / 2  # the same pair in [0, 1]
    assert s["l1"] == pytest.approx(np.abs(pred - target).mean(), rel=1e-6)
    psnr = np.mean([10 * np.log10(1.0 / np.mean(d ** 2)) for d in diff01])
    assert s["psnr"] == pytest.approx(psnr, rel=1e-4)
    assert s["ssim"] == pytest.approx(ssim_numpy((pred + 1) / 2, (target + 1) / 2), rel=1e-4)
    blurred = (target + np.roll(target, 1, axis=1) + np.roll(target, 1, axis=2)) / 3  # structure changed
    assert scores.image_scores(blurred, target)["ssim"] == pytest.approx(
        ssim_numpy((blurred + 1) / 2, (target + 1) / 2), rel=1e-4)
    same = scores.image_scores(target, target)
    assert same["l1"] == 0 and same["ssim"] == pytest.approx(1.0) and np.isinf(same["psnr"])
    noise = scores.image_scores(rng.uniform(-1, 1, size=target.shape).astype(np.float32), target)
    assert noise["ssim"] < 0.1 < s["ssim"] and noise["psnr"] < s["psnr"]


def test_real_vs_real_far_below_noise_vs_real_in_the_classifier_feature_space(tmp_path):
    from components import tfrecords
    from components.stages.evaluate import load_models
    from pipelines.mnist_classifier import features
    from tests.helpers import run_stages

    sets = [f"data.source=idx:{MNIST}", "data.max_examples=600", "data.val_holdout=100", "train.max_steps=150"]
    done, _ = run_stages(str(tmp_path / "r"), "mnist-classifier", sets, "train")
    feat = features(load_models(done["mnist-classifier/train"])["classifier"])
    pre = done["mnist-classifier/preprocess"]

    def images(split):
        x = tfrecords.arrays(pre, split, ("image",))["image"]
        return x.reshape(len(x), -1)

    train, test = images("train"), images("test")
    noise = np.random.default_rng(0).uniform(0, 1, size=test.shape).astype(np.float32)
    f = lambda x: feat(x, training=False).numpy()  # noqa: E731
    real = scores.frechet_distance(f(train), f(test))
    fake = scores.frechet_distance(f(noise), f(test))
    assert real * 10 < fake, (real, fake)


@pytest.mark.slow
def test_worse_candidate_not_promoted_better_one_is(harness, tmp_path):
    from artifacts.store import open_store
    from flows.cli import main
    from flows.pipeline_flow import run_pipeline

    root = str(tmp_path / "root")
    base = [f"data.source=idx:{MNIST}", "data.max_examples=400", "data.val_holdout=50", "train.epochs=100"]
    first = run_pipeline("mnist-classifier", base + ["train.max_steps=30"], root)
    assert first["blessed"] and first["champion"] == json.load(open(f"{root}/mnist-classifier/champion.json"))["version"]
    worse = run_pipeline("mnist-classifier", base + ["train.max_steps=2"], root)
    assert worse["metrics"]["accuracy"] < first["metrics"]["accuracy"]
    assert worse["blessed"] is False and "not blessed" in worse["why"]
    assert worse["champion"] == first["champion"]
    push = json.load(open(worse["stages"]["mnist-classifier/promote"]["uri"] + "/push.json"))
    assert push["blessed"] is False and "pushed" not in push and worse["pushed"] is False
    better = run_pipeline("mnist-classifier", base + ["train.max_steps=300"], root)
    assert better["metrics"]["accuracy"] > first["metrics"]["accuracy"] and better["blessed"]
    champion = open_store(root).champion("mnist-classifier")  # its references resolved under the root
    assert champion["version"] == better["champion"] != first["champion"]
    assert champion["metrics"]["accuracy"] == better["metrics"]["accuracy"]
    import keras

    exported = keras.saving.load_model(champion["exported"] + "/classifier.keras")
    assert exported.output_shape == (None, 10)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["artifacts", "mnist-classifier", "--root", root]) == 0
    out = buf.getvalue()
    assert f"champion: {better['champion']}" in out.splitlines()[0]


def test_gif_frames_follow_the_sqrt_schedule_in_order(tmp_path):
    import imageio.v2 as imageio

    from artifacts.store import ArtifactStore
    from components.stages import animate
    from components.stages.render import _png
    from flows.registry import get

    store = ArtifactStore(str(tmp_path / "root"))
    names = [f"step-{i:08d}.png" for i in range(12)]

    def grids(w):
        from artifacts import gfile

        gfile.makedirs(w.file("grids"))
        for i, name in enumerate(names):  # frame i: a flat grey of intensity 20 * i
            _png(w.file("grids", name), np.full((8, 8, 1), 20 * i, np.uint8))
        gfile.write_json(w.file("frames.json"), names)

    rendering = store.get_or_build("t", "render", "f" * 64, type="Rendering", params={}, inputs={},
                                   code="test", build=grids).artifact
    cfg = get("fashion-dcgan").config(["render.gif_frame_seconds=0.2"])
    gif = store.get_or_build("t", "animate", "e" * 64, type="Animation", params={}, inputs={"rendering": rendering},
                             code="test", build=lambda w: animate.run(w, {"rendering": rendering}, animate.Params.from_config(cfg),
                                                                      None)).artifact
    order = animate.sqrt_schedule(len(names))
    # the tutorial's: frame i is kept where round(2*sqrt(i)) grows, the last one twice
    assert order == [0, 1, 2, 4, 6, 8, 11, 11]
    frames = imageio.mimread(gif.path("training.gif"))
    assert [int(round(f[..., 0].mean() / 20)) for f in frames] == order[:-1]  # the repeated last is held
    from PIL import Image, ImageSequence

    with Image.open(gif.path("training.gif")) as im:
        durations = [f.info["duration"] for f in ImageSequence.Iterator(im)]
    assert durations[0] == 200 and durations[-1] == 400
