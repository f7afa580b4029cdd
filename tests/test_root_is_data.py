"""The root is the user's data (issue 22): nothing outside it touched, nothing it needs removed,
nothing in it trusted. Store-level, on tiny artifacts: symlinks at every level with bait outside,
traversal strings in control files, the root spelled or moved another way."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from artifacts import gfile
from artifacts.errors import UserError
from artifacts.maintenance import gc, verify
from artifacts.store import ArtifactStore
from tests.helpers import put, small_root

def bait(tmp_path) -> Path:
    """A tree outside the root shaped so that following it at any level of the root (as a
    pipeline, a stage or a version) would make gc remove something of it."""
    b = tmp_path / "bait"
    (b / "v1" / "sub" / "x").mkdir(parents=True)
    (b / "v1" / "junk.bin").write_bytes(b"precious")
    (b / "v1" / "sub" / "x" / "junk.bin").write_bytes(b"precious too")
    (b / "f.lock").write_bytes(b"keep me")
    (b / "champion.json").write_bytes(b'{"artifacts": {}}')
    return b


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


LEVELS = ["top", "pipeline", "stage", "artifact", "lock", "champion-lock", "file", "work", "runs", "champion"]


@pytest.mark.parametrize("level", LEVELS)
def test_a_symlink_planted_at_any_level_is_never_followed(tmp_path, level):
    root = str(tmp_path / "root")
    store, old, data, model = small_root(root)
    b = bait(tmp_path)
    r = Path(root)
    if level == "top":
        (r / "evil").symlink_to(b)
    elif level == "pipeline":
        (r / "p" / "evil").symlink_to(b)
    elif level == "stage":
        (r / "p" / "ingest" / "evil").symlink_to(b)
    elif level == "artifact":  # a committed artifact replaced by a link to a copy outside
        shutil.copytree(old.uri, b / "copy")
        shutil.rmtree(old.uri)
        os.symlink(b / "copy", old.uri)
    elif level == "lock":
        (r / "p" / "ingest" / "_locks").mkdir(exist_ok=True)
        (r / "p" / "ingest" / "_locks" / ("4" * 64 + ".lock")).symlink_to(b / "f.lock")
    elif level == "champion-lock":
        (r / "p" / "promote" / "_locks").mkdir(parents=True)
        (r / "p" / "promote" / "_locks" / "champion.lock").symlink_to(b / "f.lock")
    elif level == "file":
        os.remove(os.path.join(old.uri, "data.bin"))
        os.symlink(b / "v1" / "junk.bin", os.path.join(old.uri, "data.bin"))
    elif level == "work":
        (r / "p" / "ingest" / "_work").mkdir(exist_ok=True)
        (r / "p" / "ingest" / "_work" / ("4" * 64)).symlink_to(b)
    elif level == "runs":
        (r / "runs").symlink_to(b)
    elif level == "champion":
        os.remove(r / "p" / "champion.json")
        (r / "p" / "champion.json").symlink_to(b / "champion.json")
    before = snapshot(b)

    def fresh():
        return ArtifactStore(root)

    def collect(**kw):
        if level not in ("champion", "runs"):
            return gc(fresh(), **kw)
        with pytest.raises(UserError, match="cannot tell what .* protects"):  # removes nothing
            gc(fresh(), **{**kw, "keep": 1})

    collect(keep=0, dry_run=True)
    _, damaged = verify(s := fresh())
    if level in ("top", "pipeline", "stage", "artifact"):
        assert any(p.endswith("evil") or p == old.uri for p in s.skipped), s.skipped
    if level == "file":
        assert [d.uri for d in damaged] == [old.uri] and "refused" in damaged[0].problems[0]
    collect(keep=0)
    for fp in ("4" * 64, "1" * 64):  # a run: a new build (through the planted lock or work dir), a rebuild
        try:
            put(fresh(), fp)
        except UserError as e:
            assert level in ("lock", "work") and "symlink" in e.line()
    if level == "champion-lock":
        with pytest.raises(UserError, match="symlink"):
            fresh().replace_champion("p", {"artifacts": {}}, lambda now: True)
    collect(keep=0)
    assert snapshot(b) == before
    if level not in ("champion", "artifact"):  # the champion and its lineage survive every gc
        assert fresh().champion("p")["artifacts"]["model"] == model.uri
        assert gfile.exists(gfile.join(data.uri, "_COMMITTED"))


def test_traversal_strings_in_control_files_name_nothing(tmp_path):
    root = str(tmp_path / "root")
    store, old, data, model = small_root(root)
    b = bait(tmp_path)
    before = snapshot(b)
    r = Path(root)
    out = os.path.relpath(b, root)  # ../bait
    # _PENDING of an abandoned write: once made into a lock path, it truncated any *.lock
    partial = r / "p" / "ingest" / "20000101T000000000000-partial"
    partial.mkdir()
    (partial / "_PENDING").write_text("../../../../../" + str(b / "f"))
    # champion.json, a run record, a lease: references out of the root
    (r / "p" / "champion.json").write_text(
        '{"version": "v", "uri": "../../x", "exported": "/etc", "artifacts": {"model": "%s/v1", "data": "%s"}}'
        % (out, b / "v1"))
    (r / "runs").mkdir()
    (r / "runs" / "r1.json").write_text('{"created": "1", "stages": {"a": {"uri": "%s/v1"}, "b": {"uri": 7}}}' % out)
    (r / "_leases").mkdir()
    (r / "_leases" / "x.json").write_text('{"expires": 1e20, "artifacts": ["../../bait/v1", "p/../../bait"]}')
    # a manifest whose input names a path outside, committed consistently (a hostile writer)
    m = gfile.read_json(os.path.join(model.uri, "MANIFEST.json"))
    m["inputs"] = {"examples": {"uri": f"{out}/v1", "fingerprint": "2" * 64}}
    gfile.write_json(os.path.join(model.uri, "MANIFEST.json"), m)
    sha, _ = gfile.sha256(os.path.join(model.uri, "MANIFEST.json"))
    gfile.write_bytes(os.path.join(model.uri, "_COMMITTED"), sha.encode())

    fresh = ArtifactStore(root)
    assert fresh.champion("p")["artifacts"] == {} and fresh.champion("p")["uri"] is None
    assert fresh.runs()[0]["stages"] == {} and fresh.leased() == set()
    assert fresh.lineage(model.uri) == {model.uri}
    for ref in ("../x/y/z", "p/../../z", "/etc/passwd", "p/ingest/..", "file:///etc", "p//x", "p/ingest/v\n"):
        assert fresh.resolve(ref) is None
    gc(ArtifactStore(root), keep=0, dry_run=True)
    gc(ArtifactStore(root), keep=0)
    assert snapshot(b) == before and not partial.exists()
    with pytest.raises(UserError, match="run id"):
        ArtifactStore(root).record_run("../../../x", {})


def _spellings(tmp_path, root: Path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    yield "relative", os.path.relpath(root)
    yield "double slash", str(root).replace("/", "//")
    yield "dot dot", str(root / ".." / root.name)
    yield "symlinked parent", str(link / root.name)
    moved = tmp_path / "elsewhere" / "restored"
    moved.parent.mkdir()
    shutil.move(str(root), moved)
    yield "after mv", str(moved)


def test_gc_gives_the_same_answer_however_the_root_is_spelled_or_moved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    store, old, data, model = small_root(str(root))
    store.record_run("r1", {"created": "1", "stages": {"p/ingest": {"uri": data.uri}, "p/train": {"uri": model.uri}}})
    for name, spelled in _spellings(tmp_path, root):
        s = ArtifactStore(spelled)
        removed = gc(s, keep=0)
        champ = s.champion("p")
        assert champ is not None, name
        assert gfile.exists(gfile.join(champ["artifacts"]["model"], "_COMMITTED")), name
        assert s.lineage(champ["artifacts"]["model"]) == {s.root + "/p/train/" + model.version,
                                                          s.root + "/p/ingest/" + data.version}, name
        assert all("/p/ingest/" + old.version in u for u in removed), (name, removed)
        assert verify(s)[1] == [] and not s.skipped, name
        assert s.runs()[0]["stages"]["p/train"]["uri"] == s.root + "/p/train/" + model.version


def test_old_absolute_references_under_the_root_are_still_understood(tmp_path):
    root = tmp_path / "root"
    store, old, data, model = small_root(str(root))
    # champion.json as an older tapeline wrote it: absolute, under another spelling of the root
    (root / "p" / "champion.json").write_text(
        '{"version": "v", "artifacts": {"model": "%s"}}' % model.uri.replace("/root/", "//root/"))
    s = ArtifactStore(str(root))
    assert s.champion("p")["artifacts"]["model"] == model.uri
    assert gc(s, keep=0) == [old.uri]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir-symlink"])
def test_a_lock_never_opens_a_symlink_or_a_fifo(tmp_path, kind):
    from artifacts import lock

    target = tmp_path / "precious.lock"
    target.write_bytes(b"keep me")
    path = tmp_path / "locks" / "x.lock"
    path.parent.mkdir()
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.parent.rmdir()
        path.parent.symlink_to(tmp_path)
        path = tmp_path / "locks" / "precious.lock"
    with pytest.raises(lock.NotALockFile):
        with lock.exclusive(str(path)):
            pass
    assert target.read_bytes() == b"keep me"
