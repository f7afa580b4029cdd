"""`tapeline plan`: what a person reads first. On a fresh root no library warning comes before the
plan and every node says it was never built; a feature space whose classifier was never built says
so, not that its params changed."""
from __future__ import annotations

from tests.conftest import MNIST, tapeline

SETS = [f"data.source=idx:{MNIST}", "data.max_examples=120", "train.max_steps=2", "eval.num_samples=64"]


def _rows(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_plan_on_a_fresh_root_is_the_plan_alone(tmp_path):
    r = tapeline("plan", "fashion-dcgan", "--root", str(tmp_path / "root"))  # its default tfds source
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.strip() == "", r.stderr  # no `WARNING:absl:Variant folder ...` or any other
    rows = _rows(r.stdout)
    assert len(rows) == 13 and all(line.split()[1] == "run" for line in rows.values()), r.stdout
    assert all(line.split(None, 2)[2].startswith("never built") for k, line in rows.items()
               if not k.endswith("/promote")), r.stdout
    width = {line.index(" run ") for line in rows.values()}
    assert len(width) == 1, r.stdout  # one column for the actions, the longest key included


def test_a_feature_space_never_built_says_so(tmp_path):
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    root = str(tmp_path / "root")
    p = get("mnist-gan")
    for _ in build(ArtifactStore(root), nodes(p, p.config(SETS)), ["mnist-classifier[convnet]/train"]):
        pass
    r = tapeline("plan", "mnist-gan", "--root", root, *[a for s in SETS for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(r.stdout)
    assert " reuse " in rows["mnist-classifier[convnet]/train"], r.stdout
    assert rows["mnist-classifier[mlp]/train"].endswith("never built for the mlp feature space"), r.stdout
    assert "params changed" not in r.stdout, r.stdout
