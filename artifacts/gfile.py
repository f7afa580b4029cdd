"""File helpers, so local paths, object stores (s3://, gs://) and ram:// roots behave alike.

Local paths go through Python's own file functions: a run that reuses every stage, a plan, a
verify, and a stage that fails on its input never pay for TensorFlow's start-up. s3:// and gs://
go through obstore (artifacts/objstore.py: TensorFlow >= 2.18 has no S3 filesystem); what
TensorFlow itself must open there is staged locally by the store (artifacts/mirror.py). ram://
(tests) goes through tf.io.gfile."""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat as _stat
import uuid
from typing import Any, Iterator

from artifacts import objstore

_CHUNK = 1 << 20


class NotRegular(OSError):
    """A FIFO, device, socket, directory or symlink where a regular file is expected: refused
    without opening it in a way that could block or lead out of the root."""


def open_regular(path: str, *, follow: bool = False) -> int:
    """A read-only descriptor of the regular file at a local path. The last component is never
    a symlink unless follow=True (a data source's own links), and never blocks (a FIFO opened
    O_NONBLOCK returns at once and is refused by fstat)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise NotRegular(e.errno, "a symlink, not a file (not followed)", path) from None
        raise
    st = os.fstat(fd)
    if not _stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(0, f"not a regular file ({_kind(st.st_mode)})", path)
    os.set_blocking(fd, True)
    return fd


def _kind(mode: int) -> str:
    for test, name in ((_stat.S_ISDIR, "a directory"), (_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISSOCK, "a socket"),
                       (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
                       (_stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def kind(path: str) -> str:
    """What a local path is without following it: 'file', 'dir', 'missing' or a description of
    anything else (a symlink, a FIFO, ...). Remote paths are 'file', 'dir' or 'missing'."""
    if "://" in path:
        return "dir" if isdir(path) else "file" if exists(path) else "missing"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"
    return "file" if _stat.S_ISREG(mode) else "dir" if _stat.S_ISDIR(mode) else _kind(mode)


def _rmtree_local(path: str) -> None:
    """shutil.rmtree never follows a link inside the tree; a link at the top is removed itself,
    never what it points to."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.remove(path)
    else:
        shutil.rmtree(path)


class _LocalFiles:
    """The slice of tf.io.gfile this module uses, on the local filesystem."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    rmtree = staticmethod(_rmtree_local)
    remove = staticmethod(os.remove)
    walk = staticmethod(os.walk)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def GFile(path: str, mode: str, follow: bool = False):  # noqa: N802 - tf.io.gfile's name
        if mode == "rb":  # reads refuse links, FIFOs and devices (see open_regular)
            return os.fdopen(open_regular(path, follow=follow), "rb")
        if mode == "wb":  # a link planted where a file is written is never written through
            return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666), "wb")
        return open(path, mode)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        os.replace(src, dst)


class _Buffer(io.BytesIO):
    """An object written whole when its `with` block ends without an error (never half of it)."""

    def __init__(self, uri: str):
        super().__init__()
        self.uri = uri

    def __exit__(self, kind, *rest):
        if kind is None:
            objstore.write(self.uri, self.getvalue())
        self.close()


class _ObjectFiles:
    """The same slice on an object store: folders are key prefixes, made by writing below them."""

    exists = staticmethod(lambda p: objstore.head(p) is not None or objstore.is_folder(p))
    isdir = staticmethod(objstore.is_folder)
    rmtree = staticmethod(objstore.remove_tree)

    @staticmethod
    def listdir(path: str) -> list[str]:
        dirs, files = objstore.children(path)
        return dirs + files

    @staticmethod
    def remove(path: str) -> None:
        objstore.delete([path])

    @staticmethod
    def makedirs(path: str) -> None:
        pass

    @staticmethod
    def GFile(path: str, mode: str, follow: bool = False):  # noqa: N802 - tf.io.gfile's name
        if mode == "rb":
            return io.BytesIO(objstore.read(path))
        if mode == "wb":
            return _Buffer(path)
        raise ValueError(f"mode {mode!r} on an object store")

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and objstore.head(dst) is not None:
            raise FileExistsError(dst)
        if "://" not in src:
            objstore.upload(src, dst)
        elif "://" not in dst:
            objstore.download(src, dst)
        else:
            objstore.copy(src, dst)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        _ObjectFiles.copy(src, dst, overwrite)
        objstore.delete([src])


def _gf(path: str):
    if "://" not in path:
        return _LocalFiles
    if objstore.is_object(path):
        return _ObjectFiles
    # Imported lazily: only ram:// (and other TensorFlow filesystems) needs TensorFlow.
    import tensorflow as tf

    return tf.io.gfile


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def exists(path: str) -> bool:
    return _gf(path).exists(path)


def isdir(path: str) -> bool:
    return _gf(path).isdir(path)


def makedirs(path: str) -> None:
    _gf(path).makedirs(path)


def listdir(path: str) -> list[str]:
    if not _gf(path).isdir(path):
        return []
    return sorted(name.rstrip("/") for name in _gf(path).listdir(path))


def stat(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of one file."""
    if "://" not in path:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    if objstore.is_object(path):
        m = objstore.head(path)
        if m is None:
            raise FileNotFoundError(path)
        return m.size, int(m.modified * 1e9)
    st = _gf(path).stat(path)
    return st.length, st.mtime_nsec


def lstat_mtime(path: str) -> float:
    """Modification time in seconds of path itself (a link's own, never its target's)."""
    if "://" not in path:
        return os.lstat(path).st_mtime
    if objstore.is_object(path):  # an object's time, or a folder's newest object's
        m = objstore.head(path)
        if m is not None:
            return m.modified
        return max((m.modified for m in objstore.listing(path)), default=0.0)
    return _gf(path).stat(path).mtime_nsec / 1e9


def rmtree(path: str) -> None:
    if "://" not in path:
        if os.path.lexists(path):
            _rmtree_local(path)
    elif _gf(path).isdir(path):
        _gf(path).rmtree(path)
    elif _gf(path).exists(path):
        _gf(path).remove(path)


def remove(path: str) -> None:
    if "://" not in path:
        if os.path.lexists(path):
            os.remove(path)
    elif _gf(path).exists(path):
        _gf(path).remove(path)


def _open_read(path: str, follow: bool):
    gf = _gf(path)
    return gf.GFile(path, "rb", follow=follow) if gf is _LocalFiles else gf.GFile(path, "rb")


def read_bytes(path: str, limit: int | None = None, *, follow: bool = False) -> bytes:
    """A whole file; a local one only if it is a regular file and, unless follow=True, not a
    symlink (NotRegular otherwise). limit: more bytes than this is an error, not a read."""
    if objstore.is_object(path):
        return objstore.read(path, limit)
    with _open_read(path, follow) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def open_read(path: str, *, follow: bool = False):
    """A binary reader of one file, refusing what read_bytes refuses."""
    return _open_read(path, follow)


def write_bytes(path: str, data: bytes) -> None:
    with _gf(path).GFile(path, "wb") as f:
        f.write(data)


def read_json(path: str, limit: int | None = 64 << 20) -> Any:
    """A control file: bytes that do not decode raise ValueError (UnicodeDecodeError and
    json.JSONDecodeError are both ValueErrors), never anything else."""
    return json.loads(read_bytes(path, limit).decode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    """JSON files are the store's small control files (champion, run records, a work directory's
    config and progress): on a local root they are replaced whole or not at all, so a full disk
    never leaves half of one for the next run to trip over. (Object stores write whole objects.)"""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_atomic(path: str, data: bytes) -> None:
    """data at path, whole or not at all (a local rename; object stores write whole objects)."""
    if not is_local(path):
        write_bytes(path, data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_bytes(tmp, data)
        _gf(path).rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            remove(tmp)
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass
        raise


def rename_dir(src: str, dst: str) -> None:
    """A local folder moved to dst by one rename: a reader sees all of it or nothing."""
    os.rename(src, dst)


def copy(src: str, dst: str) -> None:
    _gf(src if "://" in src else dst).copy(src, dst, overwrite=True)


def glob(pattern: str) -> list[str]:
    """Files matching pattern, whose wildcards may only be in its last component: the folder is
    taken literally, so a root whose path holds `[`, `]`, `*` or `?` is never read as a pattern.
    Like the shell, `*` does not match a leading dot."""
    folder, name = posixpath.split(pattern)
    return [join(folder, n) for n in listdir(folder)
            if fnmatch.fnmatchcase(n, name) and (name.startswith(".") or not n.startswith("."))]


def sha256(path: str, *, follow: bool = False) -> tuple[str, int]:
    """Digest and size of one file, read in chunks (a local one: regular, not a symlink unless follow)."""
    if objstore.is_object(path):
        return objstore.sha256(path)
    h, size = hashlib.sha256(), 0
    with _open_read(path, follow) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def walk_files(root: str) -> Iterator[str]:
    """Every file below root, as a path relative to it (posix separators), sorted. Locally,
    every entry that is not a directory counts as a file (a symlink to a directory too) and no
    link is followed: a caller that opens one meets NotRegular."""
    if objstore.is_object(root):
        return iter(sorted(m.key for m in objstore.listing(root)))
    out = []
    for dirpath, dirs, files in _gf(root).walk(root):
        rel = posixpath.relpath(dirpath.rstrip("/"), root.rstrip("/"))
        if "://" not in root:  # os.walk puts links to directories among dirs: they are entries here
            links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
            dirs[:] = [d for d in dirs if d not in links]
            files = list(files) + links
        for name in files:
            out.append(name if rel == "." else posixpath.join(rel, name))
    return iter(sorted(out))
