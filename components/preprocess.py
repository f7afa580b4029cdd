"""preprocess (Transform): decode, resize, jitter, normalize with Beam; records the transform."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError
from components import beam_run, records
from components.contract import StageParams, key

OUTPUT = "TransformedExamples"
INPUTS = {"examples": "Examples", "statistics": "ExampleStatistics"}
NORMALIZE = {"unit": (1 / 255.0, 0.0), "symmetric": (1 / 127.5, -1.0), "raw": (1.0, 0.0)}


@dataclass(frozen=True)
class Params(StageParams):
    seed: int = key("seed")
    layout: str = key("data.layout")
    size: int = key("data.image_size")
    channels: int = key("data.channels")
    normalize: str = key("data.normalize")
    train_splits: tuple[str, ...] = key("data.train_splits")  # jittered; must exist
    eval_split: str = key("data.eval_split")                  # must exist
    jitter: bool = key("data.jitter")
    jitter_size: int | None = key("data.jitter_resize")
    jitter_copies: int = key("data.jitter_copies")
    val_holdout: int = key("data.val_holdout")
    val_max_share: float = key("data.val_max_share")
    max_image_pixels: int = key("data.max_image_pixels")

    def holdout(self, n_train: int) -> int:
        """How many of n_train examples become "val": val_holdout, capped at val_max_share of
        them (at least one, so a small run still has the val split its trainer expects)."""
        if not self.val_holdout:
            return 0
        return max(1, min(self.val_holdout, math.floor(n_train * self.val_max_share)))

    @property
    def jitter_splits(self) -> tuple[str, ...]:
        return tuple(self.train_splits) if self.jitter else ()

    @property
    def jitter_resize(self) -> int:
        """The tutorial's 286 for 256: image_size * 286 / 256 unless data.jitter_resize is set."""
        return self.jitter_size or round(self.size * 286 / 256)

    @property
    def copies(self) -> int:
        return self.jitter_copies if self.jitter else 1


def resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """tf.image.resize(..., NEAREST_NEIGHBOR) (half-pixel centres), in numpy."""
    ih, iw = img.shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * ih / h).astype(np.int64), ih - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * iw / w).astype(np.int64), iw - 1)
    return img[rows][:, cols]


def example_rng(seed: int, example_id: str, copy: int) -> np.random.Generator:
    """Stateless: the same (seed, id, copy) always draws the same jitter, on any worker."""
    key = hashlib.sha256(f"{seed}|{example_id}|{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


def jitter_pair(inp, tar, p: Params, rng: np.random.Generator):
    """The tutorial's random jitter: resize to 286, the same random 256 crop, the same mirror."""
    r, s = p.jitter_resize, p.size
    inp, tar = resize_nearest(inp, r, r), resize_nearest(tar, r, r)
    top, left = rng.integers(0, r - s + 1, size=2)
    inp, tar = inp[top:top + s, left:left + s], tar[top:top + s, left:left + s]
    if rng.random() < 0.5:
        inp, tar = inp[:, ::-1], tar[:, ::-1]
    return inp, tar


def _image(data: bytes, fmt: bytes, shape: list, ex_id: str, p: Params) -> np.ndarray:
    img = records.pixels(data, fmt, shape, ex_id, p.max_image_pixels)
    if img.shape[2] != p.channels:
        img = img.mean(axis=2, keepdims=True).astype(np.uint8) if p.channels == 1 else \
            np.repeat(img, 3, axis=2)
    if img.shape[:2] != (p.size, p.size):
        from PIL import Image

        mode = "L" if p.channels == 1 else "RGB"
        resized = Image.fromarray(img.squeeze(-1) if p.channels == 1 else img, mode).resize(
            (p.size, p.size), Image.BILINEAR)
        img = np.asarray(resized).reshape(p.size, p.size, p.channels)
    return img


class _TransformShard:
    """Beam DoFn body: one element = (split, shard, copy); writes that shard's output."""

    def __init__(self, p: Params, out_dir: str, holdout_from: int | None):
        self.p, self.out, self.holdout_from = p, out_dir, holdout_from

    @beam_run.user_errors
    def __call__(self, unit):
        split, path, shard, nshards, copy = unit
        p, outs = self.p, {}
        cols = records.read_examples(path)
        for ex_id, index, label, data, fmt, shape in zip(cols["id"], cols["index"], cols["label"],
                                                          cols["image"], cols["format"], cols["shape"]):
            ex_id = ex_id.decode()
            new = {"id": ex_id, "index": index}
            if label != records.NO_LABEL:
                new["label"] = label
            if p.layout == "paired":
                pair = records.decode_rgb(data, ex_id, p.max_image_pixels)
                half = pair.shape[1] // 2
                tar, inp = pair[:, :half], pair[:, half:]
                if split in p.jitter_splits:
                    inp, tar = jitter_pair(inp, tar, p, example_rng(p.seed, ex_id, copy))
                else:
                    inp, tar = resize_nearest(inp, p.size, p.size), resize_nearest(tar, p.size, p.size)
                new.update(image=np.ascontiguousarray(tar).tobytes(), input=np.ascontiguousarray(inp).tobytes())
            else:
                new["image"] = _image(data, fmt, shape, ex_id, p).tobytes()
            dest = "val" if self.holdout_from is not None and split == "train" and \
                index >= self.holdout_from else split
            outs.setdefault(dest, []).append(records.encode(new))
        for dest in ({split, "val"} if self.holdout_from is not None and split == "train" else {split}):
            d = gfile.join(self.out, dest, f"copy-{copy}")
            gfile.makedirs(d)
            records.write_shard(gfile.join(d, records.shard_name(shard, nshards)), outs.get(dest, []))
        yield split


def run(out, inputs, p: Params, rt) -> None:
    import apache_beam as beam

    examples = inputs["examples"]
    counts = dict(gfile.read_json(examples.path("splits.json"))["splits"])
    stats = gfile.read_json(inputs["statistics"].path("statistics.json"))
    holdout_from = None
    if p.val_holdout:
        if "val" in counts:
            raise UserError("data.val_holdout would replace the source's own val split", examples.uri,
                            "--set data.val_holdout=0")
        holdout = p.holdout(counts.get("train", 0))
        if holdout >= counts.get("train", 0):
            raise UserError(f"data.val_holdout={p.val_holdout} (data.val_max_share={p.val_max_share}) "
                            f"leaves no training examples (train has {counts.get('train', 0)})", "--set",
                            "use a smaller data.val_holdout or data.val_max_share")
        holdout_from = counts["train"] - holdout
        counts = {**counts, "train": holdout_from, "val": holdout}
    missing = [s for s in tuple(p.train_splits) + (p.eval_split,) if s not in counts]
    if missing:
        raise UserError(f"split(s) {missing} not in the data (it has {sorted(counts)})", examples.uri,
                        "--set data.train_splits=... / data.eval_split=... to splits that exist")
    copies = {s: (p.copies if s in p.jitter_splits else 1) for s in counts}
    units = []
    for split in gfile.read_json(examples.path("splits.json"))["splits"]:
        files = gfile.glob(examples.path(split, "data-*.tfrecord"))
        units += [(split, f, i, len(files), k) for i, f in enumerate(files) for k in range(copies[split])]

    def build(pl):
        return pl | "Shards" >> beam.Create(units) | "Transform" >> beam.FlatMap(_TransformShard(p, out.path, holdout_from))

    beam_run.run(rt, build)
    scale, offset = NORMALIZE[p.normalize]
    transform = {
        "layout": p.layout, "image_shape": [p.size, p.size, p.channels],
        "normalize": {"name": p.normalize, "scale": scale, "offset": offset},
        "resize": "nearest" if p.layout == "paired" else "bilinear",
        "jitter": {"splits": list(p.jitter_splits), "resize": p.jitter_resize, "crop": p.size,
                   "mirror": 0.5, "seed": p.seed} if p.jitter_splits else None,
        "copies": copies, "splits": counts,
        "labeled": any(v["labels"] for v in stats.values()),
        "num_classes": max((int(k) for v in stats.values() for k in v["labels"]), default=-1) + 1,
    }
    gfile.write_json(out.file("transform.json"), transform)
    out.metadata.update(splits=counts, copies=copies)
