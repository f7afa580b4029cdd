"""The local Prefect server that runs reuse: started by the first run (which says so), reused by
the next (no temporary server), out of reach of a run's signals, stopped when idle or by
`tapeline server stop`. Each test has a PREFECT_HOME of its own and stops what it started."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import MNIST, REPO

SETS = [f"data.source=idx:{MNIST}", "data.max_examples=300", "train.max_steps=3"]
CLI = [sys.executable, "-m", "flows.cli"]


@pytest.fixture
def home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TAPELINE_LOCAL_SERVER")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO),
               TAPELINE_SERVER_IDLE_MINUTES="0.5")  # 30 s without a run: stop
    try:
        yield env
    finally:
        subprocess.run(CLI + ["server", "stop"], env=env, capture_output=True, timeout=60)


def run(env: dict, root: str, *extra: str, **kw) -> subprocess.CompletedProcess:
    args = CLI + ["run", "mnist-classifier", "--root", root, *[a for s in SETS for a in ("--set", s)], *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO, **kw)


def state(env: dict) -> dict | None:
    path = os.path.join(env["PREFECT_HOME"], "tapeline-server.json")
    return json.load(open(path)) if os.path.exists(path) else None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.signals
@pytest.mark.slow
def test_first_run_starts_it_the_next_reuses_it_and_it_stops_when_idle(home, tmp_path):
    root = str(tmp_path / "root")
    first = run(home, root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tapeline: started a local Prefect server, UI at http://127.0.0.1:" in first.stderr
    info = state(home)
    assert info and alive(info["pid"])
    with urllib.request.urlopen(info["ui"], timeout=10) as page:  # the UI a developer opens
        assert page.status == 200 and b"<html" in page.read().lower()

    second = run(home, root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "started a local Prefect server" not in second.stderr
    assert "Starting temporary server" not in second.stderr
    assert state(home)["pid"] == info["pid"]
    status = subprocess.run(CLI + ["server"], env=home, capture_output=True, text=True, timeout=60)
    assert f"pid {info['pid']}" in status.stdout and info["ui"] in status.stdout

    # its own session: a SIGTERM to a run's process group does not reach it
    proc = subprocess.Popen(CLI + ["run", "mnist-gan", "--root", root, "--set", f"data.source=idx:{MNIST}",
                                   "--set", "data.max_examples=128", "--set", "train.epochs=50"],
                            env=home, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        time.sleep(8)
        # not while a run uses it (unless --force)
        refused = subprocess.run(CLI + ["server", "stop"], env=home, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("tapeline: error: a run is using the local")
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("tapeline: interrupted"), err[-2000:]
    assert alive(info["pid"]), "the local server died with a run's process group"

    # no run for the idle time: it stops by itself, and says so by its record going away
    end = time.time() + 30 + 60
    while alive(info["pid"]) and time.time() < end:
        time.sleep(1)
    assert not alive(info["pid"]), "the local server did not stop when idle"
    assert state(home) is None


@pytest.mark.slow
def test_server_stop_and_the_temporary_server_on_request(home, tmp_path):
    started = subprocess.run(CLI + ["server", "start"], env=home, capture_output=True, text=True, timeout=200)
    assert started.returncode == 0, started.stderr[-2000:]
    info = state(home)
    assert info and alive(info["pid"])
    stopped = subprocess.run(CLI + ["server", "stop"], env=home, capture_output=True, text=True, timeout=60)
    assert "stopped the local Prefect server" in stopped.stdout
    assert not alive(info["pid"]) and state(home) is None
    # TAPELINE_LOCAL_SERVER=temporary: Prefect's per-run server, nothing left after the run
    temp = run({**home, "TAPELINE_LOCAL_SERVER": "temporary"}, str(tmp_path / "root"))
    assert temp.returncode == 0, temp.stderr[-3000:]
    assert state(home) is None and "started a local Prefect server" not in temp.stderr


def _supervisors(prefect_home: str) -> list[int]:
    """The pids of every flows.local_server process serving prefect_home."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "flows.local_server" in args and "--home" in args and args[args.index("--home") + 1] == prefect_home:
            found.append(int(pid))
    return found


@pytest.mark.slow
def test_a_record_is_believed_only_for_its_own_home_and_a_damaged_one_never_leads_to_a_second_server(
        home, tmp_path):
    started = subprocess.run(CLI + ["server", "start"], env=home, capture_output=True, text=True, timeout=200)
    assert started.returncode == 0, started.stderr[-2000:]
    info = state(home)
    assert info and alive(info["pid"]) and info["home"] == home["PREFECT_HOME"]

    # a record copied into another home (a copied ~/.prefect, a restored backup) names no server there
    other = {**home, "PREFECT_HOME": str(tmp_path / "other-home")}
    os.makedirs(other["PREFECT_HOME"])
    with open(os.path.join(other["PREFECT_HOME"], "tapeline-server.json"), "w") as f:
        json.dump(info, f)
    for action in ("status", "stop"):
        r = subprocess.run(CLI + ["server", action], env=other, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "no local Prefect server is running" in r.stdout, (action, r.stdout, r.stderr)
    assert alive(info["pid"]), "`server stop` in another home stopped this home's server"
    assert not os.path.exists(os.path.join(other["PREFECT_HOME"], "tapeline-server.json"))  # the stale copy went

    # the record damaged (or gone) while the server runs: repaired from the server's own, no second server
    for damage in ("{not json", None):
        path = os.path.join(home["PREFECT_HOME"], "tapeline-server.json")
        if damage is None:
            os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(damage)
        again = run(home, str(tmp_path / f"root-{damage is None}"))
        assert again.returncode == 0, again.stderr[-3000:]
        assert "started a local Prefect server" not in again.stderr, again.stderr[-2000:]
        assert _supervisors(home["PREFECT_HOME"]) == [info["pid"]]
        assert state(home)["pid"] == info["pid"]

    # a second supervisor for the same home, started by hand, refuses
    second = subprocess.run([sys.executable, "-m", "flows.local_server", "--port", "4299", "--idle", "60",
                             "--home", home["PREFECT_HOME"]], env=home, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 3 and "another local Prefect server serves" in second.stderr, second.stderr
    stopped = subprocess.run(CLI + ["server", "stop"], env=home, capture_output=True, text=True, timeout=60)
    assert "stopped the local Prefect server" in stopped.stdout and not alive(info["pid"])


@pytest.mark.signals
@pytest.mark.slow
def test_server_stop_force_during_training_ends_the_run_in_one_line_and_the_rerun_resumes(home, tmp_path):
    from tests.helpers import seed_feature_models

    root, trace = str(tmp_path / "root"), str(tmp_path / "trace")
    sets = [f"data.source=idx:{MNIST}", "data.max_examples=128", "train.epochs=8"]
    seed_feature_models(root, "mnist-gan", sets)  # this test stops the GAN's own training, not the classifiers'
    args = ["run", "mnist-gan", "--root", root, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(CLI + args, env={**home, "TAPELINE_FAILPOINTS_TRACE": trace}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        steps = 0
        end = time.time() + 300
        while steps < 3 and proc.poll() is None and time.time() < end:  # a few steps into training
            time.sleep(0.1)
            with contextlib.suppress(OSError), open(trace) as f:
                steps = sum(ln.startswith("train.mnist-gan.step") for ln in f)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        forced = subprocess.run(CLI + ["server", "stop", "--force"], env=home, capture_output=True, text=True,
                                timeout=60)
        assert "stopped the local Prefect server" in forced.stdout, forced.stdout + forced.stderr
        t0 = time.time()
        _, err = proc.communicate(timeout=120)
        took = time.time() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "ConnectError" not in err, err[-3000:]
    assert re.match(r"tapeline: error: the local Prefect server at http://127\.0\.0\.1:\d+ stopped during the run "
                    r"\(mnist-gan/train at step \d+/\d+, checkpoint saved\) \(environment\) — run the same command "
                    r"again to resume", last), last
    assert took < 30, f"took {took:.1f} s to stop"
    step = int(re.search(r"at step (\d+)/", last).group(1))
    again = subprocess.run(CLI + args, env={**home, "PREFECT_LOGGING_LEVEL": "INFO"}, cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {step}" in again.stderr, again.stderr[-3000:]
