"""`tapeline serve`: the deployments of prefect.yaml, served from this process (prefect.serve),
for users without a work pool. prefect.yaml stays the one description of the deployments."""
from __future__ import annotations

from pathlib import Path

import yaml

from artifacts.errors import UserError

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def load(path: Path = PREFECT_YAML) -> list[dict]:
    """The deployments of prefect.yaml, each with its flow loaded from its entrypoint."""
    from prefect.flows import load_flow_from_entrypoint

    if not path.exists():
        raise UserError("prefect.yaml not found", str(path), "run from a clone of tapeline")
    spec = yaml.safe_load(path.read_text())
    out = []
    for d in spec.get("deployments") or []:
        file, _, func = d["entrypoint"].partition(":")
        entry = f"{path.parent / file}:{func}"
        out.append({**d, "flow": load_flow_from_entrypoint(entry, use_placeholder_flow=False)})
    return out


def schedule(s: dict):
    """One schedule of prefect.yaml: a cron (the retrain deployments) or an interval in seconds (the watch)."""
    from prefect.schedules import Cron, Interval

    if "interval" in s:
        return Interval(s["interval"], timezone=s.get("timezone", "UTC"))
    return Cron(s["cron"], timezone=s.get("timezone", "UTC"))


def triggers(d: dict) -> list:
    """A deployment's triggers of prefect.yaml, checked against Prefect's own schema."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return [DeploymentEventTrigger.model_validate(t) for t in d.get("triggers") or []]


def concurrency(d: dict):
    """A deployment's concurrency_limit of prefect.yaml (the watch's: one tick at a time), or None."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    c = d.get("concurrency_limit")
    return ConcurrencyLimitConfig.model_validate(c) if isinstance(c, dict) else c


def runner_deployments(root: str, only: list[str] | None = None) -> list:
    from flows.registry import get

    wanted = {get(p).name for p in only} if only else None
    out = []
    for d in load():
        f = d["flow"]
        if wanted is not None and f.name not in wanted:
            continue
        schedules = [schedule(s) for s in d.get("schedules") or []]
        out.append(f.to_deployment(name=d["name"], schedules=schedules, tags=d.get("tags"), triggers=triggers(d),
                                   description=d.get("description"), concurrency_limit=concurrency(d),
                                   parameters={**(d.get("parameters") or {}), "root": root}))
    return out


def serve(root: str, only: list[str] | None = None, dry_run: bool = False) -> list:
    deployments = runner_deployments(root, only)
    for dep in deployments:
        crons = ", ".join(getattr(s.schedule, "cron", None) or f"every {s.schedule.interval}"
                          for s in dep.schedules) or "no schedule"
        print(f"{dep.flow_name}/{dep.name}  {crons}  root={root}  {dep.entrypoint}")
    if not dry_run:
        from prefect import serve as prefect_serve

        prefect_serve(*deployments, pause_on_shutdown=False)
    return deployments
