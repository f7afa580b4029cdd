"""Committing and verifying artifacts: a writer's payload hashed into MANIFEST.json, `_COMMITTED`
written last, a fingerprint built once under its lock, and every file checked before reuse."""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping

from artifacts import failpoints, gfile, lock, objstore
from artifacts.errors import UserError
from artifacts.mirror import Damaged, WorkSync, below
from artifacts.refs import CLAIMS, COMMITTED, MANIFEST, NAME, PENDING, Artifact, InputRef, StageRun, reason

_VERSIONED_PACKAGES = ("tapeline", "tensorflow", "keras", "tensorflow-datasets", "apache-beam",
                       "prefect", "numpy")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Writer:
    """An artifact being written: payload goes under .path, resumable state under .work_dir."""

    def __init__(self, path: str, work_dir: str, store: Any, sync: WorkSync | None = None):
        # store: the ArtifactStore written into. On an object-store root, path and work_dir are
        # local (artifacts/mirror.py): the commit uploads the payload, sync the work directory.
        self.path, self.work_dir, self.store, self.sync = path, work_dir, store, sync
        self.metadata: dict[str, Any] = {}  # small facts the manifest should carry (counts, metrics)
        self.on_commit: Callable[[Artifact], None] | None = None  # runs once the artifact is committed

    def file(self, *parts: str) -> str:
        return gfile.join(self.path, *parts)

    def saved(self) -> None:
        """Called after each checkpoint is saved in work_dir: on an object-store root it goes up
        to the store in the background (data files first, what names the newest checkpoint last)."""
        if self.sync is not None:
            self.sync.push()


class Lost(Exception):
    """Another writer committed this fingerprint first (an object-store root): reuse its artifact."""

    def __init__(self, winner: Artifact):
        super().__init__(winner.uri)
        self.winner = winner


def _discard(path: str) -> None:
    """Remove a failed write; what cannot be removed now (a dying mount) is left for `gc`, but
    never a marker that would make it look committed."""
    for remove in (lambda: gfile.remove(gfile.join(path, COMMITTED)), lambda: gfile.rmtree(path)):
        try:
            remove()
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass


class Commits:
    """The writing half of ArtifactStore (artifacts/store.py)."""

    def check(self, art: Artifact) -> list[str]:
        """What is wrong with a committed artifact: missing, altered, unexpected files, or files
        that are not regular files (a symlink, a FIFO, a device: refused, never opened)."""
        try:
            manifest_sha, _ = gfile.sha256(art.path(MANIFEST))
        except (OSError, ValueError) as e:
            return [f"{MANIFEST} missing or unreadable: {reason(e)}"]
        try:
            committed = gfile.read_bytes(art.path(COMMITTED), 1024).decode("ascii").strip()
        except (OSError, ValueError) as e:
            return [f"{COMMITTED} unreadable: {reason(e)}"]
        if committed != manifest_sha:
            return [f"{MANIFEST} altered after commit"]
        if "_damaged" in art.manifest:
            return [art.manifest["_damaged"]]
        listed = art.manifest.get("files", {})
        if self.mirror is not None:
            return self._check_objects(art, listed)
        problems = []
        present = set(gfile.walk_files(art.uri)) - {MANIFEST, COMMITTED}
        for rel, meta in sorted(listed.items()):
            if rel not in present:
                problems.append(f"{rel} missing")
                continue
            try:
                sha, size = gfile.sha256(art.path(rel))
            except OSError as e:
                problems.append(f"{rel} refused: {reason(e)}")
                continue
            if size != meta["size"] or sha != meta["sha256"]:
                problems.append(f"{rel} altered")
        problems += [f"{rel} not in manifest" for rel in sorted(present - listed.keys())]
        return problems

    def _check_objects(self, art: Artifact, listed: dict) -> list[str]:
        """check() on an object store, from one listing: each object's size and ETag against the
        manifest's (the store's own checksum of what was uploaded); a file the manifest lists
        without an ETag is hashed as it streams."""
        present = {m.key: m for m in objstore.listing(art.uri) if m.key not in (MANIFEST, COMMITTED)}
        problems = []
        for rel, meta in sorted(listed.items()):
            m = present.get(rel)
            try:
                below("", rel)
            except Damaged:
                problems.append(f"{rel!r} names a path outside the artifact")
                continue
            if m is None:
                problems.append(f"{rel} missing")
            elif m.size != meta["size"] or (meta.get("etag") and m.etag != meta["etag"]):
                problems.append(f"{rel} altered")
            elif not meta.get("etag") and gfile.sha256(art.path(rel))[0] != meta["sha256"]:
                problems.append(f"{rel} altered")
        problems += [f"{rel} not in manifest" for rel in sorted(present.keys() - listed.keys())]
        return problems

    def localized(self, art: Artifact) -> Artifact:
        """art as a stage reads it: itself on a local root; on an object store, its copy in the
        local cache, fetched once per machine and checked against the manifest."""
        if self.mirror is None:
            return art
        try:
            return Artifact(self.mirror.fetch(art.uri, art.manifest), art.manifest)
        except Damaged as e:
            raise UserError(f"artifact damaged in the store: {e.filename} {e.strerror}", art.uri,
                            "run `tapeline verify` and `tapeline gc`, then run again: it is rebuilt") from None

    def find(self, pipeline: str, stage: str, fingerprint: str) -> Artifact | None:
        """The newest committed artifact with this fingerprint that still verifies."""
        for art in reversed(self.versions(pipeline, stage)):
            if art.fingerprint == fingerprint and not self.check(art):
                return art
        return None
    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, pipeline: str, stage: str, fingerprint: str, *, type: str, params: Mapping,
               inputs: Mapping[str, Artifact | InputRef], code: str,
               code_modules: Mapping[str, str] | None = None, claim: bool = False) -> Iterator[Writer]:
        """claim: on an object store, the fingerprint's one commit is claimed create-only (a
        stage whose artifact is reused); a writer that loses raises Lost with the winner."""
        if self.mirror is not None:
            with self._object_writer(pipeline, stage, fingerprint, type=type, params=params, inputs=inputs,
                                     code=code, code_modules=code_modules, claim=claim) as w:
                yield w
            return
        created = _now()
        version = f"{created:%Y%m%dT%H%M%S%f}-{fingerprint[:12]}"
        path = self.inside(gfile.join(self.stage_root(pipeline, stage), version), f"{pipeline}/{stage}")
        w = Writer(path, self.inside(self.work_dir(pipeline, stage, fingerprint), f"{pipeline}/{stage} work dir"), self)
        gfile.makedirs(path)
        try:
            gfile.write_atomic(gfile.join(path, PENDING), fingerprint.encode())
            failpoints.hit(f"store.build.{pipeline}/{stage}")
            yield w
            failpoints.hit(f"store.built.{pipeline}/{stage}")
            gfile.remove(gfile.join(path, PENDING))
            files = {}
            for rel in gfile.walk_files(path):
                sha, size = gfile.sha256(gfile.join(path, rel))
                files[rel] = {"sha256": sha, "size": size}
            if not files:
                raise RuntimeError(f"stage {stage} of {pipeline} produced no files")
            manifest = self._manifest(pipeline, stage, fingerprint, version, created, type, params, code,
                                      code_modules, inputs, w, files)
            gfile.write_json(gfile.join(path, MANIFEST), manifest)
            manifest_sha, _ = gfile.sha256(gfile.join(path, MANIFEST))
            gfile.write_bytes(gfile.join(path, COMMITTED), manifest_sha.encode())
        except BaseException:
            # A Python-level failure (a full disk included, even while committing) leaves nothing
            # committed; a SIGKILL leaves an uncommitted directory that nothing lists or reuses
            # and `gc` removes.
            _discard(path)
            raise
        gfile.rmtree(w.work_dir)

    def _manifest(self, pipeline, stage, fingerprint, version, created, type, params, code, code_modules,
                  inputs, w: Writer, files: dict) -> dict:
        return {
            "type": type, "pipeline": pipeline, "stage": stage, "version": version,
            "fingerprint": fingerprint, "params": dict(params), "code_digest": code,
            # {module: digest} that code_digest covers: `tapeline plan` names the one that changed
            "code_modules": dict(code_modules or {}),
            # artifacts relative to the root: it can be moved, restored or mounted elsewhere
            "inputs": {k: {"uri": self.ref(v.uri), "fingerprint": v.fingerprint} for k, v in inputs.items()},
            "packages": package_versions(), "created": created.isoformat(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "metadata": w.metadata, "files": files,
        }

    @contextlib.contextmanager
    def _object_writer(self, pipeline: str, stage: str, fingerprint: str, *, type: str, params: Mapping,
                       inputs: Mapping[str, Artifact | InputRef], code: str,
                       code_modules: Mapping[str, str] | None, claim: bool) -> Iterator[Writer]:
        """writer() on an object store: the stage writes into the local cache; the commit uploads
        every file, then MANIFEST.json, then claims the fingerprint (create-only), then writes
        `_COMMITTED` create-only. Before `_COMMITTED` exists nothing lists the version; a stop
        removes what was uploaded (a SIGKILL leaves objects gc removes)."""
        created = _now()
        version = f"{created:%Y%m%dT%H%M%S%f}-{fingerprint[:12]}"
        remote = gfile.join(self.stage_root(pipeline, stage), version)
        work = self.work_dir(pipeline, stage, fingerprint)
        sync = WorkSync(self.mirror.local(work), work)
        w = Writer(self.mirror.local(remote), sync.local, self, sync)
        shutil.rmtree(w.path, ignore_errors=True)
        os.makedirs(w.path)
        committed = False
        try:
            sync.pull()  # a checkpoint another machine (or this one, earlier) left in the store
            objstore.write(gfile.join(remote, PENDING), fingerprint.encode())
            failpoints.hit(f"store.build.{pipeline}/{stage}")
            yield w
            failpoints.hit(f"store.built.{pipeline}/{stage}")
            sync.flush()
            rels = list(gfile.walk_files(w.path))
            if not rels:
                raise RuntimeError(f"stage {stage} of {pipeline} produced no files")
            files = {}

            def up(rel: str) -> None:
                sha, size = gfile.sha256(gfile.join(w.path, rel))
                files[rel] = {"sha256": sha, "size": size,
                              "etag": objstore.upload(gfile.join(w.path, rel), gfile.join(remote, rel))}

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(up, rels))
            failpoints.hit(f"store.uploaded.{pipeline}/{stage}")
            manifest = self._manifest(pipeline, stage, fingerprint, version, created, type, params, code,
                                      code_modules, inputs, w, dict(sorted(files.items())))
            body = objstore.record(manifest)
            objstore.write(gfile.join(remote, MANIFEST), body)
            if claim:
                self._claim(pipeline, stage, fingerprint, version)
            objstore.create(gfile.join(remote, COMMITTED), hashlib.sha256(body).hexdigest().encode())
            committed = True
            objstore.delete([gfile.join(remote, PENDING)])
            w.committed = Artifact(remote, manifest)
        except BaseException:
            try:  # a stop: the step it saved goes up before the process exits
                sync.flush(timeout=20)
            except Exception:  # noqa: BLE001 - the stop's own error is the one to report
                pass
            if not committed:
                for undo in (lambda: objstore.remove_tree(remote), lambda: shutil.rmtree(w.path, ignore_errors=True)):
                    try:
                        undo()
                    except Exception:  # noqa: BLE001 - left for gc
                        pass
            raise
        self.mirror.stamp(remote, manifest)  # the staged files are the cache's copy now
        sync.discard()

    def _claim(self, pipeline: str, stage: str, fingerprint: str, version: str) -> None:
        """STAGE/_claims/FINGERPRINT.json names the one version of a fingerprint: written
        create-only; over a claim whose version no longer verifies (damaged, removed), replaced by
        compare-and-swap. Raises Lost with the winner when another writer's version stands."""
        path = gfile.join(self.stage_root(pipeline, stage), CLAIMS, f"{fingerprint}.json")
        body = objstore.record({"version": version})
        for _ in range(8):
            made, data, tag = objstore.create_or_read(path, body)
            if made:
                return
            try:
                theirs = json.loads(data.decode("utf-8"))["version"]
                winner = self.load(gfile.join(self.stage_root(pipeline, stage), theirs)) \
                    if isinstance(theirs, str) and NAME.fullmatch(theirs) else None
            except (ValueError, KeyError, TypeError):
                winner = None
            if winner is not None and winner.fingerprint == fingerprint and not self.check(winner):
                raise Lost(winner)
            try:
                objstore.swap(path, body, tag)
                return
            except objstore.Changed:
                continue
        raise RuntimeError(f"could not claim {path}: it kept changing")

    def get_or_build(self, pipeline: str, stage: str, fingerprint: str, *, type: str,
                     params: Mapping, inputs: Mapping[str, Artifact | InputRef], code: str,
                     build: Callable[[Writer], None], reuse: bool = True,
                     code_modules: Mapping[str, str] | None = None) -> StageRun:
        """Reuse the committed artifact with this fingerprint, or build and commit it once.
        reuse=False: always build a new version (a decision made again on every run)."""
        # Under a lease, reuse too happens under the fingerprint's lock, and the artifact joins the
        # lease before the lock is let go: gc takes the same lock before it removes anything.
        found = self.find(pipeline, stage, fingerprint) if reuse and self._lease is None else None
        if found is not None:
            return StageRun(found, reused=True)
        with self.locked(self.lock_path(pipeline, stage, fingerprint)):
            found = self.find(pipeline, stage, fingerprint) if reuse else None  # the other writer may have finished
            if found is not None:
                self._hold(found)
                return StageRun(found, reused=True)
            try:
                with self.writer(pipeline, stage, fingerprint, type=type, params=params, inputs=inputs,
                                 code=code, code_modules=code_modules, claim=reuse) as w:
                    build(w)
            except Lost as lost:  # an object store: another machine committed it first
                self._hold(lost.winner)
                return StageRun(lost.winner, reused=True)
            # hashed a moment ago by the commit: no second pass
            art = getattr(w, "committed", None) or self.load(w.path)
            self._hold(art)
            failpoints.hit(f"store.committed.{pipeline}/{stage}")
            if w.on_commit is not None:
                w.on_commit(art)
        return StageRun(art, reused=False)

    @contextlib.contextmanager
    def locked(self, path: str, blocking: bool = True) -> Iterator[bool]:
        """lock.exclusive on a lock file of this root; a symlink or special file there is a
        one-line error, never opened."""
        self.inside(path, "a lock file")
        with contextlib.ExitStack() as stack:
            try:
                held = stack.enter_context(lock.exclusive(path, blocking))
            except lock.NotALockFile as e:
                raise UserError(f"refused to open a lock: {e.strerror}", path,
                                "remove it; tapeline makes its lock files itself") from None
            yield held
