"""The known GAN fixes the two GAN recipes' variants are made of (`--set model.variant=NAME`):
which fixes a variant applies, and the layers and the generator average they need."""
from __future__ import annotations

import dataclasses
import functools
import operator
from dataclasses import dataclass, fields
from typing import Literal

from components.config import BELOW_ONE, NAME, RATE, Limit, bounded
from components.sections import require


@dataclass(frozen=True)
class Fixes:
    """What a variant changes of its seed recipe; all off is the seed itself."""
    resize: bool = False      # UpSampling2D + Conv2D for each strided Conv2DTranspose: no checkerboard
    ema: bool = False         # sample, snapshot, evaluate and export an average of G's weights
    spectral: bool = False    # spectral normalization of every D kernel (keras SpectralNormalization)
    ttur: bool = False        # two time-scale rates: model.ttur_learning_rates (G, D) for Adam
    adam: bool = False        # the DCGAN paper's Adam: model.adam_learning_rate, beta_1 model.adam_beta_1

    def __or__(self, other: "Fixes") -> "Fixes":
        return Fixes(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})


# `improved` joins the fixes that did best together (docs/variants.md has the measurements): resize
# removes the transposed convolution's checkerboard, adam is the DCGAN paper's optimizer. The others
# stay fixes of their own: each did worse joined to these.
VARIANTS = {
    "faithful": Fixes(),
    "improved": Fixes(resize=True, adam=True),
    "resize": Fixes(resize=True),
    "ema": Fixes(ema=True),
    "spectral": Fixes(spectral=True),
    "ttur": Fixes(ttur=True),
    "adam": Fixes(adam=True),
}
Variant = str  # a name of VARIANTS, or fixes joined by "+" (resize+ema); check() refuses others



@dataclass(frozen=True)
class VariantKeys:
    """The model keys both GAN recipes share: which variant, and what its fixes take. faithful
    is the seed's recipe; improved, resize, ema, spectral, ttur, adam one fix each, or fixes
    joined by + (resize+ema); a key below acts only in the variants that name it."""
    variant: Variant = bounded("faithful", NAME)          # and check() knows every name
    upsample: Literal["nearest", "bilinear"] = "bilinear"  # resize: UpSampling2D's interpolation
    ema_decay: float = bounded(0.999, BELOW_ONE)          # ema: the generator average's decay
    # ttur: Adam's (G, D) rates, D the faster
    ttur_learning_rates: tuple[float, ...] = bounded((1e-4, 4e-4), Limit(0, 1e12, lo_open=True, nonempty=True))
    adam_learning_rate: float = bounded(2e-4, RATE)       # adam: both networks' rate (the DCGAN paper's)
    adam_beta_1: float = bounded(0.5, BELOW_ONE)          # adam: Adam's beta_1 (the DCGAN paper's)

    def check(self) -> None:
        check(self)

    def fingerprinted(self) -> "VariantKeys":
        """This section as fingerprints see it: a key that acts in none of the variant's fixes
        counts at its default, so `model.upsample` never retrains a faithful model."""
        fixes = parse(self.variant) or Fixes()
        base = type(self)()
        inert = {"upsample": not fixes.resize, "ema_decay": not fixes.ema,
                 "ttur_learning_rates": not fixes.ttur, "adam_learning_rate": not fixes.adam,
                 "adam_beta_1": not fixes.adam}
        return dataclasses.replace(self, **{k: getattr(base, k) for k, off in inert.items() if off})


def parse(variant: str) -> Fixes | None:
    """The fixes a variant name stands for: a name of VARIANTS, or names joined by "+" (each
    fix it names, e.g. resize+ema+adam); None for anything else."""
    if variant in VARIANTS:
        return VARIANTS[variant]
    names = variant.split("+")
    if len(names) < 2 or any(n not in VARIANTS or n == "faithful" for n in names):
        return None
    return functools.reduce(operator.or_, (VARIANTS[n] for n in names))


def of(model) -> Fixes:
    """The fixes of a recipe's model section (its .variant)."""
    return parse(model.variant)


def check(model) -> None:
    """The model section's own check (config.override calls it): a known variant; TTUR names two rates."""
    require(parse(model.variant) is not None, "model.variant", model.variant,
            f"use one of {', '.join(VARIANTS)}, or fixes joined by + (e.g. resize+ema)")
    require(len(model.ttur_learning_rates) == 2, "model.ttur_learning_rates", model.ttur_learning_rates,
            "give two rates, the generator's then the discriminator's, e.g. 1e-4,4e-4")


def learning_rates(model) -> tuple[float, float]:
    """(G, D) Adam learning rates: the seed's, the TTUR pair, or under `adam` the DCGAN paper's."""
    fixes = of(model)
    if fixes.ttur:
        return tuple(model.ttur_learning_rates)
    if fixes.adam:
        return model.adam_learning_rate, model.adam_learning_rate
    return model.g_learning_rate, model.d_learning_rate


def beta_1(model) -> float:
    """Adam's first-moment decay: Keras's default (the seeds'), or under `adam` the DCGAN
    paper's 0.5 (Radford et al. 2016: 0.9 "resulted in training oscillation and instability")."""
    return model.adam_beta_1 if of(model).adam else 0.9


def upsample(model, filters: int, kernel: int, **kwargs) -> list:
    """Double the side: the seed's strided Conv2DTranspose, or under `resize` an UpSampling2D
    (model.upsample) then a stride-1 Conv2D, whose kernel overlaps every output pixel alike."""
    from keras import layers

    if not of(model).resize:
        return [layers.Conv2DTranspose(filters, kernel, strides=2, padding="same", **kwargs)]
    return [layers.UpSampling2D(2, interpolation=model.upsample),
            layers.Conv2D(filters, kernel, padding="same", **kwargs)]


def judge(model, layer):
    """A discriminator layer with a kernel, spectrally normalized under `spectral`."""
    from keras import layers

    if not of(model).spectral:
        return layer
    return layers.SpectralNormalization(layer, dtype=layer.dtype_policy)


class Ema:
    """An exponential moving average of a generator's weights (trainable and BatchNorm statistics)
    kept in a second network of the same architecture: the checkpoint holds it like any network,
    so a resume goes on from the same average. The decay warms up as in
    tf.train.ExponentialMovingAverage(num_updates): min(decay, (1 + t) / (10 + t)) at G's update t,
    so an average early in training is not mostly the initial weights."""

    def __init__(self, source, average, decay: float, optimizer):
        average.set_weights(source.get_weights())
        self.source, self.net, self.decay, self._opt = source, average, decay, optimizer

    def update(self) -> None:
        """After G's update, inside the train step."""
        import tensorflow as tf

        t = tf.cast(self._opt.iterations, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for avg, w in zip(self.net.weights, self.source.weights):
            avg.assign(decay * avg.value + (1.0 - decay) * w.value)


def generator_in_use(model, generator, build_generator, g_opt) -> Ema | None:
    """The Ema of generator under `ema` (its network built by build_generator(name)), else None."""
    if not of(model).ema:
        return None
    return Ema(generator, build_generator("generator_ema"), model.ema_decay, g_opt)


def setup_parts(generator, discriminator, g_opt, d_opt, ema: Ema | None) -> dict:
    """TrainSetup's networks, optimizers and export: under `ema` the average is checkpointed
    beside the networks and exported as "generator" (what evaluation and serving load)."""
    nets = {"generator": generator, "discriminator": discriminator}
    used = ema.net if ema is not None else generator
    return {"networks": {**nets, **({"generator_ema": ema.net} if ema is not None else {})},
            "optimizers": {"generator": g_opt, "discriminator": d_opt},
            "export": {"generator": used, "discriminator": discriminator}}
