"""The source watch: each pipeline's data source keyed as ingest keys it, cheaply, and whether that
key differs from the one its last retraining ingested (flows/watch_flow.py emits the event)."""
from __future__ import annotations

import os
import time
from typing import Any

from artifacts import gfile
from artifacts.fingerprint import digest, file_times, known_hashes
from artifacts.refs import FINGERPRINT
from components.stages import ingest

CACHE_VERSION = 2  # 2: snapshots and hashes keyed by ctime too


def _files(location: str) -> list[str] | None:
    """Every file under a local source folder (what its content can come from), or None for a
    source that is not a local folder (tfds:NAME): that one is keyed in full each time."""
    d = os.path.expanduser(location)
    if "://" in d or not os.path.isdir(d):
        return None
    out = []
    for base, dirs, names in os.walk(d, followlinks=False):
        dirs.sort()
        out += [os.path.join(base, n) for n in sorted(names)]
    return out


def snapshot(source: str) -> dict[str, list[int]] | None:
    """{file: [size, mtime_ns, ctime_ns]} of a local source folder: the cheap first look. The ctime
    because a copy that keeps mtimes (`cp -p`, `rsync -a`) sets only that one to now."""
    files = _files(source.partition(":")[2])
    if files is None:
        return None
    # (a file gone between the listing and the stat, a source being changed, is left out)
    return {f: list(t) for f in files if (t := file_times(f)) is not None}


def _verified(cache: Any) -> dict:
    """The cache file's content if it is what this module writes, else an empty one: it lives
    outside the root (PREFECT_HOME), but is still only a hint checked against the files."""
    if not (isinstance(cache, dict) and cache.get("version") == CACHE_VERSION
            and isinstance(cache.get("sources"), dict) and isinstance(cache.get("files"), dict)):
        return {"version": CACHE_VERSION, "sources": {}, "files": {}, "emitted": {}}
    cache.setdefault("emitted", {})
    return cache


def load_cache(path: str) -> dict:
    try:
        return _verified(gfile.read_json(path))
    except (OSError, ValueError):
        return _verified(None)


def save_cache(path: str, cache: dict) -> None:
    gfile.makedirs(os.path.dirname(path))
    gfile.write_json(path, cache)


def content_key(params: ingest.Params, cache: dict) -> tuple[str, str, str]:
    """(source uri, content key, how it was found): the key ingest would give the source. Sizes and
    mtimes first: when every file of its folder (for tfds:NAME, of the folder it resolved to last
    time) is as the cache saw it, and none changed after it was keyed, the cached key stands;
    otherwise ingest's own resolve runs, re-hashing only the files whose size, mtime or ctime changed."""
    entry = cache["sources"].get(params.source)
    entry = entry if isinstance(entry, dict) and isinstance(entry.get("uri"), str) else None
    local = snapshot(params.source) is not None  # a folder of its own (else tfds:NAME)
    folder = params.source if local else (entry or {}).get("uri")
    snap = snapshot(folder) if folder else None
    if (snap is not None and entry is not None and entry.get("snapshot") == digest(snap)
            and FINGERPRINT.fullmatch(str(entry.get("key"))) and isinstance(entry.get("at"), int)
            and all(max(times) < entry["at"] - 2_000_000_000 for _, *times in snap.values())):
        return entry["uri"], entry["key"], "unchanged sizes and times"
    started = time.time_ns()  # a file changed while it is keyed is never trusted: keyed again next time
    snap = snapshot(params.source) if local else None
    with known_hashes(cache["files"]):
        ref = ingest.resolve_source(params)
    snap = snap if snap is not None else snapshot(ref.uri)
    if snap is not None:
        cache["sources"][params.source] = {"snapshot": digest(snap), "key": ref.fingerprint, "uri": ref.uri,
                                           "at": started}
    return ref.uri, ref.fingerprint, "keyed"


def last_ingested(store, pipeline: str, uri: str) -> str | None:
    """The source key of the newest ingest of this pipeline that read this source URI: the data
    the last retraining used (None: never ingested)."""
    for art in reversed(store.versions(pipeline, "ingest")):
        src = art.manifest.get("inputs", {}).get("source", {})
        if isinstance(src, dict) and src.get("uri") == uri:
            return src.get("fingerprint")
    return None


def settling(source: str, settle_seconds: float) -> bool:
    """True while a file of the source changed less than settle_seconds ago (a folder being copied
    in, one file at a time, with or without its mtimes kept): the watch waits for it, so a burst
    becomes one event."""
    snap = snapshot(source)
    if not snap or settle_seconds <= 0:
        return False
    newest = max(max(times) for _, *times in snap.values())
    return time.time_ns() - newest < settle_seconds * 1e9


def check(store, pipeline: str, params: ingest.Params, cache: dict, settle_seconds: float,
          reannounce_seconds: float = 900.0) -> dict:
    """One pipeline's verdict: {"pipeline", "source", "old", "new", "changed", "emit", "why"}."""
    if settling(params.source, settle_seconds):
        return {"pipeline": pipeline, "source": params.source, "old": None, "new": None, "changed": None,
                "emit": False, "why": f"a file changed in the last {settle_seconds:g} s: waiting for it to settle"}
    uri, new, how = content_key(params, cache)
    old = last_ingested(store, pipeline, uri)
    out = {"pipeline": pipeline, "source": uri, "old": old, "new": new, "changed": old is not None and old != new}
    if old is None:
        return {**out, "emit": False, "why": "never ingested: its first run (cron or by hand) sets the baseline"}
    if old == new:
        return {**out, "emit": False, "why": f"as last ingested ({how})"}
    # once per new key: the retraining it starts takes a while to ingest it, and the next ticks would
    # otherwise see the old key in the store and emit again. Once more when nothing ingested it within
    # reannounce_seconds: a trigger drops events inside its `within` window after it fired (a second
    # change soon after a first), and a run can fail before its ingest; the data must not wait for cron.
    announced = f"{store.root} {pipeline}"
    was = cache["emitted"].get(announced)
    now = time.time_ns()
    if (isinstance(was, list) and len(was) == 2 and was[0] == new and isinstance(was[1], int)
            and now - was[1] < reannounce_seconds * 1e9):
        return {**out, "emit": False, "why": "changed; already announced, its retraining not ingested yet"}
    again = isinstance(was, list) and was[:1] == [new]
    cache["emitted"][announced] = [new, now]
    return {**out, "emit": True, "why": ("changed; announced again, nothing ingested it in "
                                         f"{reannounce_seconds:g} s" if again else
                                         f"changed since the last ingest ({how})")}
