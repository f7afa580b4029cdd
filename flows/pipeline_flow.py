"""The Prefect flows: one per pipeline, one task per stage of its graph, cached by the store.

`tapeline run` calls run_pipeline; deployments (prefect.yaml, `tapeline serve`) point at the
per-pipeline flow objects, module attributes named after the registry's pipelines
(`flows/pipeline_flow.py:fashion_dcgan` etc.), each made when first asked for."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
import uuid

from prefect import Flow, flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.states import Cancelled, State

from artifacts import failpoints
from artifacts.errors import UserError, storage_error
from artifacts.store import ArtifactStore, open_store
from components import drift, interrupt
from components.contract import Runtime
from components.stages import animate, evaluate, promote, render, validate
from flows.graph import Node, nodes, run_node
from flows.registry import all_pipelines, get


def _training_progress(node: Node):
    """A callback for the train stage's Runtime: a Prefect progress artifact that follows
    training (updated at its log lines)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    state = {}

    def hook(step: int, total: int) -> None:
        pct = 100.0 * step / max(total, 1)
        if "id" not in state:
            state["id"] = create_progress_artifact(pct, key=f"{node.pipeline.name}-training",
                                                   description=f"{node.key}: step {step}/{total}")
        else:
            update_progress_artifact(state["id"], pct, description=f"{node.key}: step {step}/{total}")

    return hook


@task(cache_policy=NONE, persist_result=False)
def stage_task(store: ArtifactStore, node: Node, done: dict, runtime: Runtime) -> dict:
    """Reuse or build one stage; returns small JSON (uri, fingerprint, reused)."""
    if node.stage == "train":
        runtime = dataclasses.replace(runtime, on_progress=_training_progress(node))
    try:
        with interrupt.stage(node.key):  # a signal abandons the stage's own work, not Prefect's
            run = run_node(store, node, done, runtime)
    except interrupt.Interrupted as stop:  # the task too ends Cancelled, not Crashed
        return Cancelled(message=stop.line())
    get_run_logger().info("%s %s %s", node.key, "reused" if run.reused else "built", run.artifact.uri)
    return {"uri": run.artifact.uri, "fingerprint": run.artifact.fingerprint, "reused": run.reused,
            "artifact": run.artifact}


def _markdown(pipeline: str, run_id: str, summary: dict) -> str:
    lines = [f"# {pipeline} — run {run_id}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in summary.get("metrics", {}).items()]
    if summary.get("outcome", "completed") != "completed":
        lines += ["", f"**outcome:** {summary['outcome']}"]
    lines += ["", f"**blessed:** {summary.get('blessed')} — {summary.get('why', '')}",
              f"**champion:** {summary.get('champion')}", ""]
    lines += _drift_markdown(summary.get("drift"))
    lines += ["",
              "| stage | reused | artifact |", "|---|---|---|"]
    lines += [f"| {k} | {v['reused']} | `{v['uri']}` |" for k, v in summary["stages"].items()]
    pics = summary.get("pictures", {})
    if pics:  # embedded as data: URIs, since a browser on the Prefect UI cannot open the root's paths
        from flows.ui import markdown

        lines += ["", "## Pictures", ""] + markdown(pics)
    return "\n".join(lines)


def _drift_markdown(report: dict | None) -> list[str]:
    if report is None:
        return []
    if not report.get("features"):
        return [f"**drift:** {report.get('note', '')}"]
    rows = ["## Drift from the champion's span", "", report.get("note", ""), "",
            "| feature | measure | distance | split | threshold | drifted |", "|---|---|---|---|---|---|"]
    for f, r in report["features"].items():
        d = "n/a" if r["distance"] is None else f"{r['distance']:.4f}"
        rows.append(f"| {f} | {r['measure']} | {d} | {r['split']} | {r['threshold']} | "
                    f"{'**yes**' if r['drifted'] else 'no'} |")
    return rows


def new_run_id() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _run_id(given: str | None) -> str:
    """The run id a caller gave, else one derived from the Prefect flow run (stable across the
    flow run's retries, so a retried scheduled run records under the same id)."""
    if given:
        return given
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time or dt.datetime.now(dt.timezone.utc)
    # Prefect's flow run ids are UUIDv7: the head is a clock (equal for hours), the tail random
    return f"{start:%Y%m%dT%H%M%S}-{str(flow_run.id)[-6:]}"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.flow_name}-{_run_id(flow_run.parameters.get('run_id'))}"


def run_stages(pipeline: str, overrides: list[str], root: str | None, run_id: str | None) -> dict:
    """The body of every pipeline's flow: each stage as a task, then the run record, the
    champion and a markdown artifact for the Prefect UI."""
    interrupt.reset()
    # Prefect's engine has put its own SIGTERM handler in place (it would raise inside any
    # stage, mid-step): ours asks the stage to stop at its next safe point instead, and leaves
    # Prefect's bookkeeping between stages alone. The lease keeps `tapeline gc` beside this run
    # off what it holds, until its record is written.
    with interrupt.handlers(between_stages=True):
        try:
            p = get(pipeline)
            cfg = p.config(overrides)
            if cfg.train.strategy == "mirrored":  # else TensorFlow loads only when a stage needs it
                from components.stages.train import prepare_devices

                prepare_devices(cfg)
            store = open_store(root)
            run_id = _run_id(run_id)
            runtime = Runtime.from_config(cfg)  # this run's runner and log rate, for every node
            done, stages, drifts = {}, {}, None
            with store.lease(run_id) as lease:
                graph = nodes(p, cfg)
                for node in graph:
                    interrupt.check(node.key)
                    if lease.lapsed():
                        stopped = _hold_again(store, [n for n in graph if n.key in done], done, stages, runtime)
                        if stopped is not None:
                            return stopped
                    started = time.perf_counter()
                    result = stage_task.with_options(name=node.key)(store, node, done, runtime)
                    if isinstance(result, State):  # the stage stopped on a signal: its task is Cancelled
                        return Cancelled(message=result.message)
                    result["seconds"] = round(time.perf_counter() - started, 3)
                    done[node.key] = result.pop("artifact")
                    stages[node.key] = result
                    lease.add(done[node.key].uri)
                    if node.pipeline.name == p.name and done[node.key].type == validate.SPEC.output:
                        drifts = _drift(store, p.name, cfg, done[node.key])  # before training
                        try:
                            drift.check(drifts, drift.Params.from_config(cfg), done[node.key].uri)
                        except UserError as stop:  # recorded, with its distances, then the one line
                            _record(store, pipeline, run_id, overrides, done, stages, drifts,
                                    outcome=f"stopped: {stop.what}")
                            raise
                    failpoints.hit(f"flow.after.{node.key}")
                interrupt.check(f"{pipeline}/run-record")
                return _record(store, pipeline, run_id, overrides, done, stages, drifts)
        except interrupt.Interrupted as stop:
            # Cancelled, not Crashed: a stop that was asked for, with everything it reached saved
            # (the CLI turns the CancelledRun this gives its caller into the one line and 130/143)
            return Cancelled(message=str(stop))


def _hold_again(store: ArtifactStore, reached: list[Node], done: dict, stages: dict, runtime: Runtime):
    """The run was stopped (SIGSTOP, a frozen VM) past its lease's expiry, so a gc on another
    machine may have collected what it holds: each stage it reached is reused again under the
    renewed lease (joining it under the fingerprint's lock, as gc expects), or rebuilt where it
    is gone (stages are reproducible: the same fingerprint gives the same bytes). A Cancelled
    state where a signal stops it meanwhile."""
    logger = get_run_logger()
    for node in reached:
        result = stage_task.with_options(name=f"{node.key} (again)")(store, node, done, runtime)
        if isinstance(result, State):
            return Cancelled(message=result.message)
        if not result["reused"]:
            logger.warning("%s was collected while this run was stopped: rebuilt as %s", node.key, result["uri"])
            stages[node.key].update(uri=result["uri"], rebuilt=True)
        done[node.key] = result.pop("artifact")
    return None


def _drift(store: ArtifactStore, pipeline: str, cfg, statistics) -> dict:
    """This run's statistics against the champion's span: decided on every run (the champion is
    outside validate's fingerprint) and logged; drift.check then makes it a one-line stop under
    validate.block_on_drift."""
    report = drift.report(store, pipeline, statistics, drift.Params.from_config(cfg))
    logger = get_run_logger()
    for line in drift.lines(report):
        logger.info("%s %s", pipeline, line)
    return report


def _record(store: ArtifactStore, pipeline: str, run_id: str, overrides: list[str], done: dict,
            stages: dict, drifts: dict | None = None, outcome: str = "completed") -> dict:
    """The run's summary: recorded under the root and shown as a markdown artifact. Written after
    the fact: a run stopped before its end (by drift) records the stages it reached and why."""
    summary = {"run_id": run_id, "pipeline": pipeline, "root": store.root, "stages": stages,
               "created": dt.datetime.now(dt.timezone.utc).isoformat(), "overrides": list(overrides),
               "outcome": outcome}
    if drifts is not None:
        summary["drift"] = drifts
    evaluation = done.get(f"{pipeline}/evaluate")
    if evaluation is not None:
        summary["metrics"] = evaluate.metrics(evaluation)
    promotion = done.get(f"{pipeline}/promote")
    if promotion is not None:  # this run's decision, made against the champion of that moment
        decision = promote.decision(promotion, store)
        summary.update(blessed=decision["blessed"], why=decision["why"], pushed=decision["pushed"])
    champion = store.champion(pipeline)
    summary["champion"] = champion["version"] if champion else None
    pics = {}
    if f"{pipeline}/render" in done:
        pics.update(render.pictures(done[f"{pipeline}/render"]))
    if f"{pipeline}/animate" in done:
        pics["gif"] = animate.gif(done[f"{pipeline}/animate"])
    summary["pictures"] = pics
    try:
        store.record_run(run_id, summary)
    except Exception as exc:  # a full disk after the last stage: every stage is committed, say so in one line
        user = storage_error(exc, store.root, "run record")
        if user is None:
            raise
        raise user from None
    create_markdown_artifact(_markdown(pipeline, run_id, summary), key=f"{pipeline}-run",
                             description=f"tapeline {pipeline} run {run_id}")
    return summary


def _make_flow(pipeline: str) -> Flow:
    cfg = get(pipeline).default_config()

    def body(overrides: list[str] | None = None, root: str | None = None, run_id: str | None = None) -> dict:
        return run_stages(pipeline, list(overrides or []), root, run_id)

    # the Args lines become the field descriptions of the run form in the Prefect UI
    body.__doc__ = (f"The {pipeline} pipeline: {get(pipeline).summary}.\n\nArgs:\n"
                    "    overrides: KEY=VALUE strings, as `tapeline run --set` takes them.\n"
                    "    root: artifact root URI; empty: $TAPELINE_ROOT of the worker, else ./tapeline-artifacts.\n"
                    "    run_id: the run's id; empty: derived from the flow run.\n")
    # the module attribute it is bound to below, so a deployment's entrypoint resolves to it
    body.__name__ = body.__qualname__ = attribute(pipeline)
    return flow(body, name=pipeline, flow_run_name=_flow_run_name, log_prints=True,
                retries=cfg.flow.retries, retry_delay_seconds=cfg.flow.retry_delay_seconds,
                validate_parameters=True)


def attribute(pipeline: str) -> str:
    """The module attribute a pipeline's flow is bound to: its deployment entrypoint is
    flows/pipeline_flow.py:<attribute> (mnist-gan -> mnist_gan)."""
    return pipeline.replace("-", "_")


@functools.cache
def _flow(pipeline: str) -> Flow:
    return _make_flow(pipeline)


def flow_of(pipeline: str) -> Flow:
    """The flow of a registered pipeline, made the first time it is asked for (never at import)."""
    return _flow(get(pipeline).name)


def __getattr__(attr: str) -> Flow:
    """A deployment's entrypoint, flows/pipeline_flow.py:<attribute> (PEP 562): the flow of the
    registered pipeline it names, made when Prefect asks for it."""
    for name in all_pipelines():
        if attribute(name) == attr:
            return flow_of(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def run_pipeline(pipeline: str, overrides: list[str], root: str | None = None,
                 run_id: str | None = None) -> dict:
    """Run a pipeline's flow on the Prefect API in the environment (the ephemeral one by default)."""
    cfg = get(pipeline).config(overrides)
    f = flow_of(pipeline).with_options(retries=cfg.flow.retries,
                                       retry_delay_seconds=cfg.flow.retry_delay_seconds)
    with tags("tapeline", pipeline):
        return f(overrides=list(overrides), root=root, run_id=run_id or new_run_id())
