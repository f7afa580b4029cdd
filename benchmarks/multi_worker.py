"""Issue 14: the DCGAN's train loop on two MultiWorkerMirroredStrategy workers (loopback, one CPU
replica each, RING all-reduce) beside the same loop in one process, steps per second.

Both train the fashion-dcgan recipe at its default batch (256) on the same preprocessed data; the
one-worker run is the train stage in this process, the two-worker run is `tapeline train-workers`
(two processes). The loop time is the manifest's last_session_seconds (first step, tracing
included, to the last). On this 2-core machine each worker's TensorFlow shares the same two cores
with the other worker, so no speed-up is expected: what it shows is the cost of the boundary
(the all-reduce of every gradient over gRPC, and every worker reading the whole global batch).

Usage: multi_worker.py [--steps N] [--examples N]"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

from common import FASHION, REPO, report, run_stages, scratch_root


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--examples", type=int, default=6000)
    args = ap.parse_args(argv)
    sets = [f"data.source=idx:{FASHION}", f"data.max_examples={args.examples}", f"train.max_steps={args.steps}",
            "train.sample_every=0", "train.log_every=10"]
    root = scratch_root("multi-worker")
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores, shared machine: timings are noisy)")
    one = run_stages(root, "fashion-dcgan", sets, ("ingest", "validate", "preprocess", "train"))["train"]
    one_loop = one[1].manifest["metadata"]["last_session_seconds"]

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "train-workers", "fashion-dcgan", "--workers", "2",
                           "--root", root, *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    two_wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return 1
    chief = [json.loads(ln.split("] ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("[worker 0] {")][-1]
    meta = json.load(open(f"{chief['uri']}/MANIFEST.json"))["metadata"]
    two_loop = meta["last_session_seconds"]
    n = args.steps
    report(f"fashion-dcgan train loop, batch 256, {n} steps", [
        ("one worker (this process, default strategy)", n / one_loop, "steps/s"),
        (f"two workers (MultiWorkerMirroredStrategy, {meta['replicas']} replicas)", n / two_loop, "steps/s"),
        ("ratio two workers / one worker", one_loop / two_loop, "x"),
        ("one worker: whole train stage", one[0], "s"),
        ("two workers: launcher wall time (2 TF imports, data reuse, train, commit)", two_wall, "s"),
    ])
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    assert len(glob.glob(f"{root}/fashion-dcgan/train/*/_COMMITTED")) == 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
