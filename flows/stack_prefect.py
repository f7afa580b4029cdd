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


def ensure_automations(env: dict) -> None:
    """Placeholder: crash recovery automations are added in a later step."""
