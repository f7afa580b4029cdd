"""validate (StatisticsGen + ExampleValidator): per-split statistics with Beam, and anomalies."""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError
from components import beam_run, tfrecords
from components.contract import Spec, Stage, StageParams, from_recipe, key
from components.stages import ingest

SPEC = Spec(output="ExampleStatistics", inputs={"examples": "ingest"})
# One row per example for the cross-split duplicate check: the first 16 bytes of the sha256 of its
# decoded pixels and its index in the split, 24 bytes an example, written by each shard to its own
# .npy file in the work directory: kept out of Beam, whose hex-string rows cost ten times the memory
# (docs/scaling-out.md).
HASHES = np.dtype([("h", "V16"), ("i", "<i8")])
COLLAPSED = 2  # distinct pixel values at most, over a split, that validate warns of


@dataclass(frozen=True)
class Params(StageParams):
    layout: Any = from_recipe("layout")               # what a valid example's shape is
    duplicates: str = key("validate.duplicates")      # error | warn
    require_labels: bool = from_recipe("needs_labels")
    max_image_pixels: int = key("data.max_image_pixels")


def _pixels(data: bytes, fmt: bytes, shape: list, max_pixels: int) -> np.ndarray | None:
    """Decoded pixels of one example, or None when they cannot be decoded."""
    try:
        return tfrecords.pixels(data, fmt, shape, "", max_pixels)
    except UserError:
        return None


def _empty() -> dict:
    return {"count": 0, "shapes": Counter(), "formats": Counter(), "labels": Counter(), "unlabeled": 0,
            "px_n": 0, "px_sum": 0.0, "px_sumsq": 0.0, "px_min": 255, "px_max": 0,
            "px_hist": np.zeros(256, np.int64), "undecodable": []}


def shard_stats(item):
    """Partial statistics of one shard file: (split, partial); its examples' content hashes go to
    hash_path. The shard streams: only counts, sums, content hashes and the current decoded example
    are held. The sums are of whole numbers, exact in any order: any sharding gives the same totals."""
    split, path, max_pixels, hash_path = item
    s = _empty()
    digests, indices = bytearray(), []
    for ex in tfrecords.iter_examples(path):
        ex_id = ex["id"].decode()
        s["count"] += 1
        s["formats"][ex["format"].decode()] += 1
        if ex["label"] == tfrecords.NO_LABEL:
            s["unlabeled"] += 1
        else:
            s["labels"][ex["label"]] += 1
        px = _pixels(ex["image"], ex["format"], ex["shape"], max_pixels)
        if px is None:
            s["undecodable"].append(ex_id)
            continue
        px = px if px.ndim == 3 else px[..., None]
        digests += hashlib.sha256(px.tobytes()).digest()[:16]
        indices.append(ex["index"])
        s["shapes"][str(list(px.shape))] += 1
        s["px_n"] += px.size
        s["px_sum"] += int(px.sum(dtype=np.uint64))
        s["px_sumsq"] += int(np.square(px, dtype=np.uint32).sum(dtype=np.uint64))
        s["px_min"] = min(s["px_min"], int(px.min()))
        s["px_max"] = max(s["px_max"], int(px.max()))
        s["px_hist"] += np.bincount(px.ravel(), minlength=256)[:256]
    s["px_sum"], s["px_sumsq"] = float(s["px_sum"]), float(s["px_sumsq"])  # as before: JSON floats
    hashes = np.empty(len(indices), HASHES)
    hashes["h"], hashes["i"] = np.frombuffer(bytes(digests), "V16"), indices
    buf = io.BytesIO()
    np.save(buf, hashes, allow_pickle=False)  # a plain array file, never a pickle: the root is shared
    gfile.write_atomic(hash_path, buf.getvalue())
    return split, s


def merge_stats(parts):
    out = None
    for p in parts:
        if out is None:
            out = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in p.items()}
            continue
        for k in ("count", "unlabeled", "px_n", "px_sum", "px_sumsq", "px_hist"):
            out[k] += p[k]
        for k in ("shapes", "formats", "labels"):
            out[k].update(p[k])
        out["undecodable"] += p["undecodable"]
        out["px_min"], out["px_max"] = min(out["px_min"], p["px_min"]), max(out["px_max"], p["px_max"])
    return out


def to_json(s: dict) -> dict:
    """Merged statistics as plain JSON: the work directory lies in a shared root, so what is read
    back from it must be data that cannot run code (never a pickle)."""
    return {**s, "shapes": dict(s["shapes"]), "formats": dict(s["formats"]),
            "labels": {str(k): v for k, v in s["labels"].items()}, "px_hist": [int(c) for c in s["px_hist"]]}


def from_json(s: dict) -> dict:
    return {**s, "shapes": Counter(s["shapes"]), "formats": Counter(s["formats"]),
            "labels": Counter({int(k): v for k, v in s["labels"].items()}),
            "px_hist": np.asarray(s["px_hist"], np.int64)}


class _Save:
    def __init__(self, work: str):
        self.work = work

    def __call__(self, kv):
        split, s = kv
        gfile.write_json(gfile.join(self.work, f"{split}.json"), to_json(s))


def _load(work: str, split: str) -> dict:
    """A split's statistics as Beam wrote them; a split with no shards has none: empty."""
    path = gfile.join(work, f"{split}.json")
    if not gfile.exists(path):
        return _empty()
    try:
        return from_json(gfile.read_json(path))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON that is not our statistics
        raise UserError(f"statistics written by this run do not load ({type(e).__name__}); something else "
                        "writes into the work directory", path, "run again; check who can write the root") from None


def summarize(s: dict) -> dict:
    n = s["px_n"]
    mean = s["px_sum"] / n if n else 0.0
    std = float(np.sqrt(max(s["px_sumsq"] / n - mean * mean, 0.0))) if n else 0.0
    return {"count": s["count"], "shapes": dict(s["shapes"]), "formats": dict(s["formats"]),
            "pixels": {"min": s["px_min"] if n else None, "max": s["px_max"] if n else None,
                       "mean": mean, "std": std, "histogram": [int(c) for c in s["px_hist"]]},
            "sizes": _sizes(s["shapes"]),
            "labels": {str(k): v for k, v in sorted(s["labels"].items())}, "unlabeled": s["unlabeled"]}


def _sizes(shapes: Counter) -> dict[str, int]:
    """The image-size histogram, HxW -> count (channels left out: a size, not a layout)."""
    out: Counter = Counter()
    for shape, n in shapes.items():
        h, w = shape.strip("[]").split(",")[:2]
        out[f"{int(h)}x{int(w)}"] += n
    return dict(sorted(out.items()))


def _hashes(path: str) -> np.ndarray:
    """One shard's content hashes, as shard_stats wrote them."""
    try:
        h = np.load(io.BytesIO(gfile.read_bytes(path)), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"content hashes written by this run do not load: {e}", path,
                        "run again; check who can write the root") from None
    if h.dtype != HASHES:
        raise UserError(f"content hashes written by this run are {h.dtype}", path,
                        "run again; check who can write the root")
    return h


def duplicates(files_a: list[str], files_b: list[str]) -> tuple[int, int, int]:
    """Images (content hashes) in both splits, from their shards' hash files: (how many distinct,
    the index in a and in b of the first by hash; -1, -1 when none). Holds the hashes of b (give the
    smaller split as b: 24 bytes an example) and one shard of a at a time, never all of a."""
    hb = np.concatenate([_hashes(f) for f in files_b]) if files_b else np.zeros(0, HASHES)
    found = [h[np.isin(h["h"], hb["h"])] for h in map(_hashes, files_a)]
    ha = np.concatenate(found) if found else np.zeros(0, HASHES)
    common = np.unique(ha["h"])
    if not common.size:
        return 0, -1, -1
    return (common.size, int(ha["i"][ha["h"] == common[0]].min()), int(hb["i"][hb["h"] == common[0]].min()))


def anomalies(stats: dict[str, dict], p: Params, hash_files: dict[str, list[str]],
              id_of=lambda split, index: f"{split} example {index}") -> list[dict]:
    """What is wrong with the data; hash_files: each split's shards' content hashes; id_of(split,
    index) names an example (only a duplicate asks)."""
    out = []

    def add(severity, kind, split, message):
        out.append({"severity": severity, "kind": kind, "split": split, "message": message})

    for split, s in stats.items():
        if s["count"] == 0:
            add("error", "empty_split", split, f"split {split!r} has no examples")
        if s["undecodable"]:
            add("error", "undecodable", split, f"{len(s['undecodable'])} undecodable images, first "
                f"{s['undecodable'][0]}")
        if p.require_labels and s["unlabeled"]:
            add("error", "missing_label", split, f"{s['unlabeled']} examples without a label")
        values = int(np.count_nonzero(s["px_hist"]))
        if s["count"] and values <= COLLAPSED and int(np.sum(s["px_hist"])) >= 1000:
            add("warning", "collapsed_pixels", split, f"the pixels of split {split!r} take only {values} "
                f"value(s) of 256: a conversion may have clipped them")
    for split, message in p.layout.shape_anomalies({split: s["shapes"] for split, s in stats.items()}):
        add("error", "shape_mismatch", split, message)
    splits = sorted(stats)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            small, large = sorted((a, b), key=lambda x: stats[x]["count"])
            n, il, is_ = duplicates(hash_files[large], hash_files[small])
            if n:
                ia, ib = (il, is_) if large == a else (is_, il)
                add(p.duplicates, "duplicate_across_splits", f"{a},{b}",
                    f"{n} images in both {a} and {b}, e.g. {id_of(a, ia)} = {id_of(b, ib)}")
    return out


def run(out, inputs, p: Params, rt) -> None:
    import apache_beam as beam

    examples = inputs["examples"]
    splits = ingest.splits(examples)
    shards = {s: ingest.shards(examples, s) for s in splits}
    hash_files = {s: [gfile.join(out.work_dir, "hashes", s, f.rsplit("/", 1)[-1] + ".npy") for f in shards[s]]
                  for s in splits}
    items = [(s, f, p.max_image_pixels, h) for s in splits for f, h in zip(shards[s], hash_files[s])]
    gfile.rmtree(out.work_dir)  # only this run's Beam output is read back, nothing left before it
    for s in splits:
        gfile.makedirs(gfile.join(out.work_dir, "hashes", s))

    def build(pl):
        return (pl | "Shards" >> beam.Create(items)
                | "ShardStats" >> beam.Map(shard_stats)
                | "MergePerSplit" >> beam.CombinePerKey(merge_stats)
                | "Save" >> beam.Map(_Save(out.work_dir)))

    beam_run.run(rt, build)
    raw = {s: _load(out.work_dir, s) for s in splits}
    stats = {s: summarize(v) for s, v in raw.items()}
    found = anomalies(raw, p, hash_files, lambda split, index: _example_id(examples, split, index))
    errors = [a for a in found if a["severity"] == "error"]
    if errors:
        e = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"validation failed: {e['message']}{more}", f"{examples.uri}, split {e['split']}",
                        "fix the data, or --set validate.duplicates=warn for duplicates")
    gfile.write_json(out.file("statistics.json"), stats)
    gfile.write_json(out.file("anomalies.json"), found)
    out.metadata.update(counts={s: v["count"] for s, v in stats.items()},
                        warnings=len(found))


def _example_id(examples, split: str, index: int) -> str:
    """The id ingest gave the example at index of a split (read back: only a duplicate asks)."""
    for path in ingest.shards(examples, split):
        for ex in tfrecords.iter_examples(path):
            if ex["index"] == index:
                return ex["id"].decode()
    return f"{split} example {index}"


def statistics(artifact) -> dict:
    """Per split: count, shapes, formats, pixel summary and histogram, image-size histogram and
    label counts (summarize's output; an artifact built before the histograms lacks them)."""
    return gfile.read_json(artifact.path("statistics.json"))


STAGE = Stage("validate", SPEC, Params, run)
