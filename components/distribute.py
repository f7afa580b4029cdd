"""Training on several workers: MultiWorkerMirroredStrategy from TF_CONFIG, and who writes what.
The worker program and the launcher that starts the workers are orchestration: flows/workers.py."""
from __future__ import annotations

import json
import os
import signal
import tempfile
import threading

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
    Python's handler again (the interrupt handlers: see step_runner.agreed_stop)."""
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
