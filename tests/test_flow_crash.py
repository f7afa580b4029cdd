"""`tapeline run` killed at any point, then run again; two runs at once; deployments resolve."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import MNIST, PEOPLE, REPO, tapeline
from tests.test_train import weights

DCGAN = ["data.source=idx:/usr/share/datasets/fashion-mnist", "data.max_examples=256", "train.batch_size=32",
         "train.max_steps=24", "train.checkpoint_every=4", "train.sample_every=4", "train.steps_per_call=2",
         "train.shuffle_buffer=256", "eval.num_samples=200"]
PIX2PIX = [f"data.source=paired:{PEOPLE}", "data.max_examples=40", "data.image_size=64", "data.jitter_copies=10",
           "train.max_steps=4", "train.sample_every=2", "train.steps_per_call=2"]


def args(root, sets):
    return ["--root", root] + [x for s in sets for x in ("--set", s)]


def start(pipeline, root, sets):
    return subprocess.Popen([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                             "run", pipeline, "--json", *args(root, sets)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def kill_when(proc, ready, timeout=600):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, Prefect's temporary server too
    proc.wait()


def plan(pipeline, root, sets) -> dict[str, str]:
    out = tapeline("plan", pipeline, *args(root, sets))
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}


def committed(root, pipeline, stage):
    return glob.glob(f"{root}/{pipeline}/{stage}/*/_COMMITTED")


def test_kill_during_preprocess_leaves_nothing_committed_and_rerun_completes(tmp_path):
    root = str(tmp_path / "root")
    proc = start("pix2pix", root, PIX2PIX)
    kill_when(proc, lambda: glob.glob(f"{root}/pix2pix/preprocess/*/_PENDING"))
    assert not committed(root, "pix2pix", "preprocess")
    rows = plan("pix2pix", root, PIX2PIX)
    assert " reuse " in rows["pix2pix/ingest"] and " reuse " in rows["pix2pix/validate"]
    assert rows["pix2pix/preprocess"].split()[1] == "run" and rows["pix2pix/train"].split()[1] == "run"
    out = tapeline("run", "pix2pix", "--json", *args(root, PIX2PIX))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # --json: one JSON object is all stdout holds
    stages = summary["stages"]
    assert stages["pix2pix/ingest"]["reused"] and stages["pix2pix/validate"]["reused"]
    assert not stages["pix2pix/preprocess"]["reused"] and len(committed(root, "pix2pix", "preprocess")) == 1
    rows = plan("pix2pix", root, PIX2PIX)  # promote decides again on every run
    assert summary["champion"] and all(" reuse " in r for k, r in rows.items() if k != "pix2pix/promote")
    assert "decides again every run" in rows["pix2pix/promote"]


def test_kill_during_training_resumes_to_the_uninterrupted_model(harness, tmp_path):
    from flows.pipeline_flow import run_pipeline

    root = str(tmp_path / "root")
    proc = start("fashion-dcgan", root, DCGAN)

    def trained_some():
        p = glob.glob(f"{root}/fashion-dcgan/train/_work/*/progress.json")
        return p and json.load(open(p[0]))["step"] >= 8

    kill_when(proc, trained_some)
    assert not committed(root, "fashion-dcgan", "train")
    rows = plan("fashion-dcgan", root, DCGAN)
    step = int(rows["fashion-dcgan/train"].split("resume from step")[1].split()[0])
    assert 8 <= step < 24 and " reuse " in rows["fashion-dcgan/preprocess"]
    assert " reuse " in rows["mnist-classifier/train"] or " run " in rows["mnist-classifier/train"]
    out = tapeline("run", "fashion-dcgan", "--json", *args(root, DCGAN), env={"PREFECT_LOGGING_LEVEL": "INFO"})
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads(out.stdout)["stages"]
    assert f"resumed from step {step}" in out.stderr
    clean = run_pipeline("fashion-dcgan", DCGAN, str(tmp_path / "clean"))["stages"]
    a, b = weights(resumed["fashion-dcgan/train"]["uri"]), weights(clean["fashion-dcgan/train"]["uri"])
    assert a.keys() == b.keys() == {"discriminator.keras", "generator.keras"}
    for k in a:
        assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k])), k
    assert resumed["fashion-dcgan/train"]["fingerprint"] == clean["fashion-dcgan/train"]["fingerprint"]


def test_two_runs_at_once_on_one_root_make_one_set_of_artifacts(tmp_path):
    root = str(tmp_path / "root")
    sets = [f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=30"]
    procs = [start("mnist-classifier", root, sets) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    a, b = (json.loads(o)["stages"] for o, _ in outs)
    assert {k: v["uri"] for k, v in a.items()} == {k: v["uri"] for k, v in b.items()}
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "render"):
        assert len(committed(root, "mnist-classifier", stage)) == 1, stage
        assert a[f"mnist-classifier/{stage}"]["reused"] != b[f"mnist-classifier/{stage}"]["reused"]
    # each run records its own decision; the model is pushed once
    assert len(committed(root, "mnist-classifier", "promote")) == 2
    assert not a["mnist-classifier/promote"]["reused"] and not b["mnist-classifier/promote"]["reused"]
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
