"""verify (re-hash every committed artifact) and gc (drop what nothing needs)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from artifacts import gfile, serving
from artifacts.errors import UserError
from artifacts.lease import expired_leases
from artifacts.store import COMMITTED, FINGERPRINT, PENDING, ArtifactStore


@dataclass(frozen=True)
class Damage:
    uri: str
    problems: tuple[str, ...]


def verify(store: ArtifactStore) -> tuple[int, list[Damage]]:
    """(number of artifacts checked, the damaged ones). What the listing met out of place (a
    symlink, a FIFO) is in store.skipped afterwards, reported, never followed; control files that
    do not read (champion.json, run records, leases) are in store.unreadable."""
    checked, damaged = 0, []
    for _p, _s, art in store.all_artifacts():
        checked += 1
        problems = store.check(art)
        if problems:
            damaged.append(Damage(art.uri, tuple(problems)))
    for p in store.pipelines():  # control files that do not read are noted in store.unreadable
        store.champion(p)
    store.runs()
    store.leased()
    return checked, damaged


def _age(uri: str, now: float) -> float:
    """Seconds since the newest of the folder, its marker and its _PENDING changed (a
    missing time counts as old)."""
    newest = 0.0
    for path in (uri, gfile.join(uri, COMMITTED), gfile.join(uri, PENDING)):
        try:
            newest = max(newest, gfile.lstat_mtime(path))
        except Exception:  # noqa: BLE001 - missing, or a remote folder (no time of its own)
            pass
    return now - newest


def gc(store: ArtifactStore, keep: int, dry_run: bool = False, grace: float = 0.0) -> list[str]:
    """Remove committed artifacts that no champion, none of the last `keep` runs and no live
    lease needs, abandoned partial writes and the leases of dead runs; nothing younger than
    `grace` seconds. Work dirs (resumable training state) are kept. Nothing out of place is
    followed (store.skipped lists it). Returns the removed URIs.

    Safe beside live runs: an artifact is removed only under its fingerprint's lock, the lock a
    run holds while it builds or reuses it, after the leases are read again under that lock."""
    now = time.time()
    needed: set[str] = set()
    for p in store.pipelines():
        champ = store.champion(p)
        if champ:
            for uri in champ.get("artifacts", {}).values():
                needed |= store.lineage(uri)
    for run in store.runs()[-keep:] if keep > 0 else []:
        for stage in run.get("stages", {}).values():
            needed |= store.lineage(stage["uri"])
    store.leased()
    _refuse_in_doubt(store)
    removed = []
    for p in store.pipelines():
        for s in store.stages(p):
            for uri in store.entries(p, s):
                if uri in needed or _age(uri, now) < grace:
                    continue
                if gfile.kind(gfile.join(uri, COMMITTED)) != "missing":
                    art = store.load(uri)
                    fp = art.fingerprint if art is not None else ""
                    if not _remove_unleased(store, p, s, uri, fp, dry_run):
                        continue
                elif not _abandoned(store, p, s, uri, dry_run):
                    continue
                removed.append(uri)
    removed += _abandoned_pushes(store, now, grace, dry_run)
    for path in expired_leases(store, now, grace):  # dead runs' leases: they protect nothing
        if not dry_run:
            gfile.remove(path)
        removed.append(path)
    return removed


def _abandoned_pushes(store: ArtifactStore, now: float, grace: float, dry_run: bool) -> list[str]:
    """A push killed before its rename leaves a hidden temporary folder in serving/PIPELINE/; it
    is removed once its pipeline's champion lock (which every push holds) is free. The pushed
    versions themselves are kept: promote.keep_versions decides how many stay."""
    removed = []
    for p in serving.pipelines(store):
        for tmp in serving.abandoned(store, p):
            if _age(tmp, now) >= grace and _under_lock(store, p, "promote", "champion",
                                                       lambda t=tmp: _rm(t, dry_run)):
                removed.append(tmp)
    return removed


def _refuse_in_doubt(store: ArtifactStore) -> None:
    """A champion, run record or lease that cannot be read might protect anything: remove nothing."""
    for path, what in sorted(store.unreadable.items()):
        raise UserError(f"cannot tell what {path.rsplit('/', 1)[-1]} protects: {what}", path,
                        "repair or remove it; gc removes nothing until then")


def _leased(store: ArtifactStore, uri: str) -> bool:
    leased = store.leased()
    _refuse_in_doubt(store)
    return any(uri in store.lineage(u) for u in leased)


def _remove_unleased(store: ArtifactStore, pipeline: str, stage: str, uri: str, fingerprint: str,
                     dry_run: bool) -> bool:
    """Remove a committed artifact unless a live run holds it; True if removed (or would be)."""
    if not FINGERPRINT.fullmatch(fingerprint):  # damaged: no run can reuse it
        return not _leased(store, uri) and _rm(uri, dry_run)
    return _under_lock(store, pipeline, stage, fingerprint,
                       lambda: not _leased(store, uri) and _rm(uri, dry_run))


def _under_lock(store: ArtifactStore, pipeline: str, stage: str, fingerprint: str, act) -> bool:
    """act() while holding the fingerprint's lock, if it is free; a lock file out of place (a
    symlink, a FIFO) is noted in store.skipped and the entry kept."""
    path = store.lock_path(pipeline, stage, fingerprint)
    try:
        with store.locked(path, blocking=False) as free:
            return bool(free) and act()
    except UserError as e:
        store.skipped[path] = e.what
        return False


def _rm(uri: str, dry_run: bool) -> bool:
    if not dry_run:
        gfile.rmtree(uri)  # never follows a link (gfile.rmtree)
    return True


def _abandoned(store: ArtifactStore, pipeline: str, stage: str, uri: str, dry_run: bool) -> bool:
    """Remove an uncommitted directory whose writer is gone (its fingerprint lock is free); a
    _PENDING that does not hold a fingerprint is data, never made into a lock path."""
    pending = gfile.join(uri, PENDING)
    fingerprint = ""
    if gfile.kind(pending) == "file":
        try:
            fingerprint = gfile.read_bytes(pending, 1024).decode("ascii").strip()
        except (OSError, ValueError):
            pass
    if not FINGERPRINT.fullmatch(fingerprint):
        return _rm(uri, dry_run)  # written whole by every writer: not one of ours, or long dead
    return _under_lock(store, pipeline, stage, fingerprint, lambda: _rm(uri, dry_run))
