"""The training engine: recipes learn, a changed config trains anew, divergence stops cleanly.
(Exact resume after SIGKILL: tests/test_kill_harness.py.)"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from artifacts.errors import UserError
from tests.conftest import MNIST, PEOPLE, PYTHONPATH

TRAIN_SCRIPT = r"""
import json, sys
from tests.helpers import run_stages
done, store = run_stages(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), "train")
art = done[sys.argv[2] + "/train"]
print(json.dumps({"uri": art.uri, "fingerprint": art.fingerprint, "metadata": art.manifest["metadata"]}))
"""

DCGAN = ["data.source=idx:/usr/share/datasets/fashion-mnist", "data.max_examples=256", "train.batch_size=32",
         "train.max_steps=24", "train.checkpoint_every=4", "train.sample_every=4", "train.steps_per_call=2",
         "train.shuffle_buffer=256", "train.log_every=1"]
PIX2PIX = [f"data.source=paired:{PEOPLE}", "data.max_examples=12", "data.image_size=32", "data.jitter_copies=2",
           "train.max_steps=30", "train.checkpoint_every=5", "train.sample_every=5", "train.steps_per_call=1",
           "train.log_every=1"]


def train(root, pipeline, sets, timeout=600):
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, root, pipeline, json.dumps(sets)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_classifier_learns_and_gans_losses_move(tmp_path):
    out = train(str(tmp_path / "c"), "mnist-classifier",
                [f"data.source=idx:{MNIST}", "data.max_examples=3000", "data.val_holdout=500", "train.epochs=2"])
    epochs = json.load(open(f"{out['uri']}/epochs.json"))
    assert epochs[-1]["val_accuracy"] > 0.8  # chance is 0.1
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    gan = train(str(tmp_path / "g"), "mnist-gan",
                [f"data.source=idx:{MNIST}", "data.max_examples=256", "train.max_steps=12", "train.sample_every=4"])
    h = np.load(f"{gan['uri']}/history.npz")
    assert len(h["d_loss"]) == 12 and np.all(np.isfinite(h["g_loss"]))
    # the discriminator learns to tell the first fakes from digits: its loss falls step after step
    # from ln 2 (chance), by more than its step-to-step noise
    d = h["d_loss"]
    assert d[:4].mean() == pytest.approx(np.log(2), abs=0.05), d
    assert d[-4:].mean() < d[:4].mean() - 0.03 and (np.diff(d) < 0).mean() >= 0.75, d


def test_changed_learning_rate_starts_a_new_version(tmp_path):
    from tests.helpers import run_stages

    root = str(tmp_path / "r")
    base = DCGAN[:3] + ["train.max_steps=2", "train.steps_per_call=1"]
    a, _ = run_stages(root, "fashion-dcgan", base, "train")
    b, _ = run_stages(root, "fashion-dcgan", base + ["model.g_learning_rate=0.001"], "train")
    assert a["fashion-dcgan/train"].fingerprint != b["fashion-dcgan/train"].fingerprint
    assert a["fashion-dcgan/preprocess"].uri == b["fashion-dcgan/preprocess"].uri


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from tests.helpers import run_stages

    root = str(tmp_path / "r")
    sets = [f"data.source=idx:{MNIST}", "data.max_examples=2000", "data.val_holdout=100",
            "data.normalize=raw", "model.learning_rate=1e9", "train.checkpoint_every=2",
            "train.steps_per_call=1", "train.epochs=1"]
    with pytest.raises(UserError) as err:
        run_stages(root, "mnist-classifier", sets, "train")
    line = err.value.line()
    assert "diverged" in line and "at step" in line
    bad_step = int(line.split("at step ")[1].split()[0])
    progress = glob.glob(f"{root}/mnist-classifier/train/_work/*/progress.json")
    assert progress and json.load(open(progress[0]))["step"] < bad_step
    assert not glob.glob(f"{root}/mnist-classifier/train/*/_COMMITTED")


DEVICES_SCRIPT = r"""
import json, sys
from components.stages.train import prepare_devices
from flows.registry import get
from tests.helpers import run_stages
prepare_devices(get(sys.argv[2]).config(["train.strategy=mirrored"]))  # as the flow does first
out = {}
for name, extra in json.loads(sys.argv[3]).items():  # mirrored first: it sets up two logical CPUs
    done, _ = run_stages(sys.argv[1] + "/" + name, sys.argv[2], json.loads(sys.argv[4]) + extra, "train")
    out[name] = {"uri": done[sys.argv[2] + "/train"].uri, "metadata": done[sys.argv[2] + "/train"].manifest["metadata"]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_mixed_precision_and_xla_train_the_dcgan(tmp_path):
    """One fresh process (TensorFlow's device layout is fixed once it starts)."""
    import keras

    sets = DCGAN[:4] + ["train.max_steps=6", "train.steps_per_call=3", "train.sample_every=3"]
    variants = {"mirrored": ["train.strategy=mirrored"], "mixed": ["train.mixed_precision=true"],
                "xla": ["train.xla=true"]}
    proc = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, str(tmp_path), "fashion-dcgan",
                           json.dumps(variants), json.dumps(sets)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    m = runs["mirrored"]["metadata"]
    assert m["replicas"] == 2 and len(m["devices"]) == 2 and all("CPU" in d for d in m["devices"])
    assert runs["mixed"]["metadata"]["precision"] == "mixed_float16" and runs["xla"]["metadata"]["xla"]
    for name, run in runs.items():
        h = np.load(f"{run['uri']}/history.npz")
        assert len(h["g_loss"]) == 6 and np.all(np.isfinite(h["g_loss"])) and np.all(np.isfinite(h["d_loss"])), name
        # the discriminator learns under every strategy: its loss falls from 2 ln 2 (chance) and
        # it calls more real images real
        assert h["d_loss"][-2:].mean() < h["d_loss"][:2].mean() - 0.02, (name, h["d_loss"])
        assert h["real_accuracy"][-2:].mean() > h["real_accuracy"][:2].mean(), (name, h["real_accuracy"])
    gen = keras.saving.load_model(f"{runs['mixed']['uri']}/models/generator.keras", compile=False)
    assert gen.layers[1].dtype_policy.name == "mixed_float16" and gen.layers[-1].dtype_policy.name == "float32"
    out = gen(np.zeros((2, 100), np.float32), training=False)
    assert str(out.dtype) in ("float32", "<dtype: 'float32'>") and out.shape == (2, 28, 28, 1)


def test_networks_are_built_alike_while_other_threads_draw_from_python_random():
    """Prefect's services draw from Python's global `random` in their own threads; the weights a
    recipe starts from must not depend on when they do."""
    import random
    import threading

    import keras

    from components.recipe import DataInfo
    from components.stages.train import Params, own_keras_seeds
    from flows.registry import get

    p = get("fashion-dcgan")
    cfg, info = p.config([]), DataInfo((28, 28, 1), 10, 600)
    stop = threading.Event()

    def noise():
        while not stop.is_set():
            random.random()
    built = []
    thread = threading.Thread(target=noise, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            keras.utils.set_random_seed(cfg.seed)
            with own_keras_seeds(cfg.seed):
                setup = p.recipe.build(Params.from_config(cfg, p.recipe), info)
            built.append([w.copy() for net in setup.networks.values() for w in net.get_weights()])
    finally:
        stop.set()
        thread.join()
    assert len(built[0]) > 4 and all(np.array_equal(a, b) for a, b in zip(*built))


def test_xla_with_mirrored_on_logical_cpus_is_refused_in_one_line_before_a_step(tmp_path):
    """XLA compiles a step for one CPU device while MirroredStrategy's replicas keep their variables
    on two logical ones: every recipe failed at its first step with a traceback. Now one line, exit
    2, and no train artifact."""
    from tests.conftest import tapeline

    proc = tapeline("run", "mnist-classifier", "--root", str(tmp_path), *[a for s in (
        f"data.source=idx:{MNIST}", "data.max_examples=64", "train.batch_size=16", "train.max_steps=4",
        "train.strategy=mirrored", "train.xla=true") for a in ("--set", s)])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("tapeline: error: train.xla=true with train.strategy=mirrored on the CPU's two logical"), last
    assert glob.glob(f"{tmp_path}/mnist-classifier/preprocess/*/_COMMITTED")  # it got as far as training
    assert not glob.glob(f"{tmp_path}/mnist-classifier/train/*/_COMMITTED")
