"""Training on several workers: MultiWorkerMirroredStrategy from TF_CONFIG, who writes what, the launcher."""
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
    return _STRATEGY


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
    from pipelines.graph import nodes, run_node
    from pipelines.registry import get

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
            node.component.run(Writer(tmp, store.work_dir(p.name, "train", fp), store), inputs, cfg, p)
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


def _pump(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


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


def launch(pipeline: str, overrides: list[str], root: str, workers: int, env: dict | None = None) -> int:
    """Start `workers` worker processes on loopback, each in its own process group with its
    TF_CONFIG; stream their output; if one fails, stop the others (they would wait forever in a
    collective). Returns the first failing exit status, else 0."""
    if workers < 1:
        raise UserError(f"bad worker count {workers}", "--workers", "use 1 or more")
    addrs = [f"localhost:{port}" for port in free_ports(workers)]
    sets = list(overrides) + ["train.strategy=multi_worker", f"train.workers={workers}"]
    args = [a for s in sets for a in ("--set", s)]
    procs, pumps = [], []
    for i in range(workers):
        tf_config = {"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}}
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker", pipeline, "--root", root, *args],
            env={**os.environ, **(env or {}), "TF_CONFIG": json.dumps(tf_config)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(proc)
        pumps.append(threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}] "), daemon=True))
        pumps[-1].start()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        _stop(procs)
        for t in pumps:
            t.join(5)
