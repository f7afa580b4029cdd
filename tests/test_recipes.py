"""Each recipe on its own (flax examples' train_test.py): build its networks from the default
config, run one train step on a tiny random batch, and check what the step returns and changes."""
from __future__ import annotations

import numpy as np
import pytest

from flows.registry import all_pipelines

BATCH = 2        # examples in the tiny batch (below every recipe's own batch size)
MAX_SIDE = 32    # larger default images (pix2pix's 256) are shrunk to this: seconds, not minutes


def tiny_setup(pipeline):
    """The recipe built the way components.stages.train.run() builds it, on a DataInfo of a tiny dataset
    whose shapes come from the pipeline's own (shrunk) config."""
    import keras

    from components.recipe import DataInfo
    from components.stages import preprocess, train

    cfg = pipeline.config()
    if cfg.data.image_size > MAX_SIDE:
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
