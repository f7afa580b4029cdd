"""What `stack up` asks of the Prefect server: the work pool, prefect.yaml's deployments, trial schedules, automations."""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx


def _cli(args: list[str], env: dict, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-2000:]}")
    return out


def api(env: dict) -> httpx.Client:
    """A REST client for the stack's server, with its basic auth when it has one."""
    headers = {}
    if env.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
    return httpx.Client(base_url=env["PREFECT_API_URL"].rstrip("/") + "/", headers=headers, timeout=30)


def ensure_pool(pool: str, env: dict) -> None:
    with api(env) as c:
        if c.get(f"work_pools/{pool}").status_code == 200:
            print(f"work pool     exists    {pool}")
            return
    _cli(["work-pool", "create", pool, "--type", "process"], env)
    print(f"work pool     created   {pool} (process)")


def deploy(env: dict, repo: Path) -> list[str]:
    """`prefect --no-prompt deploy --all` from the repository, as a user would run it."""
    _cli(["deploy", "--all"], env, cwd=repo)
    names = deployments(env)
    print(f"deployments   {len(names)}         " + ", ".join(sorted(names)))
    return names


def deployments(env: dict) -> dict[str, dict]:
    """flow/deployment name -> deployment, for every deployment on the server."""
    with api(env) as c:
        flows = {f["id"]: f["name"] for f in c.post("flows/filter", json={}).raise_for_status().json()}
        deps = c.post("deployments/filter", json={}).raise_for_status().json()
    return {f"{flows.get(d['flow_id'], '?')}/{d['name']}": d for d in deps}


def add_interval(env: dict, seconds: int, sets: list[str], only: list[str] | None) -> list[str]:
    """An extra interval schedule on the deployments (each run with `sets` as its overrides), for trying
    scheduled retraining out without waiting for the nightly cron. `stack up` without it deploys again and
    prefect.yaml's schedules replace it."""
    done = []
    with api(env) as c:
        for name, dep in sorted(deployments(env).items()):
            if only and name.split("/")[0] not in only:
                continue
            have = c.get(f"deployments/{dep['id']}/schedules").raise_for_status().json()
            if not any(s["schedule"].get("interval") == seconds for s in have):
                # a few runs ahead, not the scheduler's default 100 of them
                body = [{"schedule": {"interval": seconds, "timezone": "UTC"}, "active": True,
                         "max_scheduled_runs": 3, "parameters": {"overrides": list(sets)} if sets else {}}]
                c.post(f"deployments/{dep['id']}/schedules", json=body).raise_for_status()
            done.append(name)
    return done


def remove_interval(env: dict, seconds: int) -> None:
    """Drop the interval schedules of that period (the server drops their runs not yet started)."""
    with api(env) as c:
        for dep in deployments(env).values():
            for s in c.get(f"deployments/{dep['id']}/schedules").raise_for_status().json():
                if s["schedule"].get("interval") == seconds:
                    c.delete(f"deployments/{dep['id']}/schedules/{s['id']}").raise_for_status()


RESCHEDULE = "tapeline: resume crashed runs"
SILENT = "tapeline: runs without heartbeat crashed"
TERMINAL = ["prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
            "prefect.flow-run.Crashed"]
TAPELINE_RUNS = {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.tapeline"}


def automations(heartbeat_seconds: int) -> list[dict]:
    """Crash recovery with Prefect's own automations (flow retries do not cover a dead process).

    A run whose worker is killed is reported Crashed by its engine; a run whose whole machine died
    stops sending heartbeats and the second automation declares it Crashed after three missed
    beats. The first puts a Crashed tapeline run back to Scheduled ("AwaitingRetry"): the same flow
    run, its parameters and run id, is picked up by the next worker that polls the pool, and the
    stages resume (train from its newest checkpoint). A run cancelled by a person stays cancelled."""
    return [
        {"name": RESCHEDULE, "enabled": True,
         "description": "A Crashed tapeline run is scheduled again; its stages resume from their checkpoints.",
         "trigger": {"type": "event", "posture": "Reactive", "expect": ["prefect.flow-run.Crashed"],
                     "match": {"prefect.resource.id": "prefect.flow-run.*"}, "match_related": TAPELINE_RUNS,
                     "threshold": 1, "within": 0},
         "actions": [{"type": "change-flow-run-state", "state": "SCHEDULED", "name": "AwaitingRetry",
                      "force": True, "message": f"rescheduled after a crash by the automation '{RESCHEDULE}'"}]},
        {"name": SILENT, "enabled": True,
         "description": "A running tapeline run that missed three heartbeats lost its process: Crashed.",
         "trigger": {"type": "event", "posture": "Proactive", "after": ["prefect.flow-run.heartbeat"],
                     "expect": ["prefect.flow-run.heartbeat", *TERMINAL], "for_each": ["prefect.resource.id"],
                     "match": {"prefect.resource.id": "prefect.flow-run.*"}, "match_related": TAPELINE_RUNS,
                     "threshold": 1, "within": 3 * heartbeat_seconds},
         "actions": [{"type": "change-flow-run-state", "state": "CRASHED", "force": True,
                      "message": f"no heartbeat for {3 * heartbeat_seconds} s: its process is gone"}]},
    ]


def ensure_automations(env: dict, heartbeat_seconds: int) -> None:
    """Create (or replace, when their definition changed) the crash-recovery automations."""
    with api(env) as c:
        have = {a["name"]: a for a in c.post("automations/filter", json={}).raise_for_status().json()}
        for spec in automations(heartbeat_seconds):
            old = have.get(spec["name"])
            if old is not None and _same(old, spec):
                continue
            if old is not None:
                c.delete(f"automations/{old['id']}").raise_for_status()
            c.post("automations/", json=spec).raise_for_status()
    print(f"automations   {RESCHEDULE!r}, {SILENT!r}")


def _same(old: dict, spec: dict) -> bool:
    """Compare what matters: the server fills in defaults, so compare the fields we set."""
    trig = old["trigger"]
    return (old["actions"][0].get("state") == spec["actions"][0]["state"]
            and trig.get("posture") == spec["trigger"]["posture"]
            and float(trig.get("within") or 0) == float(spec["trigger"]["within"]))
