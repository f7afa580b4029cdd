"""`tapeline compare` on two tiny real mnist-gan runs that differ in one key, and the HParams training writes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from artifacts import gfile
from artifacts.store import ArtifactStore
from tests.conftest import tapeline
from tests.helpers import TINY, copy_root, relocated

pytestmark = pytest.mark.slow  # two tiny mnist-gan flows

PIPELINE = "mnist-gan"
RATES = ("0.0004", "0.001")  # model.g_learning_rate: the seed's, and a second one


@pytest.fixture(scope="module")
def two_runs(tiny_flow, tmp_path_factory):
    """(root, [summary of each run]): the same tiny config but for model.g_learning_rate. The
    first is the shared TINY flow (the seed's rate, RATES[0]) in a copy of its root."""
    from flows.pipeline_flow import run_pipeline
    from flows.registry import get

    assert get(PIPELINE).config(TINY[PIPELINE]).model.g_learning_rate == float(RATES[0])
    flow = tiny_flow(PIPELINE)
    root = str(tmp_path_factory.mktemp("compare") / "root")
    copy_root(flow.root, root)
    runs = [relocated(flow.summary, flow.root, root)]
    runs += [run_pipeline(PIPELINE, TINY[PIPELINE] + [f"model.g_learning_rate={r}"], root) for r in RATES[1:]]
    return root, runs


def _row(table: list[dict], name: str) -> dict:
    found = [r for r in table if r[""] == name]
    assert len(found) == 1, [r[""] for r in table]
    return found[0]


def test_two_runs_side_by_side(two_runs, tmp_path):
    from components import compare
    from components.stages import evaluate, render

    root, runs = two_runs
    store = ArtifactStore(root)
    ids = [r["run_id"] for r in runs]
    got, table, png = compare.compare(store, PIPELINE, ids, out=str(tmp_path / "cmp.png"))
    assert [r.run_id for r in got] == ids and not any(r.problems for r in got)
    # the one key that differs, with each run's value; keys both share are not rows
    assert compare.differing(got) == ["model.g_learning_rate"]
    labels = [r.label for r in got]
    assert [_row(table, "model.g_learning_rate")[c] for c in labels] == ["0.0004", "0.001"]
    assert not [r for r in table if r[""] == "train.max_steps"]
    # each run's metrics as its own evaluate artifact holds them
    for run, label in zip(runs, labels):
        ev = store.load(run["stages"][f"{PIPELINE}/evaluate"]["uri"])
        fd = evaluate.metrics(ev)["frechet_distance_convnet"]
        assert _row(table, "metric frechet_distance_convnet")[label] == f"{fd:.4g}"
    # each run's newest sample grid, both drawn in the PNG
    grids = [render.pictures(store.load(r["stages"][f"{PIPELINE}/render"]["uri"]))["samples"] for r in runs]
    assert [r.picture for r in got] == grids and grids[0] != grids[1]
    with Image.open(png) as img:
        grid_w = Image.open(grids[0]).width
        assert img.format == "PNG" and img.width >= 2 * grid_w, (img.size, grid_w)
    text = compare.text(table)
    assert "model.g_learning_rate" in text and all(label in text for label in labels)


def test_the_comparison_in_prefect(two_runs, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from components import compare
    from flows.ui import key, publish

    root, runs = two_runs
    got, table, png = compare.compare(ArtifactStore(root), PIPELINE, [r["run_id"] for r in runs],
                                      out=str(tmp_path / "cmp.png"))
    publish(PIPELINE, table, png)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key(PIPELINE), f"{key(PIPELINE)}-png"])))
    latest = {a.key: a for a in sorted(found, key=lambda a: a.created)}
    rows = json.loads(latest[key(PIPELINE)].data)
    assert latest[key(PIPELINE)].type == "table"
    assert _row(rows, "model.g_learning_rate") == _row(table, "model.g_learning_rate")
    assert _row(rows, "metric frechet_distance_convnet") == _row(table, "metric frechet_distance_convnet")
    assert "![comparison](data:image/png;base64," in latest[f"{key(PIPELINE)}-png"].data


def test_no_run_named_is_the_champion_and_the_newest(two_runs):
    from components import compare

    root, runs = two_runs
    store = ArtifactStore(root)
    champion = store.champion(PIPELINE)["artifacts"]["promote"]
    held = [r["run_id"] for r in runs if store.resolve(r["stages"][f"{PIPELINE}/promote"]["uri"]) == champion]
    assert len(held) == 1
    chosen = [r["run_id"] for r in compare.select(store, PIPELINE, [], last=1)]
    assert chosen == sorted({held[0], runs[-1]["run_id"]})  # oldest first
    assert [r["run_id"] for r in compare.select(store, PIPELINE, [])] == [r["run_id"] for r in runs]
    marked = [r.run_id for r in (compare.load(store, PIPELINE, rec) for rec in compare.select(store, PIPELINE, []))
              if r.champion]
    assert marked == held


def test_an_artifact_that_does_not_verify_is_not_read(two_runs, tmp_path):
    from components import compare

    root, runs = two_runs
    copy = str(tmp_path / "root")
    shutil.copytree(root, copy)  # references in a root are relative: a copy is the same store
    store = ArtifactStore(copy)
    first = store.resolve(runs[0]["stages"][f"{PIPELINE}/evaluate"]["uri"].replace(root, copy))
    metrics = gfile.read_json(f"{first}/metrics.json")
    gfile.write_json(f"{first}/metrics.json", {**metrics, "frechet_distance_convnet": 0.0})  # a better-looking lie
    got, table, _ = compare.compare(store, PIPELINE, [r["run_id"] for r in runs], out=str(tmp_path / "c.png"))
    assert got[0].metrics == {} and got[0].problems == ["evaluate: metrics.json altered"]
    assert _row(table, "metric frechet_distance_convnet")[got[0].label] == compare.ABSENT
    assert _row(table, "not verified")[got[0].label] == "evaluate: metrics.json altered"
    assert got[1].metrics and not got[1].problems
    # still the one differing key: the first run's other stages verified
    assert compare.differing(got) == ["model.g_learning_rate"]


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("tapeline: error: "), proc.stderr
    return lines[0]


def test_the_command(two_runs, tmp_path):
    root, runs = two_runs
    out = tmp_path / "cmp.png"
    proc = tapeline("compare", PIPELINE, *(r["run_id"] for r in runs), "--root", root, "--out", str(out),
                    "--no-prefect")
    assert proc.returncode == 0, proc.stderr
    assert "model.g_learning_rate" in proc.stdout and f"picture: {out}" in proc.stdout
    assert all(r["run_id"] in proc.stdout for r in runs) and out.stat().st_size > 0
    # a run that does not exist, a run id that is a path, a run of another pipeline, no runs at all
    line = _one_error_line(tapeline("compare", PIPELINE, "20990101T000000-abcdef", "--root", root, "--no-prefect"))
    assert "no run 20990101T000000-abcdef" in line and runs[-1]["run_id"] in line
    assert "bad run id" in _one_error_line(tapeline("compare", PIPELINE, "../runs/x", "--root", root))
    line = _one_error_line(tapeline("compare", "mnist-classifier", runs[0]["run_id"], "--root", root))
    assert f"is a run of {PIPELINE}" in line
    assert "no runs of" in _one_error_line(tapeline("compare", PIPELINE, "--root", str(tmp_path / "empty")))
    assert not list((tmp_path / "empty").glob("_comparisons/*/*.png"))


def test_training_writes_hparams_readable_back(two_runs):
    """The HParams plugin's session start (the config keys) and final/* scalars (the last step's
    metrics) in the train artifact's event file, read back with TensorFlow's summary_iterator."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    from components.stages import train

    root, runs = two_runs
    store = ArtifactStore(root)
    for run, rate in zip(runs, RATES):
        art = store.load(run["stages"][f"{PIPELINE}/train"]["uri"])
        hparams, final = None, {}
        for path in gfile.glob(art.path("logs", "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for v in event.summary.value:
                    if v.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                        data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                        hparams = data.session_start_info
                    elif v.tag.startswith("final/"):
                        final[v.tag[len("final/"):]] = (event.step, float(tf.make_ndarray(v.tensor)))
        assert hparams is not None, art.uri
        assert hparams.hparams["model.g_learning_rate"].number_value == pytest.approx(float(rate))
        assert hparams.hparams["train.max_steps"].number_value == 6
        assert hparams.hparams["train.deterministic"].bool_value is True
        history, _ = train.history(art)
        assert set(final) == set(history) and final
        for k, (step, value) in final.items():
            assert step == 6 and value == pytest.approx(np.float32(history[k][-1]))


def test_fifty_runs_stay_readable(two_runs, tmp_path):
    """50 run records (the two real runs' records copied under new ids, alternating): the figure
    stacks bands of compare.PER_BAND runs, never wider than one band, every grid at the size it
    has with two runs; the terminal's table goes on in blocks that each fit its width."""
    from components import compare

    root, runs = two_runs
    copy = str(tmp_path / "root")
    shutil.copytree(root, copy)
    records = [json.load(open(f"{copy}/runs/{r['run_id']}.json")) for r in runs]
    ids = []
    for i in range(48):
        rec = dict(records[i % 2], run_id=f"20300101T0000{i:02d}-{i:06x}", created=f"2030-01-01T00:00:{i:02d}")
        ids.append(rec["run_id"])
        with open(f"{copy}/runs/{rec['run_id']}.json", "w") as f:
            json.dump(rec, f)
    ids = [r["run_id"] for r in runs] + ids
    store = ArtifactStore(copy)
    got, table, png = compare.compare(store, PIPELINE, ids, str(tmp_path / "fifty.png"))
    _, _, two = compare.compare(store, PIPELINE, ids[:2], str(tmp_path / "two.png"))
    assert len(got) == 50
    big, small = Image.open(png), Image.open(two)
    bands = -(-50 // compare.PER_BAND)
    one_band = Image.open(compare.compare(store, PIPELINE, ids[:compare.PER_BAND], str(tmp_path / "six.png"))[2])
    assert big.width <= one_band.width + 10, (big.size, one_band.size)
    assert big.height >= 0.9 * bands * (one_band.height - 60), (big.size, one_band.size)
    assert small.width < big.width  # two runs: two columns, not six
    text = compare.text(table, width=160)
    assert max(map(len, text.splitlines())) <= 160
    assert all(i in text for i in ids) and text.count("metric ") >= 2 * bands
