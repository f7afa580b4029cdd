"""Config sections shared by every pipeline; each pipeline sets the seed tutorial's values."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from artifacts.errors import UserError
from components.config import LIMITS, Limit


def require(cond: bool, key: str, value, fix: str) -> None:
    if not cond:
        raise UserError(f"bad value {value!r} for {key}", "--set", fix)


@dataclass(frozen=True)
class DataConfig:
    source: str = "tfds:mnist"            # tfds:NAME[?split=a,b] | idx:DIR | a kind the recipe's layout adds
    max_examples: int | None = None       # per split; None = all
    image_size: int = 28                  # side of the square images the networks see
    channels: int = 1
    train_splits: tuple[str, ...] = ("train",)    # what the trainer reads (mnist-gan: train,test)
    eval_split: str = "test"
    val_holdout: int = 0                  # last N train examples become split "val", but at most
    val_max_share: float = 0.2            # this share of train: a small run (data.max_examples) trains
    normalize: Literal["unit", "symmetric", "raw"] = "unit"  # [0,1] | [-1,1] | 0..255
    jitter: bool = False                  # pix2pix random jitter on the train split
    jitter_resize: int | None = None      # None: image_size * 286 / 256, the tutorial's ratio
    jitter_copies: int = 1                # K variants; epoch e trains on copy e mod K
    max_image_pixels: int = 89_478_485    # an encoded image's header is checked before decoding

    def check(self) -> None:
        require(self.max_examples is None or self.max_examples > 0, "data.max_examples",
                self.max_examples, "use a positive count or none")
        require(self.image_size >= 8, "data.image_size", self.image_size, "use 8 or more")
        require(self.channels in (1, 3), "data.channels", self.channels, "use 1 or 3")
        require(self.jitter_copies >= 1, "data.jitter_copies", self.jitter_copies, "use 1 or more")
        require(self.val_holdout >= 0, "data.val_holdout", self.val_holdout, "use 0 or more")
        require(0 < self.val_max_share <= 1, "data.val_max_share", self.val_max_share,
                "use a share above 0 and at most 1")
        require(bool(self.train_splits), "data.train_splits", self.train_splits, "name at least one split")


@dataclass(frozen=True)
class DriftThresholds:
    """Per feature, the distance from the champion's span above which it has drifted (TFDV's
    comparators): label mix by L-infinity, histograms by Jensen-Shannon (base 2, 0..1)."""
    labels: float = 0.1                   # the largest change of one class's share
    pixels: float = 0.1                   # pixel-intensity histogram
    sizes: float = 0.1                    # image-size (HxW) histogram


@dataclass(frozen=True)
class ValidateConfig:
    duplicates: Literal["error", "warn"] = "error"  # the same image in two splits leaks the test set
    # compared per run with the champion's span (components/drift.py), never fingerprinted
    drift_threshold: DriftThresholds = DriftThresholds()
    block_on_drift: bool = False          # true: a drifted feature stops the run before training


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None          # stop earlier than epochs * steps-per-epoch
    batch_size: int = 32
    shuffle_buffer: int = 1024
    checkpoint_every: int = 1000          # steps; a crash loses at most this much work
    checkpoint_every_epochs: int = 0      # the seeds' epoch schedule (dcgan 5, pix2pix 20); 0 = off
    keep_checkpoints: int = 2
    sample_every: int = 0                 # steps between fixed-seed sample snapshots; 0 = epoch ends only
    summary_every: int = 100              # steps between tf.summary scalars
    log_every: int = 200                  # steps between plain log lines (no terminal)
    steps_per_call: int = 50              # steps inside one tf.function call (fewer host syncs)
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    workers: int = 1                      # multi_worker: worker processes (TF_CONFIG must list as many)
    mixed_precision: bool = False
    xla: bool = False
    deterministic: bool = True            # tf op determinism: bit-exact resume

    def check(self) -> None:
        for key in ("epochs", "batch_size", "shuffle_buffer", "checkpoint_every", "steps_per_call",
                    "summary_every", "log_every", "keep_checkpoints", "workers"):
            value = getattr(self, key)
            require(value > 0, f"train.{key}", value, "use a positive integer")
        require(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps,
                "use a positive step count or none")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 10000              # generated samples for Fréchet distance / classifier score
    tolerance: float = 0.0                # how much worse than the champion still blesses
    batch_size: int = 500


@dataclass(frozen=True)
class RenderConfig:
    gif_frame_seconds: float = 0.1
    max_triptychs: int = 4


@dataclass(frozen=True)
class PromoteConfig:
    keep_versions: int = 4                # pushed SavedModels kept besides the newest (serving/PIPELINE/N)


@dataclass(frozen=True)
class BeamConfig:
    # direct | dask | portable | a Beam runner name (FlinkRunner, ...); never part of a fingerprint
    runner: str = "direct"
    options: str = ""                     # extra Beam flags, e.g. "--direct_running_mode=multi_processing"
    shards: int = 0                       # TFRecord shards per split (the unit of parallel work); 0 = by size
    dask_address: str = ""                # dask: a `dask scheduler` (tcp://HOST:8786); empty = local cluster
    partitions: int = 0                   # dask: bag partitions; 0 = one per shard
    job_endpoint: str = ""                # portable: a Beam job service, HOST:PORT
    worker_pool: str = ""                 # portable: an SDK worker pool HOST:PORT (EXTERNAL); empty = LOOPBACK

    def check(self) -> None:
        require(_known_runner(self.runner), "beam.runner", self.runner,
                "use direct, dask, portable, a Beam runner name (FlinkRunner, ...) or a runner class's dotted path")
        require(self.shards >= 0, "beam.shards", self.shards, "use 0 (follow the data size) or more")
        require(self.partitions >= 0, "beam.partitions", self.partitions, "use 0 (one per shard) or more")


# Beam's StandardOptions.ALL_KNOWN_RUNNERS (2.6x) and our aliases; a dotted path names any other
_RUNNERS = {"direct", "dask", "portable", "bundlebaseddirect", "dataflow", "flink", "fnapi", "interactive",
            "kafkastreams", "prism", "spark", "switchingdirect", "testdataflow", "testdirect"}


def _known_runner(name: str) -> bool:
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name):
        return True
    low = name.lower()
    return low in _RUNNERS or (low.endswith("runner") and low[:-len("runner")] in _RUNNERS)


@dataclass(frozen=True)
class FlowConfig:
    retries: int = 0                      # Prefect flow-level retries; each retry resumes
    retry_delay_seconds: int = 10


@dataclass(frozen=True)
class BaseConfig:
    """The sections every pipeline has, at the seed tutorial's defaults. A recipe's Config
    subclasses it and states only its model section and the values that differ (flax's
    configs/default.py); dataclass fields keep their order, so every Config lists its keys alike."""
    seed: int = 0
    data: DataConfig = DataConfig()
    validate: ValidateConfig = ValidateConfig()
    train: TrainConfig = TrainConfig()
    model: Any = None                     # the recipe's own section (a frozen dataclass)
    eval: EvalConfig = EvalConfig()
    render: RenderConfig = RenderConfig()
    promote: PromoteConfig = PromoteConfig()
    beam: BeamConfig = BeamConfig()
    flow: FlowConfig = FlowConfig()


_COUNT = Limit(1, 2 ** 31 - 1)         # a positive count or size
_STEPS = Limit(1, 2 ** 62)             # a step count or interval
_RATE = Limit(0, 1e12, lo_open=True)   # a learning rate: a too large one diverges, and stops cleanly
_UNIT = Limit(0, 1)                    # a share or probability
_NAME = Limit(nonempty=True)
# The whole range of every key the pipelines have; tests/test_config_limits.py checks that each
# key `tapeline pipelines --keys` lists is here, and gives each its edge values.
LIMITS.update({
    "seed": Limit(0, 2 ** 32 - 1),     # numpy's global seed (keras.utils.set_random_seed) takes no more
    "data.source": _NAME, "data.eval_split": _NAME, "data.train_splits": _NAME,
    "data.max_examples": _COUNT, "data.image_size": Limit(8, 4096), "data.channels": Limit(1, 3),
    "data.val_holdout": Limit(0, 2 ** 31 - 1), "data.val_max_share": Limit(0, 1, lo_open=True),
    "data.jitter_resize": Limit(8, 8192), "data.jitter_copies": Limit(1, 256),
    "data.max_image_pixels": Limit(1, 2 ** 32),
    "validate.drift_threshold.labels": _UNIT, "validate.drift_threshold.pixels": _UNIT,
    "validate.drift_threshold.sizes": _UNIT,
    "train.epochs": Limit(1, 10 ** 6), "train.max_steps": _STEPS, "train.batch_size": Limit(1, 2 ** 20),
    "train.shuffle_buffer": Limit(1, 2 ** 26), "train.checkpoint_every": _STEPS,
    "train.checkpoint_every_epochs": Limit(0, 10 ** 6), "train.keep_checkpoints": Limit(1, 1000),
    "train.sample_every": Limit(0, 2 ** 62), "train.summary_every": _STEPS, "train.log_every": _STEPS,
    "train.steps_per_call": Limit(1, 10 ** 6), "train.workers": Limit(1, 1024),
    "eval.num_samples": Limit(1, 10 ** 8), "eval.tolerance": Limit(-1e9, 1e9), "eval.batch_size": Limit(1, 2 ** 20),
    "render.gif_frame_seconds": Limit(0, 3600, lo_open=True), "render.max_triptychs": Limit(1, 1000),
    "promote.keep_versions": Limit(0, 10 ** 6),
    "beam.shards": Limit(0, 10 ** 5), "beam.partitions": Limit(0, 10 ** 5),
    "flow.retries": Limit(0, 1000), "flow.retry_delay_seconds": Limit(0, 7 * 24 * 3600),
    # the pipelines' model sections
    "model.learning_rate": _RATE, "model.d_learning_rate": _RATE, "model.g_learning_rate": _RATE,
    "model.beta_1": Limit(0, 0.999999), "model.dropout": Limit(0, 0.999999),
    "model.activity_regularization": Limit(0, 1e6), "model.l1_lambda": Limit(0, 1e9),
    "model.label_noise": _UNIT, "model.hidden": Limit(1, 2 ** 20), "model.latent_dim": Limit(1, 2 ** 20),
    "model.noise_dim": Limit(1, 2 ** 20), "model.num_fixed_samples": Limit(1, 4096),
})
