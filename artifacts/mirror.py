"""The local side of an object-store root. TensorFlow cannot open `s3://`, so what a stage reads or
writes with TensorFlow lives on local disk, in a cache laid out as the root is:
CACHE/<digest of the root>/PIPELINE/STAGE/VERSION/.

- An input artifact is fetched once per machine, every file checked against the manifest's
  sha256 as it arrives, and renamed into place whole; a second run finds it by its stamp (size and
  modification time of every file) and reads nothing from the store.
- A version being written is staged there and uploaded at commit (artifacts/commit.py).
- A work directory (checkpoints) is mirrored both ways: pulled from the store when a run starts,
  pushed after every save, its data files first and the files that name the newest checkpoint
  last, so a reader on another machine never restores half a checkpoint.

The cache is bounded ($TAPELINE_CACHE_GB, default 20) by dropping the least recently used
artifacts, and safe to delete at any moment: everything in it is in the store."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from artifacts import failpoints, objstore
from artifacts.errors import env_number

STAMPS = "_stamps"
# the files that name a work directory's newest checkpoint: pushed after every other file
LAST = ("checkpoints/checkpoint", "progress.json")
_THREADS = 8


def cache_home() -> str:
    """$TAPELINE_CACHE, else $XDG_CACHE_HOME/tapeline, else ~/.cache/tapeline."""
    if os.environ.get("TAPELINE_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["TAPELINE_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tapeline")


def _bound() -> int:
    return int(env_number("TAPELINE_CACHE_GB", 20.0, 0.0, 1 << 20, "the local cache's bound in GB") * (1 << 30))


def _local_files(folder: str) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the regular files below folder (no link followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                out[os.path.relpath(path, folder).replace(os.sep, "/")] = (st.st_size, st.st_mtime_ns)
    return out


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Damaged(OSError):
    """A fetched object does not match its manifest, or is named so that it would land outside."""


def below(folder: str, rel: str) -> str:
    """The local path of rel (a manifest's or a listing's name, read from the store) inside
    folder; Damaged when a part of it is empty, `.` or `..` (an object key may hold them): no name
    read from the root leads outside the cache."""
    parts = rel.split("/")
    if not rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise Damaged(0, "names a path outside its folder", rel)
    return os.path.join(folder, *parts)


class Mirror:
    def __init__(self, root: str):
        self.root = root
        self.base = os.path.join(cache_home(), hashlib.sha256(root.encode()).hexdigest()[:16])
        self.bound = _bound()  # read here: a malformed $TAPELINE_CACHE_GB is refused before any work

    def local(self, uri: str) -> str:
        """Where uri (below the root) lies in the cache."""
        if not uri.startswith(self.root + "/"):
            raise ValueError(f"{uri} is not under {self.root}")
        return os.path.join(self.base, *uri[len(self.root) + 1:].split("/"))

    def remote(self, path: str) -> str | None:
        """The root's URI of a path in the cache (None: not in it)."""
        if not path.startswith(self.base + os.sep):
            return None
        return self.root + "/" + os.path.relpath(path, self.base).replace(os.sep, "/")

    def _stamp(self, uri: str) -> str:
        return os.path.join(self.base, STAMPS, *uri[len(self.root) + 1:].split("/")) + ".json"

    # -- artifacts ---------------------------------------------------------------------------
    def fresh(self, uri: str, manifest: dict) -> bool:
        """Whether the cache holds the artifact at uri as its manifest lists it (by the stamp
        written when it was checked: every file's size and modification time)."""
        try:
            with open(self._stamp(uri)) as f:
                stamp = json.load(f)
            files = _local_files(self.local(uri))
        except (OSError, ValueError):
            return False
        listed = manifest.get("files", {})
        return (stamp.get("fingerprint") == manifest.get("fingerprint") and set(files) == set(listed)
                and all(list(files[r]) == stamp["files"].get(r) and files[r][0] == listed[r]["size"] for r in files))

    def stamp(self, uri: str, manifest: dict) -> None:
        """Record that the cache's copy of uri was checked against its manifest just now."""
        path = self._stamp(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files = {r: list(v) for r, v in _local_files(self.local(uri)).items()}
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": manifest.get("fingerprint"), "files": files}, f)
        os.replace(tmp, path)

    def fetch(self, uri: str, manifest: dict) -> str:
        """The local folder holding the artifact at uri, downloaded unless fresh; every file is
        checked against the manifest's sha256 (Damaged otherwise, nothing left in place)."""
        local = self.local(uri)
        if self.fresh(uri, manifest):
            os.utime(self._stamp(uri))  # recently used: the last to be dropped
            return local
        tmp = f"{local}.fetch-{uuid.uuid4().hex[:8]}"
        files = manifest.get("files", {})

        def one(rel: str) -> None:
            dst = below(tmp, rel)
            objstore.download(f"{uri}/{rel}", dst, limit=files[rel]["size"])
            if os.path.getsize(dst) != files[rel]["size"] or _sha(dst) != files[rel]["sha256"]:
                raise Damaged(0, "does not match its manifest", f"{uri}/{rel}")

        try:
            os.makedirs(tmp)
            with ThreadPoolExecutor(_THREADS) as pool:
                list(pool.map(one, sorted(files)))
            if os.path.exists(local):
                shutil.rmtree(local)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            os.rename(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.stamp(uri, manifest)
        self.trim(keep={local})
        return local

    def drop(self, uri: str) -> None:
        for path in (self._stamp(uri),):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(self.local(uri), ignore_errors=True)

    def trim(self, keep: set[str] = frozenset()) -> None:
        """Drop the least recently used artifacts while the cache is over its bound."""
        stamps = []
        for dirpath, _dirs, files in os.walk(os.path.join(self.base, STAMPS)):
            for name in files:
                if name.endswith(".json"):
                    path = os.path.join(dirpath, name)
                    stamps.append((os.path.getmtime(path), path))
        sizes = {}
        for _, path in stamps:
            uri = self.root + "/" + os.path.relpath(path, os.path.join(self.base, STAMPS))[:-5].replace(os.sep, "/")
            sizes[path] = (uri, sum(s for s, _ in _local_files(self.local(uri)).values()))
        total = sum(s for _, s in sizes.values())
        for _, path in sorted(stamps):
            if total <= self.bound:
                break
            uri, size = sizes[path]
            if self.local(uri) in keep:
                continue
            self.drop(uri)
            total -= size


class WorkSync:
    """A work directory on local disk, kept in the store at remote: `pull()` when a run starts,
    `push()` after every checkpoint (done by a background thread, so training does not wait;
    a push asked for while one is under way is coalesced into the next), `flush()` waits."""

    def __init__(self, local: str, remote: str):
        self.local, self.remote = local, remote
        self.stage = "/".join(remote.rstrip("/").split("/")[-4:-2])  # PIPELINE/STAGE (a failpoint's name)
        self._index_path = local.rstrip(os.sep) + ".sync.json"
        self._index: dict[str, list] = {}  # rel -> [size, mtime_ns, etag] of what the store holds
        self._wanted: dict | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.pushed = 0  # pushes completed (for tests and the benchmark)
        self.seconds = 0.0  # time spent uploading, off the training thread

    def pull(self) -> None:
        """Make the local folder what the store holds (the store is the truth: another machine
        may have gone further), reading only what differs from the local index."""
        try:
            with open(self._index_path) as f:
                self._index = json.load(f)
        except (OSError, ValueError):
            self._index = {}
        remote = {m.key: m for m in objstore.listing(self.remote)}
        here = _local_files(self.local) if os.path.isdir(self.local) else {}
        for rel, m in remote.items():
            known = self._index.get(rel)
            if rel in here and known and known[2] == m.etag and list(here[rel]) == known[:2]:
                continue
            dst = below(self.local, rel)
            objstore.download(f"{self.remote}/{rel}", dst)
            st = os.stat(dst)
            self._index[rel] = [st.st_size, st.st_mtime_ns, m.etag]
        for rel in set(here) - set(remote):
            os.remove(os.path.join(self.local, *rel.split("/")))
        self._index = {r: v for r, v in self._index.items() if r in remote}
        self._save_index()

    def _save_index(self) -> None:
        os.makedirs(os.path.dirname(self._index_path), exist_ok=True)
        tmp = f"{self._index_path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            json.dump(self._index, f)
        os.replace(tmp, self._index_path)

    def push(self) -> None:
        """Ask for the local folder as it is now to be uploaded. The files naming the newest
        checkpoint are read now, in the caller's thread, so the upload names exactly this save."""
        files = _local_files(self.local)
        snapshot = {"files": files, "last": {}}
        for rel in LAST:
            if rel in files:
                with open(os.path.join(self.local, *rel.split("/")), "rb") as f:
                    snapshot["last"][rel] = f.read()
        with self._cond:
            if self._error is not None:
                raise self._error
            self._wanted = snapshot
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="work-sync", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None:
                    self._cond.wait()
                job, self._wanted, self._busy = self._wanted, None, True
            try:
                t = time.perf_counter()
                self._upload(job)
                self.seconds += time.perf_counter() - t
                self.pushed += 1
                failpoints.hit(f"store.work.pushed.{self.stage}")
            except FileNotFoundError:
                pass  # a file pruned by a newer save: that save's push covers it
            except BaseException as e:  # noqa: BLE001 - reported to the next push or flush
                with self._cond:
                    self._error = e
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _upload(self, job: dict) -> None:
        files = job["files"]
        todo = [r for r in sorted(files) if r not in LAST and self._index.get(r, [None, None])[:2] != list(files[r])]

        def one(rel: str) -> None:
            tag = objstore.upload(os.path.join(self.local, *rel.split("/")), f"{self.remote}/{rel}")
            self._index[rel] = [*files[rel], tag]

        # a checkpoint's .index after its .data files (TensorFlow's own order): a reader that lists
        # ckpt-*.index when the state file is missing never finds one without its data
        for part in ([r for r in todo if not r.endswith(".index")], [r for r in todo if r.endswith(".index")]):
            with ThreadPoolExecutor(_THREADS) as pool:
                list(pool.map(one, part))
        for rel in LAST:  # then what names the newest checkpoint, in this order
            if rel in job["last"]:
                tag = objstore.write(f"{self.remote}/{rel}", job["last"][rel])
                self._index[rel] = [*files[rel], tag]
        gone = [r for r in self._index if r not in files]
        if gone:  # what the save pruned (older checkpoints), once nothing names it
            objstore.delete([f"{self.remote}/{r}" for r in gone])
            for r in gone:
                del self._index[r]
        self._save_index()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every asked-for push is in the store; raise what a push met."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._wanted is not None or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the work directory's upload did not finish in time")
                self._cond.wait(left)
            if self._error is not None:
                raise self._error

    def discard(self) -> None:
        """The work is done (its artifact committed): remove both copies."""
        objstore.remove_tree(self.remote)
        shutil.rmtree(self.local, ignore_errors=True)
        if os.path.exists(self._index_path):
            os.remove(self._index_path)
