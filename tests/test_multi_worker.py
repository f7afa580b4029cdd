"""The DCGAN on two MultiWorkerMirroredStrategy workers: the chief commits; both workers SIGKILLed
after a checkpoint and relaunched, the job resumes and ends identical to an uninterrupted run; a
SIGTERM to one worker at a random step stops both at one step, saved, and the relaunch ends
identical too. The uninterrupted run is shared (one per module)."""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from tests.conftest import PYTHONPATH, tapeline
from tests.helpers import weights

# 6 steps per epoch, a checkpoint every 4: the kill lands mid-epoch and the rerun crosses epochs
SETS = ["data.source=idx:/usr/share/datasets/fashion-mnist", "data.max_examples=192", "train.batch_size=32",
        "train.max_steps=16", "train.checkpoint_every=4", "train.sample_every=4", "train.steps_per_call=1",
        "train.shuffle_buffer=192", "train.log_every=1"]


def _launch(root: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "flows.cli", "train-workers", "fashion-dcgan", "--workers", "2", "--root", root]
    return subprocess.Popen(args + [a for s in SETS for a in ("--set", s)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH})


def _result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    chief = [json.loads(ln.split("] ", 1)[1]) for ln in out.splitlines() if ln.startswith("[worker 0] {")]
    return chief[-1], out


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted two-worker run: (its chief's result, the root it ran in)."""
    a = tmp_path_factory.mktemp("straight")
    result, log = _result(_launch(str(a)))
    assert result["chief"] and "[worker 1] {" in log
    manifest = json.load(open(f"{result['uri']}/MANIFEST.json"))
    assert manifest["metadata"]["replicas"] == 2 and manifest["params"]["train.workers"] == 2
    # only the chief commits; the other worker's temporary checkpoints are gone
    assert len(glob.glob(str(a / "fashion-dcgan/train/*/_COMMITTED"))) == 1
    return result, a


def _data_copied(straight_root, root) -> None:
    """The same data stages, copied: only training is under test."""
    for stage in ("ingest", "validate", "preprocess"):
        shutil.copytree(straight_root / "fashion-dcgan" / stage, root / "fashion-dcgan" / stage)


def _assert_identical(straight: dict, resumed: dict) -> None:
    assert resumed["fingerprint"] == straight["fingerprint"]
    wa, wb = weights(straight["uri"]), weights(resumed["uri"])
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for x, y in zip(wa[name], wb[name]):
            assert np.array_equal(x, y), name
    ha, hb = np.load(f"{straight['uri']}/history.npz"), np.load(f"{resumed['uri']}/history.npz")
    assert all(np.array_equal(ha[k], hb[k]) for k in ha.files if k != "epochs")


@pytest.mark.signals
@pytest.mark.slow
def test_two_workers_killed_and_relaunched_end_identical_to_an_uninterrupted_run(tmp_path, straight):
    straight, a = straight
    root = tmp_path / "b"
    _data_copied(a, root)
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
    _assert_identical(straight, resumed)


SEED = int(os.environ.get("TAPELINE_TEST_SEED") or random.SystemRandom().randrange(10**6))
STOPPED = re.compile(r"^\[worker (\d)\] tapeline: interrupted during fashion-dcgan/train at step (\d+)/16 "
                     r"\(checkpoint saved\) — run the same command again to resume$")


def _stopped_by_a_signal(root, why: str, after: int, send) -> tuple[int, int, str]:
    """Launch the two workers in root; once the chief has logged step `after`, send(launcher,
    {index: worker}) signals. Returns (launcher's exit status, the step both workers stopped at,
    the whole output), once it is checked: both workers said they saved that step, the launcher
    said so last, in one line, no traceback anywhere, no worker left, the checkpoint there."""
    proc = _launch(str(root))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not any(ln.startswith(f"[worker 0] train step {after}/16 ") for ln in lines):
        assert proc.poll() is None, f"{why}: finished before the signal\n" + "".join(lines)[-3000:]
        assert time.time() < deadline, why
        time.sleep(0.02)
    workers = {int(json.loads(w.environ()["TF_CONFIG"])["task"]["index"]): w
               for w in psutil.Process(proc.pid).children()}
    assert sorted(workers) == [0, 1], why
    send(proc, workers)
    t0 = time.time()
    code = proc.wait(120)
    reader.join(10)
    out = "".join(lines)
    assert "Traceback" not in out, f"{why}\n{out[-3000:]}"
    assert not [w for w in workers.values() if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], why
    # both workers saved the same step and said so; the launcher says it once, last, on stderr
    stops = {int(m[1]): int(m[2]) for m in map(STOPPED.match, out.splitlines()) if m}
    assert stops.keys() == {0, 1} and len(set(stops.values())) == 1, f"{why}: {stops}\n{out[-3000:]}"
    step = stops[0]
    assert after < step < 16, f"{why}: stopped at {step}"
    own = [ln for ln in out.splitlines() if ln.startswith("tapeline:")]
    assert own == [out.splitlines()[-1]] == [f"tapeline: interrupted during fashion-dcgan/train at step {step}/16 "
                                             "(checkpoint saved) — run the same command again to resume"], why
    print(f"{why}: both stopped at step {step}, {time.time() - t0:.1f} s after the signal")
    work = glob.glob(f"{root}/fashion-dcgan/train/_work/*")
    assert len(work) == 1 and os.path.exists(f"{work[0]}/checkpoints/ckpt-{step}.index"), why
    assert json.load(open(f"{work[0]}/progress.json"))["step"] == step
    assert not glob.glob(f"{root}/fashion-dcgan/train/*/_COMMITTED")
    return code, step, out


@pytest.mark.signals
@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_one_step_and_the_relaunch_ends_identical(tmp_path, straight):
    straight, a = straight
    rng = random.Random(SEED)
    after, victim = rng.randrange(1, 11), rng.randrange(2)
    why = f"TAPELINE_TEST_SEED={SEED}: SIGTERM to worker {victim} after step {after}"
    root = tmp_path / "b"
    _data_copied(a, root)
    # the worker alone, not its process group: the other learns of it through the training step
    code, step, _ = _stopped_by_a_signal(root, why, after, lambda _, w: os.kill(w[victim].pid, signal.SIGTERM))
    assert code == 143, why

    resumed, log = _result(_launch(str(root)))
    for i in (0, 1):
        assert f"[worker {i}] train: resumed from step {step} " in log, why
    _assert_identical(straight, resumed)


@pytest.mark.signals
@pytest.mark.slow
def test_ctrl_c_to_the_launcher_stops_every_worker_at_one_step(tmp_path, straight):
    """What a terminal's Ctrl-C does: SIGINT to the launcher's process group (the workers have
    sessions of their own: the launcher passes it on)."""
    after = random.Random(SEED + 1).randrange(1, 11)
    why = f"TAPELINE_TEST_SEED={SEED}: SIGINT to the launcher after step {after}"
    root = tmp_path / "b"
    _data_copied(straight[1], root)
    code, _, _ = _stopped_by_a_signal(root, why, after, lambda launcher, _: os.killpg(launcher.pid, signal.SIGINT))
    assert code == 130, why


def test_worker_without_tf_config_is_a_one_line_error(tmp_path):
    proc = tapeline("worker", "fashion-dcgan", "--root", str(tmp_path), "--set", "train.strategy=multi_worker",
                    env={"TF_CONFIG": ""})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tapeline: error: train.strategy=multi_worker needs TF_CONFIG")
