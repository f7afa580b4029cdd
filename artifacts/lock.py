"""Locks so that two processes building one fingerprint on one root never both write it."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import uuid
import stat
import threading
import time
from typing import Iterator

from artifacts import gfile, objstore
from artifacts.errors import env_number

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
    is exact. On an object store (s3://, gs://) the lock is an object (_object_lock).
    """
    tlock = _thread_lock(path)
    if not tlock.acquire(blocking):
        yield False
        return
    try:
        if objstore.is_object(path):
            with _object_lock(path, blocking) as held:
                yield held
            return
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


def lock_ttl() -> float:
    """Seconds an object lock lives without a heartbeat ($TAPELINE_LOCK_TTL, default 60)."""
    return env_number("TAPELINE_LOCK_TTL", 60.0, 0.1, 86400.0, "the seconds an object lock lives without a heartbeat")


@contextlib.contextmanager
def _object_lock(path: str, blocking: bool) -> Iterator[bool]:
    """A lock as an object: {owner, host, pid, expires}, created create-only; its holder rewrites
    it by compare-and-swap every ttl/4 (its heartbeat), so a SIGKILLed or vanished machine's lock
    expires after ttl and the next writer takes it over, again by compare-and-swap on the ETag it
    read (of two takers, one wins). Expiry is judged on the holder's clock: hosts sharing a root
    keep their clocks within a few seconds (NTP), far inside the ttl. A holder that finds its lock
    taken (it was paused past the ttl) stops beating; the commit's create-only claim still lets
    only one writer of a fingerprint commit (artifacts/commit.py)."""
    owner, ttl = uuid.uuid4().hex, lock_ttl()

    def body() -> bytes:
        return objstore.record({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                                "expires": time.time() + ttl})

    while True:
        made, data, theirs = objstore.create_or_read(path, body())
        if made:
            tag = theirs
            break
        try:
            expired = float(json.loads(data.decode("utf-8"))["expires"]) < time.time()
        except (ValueError, KeyError, TypeError):
            expired = True  # not a lock tapeline wrote: it protects nothing
        if expired:
            try:
                tag = objstore.swap(path, body(), theirs)
                break
            except objstore.Changed:
                continue
        if not blocking:
            yield False
            return
        time.sleep(0.2 + 0.3 * random.random())
    stop, state = threading.Event(), {"tag": tag, "lost": False}

    def beat() -> None:
        while not stop.wait(ttl / 4):
            try:
                state["tag"] = objstore.swap(path, body(), state["tag"])
            except objstore.Changed:
                state["lost"] = True
                return
            except Exception:  # noqa: BLE001 - a missed beat; the next one tries again
                pass

    thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join(timeout=5)
        if not state["lost"]:
            try:
                data, now = objstore.read_tagged(path, 4096)
                if now == state["tag"]:
                    objstore.delete([path])
            except Exception:  # noqa: BLE001 - left behind, it expires
                pass
