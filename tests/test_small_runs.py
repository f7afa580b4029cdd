"""`data.max_examples` makes a small run of every pipeline with every other default."""
from __future__ import annotations

import pytest

from tests.helpers import suite_sets, covered_pipelines

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", covered_pipelines())
def test_small_run_with_defaults_trains(harness, tmp_path, pipeline):
    from artifacts.store import ArtifactStore
    from flows.pipeline_flow import run_pipeline

    # (a recipe too slow on CPUs at its default image size, pix2pix at 256 px, names a smaller one)
    sets = suite_sets(pipeline, "small-run")
    summary = run_pipeline(pipeline, sets, str(tmp_path / "root"))
    assert not any(s["reused"] for s in summary["stages"].values())
    train = ArtifactStore(str(tmp_path / "root")).load(summary["stages"][f"{pipeline}/train"]["uri"])
    assert train.manifest["metadata"]["steps"] == 3
    assert summary["metrics"] and summary["champion"]
    if pipeline == "mnist-classifier":  # the seed's 10,000 holdout, capped at a fifth of 300
        assert summary["metrics"]["examples"] == 300
        splits = ArtifactStore(str(tmp_path / "root")).load(
            summary["stages"]["mnist-classifier/preprocess"]["uri"]).manifest["metadata"]["splits"]
        assert splits == {"train": 240, "val": 60, "test": 300}
        from flows.cli import stage_table  # what `tapeline run` prints at the end

        rows = stage_table(summary, str(tmp_path / "root")).splitlines()
        assert len(rows) == len(summary["stages"]) + 2 and rows[-1].split()[:3] == ["total", "7", "built"]
        for row, (key, st) in zip(rows[1:], summary["stages"].items()):
            name, result, seconds, artifact = row.split()
            assert (name, result) == (key, "built") and float(seconds) == round(st["seconds"], 1)
            assert st["uri"] == str(tmp_path / "root" / artifact)
