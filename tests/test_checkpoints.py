"""A damaged checkpoint (truncated, bit-flipped, missing shard, planted history) is skipped for
the next older one, and the rerun ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import PYTHONPATH
from tests.helpers import PickleBomb

FASHION = "/usr/share/datasets/fashion-mnist"
# the DCGAN at its default batch size (256), shuffle buffer and steps per call; 2 steps per epoch
SETS = [f"data.source=idx:{FASHION}", "data.max_examples=512", "train.max_steps=6",
        "train.checkpoint_every=2", "train.log_every=2"]
STOP_AT = 4  # the stopped run leaves checkpoints 2 and 4 (keep_checkpoints defaults to 2)


SCRIPT = r"""
import contextlib, glob, io, json, os, shutil, sys
import numpy as np
from components.contract import Runtime
from flows.registry import get
from tests.helpers import run_stages, weights

base, sets, stop_at, marker = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
damages = json.loads(sys.argv[5])
PIPE = "fashion-dcgan"

def run(root, runtime=None):
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        done, _ = run_stages(root, PIPE, sets, "train", runtime)
    return weights(done[PIPE + "/train"].uri), log.getvalue().splitlines()

class Stop(Exception):
    pass

def stop(step, total):
    if step >= stop_at:
        raise Stop()

straight, _ = run(base + "/straight")
try:  # the orchestrator's progress callback stops training mid-way
    run(base + "/stopped", Runtime.from_config(get(PIPE).config(sets), on_progress=stop))
except Stop:
    pass
assert not glob.glob(base + "/stopped/" + PIPE + "/train/*/_COMMITTED")

def damage(root, kind):
    work = glob.glob(root + "/" + PIPE + "/train/_work/*")[0]
    ckpts = sorted(glob.glob(work + "/checkpoints/ckpt-*.index"), key=lambda p: int(p.split("-")[-1][:-6]))
    newest = [ckpts[-1][:-6]] if kind != "all" else [c[:-6] for c in ckpts]
    for n, prefix in enumerate(newest):
        shard = glob.glob(prefix + ".data-*")[0]
        data = open(shard, "rb").read()
        if kind == "truncate":
            open(shard, "wb").write(data[: len(data) // 2])
        elif kind == "bitflip" or (kind == "all" and n == 0):
            i = len(data) // 2
            open(shard, "wb").write(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        elif kind == "all":  # the newest one's shard is missing
            os.remove(shard)
        elif kind == "pickle":
            step = prefix.rsplit("-", 1)[-1]
            open(work + "/history-" + step + ".npz", "wb").write(bytes.fromhex(sys.argv[6]))
    return [os.path.basename(p) for p in newest]

out = {}
for kind in damages:
    root = base + "/" + kind
    shutil.copytree(base + "/stopped", root)
    damaged = damage(root, kind)
    w, lines = run(root)
    out[kind] = {"damaged": damaged, "identical": w.keys() == straight.keys() and bool(w) and all(
                     all(np.array_equal(x, y) for x, y in zip(w[k], straight[k])) for k in w),
                 "lines": [ln for ln in lines if ln.startswith("train: warning") or "resumed from" in ln]}
out["marker_exists"] = os.path.exists(marker)
print(json.dumps(out))
"""


def _pickled_npz(marker: str) -> bytes:
    """A history file whose arrays are pickled objects: only np.load(allow_pickle=True) runs them."""
    import io

    import numpy as np

    arr = np.empty(1, dtype=object)
    arr[0] = PickleBomb(marker)
    buf = io.BytesIO()
    np.savez(buf, g_loss=arr, d_loss=arr, epochs=arr)
    return buf.getvalue()


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_skipped_and_the_run_ends_identical(tmp_path):
    marker = str(tmp_path / "MARKER")
    kinds = ["truncate", "bitflip", "pickle", "all"]  # all: the newest shard missing, the older bit-flipped
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(SETS), str(STOP_AT), marker,
                           json.dumps(kinds), _pickled_npz(marker).hex()],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["marker_exists"]  # the planted history was never unpickled
    for kind in ("truncate", "bitflip", "pickle"):
        lines = out[kind]["lines"]
        assert out[kind]["damaged"] == [f"ckpt-{STOP_AT}"], kind
        warnings = [ln for ln in lines if ln.startswith("train: warning")]
        assert len(warnings) == 1 and f"ckpt-{STOP_AT} " in warnings[0], (kind, lines)
        assert lines[-1].startswith(f"train: resumed from step {STOP_AT - 2} "), (kind, lines)
        assert out[kind]["identical"], kind
    lines = out["all"]["lines"]
    assert [ln.split(" in ")[0] for ln in lines] == [f"train: warning: checkpoint ckpt-{STOP_AT}",
                                                     f"train: warning: checkpoint ckpt-{STOP_AT - 2}",
                                                     "train: warning: no checkpoint"], lines
    assert out["all"]["identical"]


def _tiny(directory, keep=2, steps=(1, 2, 3)):
    """A one-variable checkpoint saved at `steps` through checkpoints.manager()."""
    import tensorflow as tf

    from components import checkpoints

    v = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(step=v)
    m = checkpoints.manager(ckpt, str(directory), keep)
    for s in steps:
        v.assign(s)
        m.save(checkpoint_number=s)
    return ckpt, v


def test_a_checkpoint_list_that_does_not_parse_is_rewritten_from_disk(tmp_path, capsys):
    from components import checkpoints

    _tiny(tmp_path)
    (tmp_path / "checkpoint").write_bytes(b"\xff\xfe model_checkpoint_path: {{{")
    capsys.readouterr()
    ckpt, v = _tiny(tmp_path, steps=(4,))
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train: warning")]
    assert len(warnings) == 1 and "does not load" in warnings[0], warnings
    # rebuilt from disk (ckpt-2, ckpt-3), so the manager swept the oldest as usual after saving ckpt-4
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-3.index", "ckpt-4.index"]
    assert checkpoints._candidates(str(tmp_path)) == [str(tmp_path / "ckpt-4"), str(tmp_path / "ckpt-3")]


def test_a_checkpoint_list_naming_files_elsewhere_never_reaches_them(tmp_path, capsys):
    """A root's writer points the list at files outside the work directory: the manager would
    restore them and, past max_to_keep, delete them. They are neither read nor deleted."""
    from components import checkpoints

    work, victim = tmp_path / "work", tmp_path / "elsewhere"
    victim.mkdir()
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (victim / name).write_text("keep me")
    _tiny(work)
    # with timestamps newer than last_preserved_timestamp, a plain CheckpointManager deletes the
    # files it names once max_to_keep newer ones exist (tried: it does, absolute path or relative)
    listed = [str(victim / "ckpt-1"), "../elsewhere/ckpt-1", "ckpt-3"]
    (work / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n' + "".join(
        f'all_model_checkpoint_paths: "{p}"\nall_model_checkpoint_timestamps: {time.time()}\n' for p in listed))
    assert checkpoints._candidates(str(work)) == [str(work / "ckpt-3"), str(work / "ckpt-2")]
    capsys.readouterr()
    _tiny(work, steps=(4, 5, 6))
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train: warning")]
    assert len(warnings) == 1 and "not a checkpoint of this directory" in warnings[0], warnings
    assert sorted(p.name for p in victim.iterdir()) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    assert all(p.read_text() == "keep me" for p in victim.iterdir())
    assert sorted(p.name for p in work.glob("ckpt-*.index")) == ["ckpt-5.index", "ckpt-6.index"]
