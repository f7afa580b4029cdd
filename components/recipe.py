"""The recipe contract: what a pipeline gives the generic stages (networks and train step, what
evaluation measures and which metric decides, its feature model). No stage asks more of it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from components.export import Serving
from components.layouts import IMAGE, Layout


@dataclass(frozen=True)
class DataInfo:
    """What the engine tells a recipe about its preprocessed data."""
    image_shape: tuple[int, int, int]
    num_classes: int
    train_examples: int
    fixed_inputs: Any = None              # a few eval-split examples (pix2pix snapshots)
    val_split: str | None = None          # a held-out split the engine validates on, if any


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
    val_step: Callable[[Any], dict] | None = None  # epoch-end validation (classifier): batch -> {name: sum}
    val_split: str | None = None
    val_metrics: Callable[[dict], dict] = dict     # the val_step sums over the split -> {"val_...": metric}


@dataclass(frozen=True)
class FeatureModel:
    """Another pipeline's trained model whose feature space evaluation measures in (the GANs:
    a classifier trained on the same data). Its stages become upstream nodes of the graph."""
    pipeline: str                         # registry name of the pipeline that trains it
    config: Callable[[Any], Any]          # this pipeline's config -> that pipeline's config
    network: str                          # which of its exported networks
    features: Callable[[Any], Any]        # keras model -> the model of its feature layer
    space: str                            # the space's name: in metric keys, evaluate's inputs, node labels


@dataclass(frozen=True)
class FeatureSpace:
    """A loaded FeatureModel, handed to measure(): images in this pipeline's normalization in,
    features or logits out."""
    uri: str                              # the feature model's artifact
    embed: Callable[[Any], Any]           # images -> features (rows)
    logits: Callable[[Any], Any]          # images -> class logits


@dataclass(frozen=True)
class Measuring:
    """What evaluate hands a recipe's measure(): the trained networks and the test data."""
    nets: Mapping[str, Any]               # keras.Model by exported name
    split: Callable[..., dict]            # (split, limit=None) -> {feature: numpy array}
    params: Any                           # evaluate's Params (splits, sample count, batch, seed)
    spaces: Mapping[str, FeatureSpace] = field(default_factory=dict)  # by FeatureModel.space, in order


@dataclass(frozen=True)
class Evaluation:
    """What a recipe measures and which metric judges a model against the champion."""
    measure: Callable[[Measuring], tuple[dict, dict]]  # -> (metrics.json, details.json)
    primary: str                          # the metric promote compares
    higher_is_better: bool
    # the spaces measure() gets; the first is the one its primary metric is taken in
    feature_models: tuple[FeatureModel, ...] = ()

    def __post_init__(self):
        names = [fm.space for fm in self.feature_models]
        if len(set(names)) != len(names):
            raise ValueError(f"feature spaces need distinct names, got {names}")


@dataclass(frozen=True)
class ImageSizes:
    """The image sizes (data.image_size) a recipe's networks accept: from `least` on, multiples of
    `multiple`, or powers of two; checked when the config is made, before any stage runs."""
    least: int = 1
    most: int = 4096                      # a network whose weights grow with the square of the size
    multiple: int = 1
    power_of_two: bool = False

    def ok(self, n: int) -> bool:
        return self.least <= n <= self.most and n % self.multiple == 0 and (not self.power_of_two or n & (n - 1) == 0)

    def nearest(self, n: int) -> list[int]:
        """The valid sizes closest to n below and above it."""
        below = next((k for k in range(min(n, self.most), 0, -1) if self.ok(k)), None)
        above = next((k for k in range(max(n, 1), self.most + 1) if self.ok(k)), None)
        return sorted({k for k in (below, above) if k is not None})

    def text(self) -> str:
        kind = "a power of two" if self.power_of_two else (f"a multiple of {self.multiple}" if self.multiple > 1 else "a size")
        return f"{kind} from {self.least} to {self.most}"


@dataclass(frozen=True)
class Recipe:
    """Everything the generic stages need from a pipeline module (its RECIPE)."""
    build: Callable[[Any, DataInfo], TrainSetup]  # (train Params: .seed, .model, ...) -> setup
    evaluation: Evaluation
    needs_labels: bool = False            # validate: an unlabeled example is an error
    layout: Layout = IMAGE                # what one example is, from the source to the pictures
    # the SavedModel a blessed champion is pushed as (ROOT/serving/PIPELINE/N/); None: no push
    serving: Serving | None = None
    image_sizes: ImageSizes = ImageSizes()  # what its networks take as data.image_size


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


def gradients(tape, loss, variables, optimizer) -> list:
    """The (loss-scaled, under mixed precision) gradients that optimizer.apply takes."""
    with tape:  # re-enter: the scaling must be recorded for the gradient to flow
        scaled = optimizer.scale_loss(loss * replica_scale())
    return tape.gradient(scaled, variables)


def minimize(tape, loss, variables, optimizer) -> None:
    """Gradient step that works with and without a LossScaleOptimizer (mixed precision). Where
    one network's loss flows through another's weights (CycleGAN's cycle), take every gradient
    first and apply them after: an update between them is read by the later gradients."""
    optimizer.apply(gradients(tape, loss, variables, optimizer), variables)
