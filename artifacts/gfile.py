"""File helpers over tf.io.gfile, so local paths, gs:// and ram:// roots behave alike."""
from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from typing import Any, Iterator

_CHUNK = 1 << 20


def _gf():
    # Imported lazily: `tapeline --help` must not pay for TensorFlow's start-up.
    import tensorflow as tf

    return tf.io.gfile


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def exists(path: str) -> bool:
    return _gf().exists(path)


def isdir(path: str) -> bool:
    return _gf().isdir(path)


def makedirs(path: str) -> None:
    _gf().makedirs(path)


def listdir(path: str) -> list[str]:
    if not _gf().isdir(path):
        return []
    return sorted(name.rstrip("/") for name in _gf().listdir(path))


def stat(path: str):
    """tf.io.gfile's stat: .length, .mtime_nsec."""
    return _gf().stat(path)


def rmtree(path: str) -> None:
    if _gf().isdir(path):
        _gf().rmtree(path)
    elif _gf().exists(path):
        _gf().remove(path)


def remove(path: str) -> None:
    if _gf().exists(path):
        _gf().remove(path)


def read_bytes(path: str) -> bytes:
    with _gf().GFile(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    with _gf().GFile(path, "wb") as f:
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
        _gf().rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            remove(tmp)
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass
        raise


def copy(src: str, dst: str) -> None:
    _gf().copy(src, dst, overwrite=True)


def glob(pattern: str) -> list[str]:
    return sorted(_gf().glob(pattern))


def sha256(path: str) -> tuple[str, int]:
    """Digest and size of one file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with _gf().GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def walk_files(root: str) -> Iterator[str]:
    """Every file below root, as a path relative to it (posix separators), sorted."""
    out = []
    for dirpath, _dirs, files in _gf().walk(root):
        rel = posixpath.relpath(dirpath.rstrip("/"), root.rstrip("/"))
        for name in files:
            out.append(name if rel == "." else posixpath.join(rel, name))
    return iter(sorted(out))
