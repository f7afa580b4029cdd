"""Beam's engines on this machine, started as a user starts them: a Dask scheduler with two worker
processes, and Beam's portable job service with an external SDK worker pool."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import REPO
from flows.workers import free_ports

BIN = os.path.dirname(sys.executable)


def _wait(port: int, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}: {proc.args}")


@contextlib.contextmanager
def services(workers: int = 2):
    """{"dask": scheduler address, "job": job endpoint, "pool": worker pool}; all stopped on exit.
    Every server runs at nice 10, with this repository importable and this venv first on PATH."""
    env = {**os.environ, "PYTHONPATH": REPO, "PATH": f"{BIN}:{os.environ['PATH']}"}
    logs = tempfile.mkdtemp(prefix="tapeline-engines-")
    sched, job, pool = free_ports(3)
    commands = {
        "scheduler": [f"{BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(sched), "--no-dashboard"],
        "workers": [f"{BIN}/dask", "worker", f"tcp://127.0.0.1:{sched}", "--nworkers", str(workers),
                    "--nthreads", "1", "--no-dashboard"],
        "job": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job)],
        "pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool)],
    }
    procs = {}
    try:
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(["nice", "-n", "10", *cmd], env=env, start_new_session=True,
                                           stdout=open(f"{logs}/{name}.log", "w"), stderr=subprocess.STDOUT)
            if name == "scheduler":
                _wait(sched, procs[name])
        _wait(job, procs["job"])
        _wait(pool, procs["pool"])
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{sched}", timeout=60) as c:
            c.wait_for_workers(workers, timeout=120)
        yield {"dask": f"tcp://127.0.0.1:{sched}", "job": f"localhost:{job}", "pool": f"localhost:{pool}"}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
