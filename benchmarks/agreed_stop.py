"""Issue 21: what the agreed stop (step_runner.agreed_stop) costs a multi-worker step.

Two MultiWorkerMirroredStrategy workers on loopback (RING, one CPU replica each, as `tapeline
train-workers` starts them) call a step function that does what the train stage's does around
the model: one replica step, a MEAN all-reduce of four metrics, the step counter. Variant
"plain" is that; "agreed" wraps it with step_runner.agreed_stop itself (the host builds the two-number
request, the step all-reduces it, the host reads the sum). Blocks of calls alternate between the
two so that the load of a shared machine hits both alike; the difference of the medians is the
cost per step. One-process runs do not pay it at all: they keep the plain step function.

Usage: agreed_stop.py [--calls N] [--blocks N]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import REPO, report


def worker(calls: int, blocks: int) -> dict:
    from components import distribute

    strategy = distribute.strategy(2)  # first, before any other op
    import tensorflow as tf

    from components.step_runner import agreed_stop

    step_var = tf.Variable(0, dtype=tf.int64)
    w = tf.Variable(tf.ones([64, 64]))
    it = iter(tf.data.Dataset.from_tensors(tf.ones([8, 64])).repeat())

    def replica_step(x):
        y = tf.matmul(x, w)
        return {k: tf.reduce_mean(y) * i for i, k in enumerate("abcd")}

    @tf.function
    def one_step(it, asked=None):  # the shape of StepRunner's one step
        m = strategy.run(replica_step, args=(next(it),))
        step_var.assign_add(1)
        out = tuple(tf.cast(strategy.reduce("MEAN", m[k], axis=None), tf.float32) for k in "abcd")
        if asked is None:
            return out
        return out + (strategy.reduce("SUM", strategy.run(tf.identity, args=(asked,)), axis=None),)

    stopping, agreed = agreed_stop(one_step)
    variants = {"plain": lambda: [v.numpy() for v in one_step(it)], "agreed": lambda: (agreed(it), stopping())}
    times: dict = {k: [] for k in variants}
    for f in variants.values():  # trace both
        f()
    for b in range(blocks):
        for name in (("plain", "agreed") if b % 2 == 0 else ("agreed", "plain")):
            t = time.perf_counter()
            for _ in range(calls):
                variants[name]()
            times[name].append((time.perf_counter() - t) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.calls, args.blocks)), flush=True)
        return 0
    from flows.workers import free_ports

    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores, shared machine: timings are noisy)")
    addrs = [f"localhost:{p}" for p in free_ports(2)]
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--calls", str(args.calls), "--blocks", str(args.blocks)],
        env={**os.environ, "PYTHONPATH": REPO, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}})},
        stdout=subprocess.PIPE, text=True) for i in range(2)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    plain, agreed = (max(r[k] for r in results) for k in ("plain", "agreed"))
    report(f"two-worker step, {args.blocks} alternating blocks of {args.calls} calls, median", [
        ("plain step (four metric all-reduces)", plain * 1e3, "ms"),
        ("with the agreed stop", agreed * 1e3, "ms"),
        ("cost of the agreed stop per step", (agreed - plain) * 1e3, "ms"),
    ])
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
