"""Locks so that two processes building one fingerprint on one root never both write it."""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from typing import Iterator

from artifacts import gfile

_process_locks: dict[str, threading.Lock] = {}
_registry_guard = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _registry_guard:
        return _process_locks.setdefault(key, threading.Lock())


class NotALockFile(OSError):
    """The lock's path or its folder is a symlink or not a regular file: refused, never opened
    through (a planted link would have the next run truncate whatever it points to)."""


def _open_lock_file(local: str) -> int:
    folder, name = os.path.split(local)
    os.makedirs(folder, exist_ok=True)
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | nofollow)
    except OSError as e:
        raise NotALockFile(e.errno, "lock folder is a symlink or not a folder", folder) from None
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | nofollow, 0o644, dir_fd=dfd)
        except OSError as e:
            if os.path.islink(local) or not os.path.isfile(local):
                raise NotALockFile(e.errno, "lock file is a symlink or not a regular file", local) from None
            raise
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotALockFile(0, "lock file is not a regular file", local)
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def exclusive(path: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock named by path; yields False (without holding it) if not blocking and taken.

    Local roots use flock(2): the kernel drops it when the holder dies, even by SIGKILL, so a
    crashed writer never leaves a stale lock. ram:// lives in one process, where a thread lock
    is exact. For object stores (gs://) there is no atomic create through tf.io.gfile; those
    runs rely on one writer per fingerprint (a Prefect concurrency limit per pipeline does it).
    """
    tlock = _thread_lock(path)
    if not tlock.acquire(blocking):
        yield False
        return
    try:
        if not gfile.is_local(path):
            yield True
            return
        local = path[len("file://"):] if path.startswith("file://") else path
        fd = _open_lock_file(local)
        try:
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        tlock.release()
