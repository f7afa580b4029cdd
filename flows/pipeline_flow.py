"""The Prefect flow of a pipeline: one task per stage of its graph, cached by the store."""
from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from artifacts import gfile
from artifacts.store import ArtifactStore
from pipelines.graph import Node, nodes, run_node
from pipelines.registry import get


@task(cache_policy=NONE, persist_result=False)
def stage_task(store: ArtifactStore, node: Node, done: dict) -> dict:
    """Reuse or build one stage; returns small JSON (uri, fingerprint, reused)."""
    run = run_node(store, node, done)
    get_run_logger().info("%s %s %s", node.key, "reused" if run.reused else "built", run.artifact.uri)
    return {"uri": run.artifact.uri, "fingerprint": run.artifact.fingerprint, "reused": run.reused,
            "artifact": run.artifact}


def _markdown(pipeline: str, run_id: str, summary: dict) -> str:
    lines = [f"# {pipeline} — run {run_id}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in summary.get("metrics", {}).items()]
    lines += ["", f"**blessed:** {summary.get('blessed')} — {summary.get('why', '')}", "",
              "| stage | reused | artifact |", "|---|---|---|"]
    lines += [f"| {k} | {v['reused']} | `{v['uri']}` |" for k, v in summary["stages"].items()]
    pics = summary.get("pictures", {})
    if pics:
        lines += ["", "Pictures: " + ", ".join(f"[{k}]({v})" for k, v in pics.items())]
    return "\n".join(lines)


@flow(name="tapeline", flow_run_name="{pipeline}-{run_id}", log_prints=True)
def pipeline_flow(pipeline: str, overrides: list[str], root: str, run_id: str) -> dict:
    p = get(pipeline)
    cfg = p.config(overrides)
    store = ArtifactStore(root)
    done, stages = {}, {}
    for node in nodes(p, cfg):
        result = stage_task.with_options(name=node.key)(store, node, done)
        done[node.key] = result.pop("artifact")
        stages[node.key] = result
    summary = {"run_id": run_id, "pipeline": pipeline, "root": root, "stages": stages,
               "created": dt.datetime.now(dt.timezone.utc).isoformat(), "overrides": list(overrides)}
    evaluation = done.get(f"{pipeline}/evaluate")
    if evaluation is not None:
        summary["metrics"] = gfile.read_json(evaluation.path("metrics.json"))
        blessing = gfile.read_json(evaluation.path("blessing.json"))
        summary.update(blessed=blessing["blessed"], why=blessing["why"])
    champion = store.champion(pipeline)
    summary["champion"] = champion["version"] if champion else None
    pics = {}
    if f"{pipeline}/render" in done:
        pics["history"] = done[f"{pipeline}/render"].path("history.png")
    if f"{pipeline}/animate" in done:
        pics["gif"] = done[f"{pipeline}/animate"].path("training.gif")
    summary["pictures"] = pics
    store.record_run(run_id, summary)
    create_markdown_artifact(_markdown(pipeline, run_id, summary), key=f"{pipeline}-run",
                             description=f"tapeline {pipeline} run {run_id}")
    return summary


def new_run_id() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_pipeline(pipeline: str, overrides: list[str], root: str, run_id: str | None = None) -> dict:
    """Run the flow on the Prefect API in the environment (the ephemeral one by default)."""
    cfg = get(pipeline).config(overrides)
    f = pipeline_flow.with_options(retries=cfg.flow.retries, retry_delay_seconds=cfg.flow.retry_delay_seconds)
    return f(pipeline=pipeline, overrides=list(overrides), root=root, run_id=run_id or new_run_id())
