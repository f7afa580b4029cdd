"""The production-like stack for real: Debian PostgreSQL, `prefect server start`, a process work pool,
`prefect deploy --all`, `prefect worker start`; runs triggered through the API and by a schedule, read
back from the server and looked at in Debian's Chromium."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

import pytest

from flows import stack_postgres, stack_prefect
from flows.stack import Stack
from flows.workers import free_ports
from tests import prefect_ui
from tests.conftest import MNIST, REPO, run_py, tapeline

pytestmark = pytest.mark.stack

STAGES = ["ingest", "validate", "preprocess", "train", "evaluate", "render", "promote"]
# where the screenshots go: a temp dir, or docs/img when TAPELINE_SCREENSHOTS says so (docs/deployments.md)
SHOTS = os.environ.get("TAPELINE_SCREENSHOTS")


def reused_but_promote(rec: dict) -> bool:
    """Every stage reused; promote decides again every run (against the champion of that moment)."""
    stages = rec["stages"]
    return all(v["reused"] != k.endswith("/promote") for k, v in stages.items())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack for the module, on free ports, with its own cluster, state dir and artifact root."""
    why = stack_postgres.available()
    if why:
        pytest.skip(f"PostgreSQL cannot run here: {why}")
    base = tmp_path_factory.mktemp("stack")
    data = base / "mnist"  # a copy of MNIST this module may change (a replaced IDX file)
    shutil.copytree(MNIST, data)
    os.environ["TAPELINE_STACK_POLL_SECONDS"] = "2"  # the worker picks runs up sooner than its default 10 s
    s = Stack(base / "state", port=free_ports(1)[0], pg_cluster=f"tapeline-test-{uuid.uuid4().hex[:8]}",
              root=str(base / "root"))
    s.data = data
    s.sets = [f"data.source=idx:{data}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=30"]
    try:
        s.up()
        s.env = s._env({})
        yield s
    finally:
        s.down(purge=True)
        assert not s.status()["api_healthy"]


def _api(stack):
    return stack_prefect.api(stack.env)


def trigger(stack, parameters: dict, deployment: str = "mnist-classifier/retrain") -> str:
    dep = stack_prefect.deployments(stack.env)[deployment]
    with _api(stack) as c:
        run = c.post(f"deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
        return run.raise_for_status().json()["id"]


def wait_final(stack, run_id: str, timeout: float = 400) -> dict:
    deadline = time.time() + timeout
    with _api(stack) as c:
        while True:
            run = c.get(f"flow_runs/{run_id}").raise_for_status().json()
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            assert time.time() < deadline, f"flow run {run_id} still {run['state_name']} after {timeout} s"
            time.sleep(1)


def task_runs(stack, run_id: str) -> dict[str, str]:
    with _api(stack) as c:
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        runs = c.post("task_runs/filter", json=body).raise_for_status().json()
    return {r["name"].rsplit("-", 1)[0]: r["state_name"] for r in runs}


def markdown_artifact(stack, run_id: str) -> dict:
    with _api(stack) as c:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"any_": ["markdown"]}}}
        (art,) = c.post("artifacts/filter", json=body).raise_for_status().json()
    return art


def record(stack, run_id: str, pipeline: str = "mnist-classifier") -> dict:
    """The run record the flow wrote into the artifact root (the flow run is named PIPELINE-RUN_ID)."""
    with _api(stack) as c:
        name = c.get(f"flow_runs/{run_id}").raise_for_status().json()["name"]
    assert name.startswith(f"{pipeline}-"), name
    return json.loads(Path(stack.cfg["root"], "runs", name[len(pipeline) + 1:] + ".json").read_text())


def test_secrets_file_is_owner_only_and_outside_git(stack):
    path = stack.dir / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not str(path.resolve()).startswith(str(REPO))
    assert stack.secrets()["db_password"] in stack._database_url()


def test_second_up_finds_what_runs(stack, capsys):
    pids = {n: (stack.dir / f"{n}.pid").read_text() for n in ("prefect-server", "prefect-worker")}
    stack.up()
    out = capsys.readouterr().out
    assert "server        running" in out and "worker        running" in out, out
    assert {n: (stack.dir / f"{n}.pid").read_text() for n in pids} == pids


def test_deployments_from_prefect_yaml_keep_the_pull_placeholder_and_form_parameters(stack):
    import yaml

    from flows.registry import all_pipelines

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    crons = {d["entrypoint"].rsplit(":", 1)[1]: [s["cron"] for s in d["schedules"]] for d in spec["deployments"]
             if d["name"] == "retrain"}
    deps = stack_prefect.deployments(stack.env)
    assert set(deps) == {f"{p}/retrain" for p in all_pipelines()} | {"watch/sources"}
    assert [s["schedule"]["interval"] for s in deps.pop("watch/sources")["schedules"]] == [120]
    for name, d in deps.items():
        # templated on the worker at run time, from its own TAPELINE_REPO
        # (after a check that says what to set when it is missing: tests/test_worker_env.py)
        assert d["pull_steps"][1:] == [{"prefect.deployments.steps.set_working_directory":
                                        {"directory": "{{ $TAPELINE_REPO }}"}}], d["pull_steps"]
        assert "TAPELINE_REPO=/path/to/its/clone" in str(d["pull_steps"][0])
        props = d["parameter_openapi_schema"]["properties"]  # what the UI's run form is built from
        assert {"type": "array", "items": {"type": "string"}} in props["overrides"]["anyOf"]
        assert {"type": "string"} in props["root"]["anyOf"]
        assert [s["schedule"]["cron"] for s in d["schedules"]] == crons[name.split("/")[0].replace("-", "_")]
    # each retrain deployment's trigger became an automation that runs it on the watch's event
    # for its own pipeline, once per burst
    with _api(stack) as c:
        autos = c.post("automations/filter", json={}).raise_for_status().json()
    runs = {a["actions"][0]["deployment_id"]: a for a in autos
            if a["actions"] and a["actions"][0].get("type") == "run-deployment"}
    for name, d in deps.items():
        assert runs[d["id"]]["name"] == f"{name.split('/')[0]}: new data retrains"  # told apart in the UI
        trig = runs[d["id"]]["trigger"]
        assert trig["expect"] == ["tapeline.source.changed"], trig
        assert trig["match"] == {"prefect.resource.id": f"tapeline.pipeline.{name.split('/')[0]}"}, trig
        assert trig["posture"] == "Reactive" and trig["threshold"] == 1 and float(trig["within"]) == 600


def test_server_beyond_loopback_requires_the_auth_string(stack, tmp_path):
    """`--host 0.0.0.0` turns Prefect's basic auth on, with the string from the 0600 secrets file."""
    import httpx

    other = Stack(tmp_path / "state", host="0.0.0.0", port=free_ports(1)[0])
    other.dir.mkdir(parents=True)
    auth = other.auth()
    assert auth and auth == json.loads((other.dir / "secrets.json").read_text())["api_auth"]
    assert stat.S_IMODE((other.dir / "secrets.json").stat().st_mode) == 0o600
    try:
        other._server(stack._database_url())
        url = other.api_url
        assert httpx.get(f"{url}/flows/", timeout=10).status_code in (401, 405)
        assert httpx.post(f"{url}/flows/filter", json={}, timeout=10).status_code == 401
        ok = httpx.post(f"{url}/flows/filter", json={}, timeout=10, auth=tuple(auth.split(":", 1)))
        assert ok.status_code == 200 and {f["name"] for f in ok.json()} >= {"mnist-classifier"}
    finally:
        other.down()
    assert not other.status()["api_healthy"]


def test_worker_runs_deployment_then_reuses_every_stage_and_ui_shows_it(stack, tmp_path):
    first = trigger(stack, {"overrides": stack.sets})
    run = wait_final(stack, first)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert task_runs(stack, first) == {f"mnist-classifier/{s}": "Completed" for s in STAGES}
    rec = record(stack, first)  # read under the worker's TAPELINE_ROOT: no root parameter was given
    assert rec["run_id"] and "root" not in rec  # a record keeps no root path (the root may move)
    assert not any(v["reused"] for v in rec["stages"].values())

    art = markdown_artifact(stack, first)
    for needle in ("accuracy", "**blessed:**", "**champion:**", "mnist-classifier/train",
                   "](data:image/png;base64,"):
        assert needle in art["data"], needle

    t0 = time.time()
    second = trigger(stack, {"overrides": stack.sets})
    assert wait_final(stack, second)["state_type"] == "COMPLETED"
    assert reused_but_promote(record(stack, second))
    print(f"second run: every stage reused (promote decides anew), {time.time() - t0:.1f} s from trigger to Completed")

    why = prefect_ui.unavailable()
    if why:
        pytest.skip(f"no browser: {why}")
    shots = Path(SHOTS) if SHOTS else tmp_path
    with prefect_ui.Browser() as b:
        b.open(f"{stack.ui_url}/runs/flow-run/{first}")
        b.wait_text("Completed", "mnist-classifier", "train step")  # the training progress log lines
        b.click_text("Task Runs")
        text = b.wait_text(*[f"mnist-classifier/{s}" for s in STAGES], "(7 Completed)")
        b.screenshot(shots / "ui-task-runs.png")
        b.click_text("Artifacts")
        b.wait_text("mnist-classifier-run")
        b.screenshot(shots / "ui-flow-run.png")  # the run graph, one node per stage, and its artifacts
        b.click_text("mnist-classifier-run")
        text = b.wait_text("accuracy", "loss", "blessed: True", "champion:", "Pictures")
        assert f"/artifacts/artifact/{art['id']}" in b.driver.current_url
        assert rec["run_id"] in text and rec["champion"] in text
        imgs = b.images()
        assert [i["alt"] for i in imgs] == ["history", "confusion"], imgs
        assert all(i["complete"] and i["width"] > 100 for i in imgs), imgs  # decoded, not broken icons
        b.screenshot(shots / "ui-artifact.png")
        b.scroll_to_text("history")
        b.screenshot(shots / "ui-artifact-pictures.png")


def _replace_idx(data: Path) -> None:
    """A replaced IDX file: the same shape, the first images inverted (as a re-export would change
    them), moved into place atomically as a careful publisher does."""
    path = data / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[16:16 + 28 * 28 * 100] = bytes(255 - b for b in raw[16:16 + 28 * 28 * 100])
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(bytes(raw)))
    os.replace(tmp, path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def runs_started_after(stack, since: str) -> list[dict]:
    dep = stack_prefect.deployments(stack.env)["mnist-classifier/retrain"]
    body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}, "start_time": {"after_": since}},
            "sort": "START_TIME_ASC"}
    with _api(stack) as c:
        runs = c.post("flow_runs/filter", json=body).raise_for_status().json()
    t = dt.datetime.fromisoformat(since)  # (runs not started pass the server's filter: drop them)
    return [r for r in runs if r["start_time"] and dt.datetime.fromisoformat(r["start_time"]) > t]


def wait_scheduled_run(stack, since: str, timeout: float = 300) -> str:
    """The id of the first schedule-made flow run that started after `since`, once it is Completed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run in runs_started_after(stack, since):
            if run["auto_scheduled"] and run["state_type"] not in ("SCHEDULED", "PENDING", "RUNNING"):
                assert run["state_type"] == "COMPLETED", run["state"]
                return run["id"]
        time.sleep(1)
    raise AssertionError(f"no scheduled run started after {since} and completed in {timeout} s")


def test_schedule_fires_and_changed_data_trains_a_challenger_while_runs_overlap(stack):
    """An interval schedule of 10 s (what `stack up --interval` adds, with its own overrides) fires by
    itself; with the data unchanged its run reuses every stage. Then an IDX file is replaced: the
    scheduled runs that keep firing and a run triggered by hand overlap on one root; the challenger
    is trained once, every run completes, the champion changes only if the challenger is blessed,
    and the root verifies clean."""
    warm = trigger(stack, {"overrides": stack.sets})  # (the first test may have run alone)
    assert wait_final(stack, warm)["state_type"] == "COMPLETED"
    champion_path = Path(stack.cfg["root"], "mnist-classifier", "champion.json")
    champion_before = json.loads(champion_path.read_text())
    old_train = record(stack, warm)["stages"]["mnist-classifier/train"]["uri"]

    t0 = _now()
    stack_prefect.add_interval(stack.env, 10, stack.sets, ["mnist-classifier"])
    try:
        sched = wait_scheduled_run(stack, since=t0)
        assert reused_but_promote(record(stack, sched))
    finally:
        stack_prefect.remove_interval(stack.env, 10)  # the server drops its runs not yet started
    for run in runs_started_after(stack, t0):  # a clean cut: nothing in flight reads the old file
        wait_final(stack, run["id"])

    _replace_idx(stack.data)
    since = _now()
    stack_prefect.add_interval(stack.env, 10, stack.sets, ["mnist-classifier"])
    try:
        manual = trigger(stack, {"overrides": stack.sets})
        wait_scheduled_run(stack, since=since)
        assert wait_final(stack, manual)["state_type"] == "COMPLETED"
    finally:
        stack_prefect.remove_interval(stack.env, 10)
    after = [wait_final(stack, r["id"]) for r in runs_started_after(stack, since)]
    assert len(after) >= 2 and {r["state_type"] for r in after} == {"COMPLETED"}, [r["state_name"] for r in after]
    recs = [record(stack, r["id"]) for r in after]
    trains = {r["stages"]["mnist-classifier/train"]["uri"] for r in recs}
    assert len(trains) == 1 and old_train not in trains, "one challenger for every run that saw the new file"
    # who built it: a scheduled run of the first interval may have started between the cut above
    # and `since` (the server had handed it to the worker already) and seen the new file first;
    # so every completed run since t0 counts, and exactly one of them built the challenger
    every = [record(stack, r["id"]) for r in (wait_final(stack, r["id"]) for r in runs_started_after(stack, t0))
             if r["state_type"] == "COMPLETED"]
    built = [r for r in every if r["stages"]["mnist-classifier/train"]["uri"] in trains
             and not r["stages"]["mnist-classifier/train"]["reused"]]
    assert len(built) == 1, "trained once; the overlapping runs waited for it and reused it"
    champion = json.loads(champion_path.read_text())
    assert (champion != champion_before) == bool(built[0].get("blessed")), (built[0].get("why"), champion)
    out = tapeline("verify", "--root", stack.cfg["root"])
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"{len(after)} overlapping runs after the IDX file changed; blessed={built[0].get('blessed')}: {built[0].get('why')}")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_run_whose_worker_is_killed_is_rescheduled_and_resumes_from_its_checkpoint(stack):
    """SIGKILL the worker mid-training: the run's engine reports Crashed, the stack's automation puts the
    same flow run back to Scheduled, the next worker (here: `stack up` again, as a supervisor would)
    picks it up and train resumes from its newest checkpoint instead of step 0."""
    sets = stack.sets[:-1] + ["train.epochs=400", "train.max_steps=600", "train.checkpoint_every=50"]
    run_id = trigger(stack, {"overrides": sets})
    worker = int((stack.dir / "prefect-worker.pid").read_text())
    work = Path(stack.cfg["root"], "mnist-classifier", "train", "_work")
    deadline = time.time() + 300
    while not list(work.glob("*/checkpoints/ckpt-*.index")):
        assert time.time() < deadline, "no checkpoint written in 300 s"
        time.sleep(0.2)
    engines = _children(worker)
    assert engines, "the worker runs the flow in a child process"
    os.kill(worker, 9)

    stack.up()  # a new worker polls the pool
    deadline = time.time() + 300
    with _api(stack) as c:
        while True:
            run = c.get(f"flow_runs/{run_id}").raise_for_status().json()
            if run["state_type"] in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            assert time.time() < deadline, f"still {run['state_name']} after 300 s"
            time.sleep(1)
        states = [(s["type"], s["name"]) for s in c.get("flow_run_states/", params={"flow_run_id": run_id}).json()]
        logs = c.post("logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
    assert run["state_type"] == "COMPLETED", states
    crashed = states.index(("CRASHED", "Crashed"))
    assert states[crashed + 1] == ("SCHEDULED", "AwaitingRetry"), states
    resumed = [entry["message"] for entry in logs if "resumed from step" in entry["message"]]
    assert resumed and "from step 0" not in resumed[0], [entry["message"] for entry in logs][-20:]
    assert record(stack, run_id)["stages"]["mnist-classifier/train"]["reused"] is False  # one record, the resumed run's


def _logs(stack, run_id: str) -> list[str]:
    with _api(stack) as c:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        return [entry["message"] for entry in c.post("logs/filter", json=body).raise_for_status().json()]


def _states(stack, run_id: str) -> list[tuple[str, str, str]]:
    with _api(stack) as c:
        states = c.get("flow_run_states/", params={"flow_run_id": run_id}).raise_for_status().json()
    return [(s["type"], s["name"], s.get("message") or "") for s in states]


def test_deployment_run_cancelled_during_training_saves_its_step_and_the_next_run_resumes(stack):
    """A Prefect cancel of a deployment run, as the UI's button and `prefect flow-run cancel` send it (the
    flow run set to Cancelling; the worker then sends SIGTERM and kills after a 30 s grace): train saves a
    checkpoint at the step boundary it reached, the run ends Cancelled (not Crashed) well inside the grace,
    nothing of it keeps running, and the next run of the deployment resumes from that step. The step is
    wherever training happens to be when the cancel lands; the periodic checkpoint is out of reach, so only
    the cancel saves."""
    import re

    from tests.helpers import alive, descendants

    total = 3000
    sets = stack.sets[:-1] + ["train.epochs=1000", f"train.max_steps={total}", f"train.checkpoint_every={2 * total}",
                              "train.log_every=25"]
    run_id = trigger(stack, {"overrides": sets})
    worker = int((stack.dir / "prefect-worker.pid").read_text())
    step_line = re.compile(r"train step (\d+)/(\d+)")
    deadline, seen, pids = time.time() + 300, 0, set()
    while seen < 100:  # training is under way (a few log lines in): the cancel lands wherever it is then
        assert time.time() < deadline, f"training not past step 100 in 300 s: {_logs(stack, run_id)[-10:]}"
        pids |= descendants(worker)  # the flow run's process and whatever it started
        steps = [int(m.group(1)) for m in map(step_line.search, _logs(stack, run_id)) if m]
        seen = max(steps, default=0)
        time.sleep(0.5)
    pids |= descendants(worker)
    assert pids, "the worker runs the flow in a child process"

    t0 = time.time()
    out = stack_prefect._cli(["flow-run", "cancel", run_id], stack.env)
    assert "successfully scheduled for cancellation" in " ".join(out.stdout.split()), out.stdout + out.stderr
    run = wait_final(stack, run_id, timeout=60)
    took = time.time() - t0
    states = _states(stack, run_id)
    assert run["state_type"] == "CANCELLED", states
    assert took < 30, f"Cancelled after {took:.1f} s, past the worker's 30 s grace: {states}"
    assert not any(t == "CRASHED" for t, _, _ in states), states
    tasks = task_runs(stack, run_id)
    assert tasks["mnist-classifier/train"] == "Cancelled", tasks  # not Crashed
    assert "mnist-classifier/evaluate" not in tasks, tasks

    # the checkpoint at the step reached, and the step the run's message names
    work = Path(stack.cfg["root"], "mnist-classifier", "train", "_work")
    fp = max((d for d in work.iterdir() if (d / "progress.json").exists()), key=lambda d: (d / "progress.json").stat().st_mtime)
    progress = json.loads((fp / "progress.json").read_text())
    step = progress["step"]
    assert seen <= step < total, (seen, progress)
    assert (fp / "checkpoints" / f"ckpt-{step}.index").exists(), sorted(p.name for p in (fp / "checkpoints").iterdir())
    assert any(f"at step {step}/{total} (checkpoint saved)" in m for _, _, m in states), states

    logs = _logs(stack, run_id)
    assert not any("Crash" in m for m in logs), [m for m in logs if "Crash" in m]
    deadline = time.time() + 10  # nothing of the run keeps running (the worker reaps its child)
    while alive(pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(pids), [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ") for p in alive(pids)]
    print(f"cancelled at step {step}/{total} (training seen at {seen}): Cancelled {took:.1f} s after the cancel; "
          f"states {[(t, m[:60]) for t, _, m in states]}")

    again = trigger(stack, {"overrides": sets})
    final = wait_final(stack, again)
    assert final["state_type"] == "COMPLETED", _states(stack, again)
    resumed = [m for m in _logs(stack, again) if "resumed from step" in m]
    assert resumed and f"resumed from step {step} ({fp / 'checkpoints' / f'ckpt-{step}'})" in resumed[0], \
        resumed or _logs(stack, again)[-20:]
    assert record(stack, again)["stages"]["mnist-classifier/train"]["reused"] is False


def _triggered_since(stack, since: str, deployment: str = "mnist-classifier/retrain") -> list[dict]:
    """The runs of a deployment that an automation created after `since`."""
    return [r for r in _runs_of(stack, deployment, since) if (r.get("created_by") or {}).get("type") == "AUTOMATION"]


def _watch(stack, tmp_path) -> dict:
    """One tick of the watch flow against the stack's server, for the stack's own source."""
    code = ("import json, sys; from flows.watch_flow import watch; "
            "print(json.dumps(watch(pipelines=['mnist-classifier'], overrides={'mnist-classifier': sys.argv[2:]}, "
            "root=sys.argv[1], settle_seconds=0)[0]))")
    env = {**stack.env, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    out = run_py(code, stack.cfg["root"], *stack.sets, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_changed_source_makes_the_watch_emit_and_its_trigger_start_one_run(stack, tmp_path):
    """The retrain deployment runs with the stack's source (its default parameters set to it): an
    unchanged source emits nothing and starts nothing; a replaced IDX file makes the watch emit
    tapeline.source.changed once (later ticks do not repeat it), and the deployment's trigger starts
    exactly one run, which completes and trains on the new file."""
    dep = stack_prefect.deployments(stack.env)["mnist-classifier/retrain"]
    with _api(stack) as c:
        c.patch(f"deployments/{dep['id']}", json={"parameters": {"overrides": stack.sets}}).raise_for_status()
    try:
        warm = trigger(stack, {"overrides": stack.sets})
        assert wait_final(stack, warm)["state_type"] == "COMPLETED"
        since = _now()
        quiet = _watch(stack, tmp_path)
        assert not quiet["emit"] and quiet["old"] == quiet["new"], quiet
        _replace_idx(stack.data)
        ticks = [_watch(stack, tmp_path) for _ in range(3)]
        assert [t["emit"] for t in ticks] == [True, False, False], ticks
        deadline, runs = time.time() + 120, []
        while not runs and time.time() < deadline:
            runs = _triggered_since(stack, since)
            time.sleep(1)
        assert len(runs) == 1, runs
        final = wait_final(stack, runs[0]["id"])
        assert final["state_type"] == "COMPLETED", final["state"]
        rec = record(stack, runs[0]["id"])
        assert not rec["stages"]["mnist-classifier/ingest"]["reused"]
        time.sleep(15)  # a second automation run would have been created by now
        assert len(_triggered_since(stack, since)) == 1
    finally:
        with _api(stack) as c:
            c.patch(f"deployments/{dep['id']}", json={"parameters": {"overrides": []}}).raise_for_status()


def _events_since(stack, name: str, pipeline: str, since: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [f"tapeline.pipeline.{pipeline}"]},
                       "occurred": {"since": since}}, "limit": 50}
    with _api(stack) as c:
        return c.post("events/filter", json=body).raise_for_status().json()["events"]


def _runs_of(stack, deployment: str, since: str) -> list[dict]:
    dep = stack_prefect.deployments(stack.env)[deployment]
    with _api(stack) as c:
        runs = c.post("flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}
                      ).raise_for_status().json()
    t = dt.datetime.fromisoformat(since)
    return [r for r in runs if dt.datetime.fromisoformat(r["created"]) > t]


@pytest.mark.long  # 3 minutes: make test-long (the stack's watch test, one changed source -> one run, stays)
def test_a_folder_of_twenty_pairs_copied_in_one_file_at_a_time_starts_exactly_one_run(stack, tmp_path):
    """The watch deployment itself, run by the worker on a 5 s interval (prefect.yaml's is 2 min), while
    20 new pairs are copied into pix2pix's source folder one file at a time, at random gaps shorter than
    the watch's settle_seconds, keeping their mtimes as `cp -p` and `rsync -a` do. Ticks during the copy wait for it to
    settle; exactly one tapeline.source.changed is emitted after it, the deployment's trigger starts
    exactly one run, which completes and trains on all 30 pairs; the ticks after it emit nothing."""
    import random

    src = stack.dir.parent / "pairs"
    people = sorted((REPO.parent / "shared" / "data" / "pix2pix-people" / "train").glob("*.jpg"))
    for split, files in (("train", people[:10]), ("val", sorted((people[0].parent.parent / "val").glob("*.jpg"))[:5])):
        (src / split).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, src / split / f.name)
    sets = [f"data.source=paired:{src}", "data.image_size=32", "data.jitter_copies=1", "train.max_steps=4",
            "train.sample_every=2", "train.steps_per_call=2"]
    deps = stack_prefect.deployments(stack.env)
    retrain, watcher = deps["pix2pix/retrain"], deps["watch/sources"]
    # prefect.yaml: one tick at a time, a tick due while one runs is cancelled
    assert (watcher["global_concurrency_limit"]["limit"], watcher["concurrency_options"]["collision_strategy"]) \
        == (1, "CANCEL_NEW"), watcher
    with _api(stack) as c:
        c.patch(f"deployments/{retrain['id']}", json={"parameters": {"overrides": sets}}).raise_for_status()
    try:
        warm = wait_final(stack, trigger(stack, {}, "pix2pix/retrain"))  # the baseline the watch compares with
        assert warm["state_type"] == "COMPLETED", warm["state"]
        since = _now()
        with _api(stack) as c:
            c.patch(f"deployments/{watcher['id']}", json={"parameters": {
                "pipelines": ["pix2pix"], "overrides": {"pix2pix": sets}, "settle_seconds": 10}}).raise_for_status()
            c.post(f"deployments/{watcher['id']}/schedules", json=[{
                "schedule": {"interval": 5, "timezone": "UTC"}, "active": True, "max_scheduled_runs": 3}]
                   ).raise_for_status()
        deadline = time.time() + 240  # the watch ticks, and finds nothing new, before the copy starts
        while not any(r["state_type"] == "COMPLETED" for r in _runs_of(stack, "watch/sources", since)):
            assert time.time() < deadline, "no watch tick completed in 240 s"
            time.sleep(1)
        # gaps all under settle_seconds; a copy of about a minute, so ticks (each 10-30 s on a loaded
        # machine) land inside it
        gaps = [random.uniform(1.0, 5.0) for _ in range(20)]
        for f, gap in zip(people[10:30], gaps):
            time.sleep(gap)
            shutil.copy2(f, src / "train" / f.name)
        print(f"20 pairs copied in {sum(gaps):.1f} s at gaps {min(gaps):.2f}-{max(gaps):.2f} s")

        deadline, runs = time.time() + 300, []
        while not runs:
            assert time.time() < deadline, "no run triggered in 300 s after the copy"
            runs = _triggered_since(stack, since, "pix2pix/retrain")
            time.sleep(1)
        final = wait_final(stack, runs[0]["id"])
        assert final["state_type"] == "COMPLETED", final["state"]
        done = time.time()
        deadline = time.time() + 240  # two more ticks after the run: they find it ingested
        while sum(dt.datetime.fromisoformat(r["start_time"]).timestamp() > done
                  for r in _runs_of(stack, "watch/sources", since)
                  if r["start_time"] and r["state_type"] == "COMPLETED") < 2:
            assert time.time() < deadline, "the watch stopped ticking"
            time.sleep(1)
    finally:
        with _api(stack) as c:
            for s in c.get(f"deployments/{watcher['id']}/schedules").raise_for_status().json():
                if s["schedule"].get("interval") == 5:
                    c.delete(f"deployments/{watcher['id']}/schedules/{s['id']}").raise_for_status()
            c.patch(f"deployments/{watcher['id']}", json={"parameters": {"overrides": {}, "settle_seconds": 30}}
                    ).raise_for_status()
            c.patch(f"deployments/{retrain['id']}", json={"parameters": {"overrides": []}}).raise_for_status()

    ticks = [r for r in _runs_of(stack, "watch/sources", since) if r["state_type"] == "COMPLETED"]
    settled = [r for r in ticks if any("waiting for it to settle" in m for m in _logs(stack, r["id"]))]
    assert settled, ("no tick ran during the copy: the test proved nothing",
                     [(r["name"], r["state_type"], r["created"], _logs(stack, r["id"])[-2:])
                      for r in _runs_of(stack, "watch/sources", since)])
    events = _events_since(stack, "tapeline.source.changed", "pix2pix", since)
    assert len(events) == 1, [(e["occurred"], e["payload"]) for e in events]
    triggered = _triggered_since(stack, since, "pix2pix/retrain")
    assert len(triggered) == 1, [(r["name"], r["created"]) for r in triggered]
    rec = record(stack, triggered[0]["id"], "pix2pix")
    with _api(stack) as c:
        name = c.get(f"flow_runs/{triggered[0]['id']}").raise_for_status().json()["name"]
    ingested = rec["stages"]["pix2pix/ingest"]
    assert not ingested["reused"], ingested
    from artifacts.store import ArtifactStore
    from components.stages import ingest

    store = ArtifactStore(stack.cfg["root"])
    art = store.load(store.resolve(ingested["uri"]))
    assert art.manifest["inputs"]["source"]["fingerprint"] == events[0]["payload"]["new"], art.manifest["inputs"]
    assert ingest.splits(art)["train"] == 30, ingest.splits(art)  # every pair of the copy, not a part of it
    print(f"{len(ticks)} watch ticks, {len(settled)} waited for the copy to settle; one event at "
          f"{events[0]['occurred']}, one run: {name}")

    why = prefect_ui.unavailable()
    if why:
        pytest.skip(f"no browser: {why}")
    shots = Path(SHOTS) if SHOTS else tmp_path
    with prefect_ui.Browser() as b:
        b.open(f"{stack.ui_url}/automations")  # the deployments' triggers, one automation per pipeline
        b.wait_text(*[f"{p}: new data retrains" for p in ("mnist-classifier", "pix2pix", "cyclegan")],
                    "tapeline.source.changed for pix2pix starts a run", "Run deployment:")
        b.screenshot(shots / "ui-automations.png")
        b.open(f"{stack.ui_url}/runs/flow-run/{triggered[0]['id']}")  # the run the event started
        b.wait_text("Completed", name, "pix2pix/train", "pix2pix: new data retrains")
        b.screenshot(shots / "ui-triggered-run.png")
        # the watch's event, its payload the old and new source keys
        b.open(f"{stack.ui_url}/events/event/{events[0]['occurred'][:10]}/{events[0]['id']}")
        b.wait_text("tapeline.source.changed", "tapeline.pipeline.pix2pix", "watch")
        b.click_text("Raw")
        b.wait_text(events[0]["payload"]["new"], events[0]["payload"]["old"])
        b.screenshot(shots / "ui-event.png")

