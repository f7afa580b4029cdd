"""A sixth pipeline, written only here (a recipe file in a package of this test's own, registered
through $TAPELINE_PIPELINES), is covered by every per-pipeline test without an edit to any of
them: the flow and its reuse, the small run, kills at random moments, Ctrl-C and SIGTERM."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

NAME = "sixth-autoencoder"
RECIPE = '''"""A test's own pipeline: an autoencoder 784-code-784 on MNIST, trained by the generic engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components import stages
from components.config import RATE, Limit, bounded
from components.pipeline import Pipeline, TestRuns
from components.recipe import Evaluation, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig


@dataclass(frozen=True)
class ModelConfig:
    code: int = bounded(8, Limit(1, 4096))
    learning_rate: float = bounded(1e-2, RATE)


@dataclass(frozen=True)
class Config(BaseConfig):
    data: DataConfig = DataConfig(source="tfds:mnist")
    train: TrainConfig = TrainConfig(batch_size=16, epochs=2)
    model: ModelConfig = ModelConfig()


def build(p, info):
    import keras
    import tensorflow as tf

    n = int(np.prod(info.image_shape))
    net = keras.Sequential([keras.Input((n,)), keras.layers.Dense(p.model.code, activation="relu"),
                            keras.layers.Dense(n)], name="autoencoder")
    opt = optimizer(keras.optimizers.Adam(p.model.learning_rate))

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(x, training=True) - x))
        minimize(tape, loss, net.trainable_weights, opt)
        return {"mse": loss}

    return TrainSetup(networks={"autoencoder": net}, optimizers={"autoencoder": opt}, step=step,
                      metrics=("mse",), batch=lambda rec: tf.reshape(rec["image"], [tf.shape(rec["image"])[0], -1]),
                      export={"autoencoder": net})


def measure(m):
    x = m.split(m.params.eval_split)["image"]
    x = x.reshape(len(x), -1)
    y = m.nets["autoencoder"](x, training=False).numpy()
    return {"mse": float(np.mean((y - x) ** 2)), "examples": len(x)}, {}


RECIPE = Recipe(build=build, evaluation=Evaluation(measure=measure, primary="mse", higher_is_better=False))
PIPELINE = Pipeline(
    name="%s", summary="a test's autoencoder", module=__name__, default_config=Config,
    stages=stages.without("render", "animate"),
    tests=TestRuns(data="mnist", tiny=("data.max_examples=64", "train.max_steps=3"),
                   small=("data.max_examples=160",), longer=("train.epochs=60",)))
''' % NAME
# the per-pipeline tests it must be picked up by, and no test file names it
COVERED = ["tests/test_flow.py::test_flow_end_to_end_then_everything_reused",
           "tests/test_small_runs.py::test_small_run_with_defaults_trains",
           "tests/test_kill_harness.py::test_killed_at_moments_drawn_at_random_then_rerun_is_identical",
           "tests/test_interrupt.py::test_ctrl_c_in_a_terminal_during_training",
           "tests/test_interrupt.py::test_sigterm_stops_cleanly_and_resumes"]


@pytest.mark.slow
def test_a_sixth_pipeline_is_picked_up_by_every_per_pipeline_test(tmp_path):
    pkg = tmp_path / "sixthpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "recipe.py").write_text(RECIPE)
    for path in REPO.joinpath("tests").glob("*.py"):
        assert NAME not in path.read_text() or path.name == "test_new_pipeline.py", path
    env = {**os.environ, "TAPELINE_PIPELINES": "sixthpkg.recipe",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    # -m "": every case of the sixth pipeline, those the day's slice marks long too (else a day that
    # draws it out of a per-pipeline test's slice would find that test not picking it up)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "",
                        "-k", "sixth and autoencoder",
                        *sorted({c.split("::")[0] for c in COVERED})],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    passed = set(re.findall(r"^PASSED (\S+)\[", r.stdout, re.M))
    assert passed >= set(COVERED), (set(COVERED) - passed, r.stdout[-4000:])
    assert not re.search(r"^(FAILED|ERROR) ", r.stdout, re.M), r.stdout[-4000:]
