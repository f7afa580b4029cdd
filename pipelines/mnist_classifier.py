"""mnist-classifier: the MLP of the Keras guide "Writing a training loop from scratch" (and a small
convnet variant, the GANs' feature space)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components import evaluations, stages
from components.config import RATE, Limit, bounded
from components.export import Classify, Serving
from components.pipeline import Pipeline, TestRuns
from components.recipe import DataInfo, Evaluation, FeatureModel, ImageSizes, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, BeamConfig, DataConfig, TrainConfig


@dataclass(frozen=True)
class ModelConfig:
    # mlp: the guide's 784-64-64-10 (the default); convnet: a small convnet whose penultimate
    # layer is the feature space the GANs are measured in (a 784-unit MLP hardly sees structure)
    variant: Literal["mlp", "convnet"] = "mlp"
    hidden: tuple[int, ...] = bounded((64, 64), Limit(1, 2 ** 20))              # mlp: the hidden Dense layers
    # convnet: one block (3x3 conv, relu, 2x2 max-pool) each
    conv_filters: tuple[int, ...] = bounded((32, 64), Limit(1, 4096, nonempty=True))
    feature_units: int = bounded(128, Limit(1, 2 ** 16))  # convnet: the Dense layer before the logits (the features)
    learning_rate: float = bounded(1e-3, RATE)
    activity_regularization: float = bounded(0.0, Limit(0, 1e6))  # the guide's layer: 1e-2 adds 1e-2 * sum(inputs) to the loss


@dataclass(frozen=True)
class Config(BaseConfig):
    # The guide's last 10,000 of 60,000 train digits validate; val_max_share (0.2) shrinks that
    # with the data: data.max_examples=1000 trains on 800 and validates on 200.
    data: DataConfig = DataConfig(val_holdout=10000)
    train: TrainConfig = TrainConfig(epochs=2)
    model: ModelConfig = ModelConfig()



def build_network(cfg, info: DataInfo):
    """(training model, inference model): they share every weight; the inference one has no
    regularization layer, so a user loads it with plain Keras. cfg: anything with .model."""
    if cfg.model.variant == "convnet":
        return build_convnet(cfg, info)
    import keras

    from pipelines.layers import ActivityRegularization

    h, w, c = info.image_shape
    inputs = keras.Input(shape=(h * w * c,), name="digits")
    dense = [keras.layers.Dense(u, activation="relu", name=f"dense_{i + 1}")
             for i, u in enumerate(cfg.model.hidden)]
    head = keras.layers.Dense(info.num_classes, name="predictions", dtype="float32")
    x, y = inputs, inputs
    for i, layer in enumerate(dense):
        x, y = layer(x), layer(y)
        if i == 0 and cfg.model.activity_regularization:
            x = ActivityRegularization(cfg.model.activity_regularization)(x)
    return keras.Model(inputs, head(x), name="classifier_train"), keras.Model(inputs, head(y), name="classifier")


def build_convnet(cfg, info: DataInfo):
    """(model, model): conv blocks -> Dense(feature_units, relu) named "features" -> logits.
    It has no regularization layer, so training and inference share one model."""
    import keras
    from keras import layers

    x = inputs = keras.Input(shape=info.image_shape, name="images")
    for i, f in enumerate(cfg.model.conv_filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{i + 1}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool_{i + 1}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(cfg.model.feature_units, activation="relu", name=FEATURE_LAYER)(x)
    model = keras.Model(inputs, layers.Dense(info.num_classes, name="predictions", dtype="float32")(x),
                        name="classifier")
    return model, model


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model)."""
    import keras
    import tensorflow as tf

    model, inference = build_network(p, info)
    opt = optimizer(keras.optimizers.Adam(p.model.learning_rate))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def batch(rec):  # flat rows for the MLP, images for the convnet
        return tf.reshape(rec["image"], [-1, *model.input_shape[1:]]), rec["label"]

    def step(b):
        x, y = b
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            ce = loss_fn(y, logits)
            loss = ce + tf.add_n(model.losses) if model.losses else ce
        minimize(tape, loss, model.trainable_weights, opt)
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                              tf.cast(y, tf.int32)), tf.float32))
        return {"loss": loss, "accuracy": acc}

    def val_step(b):
        x, y = b
        logits = model(x, training=False)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(y, tf.int32)), tf.float32))
        return {"val_correct": correct, "val_count": tf.cast(tf.shape(y)[0], tf.float32)}

    return TrainSetup(networks={"classifier": model}, optimizers={"classifier": opt},
                      step=step, metrics=("loss", "accuracy"), batch=batch, export={"classifier": inference},
                      val_step=val_step if info.val_split else None, val_split=info.val_split,
                      val_metrics=val_accuracy)


def val_accuracy(totals: dict) -> dict:
    """The val_step's sums over the whole held-out split, as the guide's val_acc_metric."""
    return {"val_accuracy": totals["val_correct"] / max(totals["val_count"], 1)}


FEATURE_LAYER = "features"


def features(model):
    """The penultimate layer (the convnet's "features", the MLP's last hidden layer): the
    feature space for the GANs' Fréchet distance, precision and recall."""
    import keras

    names = {layer.name for layer in model.layers}
    layer = model.get_layer(FEATURE_LAYER) if FEATURE_LAYER in names else model.layers[-2]
    return keras.Model(model.inputs[0], layer.output)


# the MLP's first Dense grows with the square of the size
RECIPE = Recipe(build=build, needs_labels=True, image_sizes=ImageSizes(most=1024), evaluation=Evaluation(
    measure=evaluations.classification("classifier"), primary="accuracy", higher_is_better=True),
    serving=Serving({"serving_default": Classify("classifier")}))

PIPELINE = Pipeline(
    name="mnist-classifier", module=__name__, default_config=Config,
    summary="Keras guide MLP 784-64-64-10, Adam 1e-3, batch 32; train/val accuracy",
    stages=stages.without("animate"),
    tests=TestRuns(
        data="mnist", tiny=("data.max_examples=300", "data.val_holdout=50", "train.max_steps=20"),
        # 250 train + 50 val: 8 steps an epoch, 2 epochs (the default), a checkpoint at the end only
        small=("data.max_examples=300", "data.val_holdout=50"), longer=("train.epochs=40",)))


def feature_config(data: DataConfig, seed: int, beam: BeamConfig | None = None,
                   model: ModelConfig = ModelConfig(), train: TrainConfig = Config().train) -> Config:
    """The classifier a GAN pipeline evaluates in: same source and sizes; the seed's recipe
    unless model and train say otherwise. Its train split must not be the GAN's test split,
    so no split is held out twice. Its data stages run on the GAN's Beam engine (runtime
    settings; its own shard count)."""
    import dataclasses

    engine = dataclasses.replace(beam, shards=Config().beam.shards) if beam else Config().beam
    return Config(seed=seed, beam=engine, model=model, train=train, data=dataclasses.replace(
        Config().data, source=data.source, max_examples=data.max_examples,
        image_size=data.image_size, channels=data.channels))


# The convnet space: a few epochs give it the accuracy a feature space needs (docs/RESULTS.md),
# at a cost small beside a GAN's training.
CONVNET = ModelConfig(variant="convnet")
CONVNET_TRAIN = TrainConfig(epochs=4)


def _feature_config(cfg) -> Config:
    return feature_config(cfg.data, cfg.seed, cfg.beam)


def _convnet_config(cfg) -> Config:
    return feature_config(cfg.data, cfg.seed, cfg.beam, CONVNET, CONVNET_TRAIN)


# What a generative pipeline on the same images measures in (its recipe's feature models): the
# convnet's space first (its Fréchet distance decides), the guide's MLP as a second column.
FEATURES = FeatureModel(pipeline=PIPELINE.name, config=_feature_config, network="classifier",
                        features=features, space="mlp")
CONVNET_FEATURES = FeatureModel(pipeline=PIPELINE.name, config=_convnet_config, network="classifier",
                                features=features, space="convnet")
FEATURE_SPACES = (CONVNET_FEATURES, FEATURES)
