"""`tapeline gc --keep 0 --grace 0` beside a live run, at every stage's build and commit: the
run's lease and fingerprint locks keep what it holds, the run completes, verify is clean."""
from __future__ import annotations

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
