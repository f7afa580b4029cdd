"""Issue 4: steps per second of tapeline's train stage against each seed tutorial's own loop.

Ours: the train stage reading the preprocessed TFRecords, with checkpoints, summaries and sample
snapshots at the pipeline's default intervals. The seed's: its loop on in-memory arrays of the
same data, same networks and batch (benchmarks/seeds.py). Compared loop against loop, each from
its first step (tracing included) to its last; the whole stage (model build, export of the
.keras files, history, commit with hashes) is printed beside it. Both run in this process, one
after the other. For the DCGAN also the share of this CPU's measured fp32 peak
(a large matmul) that one step reaches.

Usage: train_throughput.py [SYSTEM ...] [--scale X]   (X multiplies the step counts)."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import seeds
from common import FASHION, SHARED, report, run_stages, scratch_root

SYSTEMS = {  # pipeline: (data source, steps, extra --set for the data stages)
    "mnist-classifier": (f"idx:{SHARED}/mnist", 3000, []),
    "mnist-gan": (f"idx:{SHARED}/mnist", 300, []),
    "fashion-dcgan": (f"idx:{FASHION}", 150, []),
    "pix2pix": (f"paired:{SHARED}/pix2pix-people", 60, ["data.jitter_copies=1"]),
}


def ours(root: str, pipeline: str, sets: list[str], steps: int):
    """The data stages, then the train stage timed alone: (seconds, {stage: artifact})."""
    built = run_stages(root, pipeline, sets + [f"train.max_steps={steps}"],
                       ("ingest", "validate", "preprocess", "train"))
    return built["train"][0], {stage: art for stage, (_, art) in built.items()}


def seed_loop(pipeline: str, done: dict, steps: int):
    from components import tfrecords
    from components.layouts import IMAGE

    pre = done["preprocess"]
    if pipeline == "mnist-classifier":
        tr, va = tfrecords.arrays(pre, "train", IMAGE.features), tfrecords.arrays(pre, "val", IMAGE.features)
        return seeds.classifier(tr["image"].reshape(len(tr["image"]), -1), tr["label"],
                                va["image"].reshape(len(va["image"]), -1), va["label"], steps=steps)
    if pipeline == "mnist-gan":
        x = np.concatenate([tfrecords.arrays(pre, s, IMAGE.features)["image"] for s in ("train", "test")])
        return seeds.mnist_gan(x, steps)
    if pipeline == "fashion-dcgan":
        return seeds.fashion_dcgan(tfrecords.arrays(pre, "train", IMAGE.features)["image"], steps)
    tr, va = tfrecords.arrays(pre, "train", IMAGE.features), tfrecords.arrays(pre, "val", IMAGE.features)
    return seeds.pix2pix(tr["input"], tr["image"], va["input"][:1], va["image"][:1], steps)


def matmul_peak(n: int = 4096, reps: int = 5) -> float:
    """Measured fp32 FLOP/s of this machine: the best of a few large matmuls."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    (a @ b).numpy()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        (a @ b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def forward_flops(model) -> float:
    """Multiply-adds x 2 of one example's forward pass through Dense / Conv2D / Conv2DTranspose."""
    from keras import layers

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
        elif isinstance(layer, layers.Conv2DTranspose):
            _, h, w, c = layer.input.shape
            total += 2 * h * w * np.prod(layer.kernel_size) * c * layer.filters
        elif isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * np.prod(layer.kernel_size) * layer.input.shape[-1] * layer.filters
    return total


def dcgan_step_flops(batch: int = 256) -> float:
    """G forward + backward (3 G), D forward + backward on real and on fake (3 D each), and the
    generator's gradient flowing back through D (1 D): an estimate of one step's FLOPs."""
    from components.recipe import DataInfo
    from pipelines import fashion_dcgan as rec

    g, d = rec.build_networks(rec.Config(), DataInfo((28, 28, 1), 10, 60000))
    return batch * (3 * forward_flops(g) + 7 * forward_flops(d))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("systems", nargs="*", default=list(SYSTEMS))
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args(argv)
    import tensorflow as tf  # noqa: F401

    summary = []
    for pipeline in args.systems:
        source, steps, extra = SYSTEMS[pipeline]
        steps = max(2, int(steps * args.scale))
        root = scratch_root(pipeline)
        ours_s, done = ours(root, pipeline, [f"data.source={source}"] + extra, steps)
        n, seed_s, _ = seed_loop(pipeline, done, steps)
        loop_s = done["train"].manifest["metadata"]["last_session_seconds"]
        ratio = (steps / loop_s) / (n / seed_s)
        rows = [(f"tapeline train loop, {steps} steps", steps / loop_s, "steps/s"),
                (f"seed tutorial loop, {n} steps (in-memory data)", n / seed_s, "steps/s"),
                ("ratio (tapeline / seed), target >= 1.0", ratio, "x"),
                ("tapeline whole train stage (build, loop, export, commit)", steps / ours_s, "steps/s")]
        if pipeline == "fashion-dcgan":
            peak, flops = matmul_peak(), dcgan_step_flops()
            rows += [("measured fp32 peak (4096^2 matmul)", peak / 1e9, "GFLOP/s"),
                     ("DCGAN step, estimated", flops / 1e9, "GFLOP"),
                     ("DCGAN training loop (ours, excluding set-up)", flops * steps / loop_s / 1e9, "GFLOP/s"),
                     ("share of fp32 peak", flops * steps / loop_s / peak, "")]
        report(f"{pipeline} (batch as the seed; {os.cpu_count()} CPUs)", rows)
        summary.append((pipeline, ratio))
    print("\nratios: " + ", ".join(f"{p} {r:.2f}x" for p, r in summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
