"""`tapeline gc --keep 0 --grace 0` beside a live run, at every stage's build and commit: the
run's lease and fingerprint locks keep what it holds, the run completes, verify is clean."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from flows.registry import get
from tests.conftest import PYTHONPATH, tapeline
from tests.helpers import TINY

CLI = "import sys; from flows.cli import main; sys.exit(main())"


@pytest.mark.slow
def test_gc_keep_0_during_a_live_run_of_every_stage_kind(tmp_path, harness):
    from prefect.settings import PREFECT_API_URL

    root, pauses = str(tmp_path / "root"), tmp_path / "pauses"
    pauses.mkdir()
    stages = get("mnist-classifier").stages
    moments = [f"store.{m}.mnist-classifier/{s.name}" for s in stages for m in ("build", "committed")]
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "TAPELINE_FAILPOINTS": ",".join(f"{m}@1:pause" for m in moments),
           "TAPELINE_FAILPOINTS_PAUSE_DIR": str(pauses)}
    sets = [a for s in TINY["mnist-classifier"] + ["train.max_steps=3"] for a in ("--set", s)]
    run = subprocess.Popen([sys.executable, "-c", CLI, "run", "mnist-classifier", "--root", root, *sets],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        deadline = time.time() + 900
        while run.poll() is None and time.time() < deadline:
            waiting = sorted(p for p in pauses.glob("*.paused") if p.with_suffix(".resume").name
                             not in {q.name for q in pauses.glob("*.resume")})
            if not waiting:
                time.sleep(0.2)
                continue
            gc = tapeline("gc", "--root", root, "--keep", "0", "--grace", "0", timeout=300)
            assert gc.returncode == 0 and "Traceback" not in gc.stderr, gc.stdout + gc.stderr
            seen.append((waiting[0].stem, gc.stdout.strip().splitlines()[-1]))
            waiting[0].with_suffix(".resume").touch()
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-4000:]
    assert [name for name, _ in seen] == [m.replace("/", "_") for m in moments], seen
    verify = tapeline("verify", "--root", root, timeout=300)
    assert verify.returncode == 0 and "0 damaged" in verify.stdout, verify.stdout
    assert not os.listdir(os.path.join(root, "_leases"))  # the lease ends with the run


@pytest.mark.slow
@pytest.mark.signals
def test_a_run_stopped_past_its_lease_keeps_its_inputs_here_and_rebuilds_what_another_machine_collected(
        tmp_path, api, references):
    """SIGSTOP (what Ctrl-Z sends the foreground group) at a stage boundary drawn at random, the
    lease left to lapse (heartbeat 0.5 s): `gc --keep 0 --grace 0` on this machine removes nothing
    of the run (its holder is alive here); the same gc from another machine (another host name)
    collects everything the run reached and its lease; on SIGCONT the run re-takes its lease,
    rebuilds what was collected, and ends identical to an uninterrupted run."""

    from tests import kill_harness as kh
    from tests.helpers import can_unshare, from_another_host, release, stop_boundary, stopped_past_lease, woken

    if not can_unshare():
        pytest.skip("unshare --uts is refused here (not root): no second host name to gc from")
    pipeline = "mnist-classifier"
    boundary = stop_boundary(pipeline, "sigstop")
    stages = [s.name for s in get(pipeline).stages]
    root, pauses = str(tmp_path / "root"), tmp_path / "pauses"
    pauses.mkdir()
    env = {**os.environ, **api, "PYTHONPATH": PYTHONPATH, "TAPELINE_LEASE_SECONDS": "0.5",
           "TAPELINE_FAILPOINTS": f"flow.after.{pipeline}/{boundary}@1:pause",
           "TAPELINE_FAILPOINTS_PAUSE_DIR": str(pauses)}
    sets = [a for s in kh.CONFIGS[pipeline] for a in ("--set", s)]
    run = subprocess.Popen([sys.executable, "-c", CLI, "run", pipeline, "--json", "--root", root, *sets],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        stopped_past_lease(run, pauses, pipeline, boundary)

        def committed() -> list[str]:
            return sorted(glob.glob(f"{root}/{pipeline}/*/*/_COMMITTED"))

        held = committed()
        assert len(held) == stages.index(boundary) + 1, held
        here = tapeline("gc", "--root", root, "--keep", "0", "--grace", "0", timeout=300)
        assert here.returncode == 0 and committed() == held, here.stdout + here.stderr
        assert os.listdir(os.path.join(root, "_leases")), "this machine's gc took a live run's lease"
        there = from_another_host({**os.environ, "PYTHONPATH": PYTHONPATH}, "gc", "--root", root, "--keep", "0",
                                  "--grace", "0")
        assert there.returncode == 0, there.stdout + there.stderr
        assert committed() == [] and not os.listdir(os.path.join(root, "_leases")), there.stdout
        summary = woken(run)
    finally:
        release(run)
    assert kh.Outcome.of(summary, pipeline).differences(references(pipeline)) == []
    assert kh.root_problems(root, summary) == []


def _plant(root: str, name: str, **rec) -> str:
    path = os.path.join(root, "_leases", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"run_id": name, "host": "elsewhere", "pid": 1, "artifacts": [], **rec}, f)
    return path


def test_gc_collects_dead_runs_leases_keeps_live_and_suspended_ones_and_reports_absurd_ones(tmp_path):
    """A lease expired past the grace whose holder is not a process here goes; one expired but
    held by a live process of this machine (a stopped run) protects what it names; an expiry
    no run writes (years ahead) is reported as out of place and protects nothing."""
    from artifacts import lease as leases
    from artifacts.maintenance import gc
    from artifacts.store import ArtifactStore
    from tests.helpers import put

    root = str(tmp_path / "root")
    store = ArtifactStore(root)
    kept, absurd_held, free = (put(store, c * 64, c.encode()) for c in "123")
    now = time.time()
    dead = _plant(root, "dead", heartbeat=now - 600, expires=now - 480, artifacts=[store.ref(free.uri)])
    # this very process, as a run stopped long enough for its lease to lapse would write it
    me = leases.Lease(store, "me", 1.0)
    me.uris = [kept.uri]
    with me._guard:
        me._write()
    rec = json.load(open(me.path))
    rec.update(heartbeat=now - 600, expires=now - 596)
    json.dump(rec, open(me.path, "w"))
    absurd = _plant(root, "absurd", heartbeat=now, expires=now + 1000 * 24 * 3600,
                    artifacts=[store.ref(absurd_held.uri)])
    nan = _plant(root, "nan", heartbeat=now, expires=float("nan"), artifacts=[store.ref(absurd_held.uri)])
    huge = _plant(root, "huge", expires=1e300, artifacts=[store.ref(absurd_held.uri)])
    removed = gc(ArtifactStore(root), keep=0, grace=0)
    assert dead in removed and not os.path.exists(dead)
    assert os.path.exists(me.path) and os.path.exists(kept.uri) and kept.uri not in removed
    assert absurd_held.uri in removed and free.uri in removed and os.path.exists(absurd)
    store = ArtifactStore(root)
    store.leased()
    assert all("not honoured" in store.skipped[p] for p in (absurd, nan, huge)), store.skipped
    # once its holder is gone (another host name in its record), the stopped run's lease goes too
    rec["host"] = "elsewhere"
    json.dump(rec, open(me.path, "w"))
    assert me.path in gc(ArtifactStore(root), keep=0, grace=0) and not os.path.exists(kept.uri)


def test_a_lapsed_lease_is_noticed_once_and_written_again(tmp_path):
    from artifacts import lease as leases
    from artifacts.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "root"))
    with store.lease("run", heartbeat=0.05) as lease:
        assert not lease.lapsed()
        lease._stop.set()   # the heartbeat thread stops, as a SIGSTOPped process's does
        lease._thread.join()
        time.sleep(0.3)     # past MISSED_BEATS heartbeats
        before = json.load(open(lease.path))["heartbeat"]
        assert lease.lapsed() and json.load(open(lease.path))["heartbeat"] > before
        assert not lease.lapsed()
        assert leases.holder_alive(json.load(open(lease.path)))
