"""prefect.yaml's pull steps on a worker: without TAPELINE_REPO a run ends in one line that says
what is missing and what to set, not an opaque crash."""
from __future__ import annotations

import asyncio
import os

import pytest
import yaml

from tests.conftest import REPO


def _pull(monkeypatch, repo: str | None):
    from prefect.deployments.steps.core import run_steps

    if repo is None:
        monkeypatch.delenv("TAPELINE_REPO", raising=False)
    else:
        monkeypatch.setenv("TAPELINE_REPO", repo)
    monkeypatch.chdir("/")
    steps = yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]
    return asyncio.run(run_steps(steps))


@pytest.mark.parametrize("repo", [None, "/nonexistent"])
def test_a_worker_without_its_clone_fails_with_what_to_set(monkeypatch, repo):
    from prefect.deployments.steps.core import StepExecutionError

    with pytest.raises(StepExecutionError) as e:
        _pull(monkeypatch, repo)
    cause = str(e.value.__cause__)
    assert "tapeline: error: no tapeline clone on this worker" in cause and "TAPELINE_REPO=/path/to/its/clone" in cause
    assert f"(TAPELINE_REPO={repo or ''})" in cause


def test_a_worker_with_its_clone_runs_in_it(monkeypatch):
    _pull(monkeypatch, str(REPO))
    assert os.getcwd() == str(REPO)
