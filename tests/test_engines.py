"""The data stages on real Beam engines (a Dask cluster, the portable job service with an external
worker pool) write the DirectRunner's bytes; the runner is never part of a fingerprint."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from artifacts import gfile
from artifacts.errors import UserError
from flows.workers import free_ports
from tests.conftest import PYTHONPATH, tapeline
from tests.helpers import run_stages

BIN = os.path.dirname(sys.executable)
FASHION = "/usr/share/datasets/fashion-mnist"
TINY = [f"data.source=idx:{FASHION}", "data.max_examples=200"]


def _wait_port(port: int, proc, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout}s: {proc.args}")


def _start(args, log):
    """A server the way a user starts it, in its own process group, with this repo importable
    and this virtualenv's python first on PATH (the worker pool starts `python` from PATH)."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """A dask scheduler with `dask worker --nworkers 2 --nthreads 1`, and Beam's job service with
    an external SDK worker pool: started for real, stopped at the end."""
    logs = tmp_path_factory.mktemp("engine-logs")
    sched, job, pool = free_ports(3)
    procs = []
    try:
        procs.append(_start([f"{BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(sched),
                             "--no-dashboard"], open(logs / "scheduler.log", "w")))
        _wait_port(sched, procs[-1])
        procs.append(_start([f"{BIN}/dask", "worker", f"tcp://127.0.0.1:{sched}", "--nworkers", "2",
                             "--nthreads", "1", "--no-dashboard"], open(logs / "workers.log", "w")))
        procs.append(_start([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                             "--port", str(job)], open(logs / "job.log", "w")))
        procs.append(_start([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             "--service_port", str(pool)], open(logs / "pool.log", "w")))
        for port, proc in ((job, procs[2]), (pool, procs[3])):
            _wait_port(port, proc)
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{sched}", timeout=60) as c:
            c.wait_for_workers(2, timeout=90)
        yield {"dask": f"tcp://127.0.0.1:{sched}", "job": f"localhost:{job}", "pool": f"localhost:{pool}"}
    finally:
        _stop(procs)


def _payloads(done) -> dict:
    return {k: (a.fingerprint, a.manifest["files"]) for k, a in done.items()}


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """The DirectRunner's artifacts; Prism's download is patched to record any attempt."""
    from apache_beam.runners.portability import prism_runner

    attempts = []
    real = prism_runner.urlopen
    prism_runner.urlopen = lambda url, *a, **k: attempts.append(url) or real(url, *a, **k)
    try:
        done, _ = run_stages(str(tmp_path_factory.mktemp("direct")), "fashion-dcgan", TINY, "preprocess")
    finally:
        prism_runner.urlopen = real
    assert attempts == []  # the direct engine is the FnApiRunner: no Prism, no download
    return _payloads(done)


def test_dask_cluster_writes_the_direct_runners_bytes(engines, direct, tmp_path):
    from distributed import Client

    sets = TINY + ["beam.runner=dask", f"beam.dask_address={engines['dask']}", "beam.partitions=3"]
    done, _ = run_stages(str(tmp_path), "fashion-dcgan", sets, "preprocess")
    assert _payloads(done) == direct
    with Client(engines["dask"], timeout=30) as c:  # both worker processes ran ingest shards
        ran = c.run(lambda: "components.stages.ingest" in sys.modules)
    assert len(ran) == 2 and all(ran.values()), ran


def test_portable_job_service_with_external_worker_pool_writes_the_same_bytes(engines, direct, tmp_path):
    sets = TINY + ["beam.runner=portable", f"beam.job_endpoint={engines['job']}",
                   f"beam.worker_pool={engines['pool']}"]
    done, _ = run_stages(str(tmp_path), "fashion-dcgan", sets, "preprocess")
    assert _payloads(done) == direct
    assert gfile.read_json(done["fashion-dcgan/ingest"].path("splits.json"))["splits"] == {"train": 200, "test": 200}


def test_unreachable_engines_are_one_line_errors(tmp_path):
    dead = free_ports(1)[0]  # bound then closed: nothing listens there
    for sets, expect in ((["beam.runner=dask", f"beam.dask_address=tcp://127.0.0.1:{dead}"],
                          f"nothing answers at tcp://127.0.0.1:{dead} (Connection refused) (beam.dask_address)"),
                         (["beam.runner=portable"], "needs a job service (beam.job_endpoint)")):
        proc = tapeline("run", "fashion-dcgan", "--root", str(tmp_path / "r"),
                        *[a for s in TINY + sets for a in ("--set", s)])
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith("tapeline: error: ") and expect in lines[0], lines[0]
    assert not list((tmp_path / "r").glob("*/*/*/_COMMITTED"))
    # a deployment's run (no CLI in front) meets the same check inside the stage
    with pytest.raises(UserError, match="nothing answers"):
        run_stages(str(tmp_path / "p"), "fashion-dcgan",
                   TINY + ["beam.runner=dask", f"beam.dask_address=127.0.0.1:{dead}"], "ingest")
