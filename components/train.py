"""train (Trainer): the one scratch-loop engine that runs every recipe's train step."""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from artifacts import failpoints, gfile
from artifacts.errors import UserError
from components import checkpoints, distribute, interrupt, records
from components.contract import Spec, StageParams, from_recipe, key

# uses_recipe: the recipe's networks and step
SPEC = Spec(output="Model", inputs={"transformed": "preprocess"}, uses_recipe=True)


@dataclass(frozen=True)
class Params(StageParams):
    """Everything that decides the trained weights; train.log_every is in the Runtime."""
    seed: int = key("seed")
    model: Any = key("model")                       # the recipe's own section, handed to build()
    train_splits: tuple[str, ...] = key("data.train_splits")
    eval_split: str = key("data.eval_split")        # the fixed inputs of pix2pix snapshots
    layout: Any = from_recipe("layout")             # the training stream and those fixed inputs
    epochs: int = key("train.epochs")
    max_steps: int | None = key("train.max_steps")
    batch_size: int = key("train.batch_size")
    shuffle_buffer: int = key("train.shuffle_buffer")
    checkpoint_every: int = key("train.checkpoint_every")
    checkpoint_every_epochs: int = key("train.checkpoint_every_epochs")
    keep_checkpoints: int = key("train.keep_checkpoints")
    sample_every: int = key("train.sample_every")
    summary_every: int = key("train.summary_every")
    steps_per_call: int = key("train.steps_per_call")
    strategy: str = key("train.strategy")
    workers: int = key("train.workers")             # multi_worker: the global batch is split over them
    mixed_precision: bool = key("train.mixed_precision")
    xla: bool = key("train.xla")
    deterministic: bool = key("train.deterministic")


class TrainingDiverged(UserError):
    pass


def prepare_devices(cfg) -> None:
    """Call before TensorFlow runs anything in the process: with train.strategy=mirrored and no
    GPUs, split the CPU into two logical devices so MirroredStrategy has two replicas (the same
    code path as on GPUs). Once TensorFlow has started its device layout is fixed."""
    import tensorflow as tf

    if cfg.train.strategy != "mirrored" or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        if len(tf.config.get_logical_device_configuration(cpu) or []) < 2:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:
        pass  # already started; _strategy reports what it got


def _strategy(name: str, workers: int = 1):
    import tensorflow as tf

    if name == "multi_worker":
        return distribute.strategy(workers)
    if name != "mirrored":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(cpus) < 2:
        print("train: MirroredStrategy has one CPU replica (TensorFlow started before "
              "prepare_devices could split the CPU)", flush=True)
    return tf.distribute.MirroredStrategy(cpus)


def _devices(model) -> set[str]:
    """Where a model's weights live (one per replica under MirroredStrategy)."""
    out = set()
    for w in model.weights[:1]:
        v = getattr(w, "value", w)
        for c in getattr(v, "values", [v]):  # a MirroredVariable holds one component per device
            out.add(c.device.rsplit("/", 1)[-1])
    return out


@contextlib.contextmanager
def own_keras_seeds(seed: int):
    """While networks are built, Keras draws the seeds of unseeded initializers and Dropout layers
    from a generator of its own instead of Python's global `random`. Other threads draw from that
    one too (Prefect's services jitter their sleeps with it), so under load a run started from
    other initial weights than the same run a moment earlier: not resumable, not reproducible."""
    import random

    from keras.src.random import seed_generator  # Keras 3's make_default_seed draws from its python_random

    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def _seed_states(networks) -> list:
    """Keras 3 layers with randomness (Dropout) keep a SeedGenerator whose state must be saved."""
    out = []
    for net in networks.values():
        for layer in net._flatten_layers(include_self=False):
            sg = getattr(layer, "seed_generator", None)
            if sg is not None:
                out.append(sg.state)
    return out


def _stream(art, transform, p: Params, setup):
    """The layout's epoch stream over the train splits: epoch e reads jitter copy e mod K."""
    layout = p.layout
    n_copies = min(transform["copies"][s] for s in p.train_splits)
    copies = [[f for s in p.train_splits for f in records.split_files(art, s, k)] for k in range(n_copies)]
    return layout.stream(copies, p.batch_size, p.shuffle_buffer, p.seed,
                         records.parse_fn(transform, layout.features, batched=True), setup.batch)


def _epoch_of(stream, steps_per_epoch: int):
    """For checkpoints.restore: before restoring a checkpoint of step s, a fresh iterator of the
    epoch s is in (the checkpoint holds that one; fresh, even where a failed restore of the same
    epoch touched the current one); None: no iterator, as before any restore."""
    def prepare(step: int | None) -> None:
        stream.epoch = -1
        if hasattr(stream, "iterator"):
            del stream.iterator
        if step is not None:
            stream.start(step // steps_per_epoch)
    return prepare


def _fixed_inputs(art, transform, p: Params, n):
    """The layout's fixed snapshot inputs from the first n eval-split examples (None: the
    recipe's snapshots come from fixed noise)."""
    examples = list(records.dataset(art, p.eval_split, p.layout.features).take(n).as_numpy_iterator())
    return p.layout.fixed_inputs(examples)


class _Progress:
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


def run(out, inputs, p: Params, rt) -> None:
    import keras
    import tensorflow as tf

    from components.recipe import DataInfo

    t = p
    art = inputs["transformed"]
    transform = records.load_transform(art)
    work = out.work_dir
    gfile.makedirs(work)
    identity = {"fingerprint": work.rstrip("/").rsplit("/", 1)[-1], "params": p.as_dict(),
                "data": art.fingerprint}
    cfg_path = gfile.join(work, "config.json")
    chief = distribute.is_chief()  # other workers read the chief's checkpoints, write elsewhere
    if chief and gfile.exists(cfg_path) and gfile.read_json(cfg_path) != json.loads(json.dumps(identity)):
        raise UserError("checkpoint was written by another training config or data", work,
                        "delete the work directory or rerun with the original --set values")
    if chief:
        gfile.write_json(cfg_path, identity)

    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(p.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if t.mixed_precision else "float32")
    strategy = _strategy(t.strategy, t.workers)
    n_train = sum(transform["splits"][s] for s in p.train_splits)
    if n_train == 0:
        raise UserError("no training examples", art.uri, "check data.train_splits")
    steps_per_epoch = math.ceil(n_train / t.batch_size)
    total = t.epochs * steps_per_epoch
    if t.max_steps:
        total = min(total, t.max_steps)
    val = "val" if "val" in transform["splits"] and "val" not in p.train_splits else None
    info = DataInfo(tuple(transform["image_shape"]), max(transform["num_classes"], 1), n_train,
                    _fixed_inputs(art, transform, p, getattr(p.model, "num_fixed_samples", 4)), val)
    try:
        with strategy.scope():
            with own_keras_seeds(p.seed):
                setup = rt.recipe.build(p, info)
            for name, opt in setup.optimizers.items():
                opt.build(setup.networks[name].trainable_variables)
            step_var = tf.Variable(0, dtype=tf.int64, name="step")
        # plain tf.data iterators of global batches, split per replica inside the step, so the
        # checkpoint holds them under any strategy (a DistributedIterator is not trackable)
        stream = _stream(art, transform, p, setup)
        ckpt = tf.train.Checkpoint(step=step_var, data=stream, seed_states=_seed_states(setup.networks),
                                   **{f"net_{k}": v for k, v in setup.networks.items()},
                                   **{f"opt_{k}": v for k, v in setup.optimizers.items()},
                                   **{f"rng_{k}": v for k, v in setup.rngs.items()})
        scratch = distribute.scratch_dir(work)
        manager = checkpoints.manager(ckpt, gfile.join(scratch, "checkpoints"), t.keep_checkpoints)
        # every worker restores the chief's checkpoints (the only ones ever read back)
        history, epoch_log = checkpoints.restore(ckpt, gfile.join(work, "checkpoints"), step_var, work,
                                                 setup.metrics, prepare=_epoch_of(stream, steps_per_epoch))
        seconds = _loop(tf, strategy, setup, stream, step_var, manager, history, epoch_log, p, rt, art,
                        scratch, total, steps_per_epoch, rt.pipeline)
        _export(out, setup, history, epoch_log, scratch, total, steps_per_epoch, seconds)
        out.metadata.update(replicas=strategy.num_replicas_in_sync,
                            devices=sorted({d for v in setup.networks.values() for d in _devices(v)}),
                            precision=keras.mixed_precision.global_policy().name, xla=t.xla)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _per_replica(tf, strategy, batch):
    """A global batch as per-replica values: replica i gets the i-th contiguous slice."""
    r = strategy.num_replicas_in_sync
    if r == 1:
        return batch

    def part(ctx):
        i = ctx.replica_id_in_sync_group

        def cut(x):
            n = tf.shape(x)[0]
            return x[i * n // r:(i + 1) * n // r]
        return tf.nest.map_structure(cut, batch)
    return strategy.experimental_distribute_values_from_function(part)


def _loop(tf, strategy, setup, stream, step_var, manager, history, epoch_log, p: Params, rt, art,
          work, total, steps_per_epoch, name) -> float:
    """Train to `total` steps; returns the seconds this session's loop took."""
    t = p
    names = setup.metrics
    step_fn = tf.function(setup.step, jit_compile=True) if t.xla else setup.step

    @tf.function
    def one_step(it, asked=None):
        m = strategy.run(step_fn, args=(_per_replica(tf, strategy, next(it)),))
        step_var.assign_add(1)
        out = tuple(tf.cast(strategy.reduce("MEAN", m[k], axis=None), tf.float32) for k in names)
        if asked is None:
            return out
        # how many workers were asked to stop (by SIGINT, by SIGTERM) before this step: one
        # all-reduce of two numbers, so every worker sees the same answer after the same step
        return out + (strategy.reduce("SUM", strategy.run(tf.identity, args=(asked,)), axis=None),)

    stopping = interrupt.requested  # one process: its own signal is the stop
    if t.strategy == "multi_worker":  # several: a stop is agreed, or the others hang in a collective
        stopping, one_step = _agreed_stop(tf, one_step)

    def run_steps(it, n: int) -> dict:
        """Up to n one-step graphs dispatched back to back; the host reads the metrics once per
        call. A stop request ends the call at the next step boundary (after at least one step)."""
        outs = [one_step(it)]
        while len(outs) < n and not stopping():
            outs.append(one_step(it))
        return {k: tf.stack([o[i] for o in outs]) for i, k in enumerate(names)}

    sample_fn = tf.function(setup.sample) if setup.sample else None
    val_fn = tf.function(setup.val_step) if setup.val_step else None  # traced once, not per epoch
    writer = tf.summary.create_file_writer(gfile.join(work, "logs"))
    samples_dir = gfile.join(work, "samples")
    gfile.makedirs(samples_dir)
    ck_epochs = t.checkpoint_every_epochs * steps_per_epoch
    step = int(step_var.numpy())
    progress = _Progress(total, step, rt)
    started = time.time()

    def due(s: int, every: int) -> bool:
        return every > 0 and s % every == 0

    saved_at = step if step else None  # the step of the newest checkpoint (a resumed one's)
    try:
        with interrupt.deferred():  # a signal is acted on at the next step boundary
            while step < total:
                stop = stopping()
                if stop and saved_at == step:  # nothing trained since the last checkpoint: stop here
                    raise interrupt.Interrupted(stop, f"{name}/train", step, total, saved=True)
                marks = [total, (step // steps_per_epoch + 1) * steps_per_epoch]
                for every in (t.checkpoint_every, ck_epochs, t.sample_every, t.summary_every):
                    if every > 0:
                        marks.append((step // every + 1) * every)
                n = min(min(marks) - step, t.steps_per_call)
                stream.start(step // steps_per_epoch)  # marks keep a call inside one epoch
                values = {k: v.numpy() for k, v in run_steps(stream.iterator, n).items()}
                n = len(values[names[0]])  # fewer than asked when a stop was requested
                stop = stopping()
                bad = [(i, k) for k in names for i in np.flatnonzero(~np.isfinite(values[k]))]
                if bad:
                    i, k = min(bad)
                    last = manager.latest_checkpoint
                    raise TrainingDiverged(f"training diverged: {k} is {values[k][i]} at step {step + i + 1}",
                                           work, f"the last good checkpoint ({last or 'none'}) is kept; "
                                           "lower the learning rate and rerun")
                for k in names:
                    history[k].extend(values[k].tolist())
                step += n
                epoch = (step - 1) // steps_per_epoch + 1
                last = {k: float(values[k][-1]) for k in names}
                if due(step, t.summary_every) or step == total:
                    with writer.as_default(step=step):
                        for k, v in last.items():
                            tf.summary.scalar(k, v)
                epoch_end = step % steps_per_epoch == 0 or step == total
                if epoch_end and val_fn is not None:
                    last.update(_validate(val_fn, setup, art))
                if epoch_end:
                    first = (epoch - 1) * steps_per_epoch
                    rec = {"epoch": epoch, "step": step, **{k: float(np.mean(history[k][first:step])) for k in names}}
                    rec.update({k: v for k, v in last.items() if k.startswith("val_")})
                    epoch_log.append(rec)
                    failpoints.hit(f"train.{name}.epoch_end")
                    with writer.as_default(step=step):
                        for k, v in rec.items():
                            if k not in ("epoch", "step"):
                                tf.summary.scalar(f"epoch/{k}", v)
                if sample_fn and (due(step, t.sample_every) or epoch_end):
                    arr = sample_fn().numpy()
                    gfile.write_bytes(gfile.join(samples_dir, f"{step:08d}.npy"), _npy(arr))
                    failpoints.hit(f"train.{name}.samples")
                if due(step, t.checkpoint_every) or due(step, ck_epochs) or step == total or stop:
                    _save_history(gfile.join(work, f"history-{step}.npz"), history, epoch_log)
                    failpoints.hit(f"train.{name}.checkpoint.begin")
                    stream.start(step // steps_per_epoch)  # at an epoch end: save the next epoch's iterator
                    manager.save(checkpoint_number=step)
                    saved_at = step
                    failpoints.hit(f"train.{name}.checkpoint.saved")
                    gfile.write_json(_progress_path(work), {"step": step, "total": total, "epoch": epoch})
                    _prune_histories(work, manager)
                    failpoints.hit(f"train.{name}.checkpoint.done")
                progress.update(step, epoch, last)
                if stop and step < total:  # at the total, train finishes and commits first
                    raise interrupt.Interrupted(stop, f"{name}/train", step, total, saved=True)
                failpoints.hit(f"train.{name}.step")
    finally:
        progress.close()
        writer.flush()
    return time.time() - started


def _agreed_stop(tf, one_step):
    """Multi-worker training: every worker stops at the same step, whichever got the signal.

    What tf.distribute.experimental.PreemptionCheckpointHandler does for MultiWorkerMirroredStrategy
    (docs/scaling-out.md says why it is not used): each step carries this worker's stop request
    into one all-reduce, and a stop is acted on only once the sum says some worker asked. The sum
    is the same on every worker after the same step, so all save that step and stop. Returns
    (stopping, one_step): the agreed signal after the last step (or None), and the step function
    that feeds it."""
    import signal

    agreed: list = [None]

    def step(it):
        s = interrupt.requested()
        *out, asked = one_step(it, tf.constant([s == signal.SIGINT, s == signal.SIGTERM], tf.float32))
        sigint, sigterm = asked.numpy()
        if sigint or sigterm:  # this worker's own signal, else the one another worker got
            agreed[0] = s or (signal.SIGTERM if sigterm else signal.SIGINT)
        return tuple(out)

    return (lambda: agreed[0]), step


def _validate(val_fn, setup, art) -> dict:
    ds = records.dataset(art, setup.val_split, ("image",)).batch(1000).map(setup.batch)
    totals: dict[str, float] = {}
    for b in ds:
        for k, v in val_fn(b).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {"val_accuracy": totals["val_correct"] / max(totals["val_count"], 1)}


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _save_history(path, history, epoch_log):
    buf = io.BytesIO()
    np.savez(buf, epochs=json.dumps(epoch_log), **{k: np.asarray(v, np.float32) for k, v in history.items()})
    gfile.write_bytes(path, buf.getvalue())


def _prune_histories(work, manager):
    keep = {f"history-{p.rsplit('-', 1)[-1]}.npz" for p in manager.checkpoints}
    for path in gfile.glob(gfile.join(work, "history-*.npz")):
        if path.rsplit("/", 1)[-1] not in keep:
            gfile.remove(path)


def _export(out, setup, history, epoch_log, work, total, steps_per_epoch, seconds):
    import tempfile

    gfile.makedirs(out.file("models"))
    for name, model in setup.export.items():
        # .keras files are zip archives written through a local path
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{name}.keras"
            model.save(local)
            gfile.copy(local, out.file("models", f"{name}.keras"))
    _save_history(out.file("history.npz"), history, epoch_log)
    gfile.write_json(out.file("epochs.json"), epoch_log)
    for sub in ("samples", "logs"):
        for rel in gfile.walk_files(gfile.join(work, sub)) if gfile.isdir(gfile.join(work, sub)) else []:
            dst = out.file(sub, rel)
            gfile.makedirs(dst.rsplit("/", 1)[0])
            gfile.copy(gfile.join(work, sub, rel), dst)
    out.metadata.update(steps=total, epochs=math.ceil(total / steps_per_epoch),
                        final={k: float(v[-1]) for k, v in history.items() if v},
                        last_session_seconds=round(seconds, 2))


# -- readers: what the other modules read of a Model artifact and of train's work directory ----
def model_files(artifact) -> dict[str, str]:
    """{network name: path of its .keras file}, the networks the recipe exports."""
    paths = gfile.glob(artifact.path("models", "*.keras"))
    return {p.rsplit("/", 1)[-1][: -len(".keras")]: p for p in paths}


def samples(artifact) -> dict[int, str]:
    """{step: path of the .npy of the fixed inputs' outputs at that step}, oldest first."""
    paths = {int(p.rsplit("/", 1)[-1][: -len(".npy")]): p for p in gfile.glob(artifact.path("samples", "*.npy"))}
    return dict(sorted(paths.items()))


def history(artifact) -> tuple[dict, list]:
    """({metric: per-step values}, the epoch log): plain arrays and JSON, never a pickle."""
    with np.load(io.BytesIO(gfile.read_bytes(artifact.path("history.npz"))), allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "epochs"}, json.loads(str(data["epochs"]))


def _progress_path(work: str) -> str:
    return gfile.join(work, "progress.json")


def progress(work: str) -> dict | None:
    """{"step", "total", "epoch"} of the last checkpoint in a work directory, None before one:
    where an interrupted train resumes."""
    path = _progress_path(work)
    return gfile.read_json(path) if gfile.exists(path) else None
