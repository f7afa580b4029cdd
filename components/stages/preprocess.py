"""preprocess (Transform): decode, resize, jitter, normalize with Beam; records the transform."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from artifacts import gfile
from artifacts.errors import UserError
from components import beam_run, tfrecords
from components.contract import Spec, Stage, StageParams, from_recipe, key
from components.stages import ingest, validate

SPEC = Spec(output="TransformedExamples", inputs={"examples": "ingest", "statistics": "validate"})
NORMALIZE = {"unit": (1 / 255.0, 0.0), "symmetric": (1 / 127.5, -1.0), "raw": (1.0, 0.0)}


@dataclass(frozen=True)
class Params(StageParams):
    seed: int = key("seed")
    layout: Any = from_recipe("layout")                       # decodes and jitters each example
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


class _TransformShard:
    """Beam DoFn body: one element = (split, shard, copy); streams that shard: reads, transforms
    and writes one example at a time (memory follows an example, not the shard)."""

    def __init__(self, p: Params, out_dir: str, holdout_from: int | None):
        self.p, self.out, self.holdout_from = p, out_dir, holdout_from

    @beam_run.user_errors
    def __call__(self, unit):
        split, path, shard, nshards, copy = unit
        held = self.holdout_from is not None and split == "train"
        with contextlib.ExitStack() as stack:
            writers = {}
            for dest in ({split, "val"} if held else {split}):  # every dest gets its shard, maybe empty
                d = gfile.join(self.out, dest, f"copy-{copy}")
                gfile.makedirs(d)
                writers[dest] = stack.enter_context(tfrecords.shard_writer(gfile.join(d, tfrecords.shard_name(shard, nshards))))
            for ex in tfrecords.iter_examples(path):
                dest = "val" if held and ex["index"] >= self.holdout_from else split
                writers[dest].write(self.transformed(ex, split, copy))
        yield split

    def transformed(self, ex: dict, split: str, copy: int) -> bytes:
        ex_id = ex["id"].decode()
        new = {"id": ex_id, "index": ex["index"]}
        if ex["label"] != tfrecords.NO_LABEL:
            new["label"] = ex["label"]
        for name, img in self.p.layout.transform(ex["image"], ex["format"], ex["shape"], ex_id, split, copy,
                                                 self.p).items():
            new[name] = img.tobytes()
        return tfrecords.encode(new)


def run(out, inputs, p: Params, rt) -> None:
    import apache_beam as beam

    examples = inputs["examples"]
    counts = dict(ingest.splits(examples))
    stats = validate.statistics(inputs["statistics"])
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
    for split in ingest.splits(examples):
        files = ingest.shards(examples, split)
        units += [(split, f, i, len(files), k) for i, f in enumerate(files) for k in range(copies[split])]

    def build(pl):
        return pl | "Shards" >> beam.Create(units) | "Transform" >> beam.FlatMap(_TransformShard(p, out.path, holdout_from))

    beam_run.run(rt, build)
    scale, offset = NORMALIZE[p.normalize]
    transform = {
        "layout": p.layout.name, "image_shape": [p.size, p.size, p.channels],
        "normalize": {"name": p.normalize, "scale": scale, "offset": offset},
        "resize": p.layout.resize,
        "jitter": {"splits": list(p.jitter_splits), "resize": p.jitter_resize, "crop": p.size,
                   "mirror": 0.5, "seed": p.seed} if p.jitter_splits else None,
        "copies": copies, "splits": counts,
        "labeled": any(v["labels"] for v in stats.values()),
        "num_classes": max((int(k) for v in stats.values() for k in v["labels"]), default=-1) + 1,
    }
    gfile.write_json(out.file("transform.json"), transform)
    out.metadata.update(splits=counts, copies=copies)


def transform(artifact) -> dict:
    """What preprocess did (layout, shape, normalization, jitter, splits, labels): the record
    every reader of its examples decodes by."""
    return tfrecords.load_transform(artifact)


STAGE = Stage("preprocess", SPEC, Params, run)
