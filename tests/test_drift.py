"""Drift between spans: validate's histograms against the champion's span, reported per run."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from artifacts.errors import UserError
from artifacts.store import ArtifactStore
from components import drift
from components.stages import validate
from flows.registry import get
from tests.conftest import MNIST, tapeline
from tests.helpers import run_stages, write_idx

N_TRAIN, N_TEST = 240, 80


def _read(name: str, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress((MNIST / name).read_bytes()), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Small IDX sources: the base span, the same examples re-shuffled, inverted intensities and a
    label mix skewed to two digits (each with the base's test split, so only train differs)."""
    images = _read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read("train-labels-idx1-ubyte.gz", 8)
    test_x = _read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:N_TEST]
    test_y = _read("t10k-labels-idx1-ubyte.gz", 8)[:N_TEST]
    base = np.arange(N_TRAIN)
    order = np.random.default_rng(0).permutation(N_TRAIN)
    few = np.flatnonzero(np.isin(labels, (0, 1)))[:N_TRAIN]  # other images of digits 0 and 1
    cases = {"base": (images[base], labels[base]), "shuffled": (images[order], labels[order]),
             "inverted": (255 - images[base], labels[base]), "skewed": (images[few], labels[few])}
    out = {}
    for name, (x, y) in cases.items():
        d = tmp_path_factory.mktemp(name)
        write_idx(d, "train", np.ascontiguousarray(x), np.ascontiguousarray(y))
        write_idx(d, "t10k", test_x, test_y)
        out[name] = d
    return out


def _validate(root, source):
    done, store = run_stages(str(root), "mnist-classifier", [f"data.source=idx:{source}"], "validate")
    return done["mnist-classifier/validate"], store


@pytest.fixture(scope="module")
def champion_root(sources, tmp_path_factory):
    """A root whose champion was trained on the base span (its model's lineage reaches the base
    validate artifact; training itself is not what this tests)."""
    root = tmp_path_factory.mktemp("root")
    stats, store = _validate(root, sources["base"])
    store.set_champion("mnist-classifier", {"version": "v-base", "artifacts": {"model": stats.uri}})
    return root


def _params(*sets: str) -> drift.Params:
    return drift.Params.from_config(get("mnist-classifier").config(list(sets)))


def test_validate_records_pixel_and_size_histograms(sources, tmp_path):
    stats, _ = _validate(tmp_path, sources["base"])
    train = validate.statistics(stats)["train"]
    hist = np.asarray(train["pixels"]["histogram"])
    x = _read("train-images-idx3-ubyte.gz", 16)[:N_TRAIN * 784]
    assert (hist == np.bincount(x, minlength=256)).all()
    assert train["sizes"] == {"28x28": N_TRAIN}


def test_no_champion_no_comparison_and_it_says_so(sources, tmp_path):
    stats, store = _validate(tmp_path, sources["base"])
    rep = drift.report(store, "mnist-classifier", stats, _params())
    assert rep["features"] == {} and rep["against"] is None and "no champion" in rep["note"]
    assert drift.lines(rep) == ["drift: no champion yet: no drift comparison"]


@pytest.mark.parametrize("case,feature", [("inverted", "pixels"), ("skewed", "labels")])
def test_drift_is_reported_with_its_distances(sources, champion_root, case, feature):
    stats, store = _validate(champion_root, sources[case])
    rep = drift.report(store, "mnist-classifier", stats, _params())
    f = rep["features"]
    assert rep["against"]["champion"] == "v-base"
    assert f[feature]["drifted"] and f[feature]["split"] == "train" and f[feature]["distance"] > 0.3
    assert f["sizes"]["distance"] == 0 and not f["sizes"]["drifted"]
    assert [a["feature"] for a in rep["anomalies"]] == [feature]
    assert any(feature in line and "DRIFTED" in line for line in drift.lines(rep))
    drift.check(rep, _params(), stats.uri)  # a warning only, unless block_on_drift
    with pytest.raises(UserError, match=feature):
        drift.check(rep, _params("validate.block_on_drift=true"), stats.uri)
    # a threshold above the distance: no anomaly
    loose = drift.report(store, "mnist-classifier", stats, _params(f"validate.drift_threshold.{feature}=1"))
    assert loose["anomalies"] == []


def test_the_same_data_reshuffled_is_quiet(sources, champion_root):
    stats, store = _validate(champion_root, sources["shuffled"])
    rep = drift.report(store, "mnist-classifier", stats, _params("validate.block_on_drift=true"))
    assert {f: r["distance"] for f, r in rep["features"].items()} == {"labels": 0, "pixels": 0, "sizes": 0}
    assert rep["anomalies"] == []
    drift.check(rep, _params("validate.block_on_drift=true"), stats.uri)


def test_distances():
    assert drift.jensen_shannon({"0": 5, "1": 5}, {"0": 1, "1": 1}) == 0
    assert drift.jensen_shannon({"0": 1}, {"1": 1}) == pytest.approx(1.0)
    assert drift.l_infinity({"0": 3, "1": 1}, {"0": 1, "1": 1}) == pytest.approx(0.25)
    assert drift.l_infinity({}, {"0": 1}) is None


def test_block_on_drift_stops_the_run_before_training_with_one_line(sources, champion_root):
    before = set(ArtifactStore(str(champion_root)).stages("mnist-classifier"))
    proc = tapeline("run", "mnist-classifier", "--root", str(champion_root), "--set",
                    f"data.source=idx:{sources['inverted']}", "--set", "validate.block_on_drift=true")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tapeline: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "pixels" in lines[0] and "Jensen-Shannon" in lines[0], lines
    assert "validate.block_on_drift=false" in lines[0]
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    after = set(ArtifactStore(str(champion_root)).stages("mnist-classifier"))
    assert "preprocess" not in after - before and "train" not in after
    # the stopped run is recorded, after the fact: the stages it reached, its distances, why it stopped
    record = ArtifactStore(str(champion_root)).runs()[-1]
    assert record["outcome"].startswith("stopped: data drifted from the champion's span: pixels"), record["outcome"]
    assert set(record["stages"]) == {f"mnist-classifier/{s}" for s in ("ingest", "validate")}, record["stages"]
    pixels = record["drift"]["features"]["pixels"]
    assert pixels["drifted"] and pixels["distance"] > pixels["threshold"], pixels


def test_the_prefect_artifact_shows_the_distances(sources, champion_root):
    from flows.pipeline_flow import _markdown

    stats, store = _validate(champion_root, sources["skewed"])
    rep = drift.report(store, "mnist-classifier", stats, _params())
    text = _markdown("mnist-classifier", "r1", {"stages": {}, "drift": rep})
    row = next(line for line in text.splitlines() if line.startswith("| labels |"))
    assert "L-infinity" in row and f"{rep['features']['labels']['distance']:.4f}" in row and "**yes**" in row
    assert "no champion yet" in _markdown("p", "r", {"stages": {}, "drift": {"features": {}, "note": "no champion yet"}})


def test_a_tampered_baseline_is_not_compared_against(sources, tmp_path):
    """A shared root's statistics are trusted only once they verify: the champion's span with an
    altered statistics.json gives no comparison, and says so."""
    base, store = _validate(tmp_path, sources["base"])
    store.set_champion("mnist-classifier", {"version": "v-base", "artifacts": {"model": base.uri}})
    path = base.path("statistics.json")
    text = open(path).read()
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write(text.replace('"count": ', '"count": 1', 1))
    stats, _ = _validate(tmp_path / "new", sources["inverted"])
    rep = drift.report(store, "mnist-classifier", stats, _params("validate.block_on_drift=true"))
    assert rep["against"] is None and rep["features"] == {} and "damaged" in rep["note"], rep
