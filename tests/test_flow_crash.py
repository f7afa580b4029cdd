"""Two `tapeline run`s at once on one root; deployments resolve. (Kills: tests/test_kill_harness.py.)"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from tests.conftest import MNIST, REPO, tapeline


def args(root, sets):
    return ["--root", root] + [x for s in sets for x in ("--set", s)]


def start(pipeline, root, sets):
    return subprocess.Popen([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                             "run", pipeline, "--json", *args(root, sets)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def committed(root, pipeline, stage):
    return glob.glob(f"{root}/{pipeline}/{stage}/*/_COMMITTED")


def test_two_runs_at_once_on_one_root_make_one_set_of_artifacts(tmp_path):
    root = str(tmp_path / "root")
    sets = [f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=30"]
    procs = [start("mnist-classifier", root, sets) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    a, b = (json.loads(o)["stages"] for o, _ in outs)
    assert {k: v["uri"] for k, v in a.items()} == {k: v["uri"] for k, v in b.items()}
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "render", "promote"):
        assert len(committed(root, "mnist-classifier", stage)) == 1, stage
        assert a[f"mnist-classifier/{stage}"]["reused"] != b[f"mnist-classifier/{stage}"]["reused"] or stage == "promote"
    verify = tapeline("verify", "--root", root)
    assert verify.returncode == 0 and "0 damaged" in verify.stdout


def test_prefect_yaml_deployments_resolve_to_the_pipeline_flows():
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import load, runner_deployments
    from pipelines.registry import all_pipelines

    specs = load()
    assert sorted(d["flow"].name for d in specs) == sorted(all_pipelines())
    for dep in runner_deployments("/tmp/tapeline-root"):
        flow = load_flow_from_entrypoint(dep.entrypoint)
        assert flow.name == dep.flow_name and dep.parameters["root"] == "/tmp/tapeline-root"
        assert dep.schedules and all(s.schedule.cron for s in dep.schedules)
        assert dep.flow_name in dep.tags
        assert set(flow.parameters.properties) == {"overrides", "root", "run_id"}
