"""train (Trainer): the one scratch-loop engine that runs every recipe's train step."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from artifacts import failpoints, gfile
from artifacts.errors import UserError
from components import checkpoints, distribute, interrupt, tfrecords
from components.contract import Spec, Stage, StageParams, from_recipe, key
from components.schedule import Schedule
from components.train_log import PROGRESS, Progress, Recorder

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

    from keras.src.random import (
        seed_generator,  # Keras 3's make_default_seed draws from its python_random
    )

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
    copies = [[f for s in p.train_splits for f in tfrecords.split_files(art, s, k)] for k in range(n_copies)]
    return layout.stream(copies, p.batch_size, p.shuffle_buffer, p.seed,
                         tfrecords.parse_fn(transform, layout.features, batched=True), setup.batch)


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
    examples = list(tfrecords.dataset(art, p.eval_split, p.layout.features).take(n).as_numpy_iterator())
    return p.layout.fixed_inputs(examples)


def run(out, inputs, p: Params, rt) -> None:
    """Build the recipe's networks, resume from the newest checkpoint, train to the total, export."""
    import keras
    import tensorflow as tf

    from components.step_runner import StepRunner

    art = inputs["transformed"]
    transform = tfrecords.load_transform(art)
    work = out.work_dir
    _claim(work, p, art)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(p.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if p.mixed_precision else "float32")
    strategy = _strategy(p.strategy, p.workers)
    cpu_replicas = p.strategy == "mirrored" and not tf.config.list_logical_devices("GPU")
    if p.xla and cpu_replicas and strategy.num_replicas_in_sync > 1:
        # XLA compiles the step for one CPU device; the replicas' variables live on two (a
        # "tfvariable_on_a_different_device" error at the first step, in any recipe)
        raise UserError("train.xla=true with train.strategy=mirrored on the CPU's two logical devices",
                        "--set", "use one of the two on a machine without GPUs (XLA compiles for one CPU device)")
    info = _data_info(art, transform, p)
    schedule = Schedule.of(p, info.train_examples)
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
        manager = checkpoints.manager(ckpt, gfile.join(scratch, "checkpoints"), p.keep_checkpoints)
        # every worker restores the chief's checkpoints (the only ones ever read back)
        history, epoch_log = checkpoints.restore(ckpt, gfile.join(work, "checkpoints"), step_var, work, setup.metrics,
                                                 prepare=_epoch_of(stream, schedule.steps_per_epoch))
        runner = StepRunner(setup, strategy, step_var, p.xla, multi_worker=p.strategy == "multi_worker")
        rec = Recorder(scratch, rt.pipeline, schedule, manager, history, epoch_log, setup.sample,
                       saved=out.saved if scratch == work else None)
        seconds = _loop(runner, schedule, rec, stream, _validator(setup, art, p.layout.features), rt)
        # the keys this stage read (its Params: model.*, train.*, seed); trial: the version's suffix
        rec.hparams(schedule.total, {k: v for k, v in p.as_dict().items() if not k.startswith("recipe.")},
                    trial=work.rstrip("/").rsplit("/", 1)[-1][:12])
        _export(out, setup, history, epoch_log, scratch, schedule.total, schedule.steps_per_epoch, seconds)
        out.metadata.update(replicas=strategy.num_replicas_in_sync,
                            devices=sorted({d for v in setup.networks.values() for d in _devices(v)}),
                            precision=keras.mixed_precision.global_policy().name, xla=p.xla)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _claim(work: str, p: Params, art) -> None:
    """Checkpoints in work resume only the same params on the same data: its config.json says
    which (written by the chief; other workers read the chief's checkpoints, write elsewhere)."""
    gfile.makedirs(work)
    identity = {"fingerprint": work.rstrip("/").rsplit("/", 1)[-1], "params": p.as_dict(),
                "data": art.fingerprint}
    cfg_path = gfile.join(work, "config.json")
    if not distribute.is_chief():
        return
    if gfile.exists(cfg_path) and gfile.read_json(cfg_path) != json.loads(json.dumps(identity)):
        raise UserError("checkpoint was written by another training config or data", work,
                        "delete the work directory or rerun with the original --set values")
    gfile.write_json(cfg_path, identity)


def _data_info(art, transform, p: Params):
    """What the recipe is told about its data; there must be something to train on."""
    from components.recipe import DataInfo

    n_train = sum(transform["splits"][s] for s in p.train_splits)
    if n_train == 0:
        raise UserError("no training examples", art.uri, "check data.train_splits")
    val = "val" if "val" in transform["splits"] and "val" not in p.train_splits else None
    return DataInfo(tuple(transform["image_shape"]), max(transform["num_classes"], 1), n_train,
                    _fixed_inputs(art, transform, p, getattr(p.model, "num_fixed_samples", 4)), val)


def _loop(runner, schedule, rec, stream, validate, rt) -> float:
    """Train to schedule.total steps; returns the seconds this session's loop took."""
    total, name = schedule.total, rt.pipeline
    step = runner.step
    progress = Progress(total, step, rt)
    started = time.time()
    saved_at = step if step else None  # the step of the newest checkpoint (a resumed one's)
    try:
        with interrupt.deferred():  # a signal is acted on at the next step boundary
            while step < total:
                stop = runner.stopping()
                if stop and saved_at == step:  # nothing trained since the last checkpoint: stop here
                    raise interrupt.Interrupted(stop, f"{name}/train", step, total, saved=True)
                stream.start(schedule.epoch_index(step))  # a call never crosses an epoch end
                values = runner.run(stream.iterator, schedule.call_size(step))
                stop = runner.stopping()  # fewer steps than asked ran when a stop was requested
                last = rec.steps(step, values)
                step += len(values[runner.names[0]])
                if schedule.summary_due(step):
                    rec.summaries(step, last)
                if schedule.epoch_end(step):
                    last.update(validate())
                    rec.epoch_end(step, last)
                if schedule.sample_due(step):
                    rec.samples(step)
                if schedule.checkpoint_due(step) or stop:
                    rec.checkpoint(step, stream)
                    saved_at = step
                progress.update(step, schedule.epoch(step), last)
                if stop and step < total:  # at the total, train finishes and commits first
                    raise interrupt.Interrupted(stop, f"{name}/train", step, total, saved=True)
                failpoints.hit(f"train.{name}.step")
    finally:
        progress.close()
        rec.close()
    return time.time() - started


def _validator(setup, art, features: tuple[str, ...]):
    """The epoch-end validation: the recipe's val_step summed over its split, finished into
    metrics by its val_metrics; {} for a recipe without one."""
    import tensorflow as tf

    if setup.val_step is None:
        return lambda: {}
    val_fn = tf.function(setup.val_step)  # traced once, not per epoch

    def validate() -> dict:
        totals: dict[str, float] = {}
        for b in tfrecords.dataset(art, setup.val_split, features).batch(1000).map(setup.batch):
            for k, v in val_fn(b).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return setup.val_metrics(totals)
    return validate


def _export(out, setup, history, epoch_log, work, total, steps_per_epoch, seconds):
    import tempfile

    gfile.makedirs(out.file("models"))
    for name, model in setup.export.items():
        # .keras files are zip archives written through a local path
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/{name}.keras"
            model.save(local)
            gfile.copy(local, out.file("models", f"{name}.keras"))
    checkpoints.save_history(out.file("history.npz"), history, epoch_log)
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
    return checkpoints.read_history(artifact.path("history.npz"))


def _progress_path(work: str) -> str:
    return gfile.join(work, PROGRESS)


def progress(work: str) -> dict | None:
    """{"step", "total", "epoch"} of the last checkpoint in a work directory, None before one:
    where an interrupted train resumes."""
    path = _progress_path(work)
    return gfile.read_json(path) if gfile.exists(path) else None


STAGE = Stage("train", SPEC, Params, run, progress=progress)
