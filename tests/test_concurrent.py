"""Six `tapeline run`s at once on one root: four different configs and two of one more config."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from benchmarks.fuzz import no_traceback
from tests.conftest import MNIST, PYTHONPATH, tapeline

BASE = [f"data.source=idx:{MNIST}", "data.max_examples=200", "data.val_holdout=40", "train.max_steps=4",
        "eval.batch_size=100"]
# four different configs (one with different data, so two ingests race as well) and one config twice
CONFIGS = [BASE, BASE + ["seed=1"], BASE + ["model.learning_rate=0.01"], BASE[:1] + ["data.max_examples=160"] + BASE[2:],
           BASE + ["seed=2"], BASE + ["seed=2"]]


@pytest.mark.slow
def test_six_runs_at_once_on_one_root_make_one_artifact_set(harness, tmp_path):
    """On one Prefect server, as runs of a work pool are (no temporary server per process)."""
    import prefect.settings

    api = {"PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    root = str(tmp_path / "root")
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                               "run", "mnist-classifier", "--json", "--root", root,
                               *[x for s in sets for x in ("--set", s)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": PYTHONPATH, **api}) for sets in CONFIGS]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e[-2000:] for _, e in outs]
    assert all(no_traceback(e) for _, e in outs)
    runs = [json.loads(o)["stages"] for o, _ in outs]
    # the two runs of one config got the same artifacts, but for promote: each run records its own
    # decision; every other stage has one version per fingerprint
    same = {k: v["uri"] for k, v in runs[4].items() if not k.endswith("/promote")}
    assert same == {k: v["uri"] for k, v in runs[5].items() if not k.endswith("/promote")}
    # what only these two need: one built it, the other waited on its lock and reused it
    theirs = [k for k in same if all(r[k]["fingerprint"] != runs[4][k]["fingerprint"] for r in runs[:4])]
    assert "mnist-classifier/train" in theirs, theirs
    assert all(runs[4][k]["reused"] != runs[5][k]["reused"] for k in theirs), theirs
    total = 0
    for key in runs[0]:
        stage = key.split("/")[1]
        fingerprints = {r[key]["fingerprint"] for r in runs}
        uris = {r[key]["uri"] for r in runs}
        committed = len(glob.glob(f"{root}/mnist-classifier/{stage}/*/_COMMITTED"))
        if stage == "promote":
            assert len(fingerprints) == 5 and len(uris) == committed == 6, stage
        else:
            assert len(uris) == len(fingerprints) == committed, stage
        total += len(uris)
    assert len({r["mnist-classifier/ingest"]["uri"] for r in runs}) == 2
    assert len({r["mnist-classifier/train"]["uri"] for r in runs}) == 5
    assert not [p for p in glob.glob(f"{root}/mnist-classifier/*/*") if not p.endswith(("_work", "_locks"))
                and not os.path.exists(f"{p}/_COMMITTED")]
    verify = tapeline("verify", "--root", root)
    assert verify.returncode == 0 and f"verified {total} artifacts: {total} ok, 0 damaged" in verify.stdout, verify.stdout
    # the champion is the best model any of them evaluated (promotions do not overwrite a better one)
    champion = json.load(open(f"{root}/mnist-classifier/champion.json"))
    best = max(json.loads(o)["metrics"]["accuracy"] for o, _ in outs)
    assert champion["metrics"]["accuracy"] == best
