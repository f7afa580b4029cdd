"""Deployments resolve. (Kills: tests/test_kill_harness.py; runs at once on one root: tests/test_concurrent.py.)"""
from __future__ import annotations


def test_prefect_yaml_deployments_resolve_to_the_pipeline_flows():
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import load, runner_deployments
    from flows.registry import all_pipelines

    specs = load()
    assert sorted(d["flow"].name for d in specs) == sorted(all_pipelines())
    for dep in runner_deployments("/tmp/tapeline-root"):
        flow = load_flow_from_entrypoint(dep.entrypoint)
        assert flow.name == dep.flow_name and dep.parameters["root"] == "/tmp/tapeline-root"
        assert dep.schedules and all(s.schedule.cron for s in dep.schedules)
        assert dep.flow_name in dep.tags
        assert set(flow.parameters.properties) == {"overrides", "root", "run_id"}
