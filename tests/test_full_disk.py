"""A full disk under the root: one line, exit 2, nothing committed; after freeing space the same
command completes and reuses what was committed."""
from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from artifacts.errors import UserError
from benchmarks.fuzz import no_traceback
from tests.conftest import MNIST, tapeline
from tests.helpers import run_stages

SETS = [f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=20",
        "train.checkpoint_every=5", "eval.batch_size=100"]


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a write past its size fails with ENOSPC."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


def fill(disk: str, leave: int) -> str:
    """A filler file that leaves about `leave` bytes free on the disk."""
    st = os.statvfs(disk)
    path = os.path.join(disk, "filler")
    with open(path, "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return path


def committed(root):
    return sorted(p.split("/")[-3] for p in glob.glob(f"{root}/*/*/*/_COMMITTED"))


def uncommitted(root):
    return [p for p in glob.glob(f"{root}/*/*/*") if "/_work" not in p and "/_locks" not in p
            and not os.path.exists(f"{p}/_COMMITTED")]


def test_disk_full_in_a_beam_stage_is_the_one_line_error(small_disk):
    root = f"{small_disk}/root"
    filler = fill(small_disk, 0)
    with pytest.raises(UserError) as err:
        run_stages(root, "mnist-classifier", SETS, "ingest")
    assert err.value.line() == f"no space left on {root} (mnist-classifier/ingest) — free space and run again"
    assert committed(root) == [] and uncommitted(root) == []
    os.remove(filler)
    done, _ = run_stages(root, "mnist-classifier", SETS, "ingest")
    assert committed(root) == ["ingest"]


@pytest.mark.slow
def test_disk_full_during_training_then_freed_rerun_completes(small_disk):
    root = f"{small_disk}/root"
    args = ["--root", root] + [x for s in SETS for x in ("--set", s)]
    run_stages(root, "mnist-classifier", SETS, "preprocess")
    filler = fill(small_disk, 200_000)  # room for the data stages' outputs, not for a checkpoint
    out = tapeline("run", "mnist-classifier", *args)
    assert out.returncode == 2, out.stderr[-3000:]
    assert no_traceback(out.stderr), out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == \
        f"tapeline: error: no space left on {root} (mnist-classifier/train) — free space and run again"
    assert committed(root) == ["ingest", "preprocess", "validate"] and uncommitted(root) == []
    os.remove(filler)
    out = tapeline("run", "mnist-classifier", "--json", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    stages = json.loads(out.stdout)["stages"]
    assert {k for k, v in stages.items() if v["reused"]} == {f"mnist-classifier/{s}" for s in
                                                              ("ingest", "validate", "preprocess")}
    verify = tapeline("verify", "--root", root)
    assert verify.returncode == 0 and "0 damaged" in verify.stdout, verify.stdout


def test_disk_full_while_committing_leaves_nothing_that_looks_committed(monkeypatch):
    """The marker itself fails half way (an empty _COMMITTED on a full disk): no artifact, one line."""
    import uuid

    import tensorflow as tf

    from artifacts import gfile

    root = f"ram://tapeline-full-{uuid.uuid4().hex}"
    real = gfile.write_bytes

    def full_at_commit(path, data):
        if path.endswith("/_COMMITTED"):
            real(path, b"")  # what a write that dies on ENOSPC leaves behind
            raise tf.errors.ResourceExhaustedError(None, None, f"{path}; No space left on device")
        real(path, data)

    monkeypatch.setattr(gfile, "write_bytes", full_at_commit)
    with pytest.raises(UserError) as err:
        run_stages(root, "mnist-classifier", SETS, "ingest")
    assert err.value.line() == f"no space left on {root} (mnist-classifier/ingest) — free space and run again"
    assert gfile.listdir(f"{root}/mnist-classifier/ingest") in ([], ["_locks"])
    monkeypatch.undo()
    done, store = run_stages(root, "mnist-classifier", SETS, "ingest")
    assert [a.uri for a in store.versions("mnist-classifier", "ingest")] == [done["mnist-classifier/ingest"].uri]


def test_read_only_root_is_the_one_line_error_then_rerun_completes(small_disk):
    """The filesystem under the root turns read-only (a remount after I/O errors): one line, exit 2,
    and once it is writable again the same command completes."""
    root = f"{small_disk}/root"
    run_stages(root, "mnist-classifier", SETS, "ingest")
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    try:
        args = ["--root", root] + [x for s in SETS for x in ("--set", s)]
        out = tapeline("run", "mnist-classifier", *args)
        assert out.returncode == 2, out.stderr[-3000:]
        assert no_traceback(out.stderr), out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        # the first write of a run is its lease (issue 22), else a stage's
        assert last.startswith((f"tapeline: error: cannot write to {root}: Read-only file system (mnist-classifier/",
                                f"tapeline: error: cannot write to {root}: Read-only file system (the run's lease)")), last
        assert last.endswith(") — check the filesystem and run again"), last
    finally:
        subprocess.run(["mount", "-o", "remount,rw", small_disk], check=True)
    assert committed(root) == ["ingest"] and uncommitted(root) == []
    done, _ = run_stages(root, "mnist-classifier", SETS, "preprocess")
    assert committed(root) == ["ingest", "preprocess", "validate"]
