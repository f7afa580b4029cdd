"""Issue 6: the fixed overhead of orchestration. Wall time of a whole `tapeline run fashion-dcgan`
(a fresh process: Python, TensorFlow and Prefect start-up, the ephemeral API, one task per stage)
at a small fixed step count, against the sum of its stages' own work (the same stages built
in-process on a fresh root, each timed alone), and against a plain script of the seed tutorial
doing the same training steps. Target: under 20 s of overhead."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import FASHION, REPO, report, scratch_root

SETS = [f"data.source=idx:{FASHION}", "data.max_examples=5000", "train.max_steps=40", "eval.num_samples=2000"]

SEED_SCRIPT = r"""
import gzip, sys, time
t0 = time.perf_counter()
import numpy as np
sys.path.insert(0, "benchmarks")
import seeds
x = np.frombuffer(gzip.decompress(open(sys.argv[1] + "/train-images-idx3-ubyte.gz", "rb").read()), np.uint8, offset=16)
x = (x.reshape(-1, 28, 28, 1)[:5000].astype("float32") - 127.5) / 127.5
steps, secs, _ = seeds.fashion_dcgan(x, int(sys.argv[2]))
print(steps, secs, time.perf_counter() - t0)
"""


def main() -> int:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PREFECT_API_URL", None)
    root = scratch_root("flow")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "fashion-dcgan", "--json", "--root", root,
                           *[x for s in SETS for x in ("--set", s)]], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return 1
    stages = json.loads(proc.stdout)["stages"]

    import tensorflow as tf  # noqa: F401 - the in-process stages are timed without start-up

    from artifacts.store import ArtifactStore
    from pipelines.graph import nodes, run_node
    from pipelines.registry import get

    p = get("fashion-dcgan")
    store, done, own = ArtifactStore(scratch_root("direct")), {}, {}
    for n in nodes(p, p.config(SETS)):
        t = time.perf_counter()
        done[n.key] = run_node(store, n, done).artifact
        own[n.key] = time.perf_counter() - t
    work = sum(own.values())

    t = time.perf_counter()
    seed = subprocess.run([sys.executable, "-c", SEED_SCRIPT, FASHION, "40"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seed_wall = time.perf_counter() - t
    rows = [(f"{k} (own work)", v, "s") for k, v in own.items()]
    rows += [("sum of the stages' own work", work, "s"),
             (f"tapeline run fashion-dcgan, whole process ({len(stages)} stages)", wall, "s"),
             ("overhead: Python/TF/Prefect start-up, API, tasks (target < 20 s)", wall - work, "s"),
             ("overhead as a share of the run", (wall - work) / wall, ""),
             ("plain seed script, same 40 training steps, whole process", seed_wall, "s")]
    report("orchestration overhead (fashion-dcgan, 5,000 examples per split, 40 steps)", rows)
    print("seed script: steps, loop seconds, in-script seconds =", seed.stdout.strip().splitlines()[-1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
