"""render: sample grids, snapshot rows (pix2pix triptychs), history plots, confusion matrix (PNG + TensorBoard)."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from artifacts import gfile
from components import tfrecords
from components.contract import Spec, Stage, StageParams, from_recipe, key
from components.stages import evaluate, preprocess, train

# transformed: the recorded normalization, and the eval-split inputs of pix2pix triptychs
SPEC = Spec(output="Rendering", inputs={"model": "train", "evaluation": "evaluate", "transformed": "preprocess"})


@dataclass(frozen=True)
class Params(StageParams):
    max_triptychs: int = key("render.max_triptychs")
    eval_split: str = key("data.eval_split")  # where the fixed inputs of the triptychs come from
    layout: Any = from_recipe("layout")        # how a snapshot is drawn


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_uint8(x: np.ndarray, normalize: dict) -> np.ndarray:
    return np.clip(np.rint(tfrecords.unnormalize(x, normalize)), 0, 255).astype(np.uint8)


# The seed's generate_and_save_images draws 16 samples in a 4x4-inch figure (400 pixels at
# matplotlib's 100 dpi), about 90 pixels a sample with white space between them. A grid here is
# at least that readable: every image enlarged by a whole factor (nearest neighbour: no smoothing
# of the pixels the generator made) to about CELL pixels, a white GAP between them.
CELL = 112
GAP = 4


def grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """N images (H, W, C) uint8 as one readable grid, square-ish unless cols is given."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    f = max(1, round(CELL / max(h, w)))
    big = images.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else images
    bh, bw = h * f, w * f
    # white space between samples, as in the seed's figure; dark lines where the images are light
    # at their edges (pix2pix's white backgrounds), so each image's bounds stay visible
    edges = np.concatenate([images[:, 0].ravel(), images[:, -1].ravel(), images[:, :, 0].ravel(),
                            images[:, :, -1].ravel()])
    shade = 255 if edges.mean() < 160 else 64
    out = np.full((rows * bh + (rows + 1) * GAP, cols * bw + (cols + 1) * GAP, c), shade, images.dtype)
    for i, img in enumerate(big):
        r, k = divmod(i, cols)
        y, x = GAP + r * (bh + GAP), GAP + k * (bw + GAP)
        out[y:y + bh, x:x + bw] = img
    return out


def _png(path: str, img: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="PNG")
    gfile.write_bytes(path, buf.getvalue())


def _fig(path: str, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _plt().close(fig)
    gfile.write_bytes(path, buf.getvalue())


def history_plot(path: str, history: dict, epochs: list[dict]) -> None:
    """The DCGAN tutorial's plots: losses, and (if recorded) accuracies, per step and per epoch."""
    plt = _plt()
    acc = [k for k in history if "accuracy" in k]
    loss = [k for k in history if k not in acc]
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(12 if acc else 6, 4), squeeze=False)
    panels = [(axes[0][0], loss, "loss")] + ([(axes[0][1], acc, "accuracy")] if acc else [])
    val_keys = [k for k in (epochs[0] if epochs else {}) if k.startswith("val_")]
    for ax, keys, title in panels:
        for k in keys:
            v = np.asarray(history[k], np.float64)
            steps = np.arange(1, len(v) + 1)
            w = len(v) // 100
            if w > 1:  # long runs: the raw per-step curve faint, a moving average over it
                line, = ax.plot(steps, v, alpha=0.2)
                ax.plot(steps[w - 1:], np.convolve(v, np.ones(w) / w, mode="valid"), color=line.get_color(),
                        label=f"{k} (mean of {w} steps)")
            else:
                ax.plot(steps, v, label=k, alpha=0.8)
        if ax is panels[-1][0]:  # epoch-end validation beside the accuracies (or the loss)
            for k in val_keys:
                ax.plot([e["step"] for e in epochs], [e[k] for e in epochs], "o-", label=k)
        if title == "loss" and _spread(history, keys) > 20:
            ax.set_yscale("log")  # a small term (pix2pix's L1, CycleGAN's cycle L1) beside a large one stays visible
            title = "loss (log scale)"
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
    _fig(path, fig)


def _spread(history: dict, keys: list[str]) -> float:
    """How many times the largest curve's median is the smallest's; 1 where a log scale cannot
    show them (a value at or below 0)."""
    curves = [np.asarray(history[k], np.float64) for k in keys if len(history[k])]
    if not curves or min(float(c.min()) for c in curves) <= 0:
        return 1.0
    medians = [float(np.median(c)) for c in curves]
    return max(medians) / min(medians)


def confusion_plot(path: str, confusion: list[list[int]]) -> None:
    plt = _plt()
    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _fig(path, fig)


def titled_row(path: str, images, titles) -> None:
    """The pix2pix tutorial's generate_images: images side by side under their titles (input,
    ground truth, prediction)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    _fig(path, fig)


def run(out, inputs, params: Params, rt) -> None:
    import tensorflow as tf

    model = inputs["model"]
    history, epochs = train.history(model)
    gfile.makedirs(out.file("grids"))
    history_plot(out.file("history.png"), history, epochs)
    writer = tf.summary.create_file_writer(out.file("logs"))
    details = evaluate.details(inputs["evaluation"])
    if details is not None:
        confusion_plot(out.file("confusion.png"), details["confusion"])
    transform_art = inputs["transformed"]
    transform = preprocess.transform(transform_art)
    norm = transform["normalize"]
    samples = train.samples(model)
    features = params.layout.features
    examples = []  # the eval-split examples the snapshots translated (if they did), as uint8
    if samples:
        n = np.load(io.BytesIO(gfile.read_bytes(next(iter(samples.values())))), allow_pickle=False).shape[0]
        examples = [{f: _to_uint8(e[f], norm) for f in features} for e in
                    tfrecords.dataset(transform_art, params.eval_split, features).take(n).as_numpy_iterator()]
    frames = []
    snap = None
    for step, path in samples.items():
        arr = _to_uint8(np.load(io.BytesIO(gfile.read_bytes(path)), allow_pickle=False), norm)
        name = f"step-{step:08d}.png"
        snap = params.layout.snapshot(examples, arr, params.max_triptychs)
        if snap is None:  # the GANs' fixed-seed samples
            g = grid(arr)
        else:  # a row per fixed input, e.g. pix2pix's input | ground truth | prediction
            g = grid(np.stack([x for row in snap.rows for x in row]), cols=len(snap.titles))
        _png(out.file("grids", name), g)
        frames.append(name)
        with writer.as_default(step=step):
            tf.summary.image("samples", g[None].astype(np.float32) / 255.0)
    if snap is not None:
        # the tutorial's generate_images, titled, for the trained model (the newest samples)
        for i, row in enumerate(snap.rows):
            titled_row(out.file(f"triptych-{i}.png"), row, snap.titles)
    writer.flush()
    gfile.write_json(out.file("frames.json"), frames)
    out.metadata.update(frames=len(frames))


def frames(artifact) -> list[str]:
    """The sample grids' paths, oldest step first: the frames of an animation."""
    return [artifact.path("grids", name) for name in gfile.read_json(artifact.path("frames.json"))]


def pictures(artifact) -> dict[str, str]:
    """The pictures a run's summary shows: the newest sample grid (pix2pix: a row of triptychs per
    fixed input), the history plot and, for a classifier, the confusion matrix."""
    out = {}
    grids = frames(artifact)
    if grids:
        out["samples"] = grids[-1]
    out["history"] = artifact.path("history.png")
    if gfile.exists(artifact.path("confusion.png")):
        out["confusion"] = artifact.path("confusion.png")
    return out


STAGE = Stage("render", SPEC, Params, run)
