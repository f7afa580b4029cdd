"""The watch flow: each pipeline's source keyed as ingest keys it (cheaply), and the event
`tapeline.source.changed` when that key differs from what its last retraining ingested.

prefect.yaml deploys it on a short interval; each retrain deployment has a trigger on the event
for its own pipeline (resource `tapeline.pipeline.NAME`)."""
from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.events import emit_event

from artifacts.errors import UserError
from artifacts.store import open_store
from components import watch as watching
from components.stages import ingest
from flows.registry import all_pipelines, get

EVENT = "tapeline.source.changed"


def resource(pipeline: str) -> dict[str, str]:
    """The event's resource: the pipeline (what a retrain deployment's trigger matches)."""
    return {"prefect.resource.id": f"tapeline.pipeline.{pipeline}", "prefect.resource.name": pipeline}


def cache_path() -> str:
    """The watch's cache of sizes, mtimes and hashes: in PREFECT_HOME, per machine (it names local
    files), never in the root, which is shared data."""
    from prefect.settings import PREFECT_HOME

    return os.path.join(str(PREFECT_HOME.value()), "tapeline-watch.json")


def watch_sources(pipelines: list[str] | None = None, overrides: dict[str, list[str]] | None = None,
                  root: str | None = None, settle_seconds: float = 30.0,
                  reannounce_seconds: float = 900.0) -> list[dict]:
    """The body of the watch flow: one verdict per pipeline, an event for each changed source."""
    logger = get_run_logger()
    store = open_store(root)
    path = cache_path()
    cache = watching.load_cache(path)
    _keep(path, cache)  # before any event: a watch that cannot keep its cache would announce again each tick
    out = []
    for name in pipelines or list(all_pipelines()):
        p = get(name)
        try:
            params = ingest.Params.from_config(p.config(list((overrides or {}).get(name, []))), p.recipe)
            verdict = watching.check(store, name, params, cache, settle_seconds, reannounce_seconds)
        except UserError as e:  # one missing source must not keep the others unwatched
            verdict = {"pipeline": name, "emit": False, "why": e.line()}
        if verdict["emit"]:
            emit_event(event=EVENT, resource=resource(name),
                       payload={"old": verdict["old"], "new": verdict["new"], "source": verdict["source"]})
        logger.info("%s: %s%s", name, "EVENT " if verdict["emit"] else "", verdict["why"])
        out.append(verdict)
    _keep(path, cache)
    return out


def _keep(path: str, cache: dict) -> None:
    try:
        watching.save_cache(path, cache)
    except OSError as e:
        raise UserError(f"the watch cannot keep its cache {path}: {e.strerror or e}", "PREFECT_HOME",
                        "point PREFECT_HOME at a writable folder with room (the cache is what it has "
                        "announced: without it, every change is announced again at each tick)") from None


@flow(name="watch", log_prints=True)
def watch(pipelines: list[str] | None = None, overrides: dict[str, list[str]] | None = None,
          root: str | None = None, settle_seconds: float = 30.0, reannounce_seconds: float = 900.0) -> list[dict]:
    """Emit tapeline.source.changed for each pipeline whose source changed since its last ingest.

    Args:
        pipelines: which pipelines to watch; empty: every registered one.
        overrides: per pipeline, the KEY=VALUE strings its retrain deployment runs with.
        root: artifact root URI; empty: $TAPELINE_ROOT of the worker, else ./tapeline-artifacts.
        settle_seconds: a source with a file changed more recently than this waits for the next tick.
        reannounce_seconds: a change announced this long ago that no run has ingested yet is announced
            again (longer than the triggers' `within`, which drops events inside it).
    """
    return watch_sources(pipelines, overrides, root, settle_seconds, reannounce_seconds)
