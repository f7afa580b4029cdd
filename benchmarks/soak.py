"""Issue 11: the resume soak. N random kill points across the four pipelines (each at its default
batch size, buffer and intervals): SIGKILL of the whole process group at a moment drawn from
every moment a run passes (learned from a traced uninterrupted run) or at a random wall-clock
time, one to three kills in a row on one root, then a rerun compared with the uninterrupted run
(weights, step history, sample arrays, metrics), `tapeline verify` and one version per stage.

    python benchmarks/soak.py [N] [--seed S] [--markdown]      (make soak: N=40)
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tests import kill_harness as kh  # noqa: E402

PIPELINES = sorted(kh.CONFIGS)


def reference(pipeline: str, env: dict) -> tuple[kh.Outcome, list[str], float]:
    t = time.time()
    r = kh.run(pipeline, tempfile.mkdtemp(prefix="soak-ref-"), kh.CONFIGS[pipeline], env=env)
    if r.returncode != 0:
        sys.exit(f"uninterrupted {pipeline} run failed:\n{r.stderr[-3000:]}")
    return kh.Outcome.of(r.summary, pipeline), r.moments, time.time() - t


def draw(rng: random.Random, moments: list[str], seconds: float) -> list[str | float]:
    """1-3 kills: mostly the k-th passing of a moment a run really has, sometimes a random time."""
    kills: list[str | float] = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if rng.random() < 0.25:
            kills.append(round(rng.uniform(2.0, seconds), 1))
            continue
        i = rng.randrange(len(moments))
        name = moments[i]
        # counts restart in each process; a count within the first run is always reachable
        kills.append(f"{name}@{moments[:i + 1].count(name)}")
    return kills


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=40)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from prefect.testing.utilities import prefect_test_harness
    import prefect.settings

    rows, bad = [], 0
    with prefect_test_harness():
        env = {"PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
        refs = {p: reference(p, env) for p in PIPELINES}
        for p, (_, moments, secs) in refs.items():
            print(f"reference {p}: {len(moments)} moments, {secs:.0f} s", flush=True)
        for i in range(args.n):
            p = PIPELINES[i % len(PIPELINES)]
            want, moments, secs = refs[p]
            kills = draw(rng, moments, secs)
            root = tempfile.mkdtemp(prefix="soak-")
            try:
                trial, final = kh.chain(p, root, kills, env=env)
                diffs = kh.Outcome.of(final.summary, p).differences(want) + kh.root_problems(root, final.summary)
            except AssertionError as e:
                trial, diffs = [{"kill": str(kills), "landed": "?", "killed": False, "resumed_from": None}], [str(e)[-300:]]
            same = not diffs
            bad += not same
            for j, row in enumerate(trial):
                rows.append((i + 1, p, row["kill"], row["landed"], row["killed"], row["resumed_from"],
                             ("yes" if same else "NO: " + "; ".join(diffs)) if j == len(trial) - 1 else ""))
            print(f"trial {i + 1}/{args.n} {p}: {kills} -> {'identical' if same else diffs}", flush=True)
    head = ("trial", "pipeline", "kill moment", "stage it landed in", "killed", "resumed from step", "identical")
    print()
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join("—" if v is None else f"`{v}`" if k == 2 else str(v)
                                    for k, v in enumerate(r)) + " |")
    else:
        for r in [head, *rows]:
            print("  ".join(str(v) for v in r))
    print(f"\n{args.n} trials, {len(rows)} kills, seed {args.seed}: {args.n - bad} identical, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
