"""Issue 35: what an object-store root costs, against a local root, in one invocation.

- fashion-dcgan at 150 training steps on all of Fashion-MNIST, `tapeline run` on a fresh local
  root and on a fresh s3:// root of moto's server on loopback (each with its own empty cache and
  PREFECT_HOME), whole process: the ratio s3/local (target: at most 1.15x);
- the train loop's steps/s with checkpoint uploads on (an s3:// root, a checkpoint every 10 steps)
  against off (a local root, the same checkpoints): target at least 0.95x. The steps/s are the
  train stage's own (its `steps/s` log lines), so start-up and the other stages do not count.

    nice -n 10 python benchmarks/object_store.py [--steps 150] [--every 10]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from common import FASHION, REPO, report

sys.path.insert(0, REPO)


def run(root: str, sets: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", "fashion-dcgan", "--root", root,
                        *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return time.perf_counter() - t, r.stderr


def train_rate(log: str) -> float:
    """The train stage's own steps/s at its last log line."""
    rates = re.findall(r"train step \d+/\d+ .*?([0-9.]+) steps/s", log)
    if not rates:
        raise SystemExit("no steps/s in the train log")
    return float(rates[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=10, help="train.checkpoint_every for the upload comparison")
    a = ap.parse_args()
    from tests import s3

    server = s3.start()
    base = tempfile.mkdtemp(prefix="tapeline-bench-s3-")
    sets = [f"data.source=idx:{FASHION}", f"train.max_steps={a.steps}"]

    def env(name: str) -> dict:
        home = os.path.join(base, name)
        os.makedirs(home)
        return {**os.environ, **server.env(), "PYTHONPATH": REPO, "TAPELINE_CACHE": f"{home}/cache",
                "PREFECT_HOME": f"{home}/prefect", "PREFECT_LOGGING_LEVEL": "INFO"}

    try:
        local_s, _ = run(f"{base}/local-root", sets, env("local"))
        remote_s, _ = run(f"s3://{s3.BUCKET}/bench-{int(time.time())}", sets, env("s3"))
        every = sets + [f"train.checkpoint_every={a.every}", f"train.log_every={a.every}"]
        _, off_log = run(f"{base}/local-root-2", every, env("local-2"))
        _, on_log = run(f"s3://{s3.BUCKET}/bench-up-{int(time.time())}", every, env("s3-2"))
    finally:
        server.server.stop()
    off, on = train_rate(off_log), train_rate(on_log)
    report(f"fashion-dcgan, {a.steps} steps on all of Fashion-MNIST: local root against moto's S3 on loopback", [
        ("local root, whole run", local_s, "s"),
        ("s3:// root, whole run", remote_s, "s"),
        ("ratio s3 / local (target <= 1.15)", remote_s / local_s, "x"),
        (f"train steps/s, checkpoint every {a.every} steps, local root (uploads off)", off, "steps/s"),
        (f"train steps/s, checkpoint every {a.every} steps, s3:// root (uploads on)", on, "steps/s"),
        ("ratio on / off (target >= 0.95)", on / off, "x"),
    ])


if __name__ == "__main__":
    main()
