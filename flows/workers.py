"""Training on several workers: the program every worker runs (its data stages, then train in
lockstep) and the launcher that starts N of them on this machine. The strategy itself, and who
writes what, is components/distribute.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from artifacts.errors import UserError
from components.distribute import cluster, is_chief, strategy


# -- the program every worker runs -------------------------------------------------------------
def run_worker(pipeline_name: str, overrides: list[str], root: str | None) -> dict:
    """One worker: the pipeline's data stages (reused, or built once under the store's lock),
    then its train stage in lockstep with the other workers. Only the chief commits."""
    import shutil

    from artifacts.store import Writer, open_store
    from flows.graph import needed, nodes, run_node
    from flows.registry import get

    p = get(pipeline_name)
    cfg = p.config(overrides)
    if cfg.train.strategy != "multi_worker":
        raise UserError("the worker command trains with train.strategy=multi_worker", "--set",
                        "add --set train.strategy=multi_worker")
    strategy(cfg.train.workers)  # first: before the data stages run any TensorFlow op
    store = open_store(root)
    done: dict = {}
    for node in needed(nodes(p, cfg), [f"{p.name}/train"]):
        if node.stage != "train" or is_chief():
            done[node.key] = run_node(store, node, done).artifact
            continue
        inputs = {name: done[key] for name, key in node.inputs.items()}
        fp = node.fingerprint({k: v.fingerprint for k, v in inputs.items()})
        if store.find(p.name, "train", fp) is not None:  # committed: the chief reuses it too
            return {"worker": cluster()[0], "chief": False, "fingerprint": fp}
        tmp = tempfile.mkdtemp(prefix="tapeline-worker-out-")
        try:  # same computation, payload thrown away: the chief's artifact is the result
            node.component.run(Writer(tmp, store.work_dir(p.name, "train", fp), store), inputs,
                               node.params_object(), node.runtime())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"worker": cluster()[0], "chief": False, "fingerprint": fp}
    art = done[f"{p.name}/train"]
    return {"worker": cluster()[0], "chief": True, "fingerprint": art.fingerprint, "uri": art.uri}


# -- the launcher: N workers on this machine -----------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pump(stream, prefix: str, said: list, i: int) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()
        if line.startswith("tapeline: interrupted"):
            said[i] = line[len("tapeline: "):].strip()


def _stop(procs, grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    end = time.time() + grace
    for p in procs:
        try:
            p.wait(max(end - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# a worker's exit status when a signal stopped it: its own line and 128+N, or the signal itself
_STOPPED = {128 + signal.SIGINT: signal.SIGINT, 128 + signal.SIGTERM: signal.SIGTERM,
            -signal.SIGINT: signal.SIGINT, -signal.SIGTERM: signal.SIGTERM}


def launch(pipeline: str, overrides: list[str], root: str, workers: int, env: dict | None = None,
           grace: float = 60.0) -> int:
    """Start `workers` worker processes on loopback, each in its own process group with its
    TF_CONFIG; stream their output; if one fails, stop the others (they would wait forever in a
    collective). Returns the first failing exit status, else 0.

    A SIGINT or SIGTERM to the launcher is passed on to every worker; a signal to any one worker
    reaches the others through the training step (they agree on the step to stop at: see
    step_runner.agreed_stop). Either way every worker saves that step and exits, and the launcher
    then raises Interrupted with the chief's step. Workers that have not exited `grace` seconds
    after the first stopped one (stopped before training, the others wait in a collective) are
    stopped as after a failure."""
    from components import interrupt

    if workers < 1:
        raise UserError(f"bad worker count {workers}", "--workers", "use 1 or more")
    addrs = [f"localhost:{port}" for port in free_ports(workers)]
    sets = list(overrides) + ["train.strategy=multi_worker", f"train.workers={workers}"]
    args = [a for s in sets for a in ("--set", s)]
    procs, pumps, said = [], [], [None] * workers
    try:
        with interrupt.deferred():  # the first signal is passed on; a second one stops all at once
            for i in range(workers):
                tf_config = {"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}}
                proc = subprocess.Popen(
                    [sys.executable, "-m", "flows.cli", "worker", pipeline, "--root", root, *args],
                    env={**os.environ, **(env or {}), "TF_CONFIG": json.dumps(tf_config)},
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
                procs.append(proc)
                pumps.append(threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}] ", said, i),
                                              daemon=True))
                pumps[-1].start()
            passed_on, first_stopped = None, None
            while True:
                signum = interrupt.requested()
                if signum and not passed_on:
                    for p in procs:
                        if p.poll() is None:
                            os.killpg(p.pid, signum)
                    passed_on = signum
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0) and c not in _STOPPED]
                if failed:
                    _stop(procs)
                    return failed[0]
                stopped = [_STOPPED[c] for c in codes if c in _STOPPED]
                if stopped and first_stopped is None:
                    first_stopped = time.time()
                if all(c is not None for c in codes):
                    if not stopped:
                        return 0
                    for t in pumps:  # the workers' last lines, the chief's interrupted line among them
                        t.join(5)
                    raise _interrupted(passed_on or stopped[0], said)
                if first_stopped is not None and time.time() - first_stopped > grace:
                    _stop(procs)
                    raise _interrupted(passed_on or stopped[0], said)
                time.sleep(0.2)
    finally:
        _stop(procs)
        for t in pumps:
            t.join(5)


def _interrupted(signum: int, said: list):
    """The launcher's Interrupted: the step the chief (else any worker) says it stopped at."""
    from components.interrupt import Interrupted

    for line in said:
        stop = Interrupted.parse(line, signum)
        if stop is not None and stop.step is not None:
            return stop
    return Interrupted(signum)
