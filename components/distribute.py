"""Training on several workers: MultiWorkerMirroredStrategy from TF_CONFIG, who writes what, the launcher."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from artifacts.errors import UserError

_STRATEGY = None
_HOW = "start the workers with `tapeline train-workers PIPELINE --workers N`, or set TF_CONFIG on each machine"


def cluster() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError("train.strategy=multi_worker needs TF_CONFIG (the cluster and this worker's index)",
                        "environment", _HOW)
    try:
        conf = json.loads(raw)
        workers = conf["cluster"]["worker"]
        kind, index = conf["task"]["type"], int(conf["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"TF_CONFIG is not a worker cluster: {e}", "TF_CONFIG",
                        'write {"cluster": {"worker": [HOST:PORT, ...]}, "task": {"type": "worker", "index": I}}') \
            from None
    if kind != "worker" or not 0 <= index < len(workers) or "chief" in conf["cluster"]:
        raise UserError(f"TF_CONFIG task {kind}:{index} is not one of {len(workers)} workers", "TF_CONFIG",
                        "use type worker, an index below the worker count, and no separate chief")
    return index, len(workers)


def is_chief() -> bool:
    """Worker 0 is the chief (TF's rule without a "chief" task); one process is its own chief."""
    return not os.environ.get("TF_CONFIG") or cluster()[0] == 0


def strategy(workers: int):
    """The process's MultiWorkerMirroredStrategy. Create it before any other TensorFlow op (the
    worker command does so first thing): it configures the collective ops of the eager context."""
    global _STRATEGY
    if _STRATEGY is None:
        index, n = cluster()
        if n != workers:
            raise UserError(f"TF_CONFIG lists {n} workers but train.workers={workers}", "TF_CONFIG",
                            f"--set train.workers={n} (the worker count is part of what training produces)")
        import tensorflow as tf

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        _reclaim_sigterm()
    return _STRATEGY


def _reclaim_sigterm() -> None:
    """The strategy's coordination service puts TensorFlow's own C++ SIGTERM handler (tsl's
    SigtermNotifier, there for PreemptionCheckpointHandler) in place of Python's: a SIGTERM then
    never reaches Python, and the worker trains on as if nothing happened (measured). Install
    Python's handler again (the interrupt handlers: see train._agreed_stop)."""
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)


def scratch_dir(work: str) -> str:
    """Where this worker writes checkpoints, summaries and samples: the chief writes the stage's
    work directory; every other worker its own temporary folder (TF's rule: all save, or the
    collectives inside a save deadlock; only the chief's copy is ever read back)."""
    if is_chief():
        return work
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=f"tapeline-worker-{cluster()[0]}-")
    atexit.register(shutil.rmtree, path, True)
    return path


# -- the program every worker runs -------------------------------------------------------------
WORKER_STAGES = ("ingest", "validate", "preprocess", "train")


def run_worker(pipeline_name: str, overrides: list[str], root: str | None) -> dict:
    """One worker: the pipeline's data stages (reused, or built once under the store's lock),
    then its train stage in lockstep with the other workers. Only the chief commits."""
    import shutil

    from artifacts.store import Writer, open_store
    from flows.graph import nodes, run_node
    from flows.registry import get

    p = get(pipeline_name)
    cfg = p.config(overrides)
    if cfg.train.strategy != "multi_worker":
        raise UserError("the worker command trains with train.strategy=multi_worker", "--set",
                        "add --set train.strategy=multi_worker")
    strategy(cfg.train.workers)  # first: before the data stages run any TensorFlow op
    store = open_store(root)
    done: dict = {}
    for node in nodes(p, cfg):
        if node.pipeline.name != p.name or node.stage not in WORKER_STAGES:
            continue
        if node.stage != "train" or is_chief():
            done[node.key] = run_node(store, node, done).artifact
            continue
        inputs = {name: done[key] for name, key in node.inputs.items()}
        fp = done_fingerprint(node, inputs)
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


def done_fingerprint(node, inputs) -> str:
    from artifacts.fingerprint import stage_fingerprint

    return stage_fingerprint(node.stage, node.code(), node.params(), {k: v.fingerprint for k, v in inputs.items()})


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
_LINE = re.compile(r"interrupted during (\S+) at step (\d+)/(\d+) \((checkpoint saved|last checkpoint kept)\)")


def launch(pipeline: str, overrides: list[str], root: str, workers: int, env: dict | None = None,
           grace: float = 60.0) -> int:
    """Start `workers` worker processes on loopback, each in its own process group with its
    TF_CONFIG; stream their output; if one fails, stop the others (they would wait forever in a
    collective). Returns the first failing exit status, else 0.

    A SIGINT or SIGTERM to the launcher is passed on to every worker; a signal to any one worker
    reaches the others through the training step (they agree on the step to stop at: see
    train._agreed_stop). Either way every worker saves that step and exits, and the launcher
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
        m = _LINE.match(line or "")
        if m:
            return Interrupted(signum, m[1], int(m[2]), int(m[3]), m[4] == "checkpoint saved")
    return Interrupted(signum)
