"""A live run's lease on the artifacts it committed or reused: ROOT/_leases/RUN_ID.json with a heartbeat.

A lease is live while its expiry lies ahead, and also after it, while its holder is a process
of this machine that still exists: a run stopped with SIGSTOP (Ctrl-Z, a closed laptop, a frozen
cgroup) beats no more, yet it will go on. A holder on another machine cannot be seen from here:
such a run notices on waking that its lease lapsed (`Lease.lapsed`) and walks its inputs again
before it uses them, rebuilding what a gc collected meanwhile (flows/pipeline_flow.py)."""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from typing import Any

from artifacts import gfile
from artifacts.errors import env_number, storage_error

LEASES = "_leases"
MISSED_BEATS = 4  # a lease not rewritten for this many heartbeats belongs to a dead run
# tapeline writes expiries MISSED_BEATS heartbeats ahead, heartbeats of at most an hour: a lease
# claiming a day beyond its own heartbeat, or a heartbeat a day ahead of this clock, is not ours
ABSURD = 24 * 3600.0


def heartbeat_seconds() -> float:
    """$TAPELINE_LEASE_SECONDS: seconds between a run's lease heartbeats (default 30)."""
    return env_number("TAPELINE_LEASE_SECONDS", 30.0, 0.05, 3600.0, "the seconds between a run's lease heartbeats")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    boot id it tells a process from a later one given the same pid. '' where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def holder_alive(rec: dict) -> bool:
    """Whether the process that wrote lease rec is this machine's and still exists (running or
    stopped): the same host name, boot and process start time. False where any is unknown."""
    me = (socket.gethostname(), _boot_id())
    started = rec.get("started")
    return bool(started and me[1]) and (rec.get("host"), rec.get("boot")) == me \
        and _started(int(rec["pid"])) == started


class Lease:
    """Held by `with store.lease(run_id) as lease:`. The file is written on entry, whenever an
    artifact joins (`add`), and every `heartbeat` seconds by a daemon thread; it is removed on
    exit. gc keeps the lineage of everything a live lease names."""

    def __init__(self, store: Any, run_id: str, heartbeat: float | None = None):  # store: an ArtifactStore
        self.store, self.run_id = store, run_id
        self.heartbeat = heartbeat_seconds() if heartbeat is None else heartbeat
        self.path = gfile.join(store.root, LEASES, f"{run_id}.json")
        self.uris: list[str] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = 0.0    # when the file was last written
        self._lapsed = False   # a write came after the last one had expired

    def add(self, uri: str) -> None:
        """uri joins the lease; written before this returns."""
        with self._guard:
            if uri not in self.uris:
                self.uris.append(uri)
                self._write()

    def lapsed(self) -> bool:
        """Whether the lease expired at some moment since the last call (the process was stopped,
        or its writes failed, for longer than MISSED_BEATS heartbeats): a gc elsewhere may have
        collected what it named. Writes the lease (a write notes a lapse since the last one)."""
        with self._guard:
            self._write()
            lapsed, self._lapsed = self._lapsed, False
            return lapsed

    def _write(self) -> None:
        now = time.time()
        try:
            gfile.makedirs(gfile.join(self.store.root, LEASES))
            gfile.write_json(self.path, {
                "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "boot": _boot_id(), "started": _started(os.getpid()),
                "heartbeat": now, "expires": now + MISSED_BEATS * self.heartbeat,
                "artifacts": [self.store.ref(u) for u in self.uris]})
        except Exception as exc:  # a full disk or a read-only root: the one-line error
            user = storage_error(exc, self.store.root, "the run's lease")
            if user is None:
                raise
            raise user from None
        if self._written and now - self._written > MISSED_BEATS * self.heartbeat:
            self._lapsed = True
        self._written = now

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                with self._guard:
                    self._write()
            except Exception:  # noqa: BLE001 - a missed beat (a full disk) only shortens the lease
                pass

    def __enter__(self) -> "Lease":
        self.store.inside(self.path, "a lease")
        with self._guard:
            self._write()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        self.store._lease = self
        return self

    def __exit__(self, *exc) -> None:
        self.store._lease = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            gfile.remove(self.path)
        except Exception:  # noqa: BLE001 - left behind, it expires
            pass


def _absurd(rec: dict, now: float) -> str:
    expires = float(rec["expires"])
    beat = float(rec.get("heartbeat", expires))  # none: not a lease tapeline wrote
    if not (math.isfinite(expires) and math.isfinite(beat)):
        return f"a lease with expiry {expires!r} and heartbeat {beat!r}, not honoured"
    if expires - beat > ABSURD:
        return f"a lease that claims {(expires - beat) / 3600:.0f} h beyond its last heartbeat, not honoured"
    if beat > now + ABSURD:
        return f"a lease whose heartbeat is {(beat - now) / 3600:.0f} h ahead of this clock, not honoured"
    return ""


def live_leases(store: Any, now: float | None = None) -> set[str]:  # store: an ArtifactStore
    """The artifacts (resolved under the store's root) that live leases name: unexpired, or held
    by a process of this machine that still exists. A lease file that does not decode is noted in
    store.unreadable and holds nothing; an absurd one (an expiry no run of tapeline writes) is
    noted in store.skipped and honoured by no one."""
    now = time.time() if now is None else now

    def parse(rec, path: str) -> set[str]:
        absurd = _absurd(rec, now)
        if absurd:
            store.skipped[path] = absurd
            return set()
        if float(rec["expires"]) < now and not holder_alive(rec):
            return set()
        return {u for u in map(store.resolve, list(rec["artifacts"])) if u}

    return set().union(*store.records(LEASES, parse, with_path=True))


def expired_leases(store: Any, now: float, grace: float) -> list[str]:  # store: an ArtifactStore
    """The lease files of dead runs: expired more than grace seconds ago, their holder not a
    process of this machine that still exists (what gc collects)."""
    base = gfile.join(store.root, LEASES)
    out = []
    if gfile.kind(base) != "dir":
        return out
    for name in sorted(gfile.listdir(base)):
        path = gfile.join(base, name)
        if not name.endswith(".json") or gfile.kind(path) != "file":
            continue
        try:
            rec = gfile.read_json(path)
            dead = float(rec["expires"]) + grace < now and not holder_alive(rec) and not _absurd(rec, now)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # unreadable: gc already refuses in one line
        if dead:
            out.append(path)
    return out
