"""What the train loop leaves behind as it goes: history, summaries, samples, epoch log, checkpoints."""
from __future__ import annotations

import io
import sys
import time

import numpy as np

from artifacts import failpoints, gfile
from artifacts.errors import UserError
from components import checkpoints

PROGRESS = "progress.json"  # the newest checkpoint's step, total and epoch: where a resume starts


class TrainingDiverged(UserError):
    pass


class Recorder:
    """Every side effect of training, once for every recipe (the keras-io guide's outer loop).

    It writes only into the work directory: tf.summary logs, fixed-seed samples, checkpoints
    with the loss history they were saved with, and progress.json. The failpoints named
    train.<pipeline>.* mark the moments a crash test kills the process at."""

    def __init__(self, work: str, name: str, schedule, manager, history: dict, epoch_log: list, sample=None,
                 saved=None):
        import tensorflow as tf

        self.work, self.name, self.schedule, self.manager = work, name, schedule, manager
        self._saved = saved  # called after each checkpoint (an object-store root uploads it)
        self.history, self.epoch_log = history, epoch_log
        self._sample = tf.function(sample) if sample else None
        self._writer = tf.summary.create_file_writer(gfile.join(work, "logs"))
        self._samples_dir = gfile.join(work, "samples")
        gfile.makedirs(self._samples_dir)

    def steps(self, step: int, values: dict) -> dict:
        """Append one call's metrics (one value per step after `step`) to the history; returns
        the last step's. A value that is not finite stops training, keeping the last checkpoint."""
        bad = [(i, k) for k in values for i in np.flatnonzero(~np.isfinite(values[k]))]
        if bad:
            i, k = min(bad)
            last = self.manager.latest_checkpoint
            raise TrainingDiverged(f"training diverged: {k} is {values[k][i]} at step {step + i + 1}",
                                   self.work, f"the last good checkpoint ({last or 'none'}) is kept; "
                                   "lower the learning rate and rerun")
        for k, v in values.items():
            self.history[k].extend(v.tolist())
        return {k: float(v[-1]) for k, v in values.items()}

    def summaries(self, step: int, scalars: dict, prefix: str = "") -> None:
        import tensorflow as tf

        with self._writer.as_default(step=step):
            for k, v in scalars.items():
                tf.summary.scalar(prefix + k, v)

    def epoch_end(self, step: int, last: dict) -> None:
        """The epoch's mean of every metric, and its validation metrics, into the epoch log."""
        epoch = self.schedule.epoch(step)
        first = (epoch - 1) * self.schedule.steps_per_epoch
        rec = {"epoch": epoch, "step": step, **{k: float(np.mean(v[first:step])) for k, v in self.history.items()}}
        rec.update({k: v for k, v in last.items() if k.startswith("val_")})
        self.epoch_log.append(rec)
        failpoints.hit(f"train.{self.name}.epoch_end")
        self.summaries(step, {k: v for k, v in rec.items() if k not in ("epoch", "step")}, prefix="epoch/")

    def samples(self, step: int) -> None:
        if self._sample is None:
            return
        arr = self._sample().numpy()
        gfile.write_bytes(gfile.join(self._samples_dir, f"{step:08d}.npy"), _npy(arr))
        failpoints.hit(f"train.{self.name}.samples")

    def checkpoint(self, step: int, stream) -> None:
        """The checkpoint of `step`, its history first: a checkpoint is resumable only with it."""
        checkpoints.save_history(gfile.join(self.work, f"history-{step}.npz"), self.history, self.epoch_log)
        failpoints.hit(f"train.{self.name}.checkpoint.begin")
        stream.start(self.schedule.epoch_index(step))  # at an epoch end: save the next epoch's iterator
        self.manager.save(checkpoint_number=step)
        failpoints.hit(f"train.{self.name}.checkpoint.saved")
        gfile.write_json(gfile.join(self.work, PROGRESS),
                         {"step": step, "total": self.schedule.total, "epoch": self.schedule.epoch(step)})
        checkpoints.prune_histories(self.work, self.manager)
        if self._saved is not None:
            self._saved()
        failpoints.hit(f"train.{self.name}.checkpoint.done")

    def hparams(self, step: int, config: dict, trial: str) -> None:
        """TensorBoard HParams beside the scalars: the run's config keys and its final metrics
        (the last step's, and the last epoch's validation), so runs that differ in model.* line
        up in the HParams tab. Written once, when training has reached its total."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        last = self.epoch_log[-1] if self.epoch_log else {}
        final = {k: float(v[-1]) for k, v in self.history.items() if len(v)}
        final.update({k: float(v) for k, v in last.items() if k.startswith("val_")})
        with self._writer.as_default(step=step):
            hp.hparams({k: hparam_value(v) for k, v in config.items()}, trial_id=trial)
            for k, v in final.items():
                tf.summary.scalar(f"final/{k}", v)
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()


def hparam_value(v):
    """A config value as HParams takes it (bool, int, float or str): None and tuples as text."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


class Progress:
    """tqdm bar on a terminal; plain log lines every log_every steps otherwise; and the
    orchestrator's callback (rt.on_progress: the flow's Prefect progress artifact)."""

    def __init__(self, total: int, start: int, rt):
        self.total, self.every, self.t0, self.s0 = total, rt.log_every, time.time(), start
        self.rt = rt
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, epoch: int, last: dict):
        rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
        text = " ".join(f"{k}={v:.4g}" for k, v in last.items())
        due = step == self.total or step // self.every != (step - 1) // self.every or step - self.s0 < 2
        if due:
            self.rt.progress(step, self.total)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"epoch {epoch} {text}", refresh=True)
        elif due:
            print(f"train step {step}/{self.total} epoch {epoch} {rate:.1f} steps/s {text}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
