"""mnist-gan: the end-to-end GAN of the Keras guide "Writing a training loop from scratch"."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from components import evaluations
from components.config import RATE, UNIT, Limit, bounded
from components.export import Generate, Serving
from components.pipeline import Pipeline, TestRuns
from components.recipe import DataInfo, Evaluation, ImageSizes, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig
from pipelines import gan_fixes, mnist_classifier
from pipelines.gan_fixes import VariantKeys


@dataclass(frozen=True)
class ModelConfig(VariantKeys):
    latent_dim: int = bounded(128, Limit(1, 2 ** 20))
    d_learning_rate: float = bounded(3e-4, RATE)
    g_learning_rate: float = bounded(4e-4, RATE)
    label_noise: float = bounded(0.05, UNIT)  # "an important trick" (the guide)
    num_fixed_samples: int = bounded(16, Limit(1, 4096))


@dataclass(frozen=True)
class Config(BaseConfig):
    data: DataConfig = DataConfig(train_splits=("train", "test"))
    # The guide runs 1 epoch and says "in practice you need at least 20 to generate nice digits".
    train: TrainConfig = TrainConfig(epochs=20, batch_size=64, sample_every=500)
    model: ModelConfig = ModelConfig()


def build_generator(cfg, info: DataInfo, name: str = "generator"):
    """cfg: anything with .model (the train Params, or a Config)."""
    import keras
    from keras import layers

    h, w, c = info.image_shape
    s = h // 4
    return keras.Sequential([
        keras.Input(shape=(cfg.model.latent_dim,)),
        layers.Dense(s * s * 128),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Reshape((s, s, 128)),
        *gan_fixes.upsample(cfg.model, 128, 4),
        layers.LeakyReLU(negative_slope=0.2),
        *gan_fixes.upsample(cfg.model, 128, 4),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2D(c, 7, padding="same", activation="sigmoid", dtype="float32"),
    ], name=name)


def build_networks(cfg, info: DataInfo):
    """cfg: anything with .model and .seed (the train Params, or a Config)."""
    import keras
    from keras import layers

    h, w, c = info.image_shape
    judge = functools.partial(gan_fixes.judge, cfg.model)
    discriminator = keras.Sequential([
        keras.Input(shape=(h, w, c)),
        judge(layers.Conv2D(64, 3, strides=2, padding="same")),
        layers.LeakyReLU(negative_slope=0.2),
        judge(layers.Conv2D(128, 3, strides=2, padding="same")),
        layers.LeakyReLU(negative_slope=0.2),
        layers.GlobalMaxPooling2D(),
        judge(layers.Dense(1, dtype="float32")),
    ], name="discriminator")
    return build_generator(cfg, info), discriminator


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model)."""
    import keras
    import tensorflow as tf

    generator, discriminator = build_networks(p, info)
    g_rate, d_rate = gan_fixes.learning_rates(p.model)
    d_opt = optimizer(keras.optimizers.Adam(d_rate, beta_1=gan_fixes.beta_1(p.model)))
    g_opt = optimizer(keras.optimizers.Adam(g_rate, beta_1=gan_fixes.beta_1(p.model)))
    # the network that samples, snapshots, is evaluated and exported: G, or its average (ema)
    ema = gan_fixes.generator_in_use(p.model, generator, lambda name: build_generator(p, info, name), g_opt)
    sampler = ema.net if ema is not None else generator
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    rng = tf.random.Generator.from_seed(p.seed)
    fixed_z = tf.random.stateless_normal([p.model.num_fixed_samples, p.model.latent_dim],
                                         seed=[p.seed, 1])
    latent = p.model.latent_dim

    def step(real):
        n = tf.shape(real)[0]
        fake = generator(rng.normal([n, latent]))
        images = tf.concat([fake, real], axis=0)
        # 1 = fake, 0 = real, as in the guide
        labels = tf.concat([tf.ones([n, 1]), tf.zeros([n, 1])], axis=0)
        labels += p.model.label_noise * rng.uniform(tf.shape(labels))
        with tf.GradientTape() as tape:
            d_loss = bce(labels, discriminator(images))
        minimize(tape, d_loss, discriminator.trainable_weights, d_opt)

        misleading = tf.zeros([n, 1])  # "all real"
        with tf.GradientTape() as tape:
            g_loss = bce(misleading, discriminator(generator(rng.normal([n, latent]))))
        minimize(tape, g_loss, generator.trainable_weights, g_opt)
        if ema is not None:
            ema.update()
        return {"d_loss": d_loss, "g_loss": g_loss}

    return TrainSetup(**gan_fixes.setup_parts(generator, discriminator, g_opt, d_opt, ema),
                      step=step, metrics=("d_loss", "g_loss"), batch=lambda rec: rec["image"],
                      rngs={"noise": rng}, sample=lambda: sampler(fixed_z, training=False))


def real_logit(nets, images):
    """Discriminator logit oriented so that > 0 means 'judged real' (this D labels fakes 1)."""
    return -nets["discriminator"](images, training=False)


# evaluated in the feature spaces of the classifiers mnist-classifier trains on the same data (its convnet decides)
# the generator doubles a quarter-size start twice; its first Dense grows with the square of it
RECIPE = Recipe(build=build, image_sizes=ImageSizes(least=8, most=256, multiple=4), evaluation=Evaluation(
    measure=evaluations.generation(real_logit), primary="frechet_distance_convnet",
    higher_is_better=False, feature_models=mnist_classifier.FEATURE_SPACES),
    serving=Serving({"serving_default": Generate("generator")}))

PIPELINE = Pipeline(
    name="mnist-gan", module=__name__, default_config=Config,
    summary="Keras guide GAN: conv D with GlobalMaxPooling, G 7x7x128 + 2 Conv2DTranspose, latent 128",
    tests=TestRuns(
        data="mnist", tiny=("data.max_examples=200", "train.batch_size=16", "train.max_steps=6",
                            "train.sample_every=2", "eval.num_samples=100"),
        # train+test 256 digits at batch 64: 4 steps an epoch, samples at epoch ends
        small=("data.max_examples=128", "train.epochs=3", "eval.num_samples=256"), longer=("train.epochs=8",)))

