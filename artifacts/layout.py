"""The root as a tree of artifacts: where each thing lives, what lies inside the root (no symlink
followed out of it), how a file in it names another, and the committed artifacts it lists."""
from __future__ import annotations

import os
from typing import Any, Iterator

from artifacts import gfile, objstore
from artifacts.mirror import Mirror
from artifacts.errors import UserError
from artifacts.lease import LEASES
from artifacts.lock import lock_ttl
from artifacts.refs import (COMMITTED, FINGERPRINT, LOCKS, MANIFEST, NAME, RESERVED, RUNS, SERVING, WORK,
                            Artifact, legacy_ref, manifest_problem, reason, canonical_root)


class RootLayout:
    def __init__(self, root: str):
        self.root = canonical_root(root)
        self._local = "://" not in self.root
        # an object-store root: what TensorFlow opens is staged in a local cache (artifacts/mirror.py);
        # its conditional writes are checked once per process before anything trusts them
        self.mirror = Mirror(self.root) if objstore.is_object(self.root) else None
        if self.mirror is not None:
            lock_ttl()  # a malformed setting is refused before the store is touched
            objstore.probe(self.root)
        # what the listings met out of place (a symlink, a file where a folder belongs): reported
        # by verify and gc, never followed
        self.skipped: dict[str, str] = {}
        # control files (champion.json, run records, leases) that could not be read: gc cannot
        # tell what they protect, so it removes nothing while there is one
        self.unreadable: dict[str, str] = {}
        self._lease: Any = None  # the Lease of the run this store serves (Records.lease)
        # {pipeline: ETag of the champion.json last read, None: there was none} (object stores:
        # Records.set_champion swaps against it)
        self._tags: dict[str, str | None] = {}

    # -- layout -----------------------------------------------------------------------------
    def stage_root(self, pipeline: str, stage: str) -> str:
        return gfile.join(self.root, pipeline, stage)

    def work_dir(self, pipeline: str, stage: str, fingerprint: str) -> str:
        return gfile.join(self.stage_root(pipeline, stage), WORK, fingerprint)

    def lock_path(self, pipeline: str, stage: str, fingerprint: str) -> str:
        if not (FINGERPRINT.fullmatch(fingerprint) or NAME.fullmatch(fingerprint)):
            raise ValueError(f"not a lock name: {fingerprint!r}")
        return gfile.join(self.stage_root(pipeline, stage), LOCKS, fingerprint + ".lock")

    def contained(self, path: str) -> bool:
        """Whether path lies in the root with no symlink (nor a file where a folder belongs)
        between the root and it; path itself may be missing. Remote roots have no links."""
        if not path.startswith(self.root + "/"):
            return path == self.root
        if not self._local:
            return True
        parts = path[len(self.root) + 1:].split("/")
        if any(p in ("", ".", "..") for p in parts):
            return False
        at = self.root
        for i, part in enumerate(parts):
            at = os.path.join(at, part)
            kind = gfile.kind(at)
            if kind == "missing":
                return True
            if kind != "dir" and not (i == len(parts) - 1 and kind == "file"):
                return False
        return True

    def inside(self, path: str, what: str) -> str:
        """path, or a UserError if reaching it would follow a symlink out of the root."""
        if not self.contained(path):
            raise UserError(f"{what} is reached through a symlink or a file out of place in the root",
                            path, "move the link or file away: tapeline never follows links out of its root")
        return path

    def _entries(self, base: str, skip: set[str]) -> list[str]:
        """The folders in base (their plain names). A symlink, FIFO or other special entry is
        noted in self.skipped and left alone; plain files (champion.json) are not folders."""
        out = []
        for name in gfile.listdir(base):
            if name in skip or name.startswith("."):
                continue
            path = gfile.join(base, name)
            kind = gfile.kind(path) if self._local else ("dir" if gfile.isdir(path) else "file")
            if kind == "dir":
                out.append(name)
            elif kind != "file":
                self.skipped[path] = f"{kind}, not followed"
        return out

    def pipelines(self) -> list[str]:
        if not self.contained(self.root):
            return []
        return [p for p in self._entries(self.root, {RUNS, LEASES, SERVING}) if not p.startswith("_")]

    def stages(self, pipeline: str) -> list[str]:
        base = gfile.join(self.root, pipeline)
        return self._entries(base, set()) if self.contained(base) else []

    # -- references: what a file in the root says about another ----------------------------
    def ref(self, uri: str) -> str:
        """How a reference to uri is written inside the root: relative to it when it lies
        inside (a data source's URI stays as it is)."""
        u = uri.rstrip("/")
        if self.mirror is not None:  # a staged or fetched copy names the artifact in the store
            u = self.mirror.remote(u) or u
        return u[len(self.root) + 1:] if u.startswith(self.root + "/") else uri

    def resolve(self, ref: Any, parts: int = 3) -> str | None:
        """The path under this root that a reference read from the root names, or None when it
        names nothing here (a data source, a path elsewhere, a traversal, not a string). The
        first three parts are PIPELINE/STAGE/VERSION; parts=None allows a path inside an artifact.
        Absolute references of older roots are understood when they start with this root."""
        if not isinstance(ref, str) or not ref:
            return None
        r = ref.rstrip("/")
        if r.startswith(self.root + "/"):
            r = r[len(self.root) + 1:]
        elif self._local and r.startswith("/"):
            r = legacy_ref(self.root, r)
            if r is None:
                return None
        elif "://" in r or r.startswith("/") or ":" in r.split("/", 1)[0]:
            return None
        names = r.split("/")
        if len(names) < 3 or (parts is not None and len(names) != parts) or not all(NAME.fullmatch(n) for n in names):
            return None
        return gfile.join(self.root, *names)

    # -- reading ----------------------------------------------------------------------------
    def load(self, uri: str) -> Artifact | None:
        """The committed artifact at uri, or None if it is absent, was never committed, or is
        reached through a symlink (never followed out of the root)."""
        uri = uri.rstrip("/")
        if not self.contained(uri) or gfile.kind(uri) != "dir" or gfile.kind(gfile.join(uri, COMMITTED)) == "missing":
            return None
        try:
            manifest = gfile.read_json(gfile.join(uri, MANIFEST))
            problem = manifest_problem(manifest)
        except (OSError, ValueError) as e:  # unreadable, undecodable, a FIFO, a symlink: damage
            manifest, problem = {}, f"{MANIFEST} unreadable: {reason(e)}"
        if problem:  # check() reports it; nothing reuses or follows it
            manifest = {"fingerprint": "", "version": uri.rsplit("/", 1)[-1], "type": "?", "params": {},
                        "files": {}, "inputs": {}, "_damaged": problem}
        return Artifact(uri, manifest)

    def entries(self, pipeline: str, stage: str) -> list[str]:
        """The version folders of one stage (committed or not), as URIs; links are skipped."""
        base = self.stage_root(pipeline, stage)
        if not self.contained(base):
            return []
        return [gfile.join(base, n) for n in self._entries(base, RESERVED)]

    def versions(self, pipeline: str, stage: str) -> list[Artifact]:
        """Committed artifacts of one stage, oldest first (version names sort by time)."""
        out = []
        for uri in self.entries(pipeline, stage):
            art = self.load(uri)
            if art is not None:
                out.append(art)
        return out

    def all_artifacts(self) -> Iterator[tuple[str, str, Artifact]]:
        for p in self.pipelines():
            for s in self.stages(p):
                for a in self.versions(p, s):
                    yield p, s, a
