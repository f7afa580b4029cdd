"""Training checkpoints: resume from the newest one that restores, skipping damaged ones."""
from __future__ import annotations

import io
import json
import re
import uuid

import numpy as np

from artifacts import gfile

STATE_FILE = "checkpoint"  # CheckpointManager's list of checkpoints (a text proto)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _warn(text: str) -> None:
    print(f"train: warning: {text}", flush=True)


def manager(ckpt, directory: str, keep: int):
    """A CheckpointManager over directory; a state file TensorFlow refuses is reported and set
    aside (the checkpoints themselves are still found on disk by restore())."""
    import tensorflow as tf

    try:
        return tf.train.CheckpointManager(ckpt, directory, max_to_keep=keep)
    except ValueError as e:  # e.g. an empty state file: "Invalid checkpoint state loaded from ..."
        _warn(f"checkpoint list {gfile.join(directory, STATE_FILE)} does not load ({_one_line(e)}); "
              "looking for checkpoints on disk")
        gfile.remove(gfile.join(directory, STATE_FILE))
        return tf.train.CheckpointManager(ckpt, directory, max_to_keep=keep)


def _candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in directory, highest step first: the CheckpointManager's list, or
    (its state file lost) what is on disk. By step, not by list order: a skipped checkpoint stays
    listed until training reaches its step again and overwrites it."""
    import tensorflow as tf

    try:
        state = tf.train.get_checkpoint_state(directory)
    except ValueError:  # an empty state file (manager() reports it where it owns the directory)
        state = None
    paths = list(state.all_model_checkpoint_paths) if state else []
    paths = paths or [p[: -len(".index")] for p in gfile.glob(gfile.join(directory, "ckpt-*.index"))]
    steps = {}
    for path in paths:
        m = re.fullmatch(r"ckpt-(\d+)", path.rsplit("/", 1)[-1])
        if m:
            steps[int(m.group(1))] = path
    return [steps[k] for k in sorted(steps, reverse=True)]


def load_history(work: str, step: int, metrics) -> tuple[dict, list]:
    """The loss history saved with checkpoint `step`: plain arrays and JSON, never a pickle; it
    must hold exactly `step` values of every metric."""
    with np.load(io.BytesIO(gfile.read_bytes(gfile.join(work, f"history-{step}.npz"))),
                 allow_pickle=False) as saved:
        history = {k: list(saved[k]) for k in metrics}
        epoch_log = json.loads(str(saved["epochs"]))
    short = [k for k, v in history.items() if len(v) != step]
    if short or not isinstance(epoch_log, list):
        raise ValueError(f"history holds {[len(history[k]) for k in short]} values of {short}, not {step}")
    return history, epoch_log


# What a damaged checkpoint or history file raises (TensorFlow's own crc32c and length checks,
# a missing shard, a zip or JSON that does not parse); anything else is a bug and propagates.
_DAMAGE = (IndexError, ValueError, KeyError, EOFError, OSError, AssertionError)


def restore(ckpt, directory: str, step_var, work: str, metrics, prepare=None) -> tuple[dict, list]:
    """Restore ckpt from the newest checkpoint in directory that restores and whose history (in
    work) loads; each one
    that does not is reported in one warning line and skipped for the next older one. Returns
    (history, epoch log) at that step; with none left, the state training starts from (step 0).

    A failed restore may already have assigned some variables, so the fresh state is written
    first (in memory) and put back after every failure: a fallback starts from exactly the state
    an uninterrupted run had there. prepare(step) runs before each attempt (the train stage
    starts a fresh iterator of the epoch that step is in), prepare(None) after a failure (it
    drops that iterator again, so the object graph is the snapshot's)."""
    import tensorflow as tf

    empty = ({k: [] for k in metrics}, [])
    candidates = _candidates(directory)
    if not candidates:
        return empty
    ckpt.save_counter  # created lazily by the first restore: create it now, so the snapshot holds it
    snapshot = ckpt.write(f"ram://tapeline-fresh-{uuid.uuid4().hex}/state")
    try:
        for path in candidates:
            name = path.rsplit("/", 1)[-1]
            try:
                step = int(name.split("-")[1])
                history = load_history(work, step, metrics)
                if prepare:
                    prepare(step)
                ckpt.restore(path).assert_existing_objects_matched()
                if int(step_var.numpy()) != step:
                    raise ValueError(f"it holds step {int(step_var.numpy())}")
            except (tf.errors.OpError, *_DAMAGE) as e:
                _warn(f"checkpoint {name} in {work} does not restore ({_one_line(e)}); "
                      "skipping it for the next older one")
                if prepare:
                    prepare(None)
                ckpt.restore(snapshot).assert_existing_objects_matched()
                continue
            print(f"train: resumed from step {step} ({path})", flush=True)
            return history
        _warn(f"no checkpoint in {work} restores; training from step 0")
        return empty
    finally:
        gfile.rmtree(snapshot.rsplit("/", 1)[0])
