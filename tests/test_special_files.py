"""A FIFO, device, socket or symlink where the root holds a regular file, and control files that
do not decode: refused without blocking, reported by verify, rebuilt by a run, no traceback."""
from __future__ import annotations

import os

import pytest

from tests.conftest import run_py

# In a child with a timeout: a FIFO opened the blocking way hangs the test instead of failing it.
SCRIPT = r"""
import contextlib, io, os, socket, sys
from artifacts.store import ArtifactStore
from flows.cli import main
from tests.helpers import put, small_root

kind, base = sys.argv[1], sys.argv[2]
TARGETS = ["_COMMITTED", "MANIFEST.json", "data.bin", "sub/more.txt", "champion.json", "run record",
           "lease", "_PENDING", "lock"]

def plant(path):
    if os.path.lexists(path):
        os.remove(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(os.path.dirname(path))  # a socket's path is limited to 108 bytes
        socket.socket(socket.AF_UNIX).bind(os.path.basename(path))
        os.chdir(here)
    elif kind == "device":
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))  # a character device: /dev/zero's
    elif kind == "symlink":
        os.symlink("/dev/zero", path)
    else:  # undecodable bytes
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x80 not text")

for target in TARGETS:
    root = os.path.join(base, target.replace("/", "_").replace(" ", "_"))
    store, old, data, model = small_root(root)
    store.record_run("r1", {"created": "1", "stages": {"p/ingest": {"uri": old.uri}}})
    partial = os.path.join(root, "p", "ingest", "20000101T000000000000-partial")
    os.makedirs(partial)
    path = {"champion.json": os.path.join(root, "p", "champion.json"),
            "run record": os.path.join(root, "runs", "r1.json"),
            "lease": os.path.join(root, "_leases", "x.json"),
            "_PENDING": os.path.join(partial, "_PENDING"),
            "lock": os.path.join(root, "p", "ingest", "_locks", "1" * 64 + ".lock")}.get(
                target, os.path.join(old.uri, target))
    plant(path)
    for args in (["verify"], ["gc", "--keep", "1", "--grace", "0", "--dry-run"], ["gc", "--keep", "1", "--grace", "0"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(args + ["--root", root])
        print(target, args[0], rc, out.getvalue().replace("\n", " | "))
        if target in ("champion.json", "run record", "lease") and args[0] == "gc":
            assert rc == 2, target  # what it protects is unknown: gc removes nothing, in one line
        else:
            assert rc == (1 if args[0] == "verify" and target not in ("_PENDING", "lock") else 0), (target, args)
        if target in ("_COMMITTED", "MANIFEST.json", "data.bin", "sub/more.txt") and args == ["verify"]:
            assert rc == 1 and "DAMAGED " + old.uri in out.getvalue(), out.getvalue()
    again = put(ArtifactStore(root), "1" * 64, b"old")  # the run: the damaged artifact rebuilt
    assert not ArtifactStore(root).check(again), target
print("OK")
"""

KINDS = ["fifo", "socket", "symlink", "undecodable",
         pytest.param("device", marks=pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root"))]


@pytest.mark.parametrize("kind", KINDS)
def test_special_and_undecodable_files_are_refused_without_blocking(tmp_path, kind):
    proc = run_py(SCRIPT, kind, str(tmp_path), timeout=120)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
