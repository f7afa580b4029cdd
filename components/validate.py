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
from components import beam_run, ingest, records
from components.contract import Spec, StageParams, from_recipe, key

SPEC = Spec(output="ExampleStatistics", inputs={"examples": "ingest"})
# One row per example for the cross-split duplicate check: the first 16 bytes of the sha256 of its
# decoded pixels and its index in the split. 24 bytes an example (a dict of hex digest -> id string
# took about 250: 146 MiB for 600k examples, and more again as the JSON it was saved in).
HASHES = np.dtype([("h", "V16"), ("i", "<i8")])


@dataclass(frozen=True)
class Params(StageParams):
    layout: Any = from_recipe("layout")               # what a valid example's shape is
    duplicates: str = key("validate.duplicates")      # error | warn
    require_labels: bool = from_recipe("needs_labels")
    max_image_pixels: int = key("data.max_image_pixels")


def _pixels(data: bytes, fmt: bytes, shape: list, max_pixels: int) -> np.ndarray | None:
    """Decoded pixels of one example, or None when they cannot be decoded."""
    try:
        return records.pixels(data, fmt, shape, "", max_pixels)
    except UserError:
        return None


def _empty() -> dict:
    return {"count": 0, "shapes": Counter(), "formats": Counter(), "labels": Counter(), "unlabeled": 0,
            "px_n": 0, "px_sum": 0.0, "px_sumsq": 0.0, "px_min": 255, "px_max": 0,
            "px_hist": np.zeros(256, np.int64), "hashes": np.zeros(0, HASHES), "undecodable": []}


def shard_stats(item):
    """Partial statistics of one shard file: (split, partial). The shard streams: only counts,
    sums, content hashes and the current decoded example are held. The sums are of whole numbers,
    exact in any order: any sharding gives the same totals."""
    split, path, max_pixels = item
    s = _empty()
    digests, indices = bytearray(), []
    for ex in records.iter_examples(path):
        ex_id = ex["id"].decode()
        s["count"] += 1
        s["formats"][ex["format"].decode()] += 1
        if ex["label"] == records.NO_LABEL:
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
    s["hashes"] = np.empty(len(indices), HASHES)
    s["hashes"]["h"] = np.frombuffer(bytes(digests), "V16")
    s["hashes"]["i"] = indices
    return split, s


def merge_stats(parts):
    out, hashes = None, []
    for p in parts:
        hashes.append(p["hashes"])
        if out is None:
            out = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in p.items()}
            continue
        for k in ("count", "unlabeled", "px_n", "px_sum", "px_sumsq", "px_hist"):
            out[k] += p[k]
        for k in ("shapes", "formats", "labels"):
            out[k].update(p[k])
        out["undecodable"] += p["undecodable"]
        out["px_min"], out["px_max"] = min(out["px_min"], p["px_min"]), max(out["px_max"], p["px_max"])
    if out is not None:
        out["hashes"] = np.concatenate(hashes)  # once: concatenating per part would copy O(parts^2)
    return out


def to_json(s: dict) -> dict:
    """Merged statistics but the hashes as plain JSON: the work directory lies in a shared root, so
    what is read back from it must be data that cannot run code (never a pickle)."""
    return {**{k: v for k, v in s.items() if k != "hashes"}, "shapes": dict(s["shapes"]),
            "formats": dict(s["formats"]), "labels": {str(k): v for k, v in s["labels"].items()},
            "px_hist": [int(c) for c in s["px_hist"]]}


def from_json(s: dict) -> dict:
    return {**s, "shapes": Counter(s["shapes"]), "formats": Counter(s["formats"]),
            "labels": Counter({int(k): v for k, v in s["labels"].items()}),
            "px_hist": np.asarray(s["px_hist"], np.int64)}


class _Save:
    def __init__(self, work: str):
        self.work = work

    def __call__(self, kv):
        split, s = kv
        buf = io.BytesIO()
        np.save(buf, s["hashes"], allow_pickle=False)  # a plain array file: 24 bytes an example
        gfile.write_atomic(gfile.join(self.work, f"{split}-hashes.npy"), buf.getvalue())
        gfile.write_json(gfile.join(self.work, f"{split}.json"), to_json(s))


def _load(work: str, split: str) -> dict:
    """A split's statistics as Beam wrote them; a split with no shards has none: empty."""
    path = gfile.join(work, f"{split}.json")
    if not gfile.exists(path):
        return _empty()
    try:
        s = from_json(gfile.read_json(path))
        s["hashes"] = np.load(io.BytesIO(gfile.read_bytes(gfile.join(work, f"{split}-hashes.npy"))),
                              allow_pickle=False)
        if s["hashes"].dtype != HASHES:
            raise TypeError(f"hashes of dtype {s['hashes'].dtype}")
        return s
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # not our statistics
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


def anomalies(stats: dict[str, dict], p: Params, id_of=lambda split, index: f"{split} example {index}") -> list[dict]:
    """What is wrong with the data; id_of(split, index) names an example (only for a duplicate)."""
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
    for split, message in p.layout.shape_anomalies({split: s["shapes"] for split, s in stats.items()}):
        add("error", "shape_mismatch", split, message)
    splits = sorted(stats)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            ha, hb = stats[a]["hashes"], stats[b]["hashes"]
            common = np.intersect1d(ha["h"], hb["h"])  # distinct images in both, sorted
            if common.size:
                ia, ib = (int(x["i"][x["h"] == common[0]].min()) for x in (ha, hb))
                add(p.duplicates, "duplicate_across_splits", f"{a},{b}",
                    f"{common.size} images in both {a} and {b}, e.g. {id_of(a, ia)} = {id_of(b, ib)}")
    return out


def run(out, inputs, p: Params, rt) -> None:
    import apache_beam as beam

    examples = inputs["examples"]
    splits = ingest.splits(examples)
    items = [(s, f, p.max_image_pixels) for s in splits for f in ingest.shards(examples, s)]
    gfile.rmtree(out.work_dir)  # only this run's Beam output is read back, nothing left before it
    gfile.makedirs(out.work_dir)

    def build(pl):
        return (pl | "Shards" >> beam.Create(items)
                | "ShardStats" >> beam.Map(shard_stats)
                | "MergePerSplit" >> beam.CombinePerKey(merge_stats)
                | "Save" >> beam.Map(_Save(out.work_dir)))

    beam_run.run(rt, build)
    raw = {s: _load(out.work_dir, s) for s in splits}
    stats = {s: summarize(v) for s, v in raw.items()}
    found = anomalies(raw, p, lambda split, index: _example_id(examples, split, index))
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
        for ex in records.iter_examples(path):
            if ex["index"] == index:
                return ex["id"].decode()
    return f"{split} example {index}"


def statistics(artifact) -> dict:
    """Per split: count, shapes, formats, pixel summary and histogram, image-size histogram and
    label counts (summarize's output; an artifact built before the histograms lacks them)."""
    return gfile.read_json(artifact.path("statistics.json"))
