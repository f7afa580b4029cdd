"""What a root records about its runs: the champion of each pipeline, the run records, the leases
of live runs, and lineage (what an artifact was built from)."""
from __future__ import annotations

from typing import Any, Callable

import json

from artifacts import gfile, objstore
from artifacts.lease import Lease, live_leases
from artifacts.refs import CHAMPION, RUNS, Artifact, reason, check_run_id


class Records:
    """The records half of ArtifactStore (artifacts/store.py)."""

    # -- champions and runs -----------------------------------------------------------------
    def champion(self, pipeline: str) -> dict | None:
        """The champion record, its artifact references resolved under this root (a reference
        that names nothing here is dropped). A damaged champion.json reads as no champion."""
        path = gfile.join(self.root, pipeline, CHAMPION)
        self._tags[pipeline] = None
        if gfile.kind(path) == "missing":
            return None
        try:
            if not self.contained(path):
                raise OSError(0, "reached through a symlink, not followed")
            if self.mirror is not None:  # the ETag read is what set_champion swaps against
                data, tag = objstore.read_tagged(path, 64 << 20)
                self._tags[pipeline] = tag
                rec = json.loads(data.decode("utf-8"))
            else:
                rec = gfile.read_json(path)
            if not isinstance(rec, dict):
                raise ValueError("not a champion record")
        except (OSError, ValueError) as e:
            self.unreadable[path] = f"unreadable, {reason(e)}"
            return None
        arts = rec.get("artifacts") if isinstance(rec.get("artifacts"), dict) else {}
        rec["artifacts"] = {k: u for k, u in ((k, self.resolve(v)) for k, v in arts.items()) if u}
        for k in ("uri", "exported"):
            if k in rec:
                rec[k] = self.resolve(rec[k], parts=None)
        return rec

    def set_champion(self, pipeline: str, record: dict) -> None:
        """champion.json written whole. On an object store only over the version last read by
        champion() (compare-and-swap on its ETag; create-only where there was none): a promotion
        made meanwhile raises objstore.Changed or objstore.Exists, never lost."""
        path = self.inside(gfile.join(self.root, pipeline, CHAMPION), "champion.json")
        if self.mirror is not None:
            if pipeline not in self._tags:
                self.champion(pipeline)
            body, tag = objstore.record(self._relative(record)), self._tags[pipeline]
            self._tags[pipeline] = objstore.create(path, body) if tag is None else objstore.swap(path, body, tag)
            return
        gfile.makedirs(gfile.join(self.root, pipeline))
        gfile.write_json(path, self._relative(record))

    def replace_champion(self, pipeline: str, record: dict, better: Callable[[dict | None], bool],
                         take: Callable[[], tuple[dict, Callable[[], None] | None]] | None = None) -> bool:
        """Make record the champion if better(the champion of now) holds, judged and written under
        one lock: of several runs promoting at once, a worse model never overwrites a better one.
        take(), run under that lock once the title is won (the push), gives fields to add to the
        record and how to undo itself should champion.json not be written (a stop, a full disk)."""
        with self.locked(self.lock_path(pipeline, "promote", "champion")):
            while True:
                if not better(self.champion(pipeline)):
                    return False
                extra, undo = take() if take is not None else ({}, None)
                try:
                    self.set_champion(pipeline, {**record, **extra})
                except (objstore.Changed, objstore.Exists):
                    # an object store: another promotion wrote champion.json since it was read
                    # (its lock had lapsed): undo the push and judge again against that one
                    if undo is not None:
                        undo()
                    continue
                except BaseException:
                    if undo is not None:
                        undo()
                    raise
                return True

    def _relative(self, obj: Any) -> Any:
        """obj with every path under the root written relative to it (a record's metrics are
        kept as the evaluation wrote them: values, not references the store follows)."""
        if isinstance(obj, dict):
            return {k: (v if k in ("root", "metrics") else self._relative(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._relative(v) for v in obj]
        return self.ref(obj) if isinstance(obj, str) else obj

    def record_run(self, run_id: str, record: dict) -> str:
        """ROOT/runs/RUN_ID.json: the record without the root's own place (it may move)."""
        path = self.inside(gfile.join(self.root, RUNS, f"{check_run_id(run_id)}.json"), "a run record")
        gfile.makedirs(gfile.join(self.root, RUNS))
        gfile.write_json(path, self._relative({k: v for k, v in record.items() if k != "root"}))
        return path

    def records(self, folder: str, parse: Callable[..., Any], with_path: bool = False) -> list[Any]:
        """parse(decoded JSON) of every ROOT/folder/*.json (parse(decoded JSON, its path) with
        with_path); a file that does not decode or parse is noted in self.unreadable and left out."""
        base = gfile.join(self.root, folder)
        if not self.contained(base):
            self.unreadable[base] = "a symlink or not a folder, not followed"
            return []
        out = []
        for name in gfile.listdir(base):
            path = gfile.join(base, name)
            if not name.endswith(".json"):
                continue
            try:
                rec = gfile.read_json(path)
                out.append(parse(rec, path) if with_path else parse(rec))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                self.unreadable[path] = f"unreadable, {reason(e)}"
        return out

    def runs(self) -> list[dict]:
        """Run records, oldest first, their stages' references resolved under this root (one
        that names nothing here is dropped; an unreadable record is skipped and noted)."""
        def parse(rec: Any) -> dict:
            stages = rec.get("stages", {})
            if not isinstance(stages, dict) or not isinstance(rec.get("created", ""), str):
                raise ValueError("not a run record")
            rec["stages"] = {k: {**st, "uri": self.resolve(st.get("uri"))} for k, st in stages.items()
                             if isinstance(st, dict) and self.resolve(st.get("uri"))}
            return rec

        return sorted(self.records(RUNS, parse), key=lambda r: r.get("created", ""))

    def lineage(self, uri: str) -> set[str]:
        """uri and every artifact it was built from, transitively (references in manifests
        resolved under this root; a data source is not an artifact)."""
        out, todo = set(), [uri.rstrip("/")]
        while todo:
            u = todo.pop()
            if u in out:
                continue
            out.add(u)
            art = self.load(u)
            if art is not None:
                todo.extend(r for r in (self.resolve(i["uri"]) for i in art.manifest.get("inputs", {}).values()) if r)
        return out

    # -- leases: what a live run holds ----------------------------------------------------------
    def lease(self, run_id: str, heartbeat: float | None = None) -> Lease:
        """`with store.lease(run_id) as lease:` around a run: ROOT/_leases/RUN_ID.json names every
        artifact it committed or reused so far, rewritten every `heartbeat` seconds
        ($TAPELINE_LEASE_SECONDS, 30) while it lives, so gc keeps them; a crashed run's lease
        expires after a few missed heartbeats."""
        return Lease(self, check_run_id(run_id), heartbeat)

    def _hold(self, art: Artifact) -> None:
        if self._lease is not None:
            self._lease.add(art.uri)

    def leased(self, now: float | None = None) -> set[str]:
        """Every artifact a live lease holds (unexpired, or its holder a process of this machine
        that still exists), resolved under this root."""
        return live_leases(self, now)
