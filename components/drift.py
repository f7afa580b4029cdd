"""Drift between spans: this run's statistics against those of the span the champion was trained on.

Not a stage and never cached: the champion is state outside every fingerprint (like promote's
judgement), so the comparison is made again on every run and recorded in the run's record. validate's
artifact (reused, and preprocess's input) holds only facts about its own span: a new champion must
not rebuild it, nor everything downstream of it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts.errors import UserError
from components.contract import StageParams, key
from components.stages import validate

# feature -> (how it is compared, its statistic); TFDV's comparators: L-infinity for a categorical
# feature, Jensen-Shannon (base 2, in [0, 1]) for a numeric histogram
FEATURES = {"labels": "L-infinity", "pixels": "Jensen-Shannon", "sizes": "Jensen-Shannon"}


@dataclass(frozen=True)
class Params(StageParams):
    thresholds: object = key("validate.drift_threshold")  # a section: one threshold per feature
    block: bool = key("validate.block_on_drift")


def _histograms(split: dict) -> dict[str, dict[str, int]]:
    """A split's statistics as {feature: {bin: count}} (what the champion's may lack: None)."""
    px = split.get("pixels", {}).get("histogram")
    return {"labels": split.get("labels"),
            "pixels": {str(i): c for i, c in enumerate(px)} if px is not None else None,
            "sizes": split.get("sizes")}


def _distributions(a: dict[str, int], b: dict[str, int]) -> tuple[np.ndarray, np.ndarray] | None:
    bins = sorted(a.keys() | b.keys())
    p = np.array([a.get(k, 0) for k in bins], np.float64)
    q = np.array([b.get(k, 0) for k in bins], np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return None
    return p / p.sum(), q / q.sum()


def l_infinity(a: dict[str, int], b: dict[str, int]) -> float | None:
    """The largest difference of one category's share (TFDV's infinity norm)."""
    pq = _distributions(a, b)
    return None if pq is None else float(np.max(np.abs(pq[0] - pq[1])))


def jensen_shannon(a: dict[str, int], b: dict[str, int]) -> float | None:
    """Jensen-Shannon divergence of two histograms over the same bins, base 2: 0 same, 1 disjoint."""
    pq = _distributions(a, b)
    if pq is None:
        return None
    p, q = pq
    m = (p + q) / 2

    def kl(x):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


_MEASURES = {"L-infinity": l_infinity, "Jensen-Shannon": jensen_shannon}


def compare(new: dict, old: dict, p: Params) -> dict[str, dict]:
    """feature -> {measure, distance, split, threshold, drifted}: per feature the largest
    distance over the splits both spans have (None where neither side can be compared)."""
    out = {}
    for feature, measure in FEATURES.items():
        worst = None
        for split in sorted(new.keys() & old.keys()):
            a, b = _histograms(new[split])[feature], _histograms(old[split])[feature]
            d = _MEASURES[measure](a, b) if a is not None and b is not None else None
            if d is not None and (worst is None or d > worst[0]):
                worst = (d, split)
        threshold = getattr(p.thresholds, feature)
        out[feature] = {"measure": measure, "distance": None if worst is None else round(worst[0], 6),
                        "split": None if worst is None else worst[1], "threshold": threshold,
                        "drifted": worst is not None and worst[0] > threshold}
    return out


def baseline(store, pipeline: str):
    """The validate artifact of the span the current champion was trained on, found through the
    champion model's lineage, once it verifies against its manifest (a shared root's files are
    trusted only then); None when there is no champion, or its lineage was collected or damaged."""
    champion = store.champion(pipeline)
    model = (champion or {}).get("artifacts", {}).get("model")
    if model is None:
        return None, champion
    for uri in sorted(store.lineage(model)):
        art = store.load(uri)
        if art is not None and art.type == validate.SPEC.output and art.manifest.get("pipeline") == pipeline:
            return (None if store.check(art) else art), champion
    return None, champion


def report(store, pipeline: str, statistics, p: Params) -> dict:
    """This run's drift report against the champion's span (statistics: this run's validate
    artifact): {"against", "features", "anomalies", "note"}."""
    base, champion = baseline(store, pipeline)
    if base is None:
        note = ("no champion yet: no drift comparison" if champion is None else
                f"the champion {champion.get('version')}'s statistics are gone or damaged: no drift comparison")
        return {"against": None, "features": {}, "anomalies": [], "note": note}
    features = compare(validate.statistics(statistics), validate.statistics(base), p)
    found = [{"severity": "warning", "kind": "drift", "feature": f, "split": r["split"],
              "message": f"{f} drifted: {r['measure']} {r['distance']:.4f} > {r['threshold']} "
                         f"(split {r['split']})"} for f, r in features.items() if r["drifted"]]
    same = base.uri == statistics.uri
    return {"against": {"champion": champion.get("version"), "statistics": base.uri},
            "features": features, "anomalies": found,
            "note": "the champion's own span" if same else f"against the span of champion {champion.get('version')}"}


def check(rep: dict, p: Params, where: str) -> None:
    """With validate.block_on_drift, the first drifted feature stops the run (before training)."""
    if p.block and rep["anomalies"]:
        a = rep["anomalies"][0]
        r = rep["features"][a["feature"]]
        raise UserError(f"data drifted from the champion's span: {a['feature']} {r['measure']} "
                        f"{r['distance']:.4f} > threshold {r['threshold']}", f"{where}, split {a['split']}",
                        f"check the new data, or raise validate.drift_threshold.{a['feature']}, "
                        "or --set validate.block_on_drift=false")


def lines(rep: dict) -> list[str]:
    """The report as text lines, for the CLI and the run summary."""
    if not rep.get("features"):
        return [f"drift: {rep.get('note', 'no comparison')}"]
    out = [f"drift: {rep.get('note', '')}"]
    for f, r in rep["features"].items():
        d = "n/a" if r["distance"] is None else f"{r['distance']:.4f}"
        out.append(f"drift: {f:6s} {r['measure']:14s} {d} (threshold {r['threshold']})"
                   + ("  DRIFTED" if r["drifted"] else ""))
    return out
