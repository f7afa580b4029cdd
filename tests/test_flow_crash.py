"""Deployments resolve. (Kills: tests/test_kill_harness.py; runs at once on one root: tests/test_concurrent.py.)"""
from __future__ import annotations


def test_prefect_yaml_deployments_resolve_to_the_pipeline_flows():
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import load, runner_deployments
    from flows.registry import all_pipelines

    specs = load()
    assert sorted(d["flow"].name for d in specs) == sorted([*all_pipelines(), "watch"])
    for dep in runner_deployments("/tmp/tapeline-root"):
        flow = load_flow_from_entrypoint(dep.entrypoint)
        assert flow.name == dep.flow_name and dep.parameters["root"] == "/tmp/tapeline-root"
        assert dep.flow_name in dep.tags or dep.flow_name == "watch"
        if dep.flow_name == "watch":  # a short interval, no trigger of its own
            assert [s.schedule.interval.total_seconds() for s in dep.schedules] == [120] and not dep.triggers
            assert set(flow.parameters.properties) == {"pipelines", "overrides", "root", "settle_seconds",
                                                       "reannounce_seconds"}
            assert (dep.concurrency_limit, dep.concurrency_options.collision_strategy) == (1, "CANCEL_NEW")
            continue
        assert dep.schedules and all(s.schedule.cron for s in dep.schedules)
        assert set(flow.parameters.properties) == {"overrides", "root", "run_id"}
        # the cron is a backstop: the watch's event for this pipeline, and only its own, starts a run,
        # once per burst (Reactive: fires on the first event, then waits out `within`)
        [trigger] = dep.triggers
        assert trigger.match.model_dump() == {"prefect.resource.id": f"tapeline.pipeline.{dep.flow_name}"}
        assert trigger.expect == {"tapeline.source.changed"} and trigger.posture == "Reactive"
        assert trigger.threshold == 1 and trigger.within.total_seconds() >= 300
