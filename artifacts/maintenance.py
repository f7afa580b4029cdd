"""verify (re-hash every committed artifact) and gc (drop what nothing needs)."""
from __future__ import annotations

from dataclasses import dataclass

from artifacts import gfile, lock
from artifacts.store import COMMITTED, LOCKS, PENDING, WORK, ArtifactStore


@dataclass(frozen=True)
class Damage:
    uri: str
    problems: tuple[str, ...]


def verify(store: ArtifactStore) -> tuple[int, list[Damage]]:
    """(number of artifacts checked, the damaged ones)."""
    checked, damaged = 0, []
    for _p, _s, art in store.all_artifacts():
        checked += 1
        problems = store.check(art)
        if problems:
            damaged.append(Damage(art.uri, tuple(problems)))
    return checked, damaged


def gc(store: ArtifactStore, keep: int, dry_run: bool = False) -> list[str]:
    """Remove committed artifacts that no champion and none of the last `keep` runs reference,
    and abandoned partial writes. Work dirs (resumable training state) are kept. Returns the
    removed URIs."""
    needed: set[str] = set()
    for p in store.pipelines():
        champ = store.champion(p)
        if champ:
            for uri in champ.get("artifacts", {}).values():
                needed |= store.lineage(uri)
    for run in store.runs()[-keep:] if keep > 0 else []:
        for stage in run.get("stages", {}).values():
            needed |= store.lineage(stage["uri"])
    removed = []
    for p in store.pipelines():
        for s in store.stages(p):
            base = store.stage_root(p, s)
            for name in gfile.listdir(base):
                if name in (WORK, LOCKS):
                    continue
                uri = gfile.join(base, name)
                if gfile.exists(gfile.join(uri, COMMITTED)):
                    if uri.rstrip("/") in needed:
                        continue
                elif not _abandoned(store, p, s, uri):
                    continue
                removed.append(uri)
                if not dry_run:
                    gfile.rmtree(uri)
    return removed


def _abandoned(store: ArtifactStore, pipeline: str, stage: str, uri: str) -> bool:
    """An uncommitted directory whose writer is gone (its fingerprint lock is free)."""
    pending = gfile.join(uri, PENDING)
    if not gfile.exists(pending):
        return True
    fingerprint = gfile.read_bytes(pending).decode().strip()
    with lock.exclusive(store.lock_path(pipeline, stage, fingerprint), blocking=False) as free:
        return free
