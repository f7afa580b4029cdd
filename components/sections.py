"""Config sections shared by every pipeline; each pipeline sets the seed tutorial's values."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from artifacts.errors import UserError
from components.config import ANY, COUNT, NAME, STEPS, UNIT, Limit, bounded
from components.sources import DEFAULT_MAX_IMAGE_PIXELS


def require(cond: bool, key: str, value, fix: str) -> None:
    if not cond:
        raise UserError(f"bad value {value!r} for {key}", "--set", fix)


@dataclass(frozen=True)
class DataConfig:
    source: str = bounded("tfds:mnist", NAME)  # tfds:NAME[?split=a,b] | idx:DIR | a kind the recipe's layout adds
    max_examples: int | None = bounded(None, COUNT)                 # per split; None = all
    image_size: int = bounded(28, Limit(8, 4096))                   # side of the square images the networks see
    channels: int = bounded(1, Limit(1, 3))
    train_splits: tuple[str, ...] = bounded(("train",), NAME)  # what the trainer reads (mnist-gan: train,test)
    eval_split: str = bounded("test", NAME)
    val_holdout: int = bounded(0, Limit(0, 2 ** 31 - 1))  # last N train examples become split "val", but at most
    val_max_share: float = bounded(0.2, Limit(0, 1, lo_open=True))  # this share of train: a small run (data.max_examples) trains
    normalize: Literal["unit", "symmetric", "raw"] = "unit"         # [0,1] | [-1,1] | 0..255
    jitter: bool = False                                            # pix2pix random jitter on the train split
    jitter_resize: int | None = bounded(None, Limit(8, 8192))  # None: image_size * 286 / 256, the tutorial's ratio
    jitter_copies: int = bounded(1, Limit(1, 256))                  # K variants; epoch e trains on copy e mod K
    max_image_pixels: int = bounded(DEFAULT_MAX_IMAGE_PIXELS, Limit(1, 2 ** 32))  # an encoded image's header is checked before decoding

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
    labels: float = bounded(0.1, UNIT)  # the largest change of one class's share
    pixels: float = bounded(0.1, UNIT)  # pixel-intensity histogram
    sizes: float = bounded(0.1, UNIT)   # image-size (HxW) histogram


@dataclass(frozen=True)
class ValidateConfig:
    duplicates: Literal["error", "warn"] = "error"  # the same image in two splits leaks the test set
    # compared per run with the champion's span (components/drift.py), never fingerprinted
    drift_threshold: DriftThresholds = DriftThresholds()
    block_on_drift: bool = False  # true: a drifted feature stops the run before training


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(1, Limit(1, 10 ** 6))
    max_steps: int | None = bounded(None, STEPS)                  # stop earlier than epochs * steps-per-epoch
    batch_size: int = bounded(32, Limit(1, 2 ** 20))
    shuffle_buffer: int = bounded(1024, Limit(1, 2 ** 26))
    checkpoint_every: int = bounded(1000, STEPS)                  # steps; a crash loses at most this much work
    checkpoint_every_epochs: int = bounded(0, Limit(0, 10 ** 6))  # the seeds' epoch schedule (dcgan 5, pix2pix 20); 0 = off
    keep_checkpoints: int = bounded(2, Limit(1, 1000))
    sample_every: int = bounded(0, Limit(0, 2 ** 62))  # steps between fixed-seed sample snapshots; 0 = epoch ends only
    summary_every: int = bounded(100, STEPS)                      # steps between tf.summary scalars
    log_every: int = bounded(200, STEPS)                          # steps between plain log lines (no terminal)
    steps_per_call: int = bounded(50, Limit(1, 10 ** 6))  # steps inside one tf.function call (fewer host syncs)
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    workers: int = bounded(1, Limit(1, 1024))  # multi_worker: worker processes (TF_CONFIG must list as many)
    mixed_precision: bool = False
    xla: bool = False
    deterministic: bool = True                                    # tf op determinism: bit-exact resume

    def check(self) -> None:
        for key in ("epochs", "batch_size", "shuffle_buffer", "checkpoint_every", "steps_per_call",
                    "summary_every", "log_every", "keep_checkpoints", "workers"):
            value = getattr(self, key)
            require(value > 0, f"train.{key}", value, "use a positive integer")
        require(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps,
                "use a positive step count or none")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = bounded(10000, Limit(1, 10 ** 8))  # generated samples for Fréchet distance / classifier score
    tolerance: float = bounded(0.0, Limit(-1e9, 1e9))     # how much worse than the champion still blesses
    batch_size: int = bounded(500, Limit(1, 2 ** 20))


@dataclass(frozen=True)
class RenderConfig:
    gif_frame_seconds: float = bounded(0.1, Limit(0, 3600, lo_open=True))
    max_triptychs: int = bounded(4, Limit(1, 1000))


@dataclass(frozen=True)
class PromoteConfig:
    keep_versions: int = bounded(4, Limit(0, 10 ** 6))  # pushed SavedModels kept besides the newest (serving/PIPELINE/N)


@dataclass(frozen=True)
class BeamConfig:
    # direct | dask | portable | a Beam runner name (FlinkRunner, ...); never part of a fingerprint
    runner: str = bounded("direct", NAME)
    options: str = bounded("", ANY)  # extra Beam flags, e.g. "--direct_running_mode=multi_processing"
    shards: int = bounded(0, Limit(0, 10 ** 5))  # TFRecord shards per split (the unit of parallel work); 0 = by size
    dask_address: str = bounded("", ANY)  # dask: a `dask scheduler` (tcp://HOST:8786); empty = local cluster
    partitions: int = bounded(0, Limit(0, 10 ** 5))  # dask: bag partitions; 0 = one per shard
    job_endpoint: str = bounded("", ANY)             # portable: a Beam job service, HOST:PORT
    worker_pool: str = bounded("", ANY)  # portable: an SDK worker pool HOST:PORT (EXTERNAL); empty = LOOPBACK

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
    retries: int = bounded(0, Limit(0, 1000))  # Prefect flow-level retries; each retry resumes
    retry_delay_seconds: int = bounded(10, Limit(0, 7 * 24 * 3600))


@dataclass(frozen=True)
class BaseConfig:
    """The sections every pipeline has, at the seed tutorial's defaults. A recipe's Config
    subclasses it and states only its model section and the values that differ (flax's
    configs/default.py); dataclass fields keep their order, so every Config lists its keys alike."""
    seed: int = bounded(0, Limit(0, 2 ** 32 - 1))
    data: DataConfig = DataConfig()
    validate: ValidateConfig = ValidateConfig()
    train: TrainConfig = TrainConfig()
    model: Any = None  # the recipe's own section (a frozen dataclass)
    eval: EvalConfig = EvalConfig()
    render: RenderConfig = RenderConfig()
    promote: PromoteConfig = PromoteConfig()
    beam: BeamConfig = BeamConfig()
    flow: FlowConfig = FlowConfig()
