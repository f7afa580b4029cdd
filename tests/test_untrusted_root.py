"""A root is data, never code: pickles planted where validate reads never run; models load in
Keras' safe mode; no reader of the root can unpickle or evaluate."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from artifacts import gfile
from flows.graph import fingerprints, nodes
from flows.registry import get
from tests.conftest import MNIST, REPO
from tests.helpers import pickle_bomb, run_stages

SETS = [f"data.source=idx:{MNIST}", "data.max_examples=50", "data.val_holdout=10"]


def test_pickles_planted_in_validates_work_dir_never_run(tmp_path, monkeypatch):
    from artifacts.errors import UserError
    from components import beam_run

    root, marker = str(tmp_path / "root"), str(tmp_path / "MARKER")
    p = get("mnist-classifier")
    fp = fingerprints(nodes(p, p.config(SETS)))["mnist-classifier/validate"][0]
    work = Path(root) / "mnist-classifier" / "validate" / "_work" / fp

    def plant():
        work.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):  # what validate once unpickled, and what it reads now
            (work / f"{split}.pkl").write_bytes(pickle_bomb(marker))
            (work / f"{split}.json").write_bytes(pickle_bomb(marker))

    # planted between Beam's write and validate's read: refused in one line, never unpickled
    real_run = beam_run.run
    monkeypatch.setattr(beam_run, "run", lambda cfg, build: (real_run(cfg, build), plant()))
    with pytest.raises(UserError) as err:
        run_stages(root, "mnist-classifier", SETS, "validate")
    assert "do not load" in err.value.line() and not os.path.exists(marker)
    monkeypatch.undo()
    # planted before the run: validate reads only what its own Beam run wrote
    plant()
    done, _ = run_stages(root, "mnist-classifier", SETS, "validate")
    stats = gfile.read_json(done["mnist-classifier/validate"].path("statistics.json"))
    assert {s: v["count"] for s, v in stats.items()} == {"train": 50, "test": 50}
    assert not os.path.exists(marker)


def test_a_model_with_code_in_it_is_refused_not_run(tmp_path):
    import keras

    from artifacts.store import Artifact
    from components.stages.evaluate import load_models

    marker = str(tmp_path / "MARKER")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: (open(marker, "w"), x)[1])])
    (tmp_path / "art" / "models").mkdir(parents=True)
    model.save(str(tmp_path / "art" / "models" / "classifier.keras"))
    os.remove(marker)  # building the model ran the lambda once, here
    with pytest.raises(ValueError, match="safe_mode"):
        load_models(Artifact(str(tmp_path / "art"), {}))
    assert not os.path.exists(marker)


def test_no_reader_of_the_root_can_run_code():
    """What would let a root run code: pickle, np.load(allow_pickle=True), Keras safe_mode=False,
    yaml.load / unsafe_load, eval, exec, marshal."""
    bad = re.compile(r"(import|from)\s+(c?pickle|dill|cloudpickle|marshal|shelve)\b|pickle\.(loads?|Unpickler)\b|"
                     r"allow_pickle\s*=\s*True|safe_mode\s*=\s*False|yaml\.(unsafe_)?load\(|\beval\(|\bexec\(")
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
             for pkg in ("artifacts", "components", "pipelines", "flows")
             for path in sorted((REPO / pkg).rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if bad.search(line)]
    assert found == []
