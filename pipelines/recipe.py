"""The contract between a recipe (networks + step) and the one training engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class DataInfo:
    """What the engine tells a recipe about its preprocessed data."""
    image_shape: tuple[int, int, int]
    num_classes: int
    train_examples: int
    fixed_inputs: Any = None              # a few eval-split examples (pix2pix snapshots)


@dataclass
class TrainSetup:
    """Everything one training run needs; everything here is checkpointed."""
    networks: Mapping[str, Any]           # keras.Model by name
    optimizers: Mapping[str, Any]
    step: Callable[[Any], dict]           # one replica's step: batch -> {metric: scalar}
    metrics: tuple[str, ...]              # the names step returns, in log order
    batch: Callable[[dict], Any]          # parsed record dict -> what step takes
    export: Mapping[str, Any]             # models a user loads without tapeline (.keras)
    rngs: Mapping[str, Any] = field(default_factory=dict)  # tf.random.Generator by name
    sample: Callable[[], Any] | None = None   # fixed-seed snapshot: -> array
    val_step: Callable[[Any], dict] | None = None  # epoch-end validation (classifier)
    val_split: str | None = None


def replica_scale() -> float:
    """1/replicas: per-replica mean losses, summed by the all-reduce, give the global mean."""
    import tensorflow as tf

    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def optimizer(opt):
    """Wrap in a LossScaleOptimizer under the mixed_float16 policy (one per network)."""
    import keras

    if keras.mixed_precision.global_policy().name == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(opt)
    return opt


def minimize(tape, loss, variables, optimizer) -> None:
    """Gradient step that works with and without a LossScaleOptimizer (mixed precision)."""
    with tape:  # re-enter: the scaling must be recorded for the gradient to flow
        scaled = optimizer.scale_loss(loss * replica_scale())
    grads = tape.gradient(scaled, variables)
    optimizer.apply(grads, variables)
