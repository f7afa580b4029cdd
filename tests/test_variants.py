"""The GAN recipes' variants (`--set model.variant=NAME`, pipelines/gan_fixes.py): each trains a few
steps of the real stage chain, resumes bit-exactly after a stop, and exports what it samples with
(the generator average under `ema`) as its .keras generator and its serving SavedModel."""
from __future__ import annotations

import contextlib
import glob
import io
import shutil

import numpy as np
import pytest

from flows.registry import get
from pipelines.gan_fixes import VARIANTS
from tests.conftest import MNIST

pytestmark = pytest.mark.slow  # 14 variants, each trained straight and stopped+resumed

FASHION = "/usr/share/datasets/fashion-mnist"
# 4 steps of batch 16, a checkpoint every 2: the stopped run is cut after step 2 and resumes there
COMMON = ["data.max_examples=64", "train.batch_size=16", "train.max_steps=4", "train.checkpoint_every=2",
          "train.sample_every=2", "train.log_every=1", "train.steps_per_call=1", "train.shuffle_buffer=64"]
SOURCES = {"fashion-dcgan": f"data.source=idx:{FASHION}", "mnist-gan": f"data.source=idx:{MNIST}"}
STOP_AT = 2


class Stop(Exception):
    pass


def _stop(step, total):
    if step >= STOP_AT:
        raise Stop()


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """pipeline -> (straight root, resumed root), each already holding the data stages (one build,
    copied: a root moves with its artifacts)."""
    from tests.helpers import run_stages

    out = {}
    for name, source in SOURCES.items():
        base = tmp_path_factory.mktemp(name)
        run_stages(str(base / "straight"), name, [source, *COMMON], "preprocess")
        shutil.copytree(base / "straight", base / "resumed")
        out[name] = (str(base / "straight"), str(base / "resumed"))
    return out


def _train(root, name, sets, runtime=None):
    """(train artifact, preprocess artifact, what train printed)."""
    from tests.helpers import run_stages

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        done, _ = run_stages(root, name, sets, "train", runtime)
    return done[f"{name}/train"], done[f"{name}/preprocess"], log.getvalue()


def _straight_and_resumed(roots, name, variant):
    from components.contract import Runtime
    from tests.helpers import weights

    sets = [SOURCES[name], *COMMON, f"model.variant={variant}"]
    straight_root, resumed_root = roots[name]
    straight, transformed, _ = _train(straight_root, name, sets)
    committed = glob.glob(f"{resumed_root}/{name}/train/*/_COMMITTED")  # other variants' runs
    with pytest.raises(Stop):  # the orchestrator's progress callback stops training after step 2
        _train(resumed_root, name, sets, Runtime.from_config(get(name).config(sets), on_progress=_stop))
    assert glob.glob(f"{resumed_root}/{name}/train/*/_COMMITTED") == committed
    resumed, _, log = _train(resumed_root, name, sets)
    assert f"train: resumed from step {STOP_AT}" in log, log[-2000:]
    return straight, resumed, transformed, weights(straight.uri), weights(resumed.uri)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_variant_trains_resumes_bit_exactly_and_exports(roots, name, variant):
    import keras
    import tensorflow as tf

    from components import export, tfrecords
    from components.stages import evaluate, train

    straight, resumed, transformed, w_straight, w_resumed = _straight_and_resumed(roots, name, variant)
    assert straight.manifest["metadata"]["steps"] == resumed.manifest["metadata"]["steps"] == 4
    assert set(w_straight) == {"generator.keras", "discriminator.keras"}
    for model, ws in w_straight.items():
        assert len(ws) == len(w_resumed[model])
        assert all(np.array_equal(a, b) for a, b in zip(ws, w_resumed[model])), f"{variant}: {model} differs"
    history = train.history(straight)[0]
    assert all(np.isfinite(v).all() and len(v) == 4 for v in history.values()), history

    # the fixed-seed snapshots come from the exported generator (under ema: the average)
    nets = evaluate.load_models(straight)
    p = train.Params.from_config(get(name).config([SOURCES[name], *COMMON, f"model.variant={variant}"]),
                                 get(name).recipe)
    latent = nets["generator"].input_shape[-1]
    noise = tf.random.stateless_normal([p.model.num_fixed_samples, latent], seed=[p.seed, 1])
    last = np.load(list(train.samples(straight).values())[-1])
    assert np.allclose(nets["generator"](noise, training=False).numpy(), last, atol=1e-6)
    uses = {type(layer).__name__ for net in nets.values() for layer in net.layers}
    fixes = VARIANTS[variant]
    assert ("SpectralNormalization" in uses) == fixes.spectral
    assert ("Conv2DTranspose" in {type(la).__name__ for la in nets["generator"].layers
                                  if getattr(la, "strides", (1, 1)) == (2, 2)}) == (not fixes.resize)
    assert ("UpSampling2D" in uses) == fixes.resize
    assert (nets["generator"].name == "generator_ema") == fixes.ema

    # the serving SavedModel generates with that same network
    folder = f"{resumed.uri}-saved"
    export.save(get(name).recipe.serving, nets, tfrecords.load_transform(transformed), folder)
    served = tf.saved_model.load(folder).signatures["serving_default"](noise=noise)["images"].numpy()
    norm = tfrecords.load_transform(transformed)["normalize"]
    expect = np.clip(np.round(tfrecords.unnormalize(last, norm)), 0, 255)
    assert served.dtype == np.uint8 and np.abs(served.astype(int) - expect).max() <= 1
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_ema_trains_exactly_the_faithful_networks_and_exports_their_average(roots, name):
    """`ema` changes only what is sampled: its discriminator is bit-identical to the faithful
    run's (the same training), its exported generator is the average, not the trained one."""
    from tests.helpers import weights

    faithful = weights(_train(roots[name][0], name, [SOURCES[name], *COMMON])[0].uri)
    ema = weights(_train(roots[name][0], name, [SOURCES[name], *COMMON, "model.variant=ema"])[0].uri)
    assert all(np.array_equal(a, b) for a, b in zip(faithful["discriminator.keras"], ema["discriminator.keras"]))
    assert not all(np.array_equal(a, b) for a, b in zip(faithful["generator.keras"], ema["generator.keras"]))
