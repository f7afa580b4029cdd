"""Training checkpoints: resume from the newest one that restores, skipping damaged ones."""
from __future__ import annotations

import io
import json
import re
import time
import uuid

import numpy as np

from artifacts import gfile

STATE_FILE = "checkpoint"  # CheckpointManager's list of checkpoints (a text proto)
_NAME = re.compile(r"ckpt-\d+")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _warn(text: str) -> None:
    print(f"train: warning: {text}", flush=True)


def manager(ckpt, directory: str, keep: int):
    """A CheckpointManager over directory, once its state file is verified.

    The manager acts on that file: it restores what it names and, past max_to_keep, deletes the
    `.index` and `.data-*` files of what it names. A file that does not parse, or that names
    anything but `ckpt-N` in this directory (a root's writer could point it at files elsewhere),
    is reported in one warning line and written again from the checkpoints on disk."""
    import tensorflow as tf

    _, why = _listed(directory)
    if why:
        state = gfile.join(directory, STATE_FILE)
        _warn(f"checkpoint list {state} {why}; listing the checkpoints on disk instead")
        on_disk = _on_disk(directory)
        if on_disk:  # oldest first and relative, as the manager writes it: it sweeps them as usual
            _write_state(directory, [p.rsplit("/", 1)[1] for p in on_disk])
        else:
            gfile.remove(state)
    return tf.train.CheckpointManager(ckpt, directory, max_to_keep=keep)


def _write_state(directory: str, names: list[str]) -> None:
    from google.protobuf import text_format
    from tensorflow.python.checkpoint.checkpoint_management import CheckpointState

    # timestamps after last_preserved_timestamp: the manager may delete them past max_to_keep
    # (without timestamps it would keep them all, for ever)
    now = time.time()
    state = CheckpointState(model_checkpoint_path=names[-1], all_model_checkpoint_paths=names,
                            all_model_checkpoint_timestamps=[now - len(names) + i for i in range(len(names))],
                            last_preserved_timestamp=now - len(names) - 1)
    gfile.write_bytes(gfile.join(directory, STATE_FILE), text_format.MessageToString(state).encode())


def _listed(directory: str) -> tuple[list[str], str | None]:
    """The checkpoint names (ckpt-N) the state file in directory lists, and why it cannot be
    trusted (None when it can, or when there is no state file)."""
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow.python.checkpoint.checkpoint_management import CheckpointState

    path = gfile.join(directory, STATE_FILE)
    if not gfile.exists(path):
        return [], None
    try:
        parsed = CheckpointState()
        text_format.Merge(gfile.read_bytes(path).decode("utf-8"), parsed)
    except (text_format.ParseError, UnicodeDecodeError, tf.errors.OpError, OSError) as e:
        return [], f"does not load ({_one_line(e)})"
    if not parsed.model_checkpoint_path:
        return [], "names no checkpoint"
    strange = [n for n in (parsed.model_checkpoint_path, *parsed.all_model_checkpoint_paths)
               if not _ours(directory, n)]
    if strange:
        return [], f"names {strange[0]!r}, not a checkpoint of this directory"
    return [n.rpartition("/")[2] for n in parsed.all_model_checkpoint_paths], None


def _ours(directory: str, path: str) -> bool:
    head, _, name = path.rpartition("/")
    return bool(_NAME.fullmatch(name)) and head in ("", directory.rstrip("/"))


def _on_disk(directory: str) -> list[str]:
    """Checkpoint prefixes in directory by their .index files, lowest step first."""
    found = {}
    for index in gfile.glob(gfile.join(directory, "ckpt-*.index")):
        name = index.rsplit("/", 1)[-1][: -len(".index")]
        if _NAME.fullmatch(name):
            found[int(name[5:])] = gfile.join(directory, name)
    return [found[k] for k in sorted(found)]


def _candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in directory, highest step first: what the state file lists, when it
    can be trusted, or else what is on disk; always as ckpt-N in directory, never a path the
    file names. By step, not by list order: a skipped checkpoint stays listed until training
    reaches its step again and overwrites it."""
    names, _ = _listed(directory)  # an untrusted list: manager() reports and rewrites it
    listed = {int(n[5:]): gfile.join(directory, n) for n in names}
    if not listed:
        listed = {int(p.rsplit("-", 1)[1]): p for p in _on_disk(directory)}
    return [listed[k] for k in sorted(listed, reverse=True)]


def save_history(path: str, history: dict, epoch_log: list) -> None:
    """The loss history and epoch log as one .npz (plain arrays and JSON: load_history reads it
    without a pickle); beside each checkpoint, and the exported history.npz."""
    buf = io.BytesIO()
    np.savez(buf, epochs=json.dumps(epoch_log), **{k: np.asarray(v, np.float32) for k, v in history.items()})
    gfile.write_bytes(path, buf.getvalue())


def prune_histories(work: str, manager) -> None:
    """Drop the histories of checkpoints the manager no longer keeps."""
    keep = {f"history-{p.rsplit('-', 1)[-1]}.npz" for p in manager.checkpoints}
    for path in gfile.glob(gfile.join(work, "history-*.npz")):
        if path.rsplit("/", 1)[-1] not in keep:
            gfile.remove(path)


def read_history(path: str) -> tuple[dict, list]:
    """({metric: per-step values}, the epoch log) of a save_history file, never unpickled."""
    with np.load(io.BytesIO(gfile.read_bytes(path)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "epochs"}, json.loads(str(data["epochs"]))


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
