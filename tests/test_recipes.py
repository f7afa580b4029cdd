"""Each recipe on its own (flax examples' train_test.py): build its networks from the default
config, run one train step on a tiny random batch, and check what the step returns and changes."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from flows.registry import all_pipelines

BATCH = 2        # examples in the tiny batch (below every recipe's own batch size)
MAX_SIDE = 32    # larger default images (pix2pix's 256) are shrunk to this: seconds, not minutes


def tiny_setup(pipeline, sets=()):
    """The recipe built the way components.stages.train.run() builds it, on a DataInfo of a tiny dataset
    whose shapes come from the pipeline's own (shrunk) config, or from sets."""
    import keras

    from components.recipe import DataInfo
    from components.stages import preprocess, train

    cfg = pipeline.config(list(sets))
    if not sets and cfg.data.image_size > MAX_SIDE:
        cfg = pipeline.config([f"data.image_size={MAX_SIDE}"])
    p = train.Params.from_config(cfg, pipeline.recipe)
    data = preprocess.Params.from_config(cfg, pipeline.recipe)
    shape = (data.size, data.size, data.channels)
    num_classes = 10
    rng = np.random.default_rng(p.seed)
    scale, offset = preprocess.NORMALIZE[data.normalize]

    def pixels(n):  # as records.parse_fn gives them: raw bytes in the recorded normalization
        return (rng.integers(0, 256, (n, *shape)) * scale + offset).astype(np.float32)

    # what the engine hands a recipe: its layout's fixed inputs from the first eval examples
    # (None for fixed noise), and records of the layout's features (and labels)
    n_fixed = getattr(p.model, "num_fixed_samples", 4)
    examples = [{f: pixels(1)[0] for f in p.layout.features} for _ in range(n_fixed)]
    fixed = p.layout.fixed_inputs(examples)
    info = DataInfo(image_shape=shape, num_classes=num_classes, train_examples=BATCH * 4, fixed_inputs=fixed,
                    val_split=None)
    keras.utils.set_random_seed(p.seed)
    keras.mixed_precision.set_global_policy("float32")
    with train.own_keras_seeds(p.seed):
        setup = pipeline.recipe.build(p, info)
    for name, opt in setup.optimizers.items():
        opt.build(setup.networks[name].trainable_variables)
    record = {f: pixels(BATCH) for f in p.layout.features}
    record["label"] = rng.integers(0, num_classes, BATCH).astype(np.int32)
    return setup, info, record


@pytest.mark.parametrize("name", sorted(all_pipelines()))
def test_recipe_builds_and_one_train_step_learns(name):
    import tensorflow as tf

    setup, info, record = tiny_setup(all_pipelines()[name])
    assert setup.optimizers and set(setup.optimizers) <= set(setup.networks)
    before = {n: [w.numpy().copy() for w in setup.networks[n].trainable_weights] for n in setup.optimizers}

    out = setup.step(setup.batch({k: tf.constant(v) for k, v in record.items()}))

    # the engine logs exactly setup.metrics, reading each from the step's dict
    assert set(out) == set(setup.metrics), (sorted(out), setup.metrics)
    bad = {k: float(v) for k, v in out.items() if not np.isfinite(float(v))}
    assert not bad, bad
    # every network with an optimizer was trained by the step
    for n, old in before.items():
        new = setup.networks[n].trainable_weights
        assert any(not np.array_equal(a, b.numpy()) for a, b in zip(old, new)), f"{name}: {n} unchanged"
    if setup.sample is not None:
        sample = np.asarray(setup.sample())
        assert sample.shape[0] >= 1 and sample.shape[-3:] == info.image_shape, sample.shape
        assert np.all(np.isfinite(sample))


SEED = int(os.environ.get("TAPELINE_TEST_SEED") or random.SystemRandom().randrange(10**6))
# what the issue met (pix2pix 8, 33, 48; cyclegan 24) and the edges of the documented range
SIZES = [8, 24, 33, 48, 4096]


@pytest.mark.parametrize("name", sorted(all_pipelines()))
def test_every_image_size_of_the_range_trains_a_step_or_is_refused_at_entry(name):
    """Sizes drawn at random from data.image_size's whole range (8..4096, seed printed): each is
    refused when the config is made, in one line naming the nearest sizes the networks take, or its
    networks build (Keras infers every layer's shape: where the Concatenate and the 'output size
    would be zero' failures came from) and, up to 64 px, train a step."""
    import tensorflow as tf

    from artifacts.errors import UserError
    from components import config as cfglib

    pipeline = all_pipelines()[name]
    limit = cfglib.limit_of(pipeline.default_config(), "data.image_size")
    rng = random.Random(f"{SEED}-{name}")
    sizes = SIZES + [rng.randint(int(limit.lo), 512) for _ in range(4)] + [rng.randint(513, int(limit.hi))]
    print(f"TAPELINE_TEST_SEED={SEED}: {name} sizes {sizes}")
    for size in sizes:
        sets = [f"data.image_size={size}"]
        try:
            pipeline.config(sets)
        except UserError as e:
            line = e.line()
            assert "data.image_size" in line and "\n" not in line and "use " in line, line
            suggested = [int(s) for s in line.rsplit("use ", 1)[1].split(" or ")]
            for s in suggested:
                pipeline.config([f"data.image_size={s}"])  # what it names is accepted
            continue
        if size > 512:  # the layers' shapes alone: a step at this size is minutes of CPU
            import keras

            from components.recipe import DataInfo
            from components.stages import train

            cfg = pipeline.config(sets)
            p = train.Params.from_config(cfg, pipeline.recipe)
            info = DataInfo(image_shape=(size, size, cfg.data.channels), num_classes=10, train_examples=8,
                            fixed_inputs=None)
            keras.mixed_precision.set_global_policy("float32")
            try:
                pipeline.recipe.build(p, info)
            except (TypeError, AttributeError):  # a recipe whose build needs its fixed inputs
                pass
            continue
        setup, info, record = tiny_setup(pipeline, sets)
        if size <= 64:
            out = setup.step(setup.batch({k: tf.constant(v) for k, v in record.items()}))
            assert all(np.isfinite(float(v)) for v in out.values()), (name, size, out)
