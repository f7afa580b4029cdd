"""The artifact store of DESIGN.md: ROOT/PIPELINE/STAGE/VERSION/ with MANIFEST.json and _COMMITTED."""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import posixpath
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from artifacts import failpoints, gfile, lock
from artifacts.errors import UserError
from artifacts.lease import LEASES, Lease, live_leases

MANIFEST = "MANIFEST.json"
COMMITTED = "_COMMITTED"  # written last: without it a directory is not an artifact
PENDING = "_PENDING"      # written first: names the fingerprint a writer is building
WORK = "_work"
LOCKS = "_locks"
RUNS = "runs"
CHAMPION = "champion.json"
SERVING = "serving"       # ROOT/serving/PIPELINE/N/: pushed SavedModels (artifacts/serving.py)
_RESERVED = {WORK, LOCKS}
# What a file in the root may name, checked before any path is built from it: the root is data.
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # one path component tapeline writes
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


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(e).split("\n")[0][:200] or type(e).__name__


def _manifest_problem(m: Any) -> str | None:
    """What makes a decoded manifest unusable, checked before anything trusts a field of it."""
    def strs(d: Any, inner: Callable[[Any], bool]) -> bool:
        return isinstance(d, dict) and all(isinstance(k, str) and inner(v) for k, v in d.items())

    ok = (isinstance(m, dict) and isinstance(m.get("fingerprint"), str) and isinstance(m.get("version"), str)
          and isinstance(m.get("type"), str) and isinstance(m.get("params"), dict)
          and strs(m.get("files"), lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str)
                   and isinstance(v.get("size"), int))
          and strs(m.get("inputs", {}), lambda v: isinstance(v, dict) and isinstance(v.get("uri"), str)
                   and isinstance(v.get("fingerprint"), str)))
    return None if ok else f"{MANIFEST} does not hold a manifest"


def _legacy(root: str, ref: str) -> str | None:
    """An absolute local reference written by an older tapeline (or under another spelling of
    this root, one that still resolves to it), relative to root; None if it is not under it."""
    norm = posixpath.normpath(re.sub("/+", "/", ref))
    if norm.startswith(root + "/"):
        return norm[len(root) + 1:]
    head, tail = norm, []
    for _ in range(6):
        head, name = posixpath.split(head)
        if not name:
            return None
        tail.insert(0, name)
        if len(tail) >= 3 and os.path.realpath(head) == root:
            return "/".join(tail)
    return None


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


def canonical_root(root: str) -> str:
    """The one spelling of a root: a local one absolute with every symlink and `..` resolved
    (a relative path, `//`, a symlinked parent or a moved root all name the same store); a URI
    with its path normalized. Every reference inside the root is relative to this."""
    if root.startswith("file://"):
        return "file://" + canonical_root(root[len("file://"):])
    if "://" not in root:
        return os.path.realpath(os.path.expanduser(root))
    scheme, _, rest = root.partition("://")
    rest = posixpath.normpath(re.sub("/+", "/", rest)).lstrip("/")
    return f"{scheme}://{'' if rest == '.' else rest}"


def check_run_id(run_id: str) -> str:
    """A run id names a file under the root: one plain name, never a path."""
    if not isinstance(run_id, str) or not NAME.fullmatch(run_id):
        raise UserError(f"bad run id {run_id!r}", "run_id",
                        "use letters, digits, '.', '_', '+' and '-' only, starting with a letter or digit")
    return run_id


class ArtifactStore:
    def __init__(self, root: str):
        self.root = canonical_root(root)
        self._local = "://" not in self.root
        # what the listings met out of place (a symlink, a file where a folder belongs): reported
        # by verify and gc, never followed
        self.skipped: dict[str, str] = {}
        # control files (champion.json, run records, leases) that could not be read: gc cannot
        # tell what they protect, so it removes nothing while there is one
        self.unreadable: dict[str, str] = {}
        self._lease: Lease | None = None

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
            r = _legacy(self.root, r)
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
            problem = _manifest_problem(manifest)
        except (OSError, ValueError) as e:  # unreadable, undecodable, a FIFO, a symlink: damage
            manifest, problem = {}, f"{MANIFEST} unreadable: {_reason(e)}"
        if problem:  # check() reports it; nothing reuses or follows it
            manifest = {"fingerprint": "", "version": uri.rsplit("/", 1)[-1], "type": "?", "params": {},
                        "files": {}, "inputs": {}, "_damaged": problem}
        return Artifact(uri, manifest)

    def entries(self, pipeline: str, stage: str) -> list[str]:
        """The version folders of one stage (committed or not), as URIs; links are skipped."""
        base = self.stage_root(pipeline, stage)
        if not self.contained(base):
            return []
        return [gfile.join(base, n) for n in self._entries(base, _RESERVED)]

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

    def check(self, art: Artifact) -> list[str]:
        """What is wrong with a committed artifact: missing, altered, unexpected files, or files
        that are not regular files (a symlink, a FIFO, a device: refused, never opened)."""
        try:
            manifest_sha, _ = gfile.sha256(art.path(MANIFEST))
        except (OSError, ValueError) as e:
            return [f"{MANIFEST} missing or unreadable: {_reason(e)}"]
        try:
            committed = gfile.read_bytes(art.path(COMMITTED), 1024).decode("ascii").strip()
        except (OSError, ValueError) as e:
            return [f"{COMMITTED} unreadable: {_reason(e)}"]
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
                problems.append(f"{rel} refused: {_reason(e)}")
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
               inputs: Mapping[str, Artifact | InputRef], code: str) -> Iterator[Writer]:
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
                     build: Callable[[Writer], None], reuse: bool = True) -> StageRun:
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
                             inputs=inputs, code=code) as w:
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

    # -- champions and runs -----------------------------------------------------------------
    def champion(self, pipeline: str) -> dict | None:
        """The champion record, its artifact references resolved under this root (a reference
        that names nothing here is dropped). A damaged champion.json reads as no champion."""
        path = gfile.join(self.root, pipeline, CHAMPION)
        if gfile.kind(path) == "missing":
            return None
        try:
            if not self.contained(path):
                raise OSError(0, "reached through a symlink, not followed")
            rec = gfile.read_json(path)
            if not isinstance(rec, dict):
                raise ValueError("not a champion record")
        except (OSError, ValueError) as e:
            self.unreadable[path] = f"unreadable, {_reason(e)}"
            return None
        arts = rec.get("artifacts") if isinstance(rec.get("artifacts"), dict) else {}
        rec["artifacts"] = {k: u for k, u in ((k, self.resolve(v)) for k, v in arts.items()) if u}
        for k in ("uri", "exported"):
            if k in rec:
                rec[k] = self.resolve(rec[k], parts=None)
        return rec

    def set_champion(self, pipeline: str, record: dict) -> None:
        path = self.inside(gfile.join(self.root, pipeline, CHAMPION), "champion.json")
        gfile.makedirs(gfile.join(self.root, pipeline))
        gfile.write_json(path, self._relative(record))

    def replace_champion(self, pipeline: str, record: dict, better: Callable[[dict | None], bool],
                         take: Callable[[], dict] | None = None) -> bool:
        """Make record the champion if better(the champion of now) holds, judged and written under
        one lock: of several runs promoting at once, a worse model never overwrites a better one.
        take(), run under that lock once the title is won (the push), adds fields to the record."""
        with self.locked(self.lock_path(pipeline, "promote", "champion")):
            if not better(self.champion(pipeline)):
                return False
            self.set_champion(pipeline, {**record, **(take() if take is not None else {})})
            return True

    def _relative(self, obj: Any) -> Any:
        """obj with every path under the root written relative to it (a record's metrics are
        kept as the evaluation wrote them: values, not references the store follows)."""
        if isinstance(obj, dict):
            return {k: (v if k in ("root", "metrics") else self._relative(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._relative(v) for v in obj]
        return self.ref(obj) if isinstance(obj, str) else obj

    def record_run(self, run_id: str, record: dict) -> str:
        path = self.inside(gfile.join(self.root, RUNS, f"{check_run_id(run_id)}.json"), "a run record")
        gfile.makedirs(gfile.join(self.root, RUNS))
        gfile.write_json(path, self._relative(record))
        return path

    def records(self, folder: str, parse: Callable[[Any], Any]) -> list[Any]:
        """parse(decoded JSON) of every ROOT/folder/*.json; a file that does not decode or
        parse is noted in self.skipped and left out."""
        base = gfile.join(self.root, folder)
        if not self.contained(base):
            self.unreadable[base] = "a symlink or not a folder, not followed"
            return []
        out = []
        for name in gfile.listdir(base):
            path = gfile.join(base, name)
            if not name.endswith(".json"):
                continue
            try:
                out.append(parse(gfile.read_json(path)))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                self.unreadable[path] = f"unreadable, {_reason(e)}"
        return out

    def runs(self) -> list[dict]:
        """Run records, oldest first, their stages' references resolved under this root (one
        that names nothing here is dropped; an unreadable record is skipped and noted)."""
        def parse(rec: Any) -> dict:
            stages = rec.get("stages", {})
            if not isinstance(stages, dict) or not isinstance(rec.get("created", ""), str):
                raise ValueError("not a run record")
            rec["stages"] = {k: {**st, "uri": self.resolve(st.get("uri"))} for k, st in stages.items()
                             if isinstance(st, dict) and self.resolve(st.get("uri"))}
            return rec

        return sorted(self.records(RUNS, parse), key=lambda r: r.get("created", ""))

    def lineage(self, uri: str) -> set[str]:
        """uri and every artifact it was built from, transitively (references in manifests
        resolved under this root; a data source is not an artifact)."""
        out, todo = set(), [uri.rstrip("/")]
        while todo:
            u = todo.pop()
            if u in out:
                continue
            out.add(u)
            art = self.load(u)
            if art is not None:
                todo.extend(r for r in (self.resolve(i["uri"]) for i in art.manifest.get("inputs", {}).values()) if r)
        return out

    # -- leases: what a live run holds ----------------------------------------------------------
    def lease(self, run_id: str, heartbeat: float = 30.0) -> Lease:
        """`with store.lease(run_id) as lease:` around a run: ROOT/_leases/RUN_ID.json names every
        artifact it committed or reused so far, rewritten every `heartbeat` seconds while it lives,
        so gc keeps them; a crashed run's lease expires after a few missed heartbeats."""
        return Lease(self, check_run_id(run_id), heartbeat)

    def _hold(self, art: Artifact) -> None:
        if self._lease is not None:
            self._lease.add(art.uri)

    def leased(self, now: float | None = None) -> set[str]:
        """Every artifact a live (unexpired) lease holds, resolved under this root."""
        return live_leases(self, now)


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
