"""The artifact store of DESIGN.md: ROOT/PIPELINE/STAGE/VERSION/ with MANIFEST.json and _COMMITTED."""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from artifacts import failpoints, gfile, lock

MANIFEST = "MANIFEST.json"
COMMITTED = "_COMMITTED"  # written last: without it a directory is not an artifact
PENDING = "_PENDING"      # written first: names the fingerprint a writer is building
WORK = "_work"
LOCKS = "_locks"
RUNS = "runs"
CHAMPION = "champion.json"
_RESERVED = {WORK, LOCKS}
_VERSIONED_PACKAGES = ("tapeline", "tensorflow", "keras", "tensorflow-datasets", "apache-beam",
                       "prefect", "numpy")


@dataclass(frozen=True)
class InputRef:
    """An input that is not an artifact (a data source): a URI and a digest of its content."""
    uri: str
    fingerprint: str


@dataclass(frozen=True)
class Artifact:
    uri: str
    manifest: dict = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def type(self) -> str:
        return self.manifest["type"]

    @property
    def params(self) -> dict:
        return self.manifest["params"]

    def path(self, *parts: str) -> str:
        return gfile.join(self.uri, *parts)


@dataclass(frozen=True)
class StageRun:
    artifact: Artifact
    reused: bool


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

    def __init__(self, path: str, work_dir: str, store: "ArtifactStore"):
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


class ArtifactStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/") if root not in ("/",) else root

    # -- layout -----------------------------------------------------------------------------
    def stage_root(self, pipeline: str, stage: str) -> str:
        return gfile.join(self.root, pipeline, stage)

    def work_dir(self, pipeline: str, stage: str, fingerprint: str) -> str:
        return gfile.join(self.stage_root(pipeline, stage), WORK, fingerprint)

    def lock_path(self, pipeline: str, stage: str, fingerprint: str) -> str:
        return gfile.join(self.stage_root(pipeline, stage), LOCKS, fingerprint + ".lock")

    def pipelines(self) -> list[str]:
        return [p for p in gfile.listdir(self.root) if p != RUNS and gfile.isdir(gfile.join(self.root, p))]

    def stages(self, pipeline: str) -> list[str]:
        base = gfile.join(self.root, pipeline)
        return [s for s in gfile.listdir(base) if gfile.isdir(gfile.join(base, s))]

    # -- reading ----------------------------------------------------------------------------
    def load(self, uri: str) -> Artifact | None:
        """The committed artifact at uri, or None if it is absent or was never committed."""
        if not gfile.exists(gfile.join(uri, COMMITTED)):
            return None
        try:
            return Artifact(uri.rstrip("/"), gfile.read_json(gfile.join(uri, MANIFEST)))
        except Exception:  # an unreadable manifest is damage; check() reports it
            return Artifact(uri.rstrip("/"), {"fingerprint": "", "version": uri.rsplit("/", 1)[-1],
                                              "type": "?", "params": {}, "files": {}})

    def versions(self, pipeline: str, stage: str) -> list[Artifact]:
        """Committed artifacts of one stage, oldest first (version names sort by time)."""
        base = self.stage_root(pipeline, stage)
        out = []
        for name in gfile.listdir(base):
            if name in _RESERVED:
                continue
            art = self.load(gfile.join(base, name))
            if art is not None:
                out.append(art)
        return out

    def all_artifacts(self) -> Iterator[tuple[str, str, Artifact]]:
        for p in self.pipelines():
            for s in self.stages(p):
                for a in self.versions(p, s):
                    yield p, s, a

    def check(self, art: Artifact) -> list[str]:
        """What is wrong with a committed artifact: missing, altered or unexpected files."""
        try:
            manifest_sha, _ = gfile.sha256(art.path(MANIFEST))
        except Exception:
            return [f"{MANIFEST} missing or unreadable"]
        if gfile.read_bytes(art.path(COMMITTED)).decode().strip() != manifest_sha:
            return [f"{MANIFEST} altered after commit"]
        problems = []
        listed = art.manifest.get("files", {})
        present = set(gfile.walk_files(art.uri)) - {MANIFEST, COMMITTED}
        for rel, meta in sorted(listed.items()):
            if rel not in present:
                problems.append(f"{rel} missing")
                continue
            sha, size = gfile.sha256(art.path(rel))
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
               inputs: Mapping[str, Artifact | InputRef], code: str) -> Iterator[Writer]:
        created = _now()
        version = f"{created:%Y%m%dT%H%M%S%f}-{fingerprint[:12]}"
        path = gfile.join(self.stage_root(pipeline, stage), version)
        w = Writer(path, self.work_dir(pipeline, stage, fingerprint), self)
        gfile.makedirs(path)
        try:
            gfile.write_bytes(gfile.join(path, PENDING), fingerprint.encode())
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
                "inputs": {k: {"uri": v.uri, "fingerprint": v.fingerprint} for k, v in inputs.items()},
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
                     build: Callable[[Writer], None], reuse: bool = True) -> StageRun:
        """Reuse the committed artifact with this fingerprint, or build and commit it once.
        reuse=False: always build a new version (a decision made again on every run)."""
        found = self.find(pipeline, stage, fingerprint) if reuse else None
        if found is not None:
            return StageRun(found, reused=True)
        with lock.exclusive(self.lock_path(pipeline, stage, fingerprint)):
            found = self.find(pipeline, stage, fingerprint) if reuse else None  # the other writer may have finished
            if found is not None:
                return StageRun(found, reused=True)
            with self.writer(pipeline, stage, fingerprint, type=type, params=params,
                             inputs=inputs, code=code) as w:
                build(w)
            art = self.load(w.path)  # hashed a moment ago by the commit: no second pass
            failpoints.hit(f"store.committed.{pipeline}/{stage}")
            if w.on_commit is not None:
                w.on_commit(art)
        return StageRun(art, reused=False)

    # -- champions and runs -----------------------------------------------------------------
    def champion(self, pipeline: str) -> dict | None:
        path = gfile.join(self.root, pipeline, CHAMPION)
        return gfile.read_json(path) if gfile.exists(path) else None

    def set_champion(self, pipeline: str, record: dict) -> None:
        gfile.makedirs(gfile.join(self.root, pipeline))
        gfile.write_json(gfile.join(self.root, pipeline, CHAMPION), record)

    def replace_champion(self, pipeline: str, record: dict, better: Callable[[dict | None], bool]) -> bool:
        """Make record the champion if better(the champion of now) holds, judged and written under
        one lock: of several runs promoting at once, a worse model never overwrites a better one."""
        with lock.exclusive(self.lock_path(pipeline, "promote", "champion")):
            if not better(self.champion(pipeline)):
                return False
            self.set_champion(pipeline, record)
            return True

    def record_run(self, run_id: str, record: dict) -> str:
        gfile.makedirs(gfile.join(self.root, RUNS))
        path = gfile.join(self.root, RUNS, f"{run_id}.json")
        gfile.write_json(path, record)
        return path

    def runs(self) -> list[dict]:
        """Run records, oldest first."""
        base = gfile.join(self.root, RUNS)
        recs = [gfile.read_json(gfile.join(base, n)) for n in gfile.listdir(base) if n.endswith(".json")]
        return sorted(recs, key=lambda r: r.get("created", ""))

    def lineage(self, uri: str) -> set[str]:
        """uri and every artifact it was built from, transitively."""
        out, todo = set(), [uri.rstrip("/")]
        while todo:
            u = todo.pop()
            if u in out:
                continue
            out.add(u)
            art = self.load(u)
            if art is not None:
                todo.extend(i["uri"].rstrip("/") for i in art.manifest.get("inputs", {}).values())
        return out




DEFAULT_ROOT = "tapeline-artifacts"


def default_root() -> str:
    """$TAPELINE_ROOT, else ./tapeline-artifacts (absolute, so deployments agree on it)."""
    return os.environ.get("TAPELINE_ROOT") or os.path.abspath(DEFAULT_ROOT)


def open_store(root: str | None = None) -> ArtifactStore:
    """The store at root (default_root() when None); a new local root ignores itself in git."""
    root = root or default_root()
    if gfile.is_local(root) and not os.path.exists(root):
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, ".gitignore"), "w") as f:
            f.write("*\n")
    return ArtifactStore(root)
