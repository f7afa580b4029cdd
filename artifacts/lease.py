"""A live run's lease on the artifacts it committed or reused: ROOT/_leases/RUN_ID.json with a heartbeat."""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from artifacts import gfile
from artifacts.errors import storage_error

LEASES = "_leases"
MISSED_BEATS = 4  # a lease not rewritten for this many heartbeats belongs to a dead run


class Lease:
    """Held by `with store.lease(run_id) as lease:`. The file is written on entry, whenever an
    artifact joins (`add`), and every `heartbeat` seconds by a daemon thread; it is removed on
    exit. gc keeps the lineage of everything a lease whose heartbeat is recent names."""

    def __init__(self, store: Any, run_id: str, heartbeat: float):  # store: an ArtifactStore
        self.store, self.run_id, self.heartbeat = store, run_id, heartbeat
        self.path = gfile.join(store.root, LEASES, f"{run_id}.json")
        self.uris: list[str] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, uri: str) -> None:
        """uri joins the lease; written before this returns."""
        with self._guard:
            if uri not in self.uris:
                self.uris.append(uri)
                self._write()

    def _write(self) -> None:
        now = time.time()
        try:
            gfile.makedirs(gfile.join(self.store.root, LEASES))
            gfile.write_json(self.path, {
                "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "heartbeat": now, "expires": now + MISSED_BEATS * self.heartbeat,
                "artifacts": [self.store.ref(u) for u in self.uris]})
        except Exception as exc:  # a full disk or a read-only root: the one-line error
            user = storage_error(exc, self.store.root, "the run's lease")
            if user is None:
                raise
            raise user from None

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


def live_leases(store: Any, now: float | None = None) -> set[str]:  # store: an ArtifactStore
    """The artifacts (resolved under the store's root) that unexpired leases name. A lease file
    that does not decode is noted in store.skipped and holds nothing."""
    now = time.time() if now is None else now

    def parse(rec) -> set[str]:
        if float(rec["expires"]) < now:
            return set()
        return {u for u in map(store.resolve, list(rec["artifacts"])) if u}

    return set().union(*store.records(LEASES, parse))
