"""pix2pix: the TensorFlow pix2pix tutorial (U-Net generator, PatchGAN, BCE + 100 x L1)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from components import evaluations
from components.config import BELOW_ONE, RATE, Limit, bounded
from components.export import Serving, Translate
from components.layouts import PAIRED
from components.pipeline import Pipeline, TestRuns
from components.recipe import DataInfo, Evaluation, ImageSizes, Recipe, TrainSetup, minimize, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig


@dataclass(frozen=True)
class ModelConfig:
    learning_rate: float = bounded(2e-4, RATE)
    beta_1: float = bounded(0.5, BELOW_ONE)
    l1_lambda: float = bounded(100.0, Limit(0, 1e9))
    num_fixed_samples: int = bounded(4, Limit(1, 4096))


@dataclass(frozen=True)
class Config(BaseConfig):
    # The tutorial's facades, where its get_file() extracts them; --set data.source=paired:DIR otherwise.
    data: DataConfig = DataConfig(source="paired:~/.keras/datasets/facades", image_size=256,
                                  channels=3, normalize="symmetric", jitter=True,
                                  jitter_copies=10, eval_split="val")
    train: TrainConfig = TrainConfig(epochs=150, batch_size=1, shuffle_buffer=400,
                                     sample_every=1000, checkpoint_every_epochs=20, steps_per_call=20)
    model: ModelConfig = ModelConfig()


def _init():
    import keras

    return keras.initializers.RandomNormal(0.0, 0.02)


def normalization(norm: str):
    """pix2pix's batch normalization, or the instance normalization the CycleGAN tutorial swaps in
    (GroupNormalization with one group per channel; its scale drawn like the tutorial's)."""
    import keras
    from keras import layers

    if norm == "batch":
        return layers.BatchNormalization()
    return layers.GroupNormalization(groups=-1, epsilon=1e-5,
                                     gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02))


def down(filters, bn=True, norm="batch"):
    import keras
    from keras import layers

    block = keras.Sequential([layers.Conv2D(filters, 4, strides=2, padding="same",
                                            kernel_initializer=_init(), use_bias=False)])
    if bn:
        block.add(normalization(norm))
    block.add(layers.LeakyReLU())
    return block


def up(filters, dropout=False, seed=None, norm="batch"):
    import keras
    from keras import layers

    block = keras.Sequential([layers.Conv2DTranspose(filters, 4, strides=2, padding="same",
                                                     kernel_initializer=_init(), use_bias=False),
                              normalization(norm)])
    if dropout:
        block.add(layers.Dropout(0.5, seed=seed))
    block.add(layers.ReLU())
    return block


def build_generator(size: int, channels: int, seed: int, norm: str = "batch", name: str = "generator"):
    """U-Net: depth log2(size) (8 at 256 px), skips between mirrored levels, tanh output."""
    import keras
    from keras import layers

    depth = int(math.log2(size))
    down_filters = [64, 128, 256] + [512] * (depth - 3)
    up_filters = ([512] * (depth - 4) + [256, 128, 64])
    downs = [down(f, bn=i > 0, norm=norm) for i, f in enumerate(down_filters)]
    ups = [up(f, dropout=i < 3, seed=seed + i, norm=norm) for i, f in enumerate(up_filters)]
    inputs = keras.Input(shape=(size, size, channels))
    x, skips = inputs, []
    for d in downs:
        x = d(x)
        skips.append(x)
    for u, skip in zip(ups, reversed(skips[:-1])):
        x = layers.Concatenate()([u(x), skip])
    outputs = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", kernel_initializer=_init(),
                                     activation="tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def build_discriminator(size: int, channels: int, norm: str = "batch", conditional: bool = True,
                        name: str = "discriminator"):
    """PatchGAN: 30x30 logits at 256 px, of the input and target images side by side
    (conditional), or of the target alone (the CycleGAN tutorial's)."""
    import keras
    from keras import layers

    tar = keras.Input(shape=(size, size, channels), name="target_image")
    if conditional:
        inp = keras.Input(shape=(size, size, channels), name="input_image")
        inputs, x = [inp, tar], layers.Concatenate()([inp, tar])
    else:
        inputs, x = tar, tar
    x = down(128, norm=norm)(down(64, bn=False)(x))
    x = down(256, norm=norm)(x)
    x = layers.ZeroPadding2D()(x)
    x = layers.Conv2D(512, 4, strides=1, kernel_initializer=_init(), use_bias=False)(x)
    x = layers.LeakyReLU()(normalization(norm)(x))
    x = layers.ZeroPadding2D()(x)
    out = layers.Conv2D(1, 4, strides=1, kernel_initializer=_init(), dtype="float32")(x)
    return keras.Model(inputs, out, name=name)


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model)."""
    import keras
    import tensorflow as tf

    size, _, channels = info.image_shape
    generator = build_generator(size, channels, p.seed)
    discriminator = build_discriminator(size, channels)
    g_opt = optimizer(keras.optimizers.Adam(p.model.learning_rate, beta_1=p.model.beta_1))
    d_opt = optimizer(keras.optimizers.Adam(p.model.learning_rate, beta_1=p.model.beta_1))
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    fixed = tf.constant(info.fixed_inputs) if info.fixed_inputs is not None else None

    def step(batch):
        inp, target = batch
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            gen = generator(inp, training=True)
            real_out = discriminator([inp, target], training=True)
            fake_out = discriminator([inp, gen], training=True)
            gan_loss = bce(tf.ones_like(fake_out), fake_out)
            l1_loss = tf.reduce_mean(tf.abs(target - gen))
            g_total = gan_loss + p.model.l1_lambda * l1_loss
            d_loss = bce(tf.ones_like(real_out), real_out) + bce(tf.zeros_like(fake_out), fake_out)
        minimize(g_tape, g_total, generator.trainable_weights, g_opt)
        minimize(d_tape, d_loss, discriminator.trainable_weights, d_opt)
        return {"gen_total_loss": g_total, "gen_gan_loss": gan_loss, "gen_l1_loss": l1_loss,
                "disc_loss": d_loss}

    # The tutorial samples with training=True: batch statistics and dropout, as in the paper.
    sample = (lambda: generator(fixed, training=True)) if fixed is not None else None
    return TrainSetup(networks={"generator": generator, "discriminator": discriminator},
                      optimizers={"generator": g_opt, "discriminator": d_opt}, step=step,
                      metrics=("gen_total_loss", "gen_gan_loss", "gen_l1_loss", "disc_loss"),
                      batch=lambda rec: (rec["input"], rec["image"]),
                      export={"generator": generator, "discriminator": discriminator},
                      sample=sample)


def translate(nets, inputs):
    return nets["generator"](inputs, training=True)


# a U-Net of depth log2(size); the PatchGAN's two 4x4 convolutions need 32 px
RECIPE = Recipe(build=build, image_sizes=ImageSizes(least=32, power_of_two=True), layout=PAIRED, evaluation=Evaluation(
    measure=evaluations.translation(translate), primary="l1", higher_is_better=False),
    # inference mode (moving statistics, no dropout), unlike the tutorial's samples: a server
    # gives one input one output
    serving=Serving({"serving_default": Translate("generator")}))

PIPELINE = Pipeline(
    name="pix2pix", module=__name__, default_config=Config,
    summary="pix2pix: random jitter, U-Net (8 down / 7 up), PatchGAN 30x30, BCE + 100 x L1",
    tests=TestRuns(
        data="pix2pix-people", image_size=32,
        tiny=("data.max_examples=8", "data.jitter_copies=2", "train.max_steps=6", "train.sample_every=2",
              "train.steps_per_call=2"),
        # 6 pairs at batch 1, 10 jitter copies, a checkpoint every 20 epochs (120 steps)
        small=("data.max_examples=6", "train.epochs=25"), longer=("train.epochs=12",)))
