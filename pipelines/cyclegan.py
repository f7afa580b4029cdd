"""cyclegan: the TensorFlow CycleGAN tutorial (two instance-normalized U-Nets G: X->Y and F: Y->X,
two PatchGANs, adversarial + 10 x cycle + 5 x identity L1), on the two halves of side-by-side pairs
used as two unpaired domains: X the photos (left halves), Y the outlines (right halves)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components import evaluations, scores
from components.config import BELOW_ONE, RATE, Limit, bounded
from components.export import Serving, Translate
from components.layouts import Paired, Snapshot
from components.pipeline import Pipeline, TestRuns
from components.recipe import DataInfo, Evaluation, ImageSizes, Measuring, Recipe, TrainSetup, gradients, optimizer
from components.sections import BaseConfig, DataConfig, TrainConfig
from pipelines import pix2pix
from pipelines.pix2pix import build_discriminator, build_generator


@dataclass(frozen=True)
class ModelConfig:
    learning_rate: float = bounded(2e-4, RATE)
    beta_1: float = bounded(0.5, BELOW_ONE)
    cycle_lambda: float = bounded(10.0, Limit(0, 1e9))   # the tutorial's LAMBDA; identity weighs half of it
    num_fixed_samples: int = bounded(4, Limit(1, 4096))  # per domain




@dataclass(frozen=True)
class Config(BaseConfig):
    # pix2pix's data: its facades by default, or --set data.source=paired:DIR (../shared/data/pix2pix-people)
    data: DataConfig = pix2pix.Config.data
    train: TrainConfig = TrainConfig(epochs=40, batch_size=1, shuffle_buffer=1000,
                                     checkpoint_every_epochs=5, steps_per_call=20)
    model: ModelConfig = ModelConfig()


@dataclass(frozen=True)
class Unpaired(Paired):
    """The facades pairs read as two domains: the trainer sees each domain's own shuffle (a true
    pair meets only by chance, 1/N per step, never by construction); the held-out pairs of the
    eval split stay paired for evaluation. Snapshots translate and reconstruct fixed inputs of
    both domains: input | translation | reconstruction rows."""
    name: str = "unpaired"

    def stream(self, copies, batch_size, shuffle_buffer, seed, parse, to_batch):
        return _unpaired_stream()(copies, batch_size, shuffle_buffer, seed, parse, to_batch)

    def fixed_inputs(self, examples: list[dict]) -> np.ndarray:
        """The first photos, then the first outlines."""
        return np.stack([ex["image"] for ex in examples] + [ex["input"] for ex in examples])

    def snapshot(self, examples: list[dict], sample: np.ndarray, k: int) -> Snapshot:
        n = len(sample) // 2  # sample: [2n, 2 (translation, reconstruction), H, W, C]
        rows = [[examples[i][f], sample[d * n + i, 0], sample[d * n + i, 1]]
                for d, f in enumerate(("image", "input")) for i in range(min(k, n))]
        return Snapshot(rows, ("Input", "Translation", "Reconstruction"))


def _unpaired_stream():
    """EpochStream whose epoch zips two shuffles of the records: photos of one, outlines of the
    other (built lazily: TensorFlow is imported only when training)."""
    import tensorflow as tf

    from components.epochs import EpochStream, epoch_seed

    class UnpairedStream(EpochStream):
        def dataset(self, epoch: int) -> tf.data.Dataset:
            files = self._copies[epoch % len(self._copies)]

            def domain(feature: str, salt: int) -> tf.data.Dataset:
                d = tf.data.TFRecordDataset(files).shuffle(
                    self._buffer, seed=epoch_seed(self._seed + salt, epoch), reshuffle_each_iteration=False)
                return d.batch(self._batch).map(lambda r: self._parse(r)[feature],
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

            d = tf.data.Dataset.zip(domain("image", 0), domain("input", 1))
            return d.map(lambda x, y: self._to_batch({"image": x, "input": y})).prefetch(2)

    return UnpairedStream


UNPAIRED = Unpaired()


def build(p, info: DataInfo) -> TrainSetup:
    """p: the train stage's Params (.seed, .model). X: photos, Y: outlines."""
    import keras
    import tensorflow as tf

    size, _, channels = info.image_shape
    g = build_generator(size, channels, p.seed, norm="instance", name="generator_g")       # X -> Y
    f = build_generator(size, channels, p.seed + 10, norm="instance", name="generator_f")  # Y -> X
    d_x = build_discriminator(size, channels, norm="instance", conditional=False, name="discriminator_x")
    d_y = build_discriminator(size, channels, norm="instance", conditional=False, name="discriminator_y")
    nets = {"generator_g": g, "generator_f": f, "discriminator_x": d_x, "discriminator_y": d_y}
    opts = {k: optimizer(keras.optimizers.Adam(p.model.learning_rate, beta_1=p.model.beta_1)) for k in nets}
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    lam = p.model.cycle_lambda

    def d_loss(real, fake):
        return 0.5 * (bce(tf.ones_like(real), real) + bce(tf.zeros_like(fake), fake))

    def step(batch):
        real_x, real_y = batch
        sizes = [tf.shape(real_x)[0], tf.shape(real_y)[0]]
        with tf.GradientTape(persistent=True) as tape:
            # the tutorial's six generator calls as four: G(x) with G(y), F(y) with F(x), one call
            # each on both (instance norm is per image). A network used three times sums three
            # partial gradients in an order that varies from run to run; two sum alike.
            fake_y, same_y = tf.split(g(tf.concat([real_x, real_y], 0), training=True), sizes)
            fake_x, same_x = tf.split(f(tf.concat([real_y, real_x], 0), training=True), sizes[::-1])
            cycled_x, cycled_y = f(fake_y, training=True), g(fake_x, training=True)
            disc_fake_x, disc_fake_y = d_x(fake_x, training=True), d_y(fake_y, training=True)
            disc_real_x, disc_real_y = d_x(real_x, training=True), d_y(real_y, training=True)
            cycle_l1 = tf.reduce_mean(tf.abs(real_x - cycled_x)) + tf.reduce_mean(tf.abs(real_y - cycled_y))
            g_total = bce(tf.ones_like(disc_fake_y), disc_fake_y) + lam * cycle_l1 \
                + 0.5 * lam * tf.reduce_mean(tf.abs(real_y - same_y))
            f_total = bce(tf.ones_like(disc_fake_x), disc_fake_x) + lam * cycle_l1 \
                + 0.5 * lam * tf.reduce_mean(tf.abs(real_x - same_x))
            dx_loss, dy_loss = d_loss(disc_real_x, disc_fake_x), d_loss(disc_real_y, disc_fake_y)
        losses = {"generator_g": g_total, "generator_f": f_total, "discriminator_x": dx_loss,
                  "discriminator_y": dy_loss}
        # every gradient from this forward pass before any update, as the tutorial does: the cycle
        # loss of F flows through G's weights (and G's through F's)
        grads = {k: gradients(tape, loss, nets[k].trainable_weights, opts[k]) for k, loss in losses.items()}
        for k, grad in grads.items():
            opts[k].apply(grad, nets[k].trainable_weights)
        return {"gen_g_loss": g_total, "gen_f_loss": f_total, "cycle_l1": cycle_l1 / 2,
                "disc_x_loss": dx_loss, "disc_y_loss": dy_loss}

    fixed = tf.constant(info.fixed_inputs) if info.fixed_inputs is not None else None

    def sample():
        """[2n, 2, H, W, C]: translation and reconstruction of n photos, then of n outlines."""
        n = fixed.shape[0] // 2
        photos, outlines = fixed[:n], fixed[n:]
        to_y, to_x = g(photos, training=False), f(outlines, training=False)
        trans = tf.concat([to_y, to_x], 0)
        recon = tf.concat([f(to_y, training=False), g(to_x, training=False)], 0)
        return tf.stack([trans, recon], axis=1)

    return TrainSetup(networks=nets, optimizers=opts, step=step,
                      metrics=("gen_g_loss", "gen_f_loss", "cycle_l1", "disc_x_loss", "disc_y_loss"),
                      batch=lambda rec: (rec["image"], rec["input"]), export=nets,
                      sample=sample if fixed is not None else None)


def measure(m: Measuring) -> tuple[dict, dict]:
    """On the held-out true pairs: L1 / PSNR / SSIM of photo->outline and outline->photo against the
    true counterpart, beside the identity baseline (the input itself as its translation), and the
    cycle-reconstruction L1 each way."""
    data = m.split(m.params.eval_split)
    photos, outlines = data["image"], data["input"]
    g, f = m.nets["generator_g"], m.nets["generator_f"]
    to_outline, to_photo = evaluations.predict(g, photos, 8), evaluations.predict(f, outlines, 8)
    out = {"examples": int(len(photos)),
           "cycle_l1_photo": float(np.abs(evaluations.predict(f, to_outline, 8) - photos).mean()),
           "cycle_l1_outline": float(np.abs(evaluations.predict(g, to_photo, 8) - outlines).mean())}
    for name, (pred, target) in {"photo_to_outline": (to_outline, outlines),
                                 "outline_to_photo": (to_photo, photos),
                                 "identity": (photos, outlines)}.items():
        out.update({f"{name}_{k}": v for k, v in scores.image_scores(pred, target).items()})
    return out, {}


# pix2pix's U-Nets and PatchGANs
RECIPE = Recipe(build=build, image_sizes=ImageSizes(least=32, power_of_two=True), layout=UNPAIRED, evaluation=Evaluation(
    measure=measure, primary="photo_to_outline_l1", higher_is_better=False),
    # both directions: photos -> outlines (G, the judged one) is the default
    serving=Serving({"serving_default": Translate("generator_g"), "outline_to_photo": Translate("generator_f")}))

PIPELINE = Pipeline(
    name="cyclegan", module=__name__, default_config=Config,
    summary="CycleGAN: unpaired photos <-> outlines, instance-norm U-Nets, PatchGANs, cycle + identity L1",
    tests=TestRuns(
        data="pix2pix-people", image_size=32,
        tiny=("data.max_examples=8", "data.jitter_copies=2", "train.max_steps=6", "train.sample_every=2",
              "train.steps_per_call=2"),
        # the same 6 pairs as two unpaired domains: a checkpoint every 5 epochs (30 steps)
        small=("data.max_examples=6", "train.epochs=6"), longer=("train.epochs=8",)))
