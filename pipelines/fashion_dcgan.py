"""fashion-dcgan: the TensorFlow DCGAN tutorial, trained on Fashion-MNIST."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines import mnist_classifier
from components import measures
from components.export import Generate, Serving
from components.pipeline import Pipeline
from components.recipe import DataInfo, Evaluation, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig

@dataclass(frozen=True)
class ModelConfig:
    noise_dim: int = 100
    g_learning_rate: float = 1e-4
    d_learning_rate: float = 1e-4
    dropout: float = 0.3
    num_fixed_samples: int = 16  # a 4x4 grid


@dataclass(frozen=True)
class Config(BaseConfig):
    data: DataConfig = DataConfig(source="tfds:fashion_mnist", normalize="symmetric")
    train: TrainConfig = TrainConfig(epochs=50, batch_size=256, shuffle_buffer=60000,
                                     sample_every=50, checkpoint_every_epochs=5)
    model: ModelConfig = ModelConfig()


def build_networks(cfg, info: DataInfo):
    """cfg: anything with .model and .seed (the train Params, or a Config)."""
    import keras
    from keras import layers

    h, w, c = info.image_shape
    s = h // 4
    generator = keras.Sequential([
        keras.Input(shape=(cfg.model.noise_dim,)),
        layers.Dense(s * s * 256, use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Reshape((s, s, 256)),
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Conv2DTranspose(c, 5, strides=2, padding="same", use_bias=False,
                               activation="tanh", dtype="float32"),
    ], name="generator")
    discriminator = keras.Sequential([
        keras.Input(shape=(h, w, c)),
        layers.Conv2D(64, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(cfg.model.dropout, seed=cfg.seed),
        layers.Conv2D(128, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(cfg.model.dropout, seed=cfg.seed + 1),
        layers.Flatten(),
        layers.Dense(1, dtype="float32"),
    ], name="discriminator")
    return generator, discriminator


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model)."""
    import keras
    import tensorflow as tf

    generator, discriminator = build_networks(p, info)
    g_opt = optimizer(keras.optimizers.Adam(p.model.g_learning_rate))
    d_opt = optimizer(keras.optimizers.Adam(p.model.d_learning_rate))
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
        # The tutorial thresholds logits at 0.5; probability 0.5 is logit 0, which we use.
        return {"g_loss": g_loss, "d_loss": d_loss,
                "real_accuracy": tf.reduce_mean(tf.cast(real_out > 0.0, tf.float32)),
                "fake_accuracy": tf.reduce_mean(tf.cast(fake_out < 0.0, tf.float32))}

    return TrainSetup(networks={"generator": generator, "discriminator": discriminator},
                      optimizers={"generator": g_opt, "discriminator": d_opt},
                      step=step, metrics=("g_loss", "d_loss", "real_accuracy", "fake_accuracy"), batch=lambda rec: rec["image"],
                      export={"generator": generator, "discriminator": discriminator},
                      rngs={"noise": rng}, sample=lambda: generator(seed_noise, training=False))


def real_logit(nets, images):
    """Discriminator logit, > 0 means 'judged real'."""
    return nets["discriminator"](images, training=False)


RECIPE = Recipe(build=build, evaluation=Evaluation(
    measure=measures.generation(real_logit), primary="frechet_distance_convnet",
    higher_is_better=False, feature_models=mnist_classifier.FEATURE_SPACES),
    serving=Serving({"serving_default": Generate("generator")}))

PIPELINE = Pipeline(
    name="fashion-dcgan", module=__name__, default_config=Config,
    summary="TF DCGAN on Fashion-MNIST: BN generator, dropout discriminator, 16 fixed seeds, GIF")
