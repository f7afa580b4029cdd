"""Records are written after the fact they record. promote stopped by SIGKILL or SIGTERM at each of
its moments (before the copy, during the push, after the rename into serving/N, after
champion.json), or refused a push (a planted symlink): afterwards the promote artifacts, the serving
folder and the champion agree, and the rerun converges with no version pushed twice."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests import kill_harness as kh
from tests.helpers import TINY

P = "mnist-classifier"
MOMENTS = [f"store.build.{P}/promote@1",     # before the export and the copy
           f"serving.copied.{P}@2",           # during the push, its second file copied
           f"serving.pushed.{P}@1",           # the version renamed into place, champion.json not written
           f"champion.set.{P}@1"]             # champion.json written


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A root with every stage but promote built (copied per case)."""
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    root = tmp_path_factory.mktemp("evaluated") / "root"
    p = get(P)
    for _ in build(ArtifactStore(str(root)), nodes(p, p.config(TINY[P])), [f"{P}/evaluate"]):
        pass
    return root


def agreement(root: str) -> list[str]:
    """What the records, the serving folder and the champion disagree on."""
    from artifacts import serving
    from artifacts.store import ArtifactStore
    from components.stages import promote

    store = ArtifactStore(root)
    champion = store.champion(P)
    versions = serving.versions(store, P)
    problems = []
    for art in store.versions(P, "promote"):
        raw = json.load(open(art.path("push.json")))
        if "pushed" in raw:
            problems.append(f"{art.version}: push.json claims a push: {raw}")
        if promote.decision(art, store)["pushed"] != bool(champion and champion["uri"] == art.uri):
            problems.append(f"{art.version}: its decision and the champion disagree")
    if champion is None:
        if versions:
            problems.append(f"serving versions {versions} and no champion")
    else:
        if champion["uri"] not in {a.uri for a in store.versions(P, "promote")}:
            problems.append(f"the champion names no committed promote artifact: {champion['uri']}")
        if versions != [champion.get("serving_version")]:
            problems.append(f"serving versions {versions}, the champion names {champion.get('serving_version')}")
    return problems


@pytest.mark.parametrize("action", ["kill", "term"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_promote_stopped_at_each_moment_leaves_records_that_agree_and_the_rerun_converges(
        harness, evaluated, tmp_path, moment, action):
    import prefect.settings

    api = {"PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    root = str(tmp_path / "root")
    shutil.copytree(evaluated, root)
    stopped = kh.run(P, root, TINY[P], failpoints=f"{moment}:{action}", env=api)
    assert moment.split("@")[0] in stopped.moments, stopped.stderr[-3000:]
    if action == "kill":
        assert kh.killed(stopped), stopped.returncode
    else:
        last = stopped.stderr.strip().splitlines()[-1]
        assert stopped.returncode == 143 and last.startswith(f"tapeline: interrupted during {P}/promote"), last
        committed = moment.startswith(("serving.", "champion."))
        assert ("(nothing committed)" in last) != committed, last
        assert ("and pushed" in last) == moment.startswith("champion."), last
    if (moment, action) == (f"serving.pushed.{P}@1", "kill"):
        # killed between the rename and champion.json: no file system makes the two one step; the
        # version is in place and nothing names it, and the next run names it (not a second push)
        assert agreement(root) == ["serving versions [1] and no champion"], (moment, action)
    else:
        assert agreement(root) == [], (moment, action)
    again = kh.run(P, root, TINY[P], env=api)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = again.summary
    assert agreement(root) == [], (moment, action)
    from artifacts import serving
    from artifacts.store import ArtifactStore

    store = ArtifactStore(root)
    assert serving.versions(store, P) == [1], (moment, action)  # never pushed twice
    assert summary["blessed"] and summary["pushed"] == (summary["why"] != "already the champion")
    assert store.champion(P)["serving_version"] == 1


def test_a_refused_push_commits_no_claim_and_the_fixed_root_pushes_once(harness, evaluated, tmp_path):
    import prefect.settings

    api = {"PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    root, outside = str(tmp_path / "root"), tmp_path / "outside"
    shutil.copytree(evaluated, root)
    outside.mkdir()
    os.symlink(outside, os.path.join(root, "serving"))
    refused = kh.run(P, root, TINY[P], env=api)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and last.startswith("tapeline: error:") and "symlink" in last, refused.stderr[-2000:]
    os.remove(os.path.join(root, "serving"))
    assert agreement(root) == [] and not os.listdir(outside)
    again = kh.run(P, root, TINY[P], env=api)
    assert again.returncode == 0 and again.summary["pushed"], again.stderr[-3000:]
    assert agreement(root) == []
