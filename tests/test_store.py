"""The artifact store: commit marker, verify, rebuild of damage, crash safety, locking."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from artifacts import gfile
from artifacts.maintenance import gc, verify
from artifacts.store import ArtifactStore, InputRef
from tests.conftest import PYTHONPATH
from tests.helpers import build_into

SRC = InputRef("idx:/data", "f" * 64)


def put(store, fp="a" * 64, payload=b"hello"):
    return store.get_or_build("p", "ingest", fp, type="Examples", params={"x": 1},
                              inputs={"source": SRC}, code="c0", build=build_into(payload))


def test_commit_manifest_and_reuse(root):
    store = ArtifactStore(root)
    first = put(store)
    assert not first.reused
    art = first.artifact
    m = art.manifest
    assert m["type"] == "Examples" and m["fingerprint"] == "a" * 64 and m["params"] == {"x": 1}
    assert set(m["files"]) == {"data.bin", "sub/more.txt"}
    assert m["files"]["data.bin"]["size"] == 5
    assert m["inputs"]["source"] == {"uri": "idx:/data", "fingerprint": "f" * 64}
    assert "tensorflow" in m["packages"] and m["code_digest"] == "c0"
    assert gfile.exists(art.path("_COMMITTED"))
    second = put(store)
    assert second.reused and second.artifact.uri == art.uri
    assert [a.uri for a in store.versions("p", "ingest")] == [art.uri]


@pytest.mark.parametrize("damage", ["delete", "alter", "extra", "manifest"])
def test_damaged_artifact_is_rebuilt_and_verify_names_it(root, damage):
    store = ArtifactStore(root)
    art = put(store).artifact
    if damage == "delete":
        gfile.remove(art.path("sub", "more.txt"))
    elif damage == "alter":
        gfile.write_bytes(art.path("data.bin"), b"HELLO")  # same size, other content
    elif damage == "extra":
        gfile.write_bytes(art.path("stray.bin"), b"?")
    else:
        m = gfile.read_json(art.path("MANIFEST.json"))
        m["params"] = {"x": 2}
        gfile.write_json(art.path("MANIFEST.json"), m)
    checked, damaged = verify(store)
    assert checked == 1 and [d.uri for d in damaged] == [art.uri]
    again = put(store)
    assert not again.reused and again.artifact.uri != art.uri
    assert store.check(again.artifact) == []


def test_whole_artifact_deleted_is_rebuilt(root):
    store = ArtifactStore(root)
    art = put(store).artifact
    gfile.rmtree(art.uri)
    again = put(store)
    assert not again.reused and gfile.exists(again.artifact.path("data.bin"))


def test_failed_build_leaves_nothing(root):
    store = ArtifactStore(root)

    def bad(w):
        gfile.write_bytes(w.file("half.bin"), b"x")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        store.get_or_build("p", "ingest", "b" * 64, type="T", params={}, inputs={}, code="c", build=bad)
    assert store.versions("p", "ingest") == []
    assert gfile.listdir(store.stage_root("p", "ingest")) in ([], ["_locks"])


KILL_SCRIPT = r"""
import sys, time
from artifacts import gfile
from artifacts.store import ArtifactStore
root, marker = sys.argv[1], sys.argv[2]
def build(w):
    gfile.write_bytes(w.file("part-0"), b"x" * 1000)
    open(marker, "w").close()
    time.sleep(120)
ArtifactStore(root).get_or_build("p", "preprocess", "c" * 64, type="T", params={}, inputs={},
                                  code="c", build=build)
"""


def test_sigkill_while_writing_leaves_nothing_listed_or_reused(local_root, tmp_path):
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, local_root, str(marker)],
                            env={**os.environ, "PYTHONPATH": PYTHONPATH})
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ArtifactStore(local_root)
    left = [n for n in gfile.listdir(store.stage_root("p", "preprocess")) if not n.startswith("_")]
    assert len(left) == 1  # the half-written directory is there...
    assert store.versions("p", "preprocess") == []  # ...but is not an artifact
    assert store.find("p", "preprocess", "c" * 64) is None
    run = store.get_or_build("p", "preprocess", "c" * 64, type="T", params={}, inputs={}, code="c",
                             build=build_into(b"fresh"))
    assert not run.reused
    store.record_run("r1", {"created": "1", "stages": {"p/preprocess": {"uri": run.artifact.uri}}})
    removed = gc(store, keep=5)
    assert removed == [gfile.join(store.stage_root("p", "preprocess"), left[0])]
    assert verify(store) == (1, [])


RACE_SCRIPT = r"""
import sys, time
from artifacts import gfile
from artifacts.store import ArtifactStore
root, log = sys.argv[1], sys.argv[2]
def build(w):
    with open(log, "a") as f:
        f.write("build\n")
    time.sleep(2)
    gfile.write_bytes(w.file("model"), b"weights")
run = ArtifactStore(root).get_or_build("p", "train", "d" * 64, type="Model", params={},
                                       inputs={}, code="c", build=build)
print("reused" if run.reused else "built", run.artifact.uri)
"""


def test_two_processes_racing_on_one_fingerprint_make_one_artifact(local_root, tmp_path):
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, local_root, str(log)],
                              env={**os.environ, "PYTHONPATH": PYTHONPATH},
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["built", "reused"]
    assert outs[0][1] == outs[1][1]
    assert log.read_text().count("build") == 1
    assert len(ArtifactStore(local_root).versions("p", "train")) == 1


def test_gc_keeps_champion_and_recent_runs(root):
    store = ArtifactStore(root)
    old = put(store, fp="1" * 64, payload=b"old").artifact
    champ = put(store, fp="2" * 64, payload=b"champ").artifact
    recent = put(store, fp="3" * 64, payload=b"recent").artifact
    store.set_champion("p", {"version": champ.version, "artifacts": {"model": champ.uri}})
    store.record_run("r1", {"created": "1", "stages": {"p/ingest": {"uri": old.uri}}})
    store.record_run("r2", {"created": "2", "stages": {"p/ingest": {"uri": recent.uri}}})
    assert gc(store, keep=1) == [old.uri]
    assert {a.uri for a in store.versions("p", "ingest")} == {champ.uri, recent.uri}
