"""fashion-dcgan: the TensorFlow DCGAN tutorial, trained on Fashion-MNIST."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from components import evaluations
from components.config import BELOW_ONE, RATE, Limit, bounded
from components.export import Generate, Serving
from components.pipeline import Pipeline, TestRuns
from components.recipe import DataInfo, Evaluation, ImageSizes, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig
from pipelines import gan_fixes, mnist_classifier
from pipelines.gan_fixes import VariantKeys


@dataclass(frozen=True)
class ModelConfig(VariantKeys):
    noise_dim: int = bounded(100, Limit(1, 2 ** 20))
    g_learning_rate: float = bounded(1e-4, RATE)
    d_learning_rate: float = bounded(1e-4, RATE)
    dropout: float = bounded(0.3, BELOW_ONE)
    num_fixed_samples: int = bounded(16, Limit(1, 4096))  # a 4x4 grid


@dataclass(frozen=True)
class Config(BaseConfig):
    data: DataConfig = DataConfig(source="tfds:fashion_mnist", normalize="symmetric")
    train: TrainConfig = TrainConfig(epochs=50, batch_size=256, shuffle_buffer=60000,
                                     sample_every=50, checkpoint_every_epochs=5)
    model: ModelConfig = ModelConfig()


def build_generator(cfg, info: DataInfo, name: str = "generator"):
    """cfg: anything with .model (the train Params, or a Config)."""
    import keras
    from keras import layers

    h, w, c = info.image_shape
    s = h // 4
    return keras.Sequential([
        keras.Input(shape=(cfg.model.noise_dim,)),
        layers.Dense(s * s * 256, use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Reshape((s, s, 256)),
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        *gan_fixes.upsample(cfg.model, 64, 5, use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        *gan_fixes.upsample(cfg.model, c, 5, use_bias=False, activation="tanh", dtype="float32"),
    ], name=name)


def build_networks(cfg, info: DataInfo):
    """cfg: anything with .model and .seed (the train Params, or a Config)."""
    import keras
    from keras import layers

    h, w, c = info.image_shape
    generator = build_generator(cfg, info)
    judge = functools.partial(gan_fixes.judge, cfg.model)
    discriminator = keras.Sequential([
        keras.Input(shape=(h, w, c)),
        judge(layers.Conv2D(64, 5, strides=2, padding="same")),
        layers.LeakyReLU(),
        layers.Dropout(cfg.model.dropout, seed=cfg.seed),
        judge(layers.Conv2D(128, 5, strides=2, padding="same")),
        layers.LeakyReLU(),
        layers.Dropout(cfg.model.dropout, seed=cfg.seed + 1),
        layers.Flatten(),
        judge(layers.Dense(1, dtype="float32")),
    ], name="discriminator")
    return generator, discriminator


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model)."""
    import keras
    import tensorflow as tf

    generator, discriminator = build_networks(p, info)
    g_rate, d_rate = gan_fixes.learning_rates(p.model)
    g_opt = optimizer(keras.optimizers.Adam(g_rate, beta_1=gan_fixes.beta_1(p.model)))
    d_opt = optimizer(keras.optimizers.Adam(d_rate, beta_1=gan_fixes.beta_1(p.model)))
    # the network that samples, snapshots, is evaluated and exported: G, or its average (ema)
    ema = gan_fixes.generator_in_use(p.model, generator, lambda name: build_generator(p, info, name), g_opt)
    sampler = ema.net if ema is not None else generator
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    rng = tf.random.Generator.from_seed(p.seed)
    seed_noise = tf.random.stateless_normal([p.model.num_fixed_samples, p.model.noise_dim],
                                            seed=[p.seed, 1])

    def step(images):
        noise = rng.normal([tf.shape(images)[0], p.model.noise_dim])
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            generated = generator(noise, training=True)
            real_out = discriminator(images, training=True)
            fake_out = discriminator(generated, training=True)
            g_loss = bce(tf.ones_like(fake_out), fake_out)
            d_loss = bce(tf.ones_like(real_out), real_out) + bce(tf.zeros_like(fake_out), fake_out)
        minimize(g_tape, g_loss, generator.trainable_weights, g_opt)
        minimize(d_tape, d_loss, discriminator.trainable_weights, d_opt)
        if ema is not None:
            ema.update()
        # The tutorial thresholds logits at 0.5; probability 0.5 is logit 0, which we use.
        return {"g_loss": g_loss, "d_loss": d_loss,
                "real_accuracy": tf.reduce_mean(tf.cast(real_out > 0.0, tf.float32)),
                "fake_accuracy": tf.reduce_mean(tf.cast(fake_out < 0.0, tf.float32))}

    return TrainSetup(**gan_fixes.setup_parts(generator, discriminator, g_opt, d_opt, ema),
                      step=step, metrics=("g_loss", "d_loss", "real_accuracy", "fake_accuracy"), batch=lambda rec: rec["image"],
                      rngs={"noise": rng}, sample=lambda: sampler(seed_noise, training=False))


def real_logit(nets, images):
    """Discriminator logit, > 0 means 'judged real'."""
    return nets["discriminator"](images, training=False)


# the generator doubles a quarter-size start twice; its first Dense grows with the square of it
RECIPE = Recipe(build=build, image_sizes=ImageSizes(least=8, most=256, multiple=4), evaluation=Evaluation(
    measure=evaluations.generation(real_logit), primary="frechet_distance_convnet",
    higher_is_better=False, feature_models=mnist_classifier.FEATURE_SPACES),
    serving=Serving({"serving_default": Generate("generator")}))

PIPELINE = Pipeline(
    name="fashion-dcgan", module=__name__, default_config=Config,
    summary="TF DCGAN on Fashion-MNIST: BN generator, dropout discriminator, 16 fixed seeds, GIF",
    tests=TestRuns(
        data="fashion-mnist", tiny=("data.max_examples=300", "train.batch_size=32", "train.max_steps=8",
                                    "train.sample_every=2", "train.shuffle_buffer=300", "eval.num_samples=200"),
        # 600 images at batch 256 (buffer 60000): 3 steps an epoch, a checkpoint every 5 epochs
        small=("data.max_examples=600", "train.epochs=6", "eval.num_samples=256"), longer=("train.epochs=10",)))
