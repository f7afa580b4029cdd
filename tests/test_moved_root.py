"""A root moved or restored elsewhere: no record in it names its old place (manifests, metrics,
champion.json, run records, pushes), and the moved root verifies and reuses everything."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import tapeline
from tests.helpers import TINY, covered_pipelines


@pytest.mark.parametrize("pipeline", covered_pipelines())
def test_no_record_names_the_old_place_of_a_moved_root(harness, tmp_path, pipeline):
    from flows.pipeline_flow import run_pipeline

    old = tmp_path / "old-place" / "root"
    run_pipeline(pipeline, TINY[pipeline], str(old))
    new = tmp_path / "new-place" / "root"
    shutil.move(str(old.parent), str(new.parent))
    assert not old.exists()
    named = []
    for folder, _, files in os.walk(new):
        for name in files:
            if name.endswith(".json"):
                text = (os.path.join(folder, name), open(os.path.join(folder, name), encoding="utf-8").read())
                if str(old.parent) in text[1] or str(tmp_path) in text[1]:
                    named.append(os.path.relpath(text[0], new))
    assert named == [], named
    verify = tapeline("verify", "--root", str(new))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = run_pipeline(pipeline, TINY[pipeline], str(new))
    assert all(s["reused"] for k, s in again["stages"].items() if not k.endswith("/promote")), again["stages"]
    assert again["why"] == "already the champion", again["why"]
    assert json.load(open(new / pipeline / "champion.json"))["version"] == again["champion"]
