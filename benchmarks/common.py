"""Shared by the benchmarks: timing, running stages of a pipeline directly, printing a ratio."""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

FASHION = os.environ.get("TAPELINE_FASHION", "/usr/share/datasets/fashion-mnist")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")


@contextmanager
def timed(out: dict, key: str):
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def scratch_root(name: str) -> str:
    return tempfile.mkdtemp(prefix=f"tapeline-bench-{name}-")


def run_stages(root: str, pipeline: str, sets: list[str], stages: tuple[str, ...]) -> dict:
    """Build the named stages of a pipeline (its own nodes, in order) directly with the store;
    returns {stage: (seconds, artifact)}."""
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    p = get(pipeline)
    out, t = {}, time.perf_counter()
    for n, run in build(ArtifactStore(root), nodes(p, p.config(sets)), [f"{pipeline}/{s}" for s in stages]):
        out[n.stage] = (time.perf_counter() - t, run.artifact)
        t = time.perf_counter()
    return out


def report(title: str, rows: list[tuple[str, float, str]]) -> None:
    print(f"\n== {title}")
    for name, value, unit in rows:
        print(f"  {name:66s} {value:10.3f} {unit}")
