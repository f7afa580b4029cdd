"""Committing and verifying artifacts: a writer's payload hashed into MANIFEST.json, `_COMMITTED`
written last, a fingerprint built once under its lock, and every file checked before reuse."""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import socket
from typing import Any, Callable, Iterator, Mapping

from artifacts import failpoints, gfile, lock
from artifacts.errors import UserError
from artifacts.refs import COMMITTED, MANIFEST, PENDING, Artifact, InputRef, StageRun, reason

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

    def __init__(self, path: str, work_dir: str, store: Any):  # store: the ArtifactStore written into
        self.path, self.work_dir, self.store = path, work_dir, store
        self.metadata: dict[str, Any] = {}  # small facts the manifest should carry (counts, metrics)
        self.on_commit: Callable[[Artifact], None] | None = None  # runs once the artifact is committed

    def file(self, *parts: str) -> str:
        return gfile.join(self.path, *parts)


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
        problems = []
        listed = art.manifest.get("files", {})
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
               code_modules: Mapping[str, str] | None = None) -> Iterator[Writer]:
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
            manifest = {
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
            with self.writer(pipeline, stage, fingerprint, type=type, params=params,
                             inputs=inputs, code=code, code_modules=code_modules) as w:
                build(w)
            art = self.load(w.path)  # hashed a moment ago by the commit: no second pass
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
