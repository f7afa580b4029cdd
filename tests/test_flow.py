"""Whole flows through Prefect's test harness: every artifact, then a second run that reuses all but promote."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from artifacts import gfile
from artifacts.store import ArtifactStore
from tests.conftest import MNIST, tapeline
from flows.registry import get
from tests.helpers import TINY, TINY_IMAGE_SIZE, copy_root, relocated


def assert_reused_and_judged_again(first: dict, second: dict, pipeline: str) -> None:
    """A second run with nothing changed reuses every artifact; promote alone runs again (its
    decision is about the champion of that moment) and finds the model already champion."""
    promote = f"{pipeline}/promote"
    uris = lambda run: {k: v["uri"] for k, v in run["stages"].items() if k != promote}  # noqa: E731
    assert all(s["reused"] for k, s in second["stages"].items() if k != promote)
    assert uris(second) == uris(first) and not second["stages"][promote]["reused"]
    assert second["stages"][promote]["uri"] != first["stages"][promote]["uri"]
    assert second["blessed"] and second["why"] == "already the champion"
    assert second["champion"] == first["champion"]


def run_again_in_a_copy(flow, tmp_path, pipeline) -> None:
    """The second run, in a copy of the shared root: it commits a promote and a run record."""
    from flows.pipeline_flow import run_pipeline

    copy = str(tmp_path / "root")
    copy_root(flow.root, copy)
    assert_reused_and_judged_again(relocated(flow.summary, flow.root, copy),
                                   run_pipeline(pipeline, TINY[pipeline], copy), pipeline)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", sorted(TINY))
def test_flow_end_to_end_then_everything_reused(tiny_flow, tmp_path, pipeline):
    flow = tiny_flow(pipeline)  # on a fresh root, once per pytest run: other tests read it too
    root, first = flow.root, flow.summary
    stages = first["stages"]
    assert not any(s["reused"] for s in stages.values())
    assert first["blessed"] is True and first["champion"]
    ui = flow.ui  # what the Prefect UI shows for the run (read right after it)
    assert ui[f"{pipeline}-training"].data == 100.0 and "step" in ui[f"{pipeline}-training"].description
    assert "**blessed:** True" in ui[f"{pipeline}-run"].data and f"{pipeline}/train" in ui[f"{pipeline}-run"].data
    # the pictures travel inside the artifact, so a browser on the UI shows them (tests/test_stack.py looks)
    if f"{pipeline}/render" in stages:
        assert "![history](data:image/png;base64," in ui[f"{pipeline}-run"].data
    if f"{pipeline}/animate" in first["stages"]:
        assert "![gif](data:image/gif;base64," in ui[f"{pipeline}-run"].data
    assert len(ui[f"{pipeline}-run"].data) < 600_000
    model = stages[f"{pipeline}/train"]["uri"]
    assert gfile.exists(f"{model}/history.npz") and gfile.glob(f"{model}/logs/events.*")
    champion = ArtifactStore(root).champion(pipeline)  # champion.json's paths are relative to the root
    assert champion["version"] == first["champion"] and champion["metrics"] == first["metrics"]
    if f"{pipeline}/render" not in stages:  # a recipe that draws nothing
        run_again_in_a_copy(flow, tmp_path, pipeline)
        return
    render = stages[f"{pipeline}/render"]["uri"]
    recipe = get(pipeline).recipe
    if pipeline == "mnist-classifier":
        with Image.open(f"{render}/confusion.png") as im:
            im.verify()
        assert gfile.glob(champion["exported"] + "/classifier.keras")
        run_again_in_a_copy(flow, tmp_path, pipeline)
        return
    pngs = gfile.glob(f"{render}/grids/*.png") + [f"{render}/history.png"]
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
    grids = json.load(open(f"{render}/frames.json"))
    from components.stages.render import GAP

    assert len(gfile.glob(f"{render}/grids/*.png")) == len(grids)
    with Image.open(f"{render}/grids/{grids[0]}") as im:
        # readable like the seed's 4x4-inch figure: every image enlarged to about 100 pixels
        if recipe.layout.name == "paired":  # input | ground truth | prediction, a row per fixed input
            side = TINY_IMAGE_SIZE * round(112 / TINY_IMAGE_SIZE)
            rows = min(4, len(gfile.glob(f"{render}/triptych-*.png")))
            assert rows >= 1 and im.size == (3 * side + 4 * GAP, rows * side + (rows + 1) * GAP), im.size
            with Image.open(f"{render}/triptych-0.png") as t:  # the tutorial's titled generate_images
                assert t.size[0] > 2.5 * t.size[1] and t.size[0] >= 500, t.size
        elif recipe.layout.name == "image":  # 16 fixed-seed samples: a 4x4 grid of 28-pixel images, 4x enlarged
            assert im.size == (4 * 112 + 5 * GAP, 4 * 112 + 5 * GAP), im.size
        else:  # another layout's rows: at least the seed's size
            assert min(im.size) >= 112, im.size
    if f"{pipeline}/animate" not in stages:
        run_again_in_a_copy(flow, tmp_path, pipeline)
        return
    gif = stages[f"{pipeline}/animate"]["uri"] + "/training.gif"
    import imageio.v2 as imageio

    frames = imageio.mimread(gif)
    kept = json.load(open(stages[f"{pipeline}/animate"]["uri"] + "/frames.json"))
    from components.stages.animate import sqrt_schedule

    assert kept == [grids[i] for i in sqrt_schedule(len(grids))] and kept[-1] == grids[-1]
    # Pillow merges a repeated final frame into one held twice as long
    distinct = [k for i, k in enumerate(kept) if i == 0 or kept[i - 1] != k]
    assert len(frames) == len(distinct) >= 2
    assert gfile.glob(champion["exported"] + "/generator*.keras")

    if recipe.evaluation.feature_models:  # evaluated with the upstream classifiers
        m = first["metrics"]
        for space in ("convnet", "mlp"):
            # relative to the root, as every reference a record holds (the root may move)
            assert ArtifactStore(root).resolve(m[f"feature_model_{space}"]) == stages[f"mnist-classifier[{space}]/train"]["uri"]
            assert not m[f"feature_model_{space}"].startswith("/")
            # the floor compares real train with real test images: other pictures, never 0
            assert 0 < m[f"frechet_distance_{space}_floor"] < m[f"frechet_distance_{space}"]
        # a generator of a few steps covers little of the real images (its samples may still lie
        # inside their manifold: a weak classifier's k-NN balls are wide)
        assert m["recall_convnet"] < m["recall_convnet_real"] and 0 <= m["precision_convnet"] <= 1
        assert first["why"].startswith("no champion yet; frechet_distance_convnet="), first["why"]  # what promote judged
        for key in ("frechet_distance_convnet", "frechet_distance_convnet_floor", "precision_convnet", "recall_convnet",
                    "frechet_distance_mlp", "frechet_distance_mlp_floor"):  # the run's Prefect artifact
            assert f"| {key} | {m[key]:.4g} |" in ui[f"{pipeline}-run"].data, key
        # the discriminator's accuracies are shares of the images it judged: every test image, every sample
        n_test = json.load(open(stages[f"{pipeline}/preprocess"]["uri"] + "/transform.json"))["splits"]["test"]
        assert m["samples"] == int(TINY[pipeline][-1].split("=")[1]) <= n_test
        for share, n in ((m["disc_real_accuracy"], n_test), (m["disc_fake_accuracy"], m["samples"])):
            assert share * n == pytest.approx(round(share * n), abs=1e-6), (share, n)
    run_again_in_a_copy(flow, tmp_path, pipeline)


@pytest.mark.slow
def test_plan_reports_reuse_and_what_changed(tmp_path):
    root = str(tmp_path / "root")
    sets = [f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=3"]
    args = ["--root", root] + [x for s in sets for x in ("--set", s)]
    assert tapeline("run", "mnist-classifier", *args).returncode == 0
    plan = tapeline("plan", "mnist-classifier", *args, "--set", "model.learning_rate=0.01")
    assert plan.returncode == 0, plan.stderr[-2000:]
    rows = {line.split()[0]: line for line in plan.stdout.splitlines() if line.strip()}
    assert " reuse " in rows["mnist-classifier/preprocess"]
    assert "model.learning_rate 0.001 -> 0.01" in rows["mnist-classifier/train"]


def test_sqrt_frame_schedule_matches_the_tutorial():
    from components.stages.animate import sqrt_schedule

    # the tutorial's loop over 10 files: keeps 0,1,2,4,6,8 (round(2*sqrt(i)) grows), then the last
    assert sqrt_schedule(10) == [0, 1, 2, 4, 6, 8, 9]
    assert sqrt_schedule(9) == [0, 1, 2, 4, 6, 8, 8]


def test_changed_data_retrains_a_challenger_judged_against_the_champion(harness, tmp_path):
    """What a scheduled retraining run does when its source changed."""
    import gzip
    import shutil

    from flows.pipeline_flow import run_pipeline

    data, root = tmp_path / "mnist", str(tmp_path / "root")
    shutil.copytree(MNIST, data)
    sets = [f"data.source=idx:{data}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=30"]
    first = run_pipeline("mnist-classifier", sets, root)
    labels = bytearray(gzip.decompress((data / "train-labels-idx1-ubyte.gz").read_bytes()))
    labels[8:108] = bytes((b + 1) % 10 for b in labels[8:108])  # relabel 100 digits: same size
    (data / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    args = ["--root", root] + [x for s in sets for x in ("--set", s)]
    plan = tapeline("plan", "mnist-classifier", *args)
    rows = {line.split()[0]: line for line in plan.stdout.splitlines() if line.strip()}
    assert "input data changed: source" in rows["mnist-classifier/ingest"], plan.stdout
    assert "input data changed: transformed" in rows["mnist-classifier/train"], plan.stdout
    second = run_pipeline("mnist-classifier", sets, root)
    assert not any(s["reused"] for s in second["stages"].values())
    assert f"vs champion {first['metrics']['accuracy']:.4g}" in second["why"]
    champion = json.load(open(f"{root}/mnist-classifier/champion.json"))
    assert champion["version"] == (second["champion"] if second["blessed"] else first["champion"])


def test_flow_retry_reuses_what_the_failed_attempt_committed(harness, tmp_path, monkeypatch):
    from components.stages import render
    from flows.pipeline_flow import run_pipeline

    real, calls = render.run, []

    def flaky(*a, **kw):  # the first attempt dies in render, after train and evaluate committed
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient failure")
        return real(*a, **kw)

    # the pipeline holds the Stage value, whose run is the one the graph calls (a frozen value:
    # set and put back by hand)
    object.__setattr__(render.STAGE, "run", flaky)
    try:
        sets = TINY["mnist-classifier"] + ["flow.retries=1", "flow.retry_delay_seconds=0"]
        summary = run_pipeline("mnist-classifier", sets, str(tmp_path / "root"))
    finally:
        object.__setattr__(render.STAGE, "run", real)
    stages = summary["stages"]
    assert len(calls) == 2 and summary["champion"]
    assert stages["mnist-classifier/train"]["reused"] and stages["mnist-classifier/evaluate"]["reused"]
    assert not stages["mnist-classifier/render"]["reused"]
