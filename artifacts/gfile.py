"""File helpers over tf.io.gfile, so local paths, gs:// and ram:// roots behave alike.

Local paths go through Python's own file functions instead: a run that reuses every stage, a
plan, a verify, and a stage that fails on its input never pay for TensorFlow's start-up."""
from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from typing import Any, Iterator

_CHUNK = 1 << 20


class _LocalFiles:
    """The slice of tf.io.gfile this module uses, on the local filesystem."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    rmtree = staticmethod(shutil.rmtree)
    remove = staticmethod(os.remove)
    walk = staticmethod(os.walk)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def GFile(path: str, mode: str):  # noqa: N802 - tf.io.gfile's name
        return open(path, mode)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)

    @staticmethod
    def glob(pattern: str) -> list[str]:
        return _glob.glob(pattern)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        os.replace(src, dst)


def _gf(path: str):
    if "://" not in path:
        return _LocalFiles
    # Imported lazily: only remote roots (gs://, ram://) need TensorFlow's filesystems.
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
    st = _gf(path).stat(path)
    return st.length, st.mtime_nsec


def rmtree(path: str) -> None:
    if _gf(path).isdir(path):
        _gf(path).rmtree(path)
    elif _gf(path).exists(path):
        _gf(path).remove(path)


def remove(path: str) -> None:
    if _gf(path).exists(path):
        _gf(path).remove(path)


def read_bytes(path: str) -> bytes:
    with _gf(path).GFile(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    with _gf(path).GFile(path, "wb") as f:
        f.write(data)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    """JSON files are the store's small control files (champion, run records, a work directory's
    config and progress): on a local root they are replaced whole or not at all, so a full disk
    never leaves half of one for the next run to trip over. (Object stores write whole objects.)"""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
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


def copy(src: str, dst: str) -> None:
    _gf(src if "://" in src else dst).copy(src, dst, overwrite=True)


def glob(pattern: str) -> list[str]:
    return sorted(_gf(pattern).glob(pattern))


def sha256(path: str) -> tuple[str, int]:
    """Digest and size of one file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with _gf(path).GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def walk_files(root: str) -> Iterator[str]:
    """Every file below root, as a path relative to it (posix separators), sorted."""
    out = []
    for dirpath, _dirs, files in _gf(root).walk(root):
        rel = posixpath.relpath(dirpath.rstrip("/"), root.rstrip("/"))
        for name in files:
            out.append(name if rel == "." else posixpath.join(rel, name))
    return iter(sorted(out))
