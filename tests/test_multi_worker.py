"""The DCGAN on two MultiWorkerMirroredStrategy workers: the chief commits; both workers SIGKILLed
after a checkpoint and relaunched, the job resumes and ends identical to an uninterrupted run."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil

from tests.conftest import REPO, tapeline
from tests.test_train import weights

# 6 steps per epoch, a checkpoint every 4: the kill lands mid-epoch and the rerun crosses epochs
SETS = ["data.source=idx:/usr/share/datasets/fashion-mnist", "data.max_examples=192", "train.batch_size=32",
        "train.max_steps=16", "train.checkpoint_every=4", "train.sample_every=4", "train.steps_per_call=1",
        "train.shuffle_buffer=192", "train.log_every=1"]


def _launch(root: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "flows.cli", "train-workers", "fashion-dcgan", "--workers", "2", "--root", root]
    return subprocess.Popen(args + [a for s in SETS for a in ("--set", s)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    chief = [json.loads(ln.split("] ", 1)[1]) for ln in out.splitlines() if ln.startswith("[worker 0] {")]
    return chief[-1], out


def test_two_workers_killed_and_relaunched_end_identical_to_an_uninterrupted_run(tmp_path):
    straight, log = _result(_launch(str(tmp_path / "a")))
    assert straight["chief"] and "[worker 1] {" in log
    manifest = json.load(open(f"{straight['uri']}/MANIFEST.json"))
    assert manifest["metadata"]["replicas"] == 2 and manifest["params"]["train.workers"] == 2
    # only the chief commits; the other worker's temporary checkpoints are gone
    assert len(glob.glob(str(tmp_path / "a/fashion-dcgan/train/*/_COMMITTED"))) == 1

    root = tmp_path / "b"  # the same data stages, copied: only training is under test here
    for stage in ("ingest", "validate", "preprocess"):
        shutil.copytree(tmp_path / "a/fashion-dcgan" / stage, root / "fashion-dcgan" / stage)
    proc = _launch(str(root))
    deadline = time.time() + 600
    while True:
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        progress = glob.glob(f"{root}/fashion-dcgan/train/_work/*/progress.json")
        try:
            if progress and 4 <= json.load(open(progress[0]))["step"] < 16:
                break
        except ValueError:  # caught mid-write
            pass
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    for w in workers:  # each worker is its own process group
        os.killpg(w.pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not glob.glob(f"{root}/fashion-dcgan/train/*/_COMMITTED")

    resumed, log = _result(_launch(str(root)))
    assert "[worker 0] train: resumed from step" in log and "[worker 1] train: resumed from step" in log
    assert resumed["fingerprint"] == straight["fingerprint"]
    wa, wb = weights(straight["uri"]), weights(resumed["uri"])
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for x, y in zip(wa[name], wb[name]):
            assert np.array_equal(x, y), name
    ha, hb = np.load(f"{straight['uri']}/history.npz"), np.load(f"{resumed['uri']}/history.npz")
    assert all(np.array_equal(ha[k], hb[k]) for k in ha.files if k != "epochs")


def test_worker_without_tf_config_is_a_one_line_error(tmp_path):
    proc = tapeline("worker", "fashion-dcgan", "--root", str(tmp_path), "--set", "train.strategy=multi_worker",
                    env={"TF_CONFIG": ""})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tapeline: error: train.strategy=multi_worker needs TF_CONFIG")
