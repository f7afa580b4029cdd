"""Data layouts: what one example is, from the source to the trainer and the pictures.

A recipe names its layout (Recipe.layout). The generic stages ask it everything that depends on
the shape of an example, and nothing else does: which source kinds hold such examples (ingest),
what a valid example looks like (ingest, validate), how one is decoded and jittered into the
features the trainer reads (preprocess), the training stream (train), the fixed inputs of the
snapshots and how a snapshot is drawn (train, render). Two are built in: IMAGE (one image, maybe
labeled: the MNIST recipes and the DCGAN) and PAIRED (the facades layout of pix2pix). A recipe with
other examples subclasses Layout in its own module.

A layout's fields are in the fingerprint of every stage that reads it; its methods are code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from artifacts.errors import UserError
from components import sources, tfrecords


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


@dataclass(frozen=True)
class Snapshot:
    """How render draws one snapshot: rows of images under column titles (None: a plain grid
    of the samples, the GANs' fixed-seed grid)."""
    rows: list[list[np.ndarray]]
    titles: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """One image per example, maybe labeled (tfds:, idx: sources): resized bilinearly to the model
    size, converted to the model's channels, never jittered; the trainer reads `image` (and
    `label`) and snapshots are the recipe's fixed-seed samples in a grid."""
    name: str = "image"
    features: tuple[str, ...] = ("image",)   # the byte features preprocess writes, parse_fn reads
    resize: str = "bilinear"                 # recorded in transform.json

    def source_kinds(self) -> dict[str, sources.SourceKind]:
        """The source kinds such examples come from, by URI scheme."""
        return dict(sources.KINDS)

    def check_source(self, resolved: sources.Resolved, pipeline: str) -> None:
        """Refuse a source whose examples are not of this layout (ingest, before reading it)."""

    def check_encoded(self, where: str, data: bytes, max_pixels: int) -> tuple[int, ...] | None:
        """Check one encoded example at ingest; its (h, w, c) to record, or None."""
        return None

    def shape_anomalies(self, shapes: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
        """(split, message) of every shape error, from each split's recorded shapes."""
        out = [(split, f"several shapes in one split: {dict(s)}") for split, s in shapes.items() if len(s) > 1]
        every = {k for s in shapes.values() for k in s}
        if len(every) > 1:
            out.append(("*", f"splits differ in shape: {sorted(every)}"))
        return out

    def transform(self, data: bytes, fmt: bytes, shape: list, ex_id: str, split: str, copy: int,
                  p: Any) -> dict[str, np.ndarray]:
        """One ingested example -> its features as uint8 arrays of the model's shape. p:
        preprocess's Params (.size, .channels, .seed, .jitter_splits, .max_image_pixels, ...)."""
        return {"image": model_image(data, fmt, shape, ex_id, p.size, p.channels, p.max_image_pixels)}

    def stream(self, copies: Sequence[Sequence[str]], batch_size: int, shuffle_buffer: int, seed: int,
               parse: Callable, to_batch: Callable):
        """The checkpointable training stream (components.epochs.EpochStream)."""
        from components.epochs import EpochStream

        return EpochStream(copies, batch_size, shuffle_buffer, seed, parse, to_batch)

    def fixed_inputs(self, examples: list[dict]) -> np.ndarray | None:
        """What the recipe's snapshot function translates, from the first eval-split examples
        (None: the recipe samples from fixed noise)."""
        return None

    def snapshot(self, examples: list[dict], sample: np.ndarray, k: int) -> Snapshot | None:
        """How render draws one snapshot (all uint8); None: a grid of the samples."""
        return None


def model_image(data: bytes, fmt: bytes, shape: list, where: str, size: int, channels: int,
                max_pixels: int) -> np.ndarray:
    """Raw or encoded pixels as a size x size x channels uint8 image (bilinear resize)."""
    img = tfrecords.pixels(data, fmt, shape, where, max_pixels)
    if img.shape[2] != channels:
        img = img.mean(axis=2, keepdims=True).astype(np.uint8) if channels == 1 else np.repeat(img, 3, axis=2)
    if img.shape[:2] != (size, size):
        from PIL import Image

        mode = "L" if channels == 1 else "RGB"
        resized = Image.fromarray(img.squeeze(-1) if channels == 1 else img, mode).resize(
            (size, size), Image.BILINEAR)
        img = np.asarray(resized).reshape(size, size, channels)
    return img


IMAGE = Layout()


# -- the facades layout (pix2pix) ---------------------------------------------------------------
def check_pair(path: str, data: bytes, max_pixels: int) -> tuple[int, int]:
    """Decode one side-by-side pair fully (after its header passed the pixel limit); (height,
    width) or a UserError naming the file."""
    with tfrecords.open_image(data, path, max_pixels) as im:
        try:
            im.load()
        except Exception as e:
            raise UserError(f"undecodable image: {tfrecords.image_error(e)}", path,
                            "replace or remove the file") from None
        w, h = im.size
    # Facades layout: two halves side by side. Halves are resized to the model size later, so a
    # half may be shorter than it is wide (some real pairs are), never taller.
    if w % 2 or h > w // 2 or h < w // 8:
        raise UserError(f"pair is {w}x{h}: width must be twice the height (target left, input right)",
                        path, "give side-by-side pairs in the facades layout")
    return h, w


def jitter_pair(inp, tar, p, rng: np.random.Generator):
    """The tutorial's random jitter: resize to 286, the same random 256 crop, the same mirror."""
    r, s = p.jitter_resize, p.size
    inp, tar = resize_nearest(inp, r, r), resize_nearest(tar, r, r)
    top, left = rng.integers(0, r - s + 1, size=2)
    inp, tar = inp[top:top + s, left:left + s], tar[top:top + s, left:left + s]
    if rng.random() < 0.5:
        inp, tar = inp[:, ::-1], tar[:, ::-1]
    return inp, tar


PAIRS = sources.ImageFolder("paired", "paired data folder",
                            "download the facades archive or give --set data.source=paired:DIR")


@dataclass(frozen=True)
class Paired(Layout):
    """The facades layout: one JPEG per example, the target (`image`) on the left half and the
    input (`input`) on the right; both halves jittered alike (resize, one crop, one mirror) and
    resized nearest-neighbour, as the pix2pix tutorial does. Snapshots translate the first
    eval-split inputs and are drawn as input | ground truth | prediction rows."""
    name: str = "paired"
    features: tuple[str, ...] = ("image", "input")
    resize: str = "nearest"

    def source_kinds(self) -> dict[str, sources.SourceKind]:
        return {**sources.KINDS, PAIRS.scheme: PAIRS}

    def check_source(self, resolved: sources.Resolved, pipeline: str) -> None:
        if resolved.kind is not PAIRS:
            raise UserError(f"{pipeline} needs side-by-side pairs, got {resolved.kind.scheme}: data", "data.source",
                            f"give --set data.source={PAIRS.scheme}:DIR")

    def check_encoded(self, where: str, data: bytes, max_pixels: int) -> tuple[int, ...]:
        h, w = check_pair(where, data, max_pixels)
        return (h, w, 3)

    def shape_anomalies(self, shapes: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
        return [(split, f"pairs must be RGB: {dict(s)}") for split, s in shapes.items()
                if any(not k.endswith(", 3]") for k in s)]

    def transform(self, data, fmt, shape, ex_id, split, copy, p) -> dict[str, np.ndarray]:
        pair = tfrecords.decode_rgb(data, ex_id, p.max_image_pixels)
        half = pair.shape[1] // 2
        tar, inp = pair[:, :half], pair[:, half:]
        if split in p.jitter_splits:
            inp, tar = jitter_pair(inp, tar, p, example_rng(p.seed, ex_id, copy))
        else:
            inp, tar = resize_nearest(inp, p.size, p.size), resize_nearest(tar, p.size, p.size)
        return {"image": np.ascontiguousarray(tar), "input": np.ascontiguousarray(inp)}

    def fixed_inputs(self, examples: list[dict]) -> np.ndarray:
        return np.stack([ex["input"] for ex in examples])

    def snapshot(self, examples: list[dict], sample: np.ndarray, k: int) -> Snapshot:
        rows = [[examples[i]["input"], examples[i]["image"], sample[i]] for i in range(min(k, len(sample)))]
        return Snapshot(rows, ("Input Image", "Ground Truth", "Predicted Image"))


PAIRED = Paired()
