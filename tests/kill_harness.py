"""Kill harness: `tapeline run` SIGKILLed (whole process group) at named or random moments, rerun
on the same root, and compared with an uninterrupted run. Shared by tests and benchmarks/soak.py.

Each pipeline runs at its own default batch size, shuffle buffer, checkpoint and sample intervals;
only the amount of data, the number of epochs and evaluation's sample count are made small."""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from tests.conftest import PYTHONPATH
from tests.helpers import suite_sets, covered_pipelines

FASHION = "/usr/share/datasets/fashion-mnist"
# every pipeline at its own batch size, buffer and checkpoint intervals, on little data (TestRuns.small)
CONFIGS = {name: suite_sets(name, "small") for name in covered_pipelines()}


# Every kind of kill point at least once, every pipeline at least twice, in chains on one root.
CHAINS = {
    "fashion-dcgan": [
        "train.fashion-dcgan.step@1",              # before the first checkpoint (end of epoch 1, step 3)
        "train.fashion-dcgan.checkpoint.begin@1",  # while a checkpoint is written (history written, ckpt not)
        "train.fashion-dcgan.samples@6",           # while samples are written
        "store.build.fashion-dcgan/animate@1",     # inside animate
    ],
    "pix2pix": [
        "train.pix2pix.checkpoint.done@1",         # right after a checkpoint (epoch 20, step 120)
        "train.pix2pix.epoch_end@3",               # at an epoch boundary after it (epoch 23)
        "store.built.pix2pix/render@1",            # inside render, its files written, not committed
    ],
    "mnist-classifier": [
        "flow.after.mnist-classifier/preprocess@1",  # between two stages
        "train.mnist-classifier.checkpoint.saved@1",  # checkpoint saved, progress not yet written
        "store.build.mnist-classifier/evaluate@1",   # inside evaluate
    ],
    "mnist-gan": [
        "train.mnist-gan.epoch_end@2",             # at an epoch boundary
        "store.committed.mnist-gan/promote@1",     # inside promote: committed, champion not yet set
    ],
}

# the pipelines whose kills are drawn from every moment a run passes, their feature classifiers'
# build included: every pipeline without a chain above, and two that have one. Their roots (and
# their references, conftest.traced) build the feature models; every other root gets them seeded.
UNSEEDED = sorted({p for p in CONFIGS if p not in CHAINS} | {"mnist-classifier", "mnist-gan"})


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    moments: list[str] = field(default_factory=list)  # failpoints passed, in order

    @property
    def summary(self) -> dict:
        return json.loads(self.stdout)

    @property
    def resumed_from(self) -> int | None:
        found = re.findall(r"resumed from step (\d+)", self.stderr)
        return int(found[-1]) if found else None


def run(pipeline: str, root: str, sets: list[str], failpoints: str = "", kill_after: float | None = None,
        env: dict | None = None, timeout: float = 900) -> Run:
    """`tapeline run --json` in its own process group; stopped at a failpoint, after kill_after
    seconds (SIGKILL of the group from outside), or let finish."""
    with tempfile.NamedTemporaryFile("r", suffix=".trace") as trace:
        full_env = {**os.environ, "PYTHONPATH": PYTHONPATH, "PREFECT_LOGGING_LEVEL": "INFO",
                    "TAPELINE_FAILPOINTS": failpoints, "TAPELINE_FAILPOINTS_TRACE": trace.name, **(env or {})}
        args = [x for s in sets for x in ("--set", s)]
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
             "run", pipeline, "--json", "--root", root, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=full_env)
        try:
            out, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            out, err = proc.communicate()
            if kill_after is None:
                raise
        with_group(proc, signal.SIGKILL)  # a failpoint killed the group; reap anything left over
        return Run(proc.returncode, out, err, trace.read().split())


def with_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def killed(r: Run) -> bool:
    return r.returncode == -signal.SIGKILL


def stage_of(moment: str | None) -> str:
    """The stage a failpoint name belongs to: train.P.x -> P/train, store.x.P/S and flow.after.P/S -> P/S."""
    if not moment:
        return "start-up"
    if moment.startswith("train."):
        return moment.split(".")[1] + "/train"
    where = moment.split(".", 2)[-1]
    return f"after {where}" if moment.startswith("flow.after.") else where


@dataclass
class Outcome:
    """What an uninterrupted run and a resumed one must agree on, array for array."""
    weights: dict
    history: dict
    samples: dict
    metrics: dict

    @classmethod
    def of(cls, summary: dict, pipeline: str) -> "Outcome":
        import keras

        train = summary["stages"][f"{pipeline}/train"]["uri"]
        weights = {os.path.basename(p): keras.saving.load_model(p, compile=False).get_weights()
                   for p in sorted(glob.glob(f"{train}/models/*.keras"))}
        with np.load(f"{train}/history.npz", allow_pickle=False) as h:
            history = {k: h[k].copy() for k in h.files}
        samples = {os.path.basename(p): np.load(p, allow_pickle=False)
                   for p in sorted(glob.glob(f"{train}/samples/*.npy"))}
        with open(f"{summary['stages'][f'{pipeline}/evaluate']['uri']}/metrics.json") as f:
            metrics = json.load(f)
        return cls(weights, history, samples, metrics)

    def differences(self, other: "Outcome") -> list[str]:
        out = []
        for what in ("weights", "history", "samples"):
            mine, theirs = getattr(self, what), getattr(other, what)
            if mine.keys() != theirs.keys():
                out.append(f"{what}: {sorted(mine)} != {sorted(theirs)}")
                continue
            for k in mine:
                a, b = mine[k], theirs[k]
                pairs = zip(a, b) if isinstance(a, list) else [(a, b)]
                if (isinstance(a, list) and len(a) != len(b)) or not all(
                        x.shape == y.shape and np.array_equal(x, y) for x, y in pairs):
                    out.append(f"{what}/{k} differs")
        numbers = [{k: v for k, v in m.items() if isinstance(v, (int, float))} for m in (self.metrics, other.metrics)]
        if numbers[0] != numbers[1] or not numbers[0]:  # (the feature model's uri differs per root)
            out.append(f"metrics {numbers[0]} != {numbers[1]}")
        return out


def root_problems(root: str, summary: dict) -> list[str]:
    """`tapeline verify` clean, exactly one committed version of every stage the run used (promote:
    at least one, a decision per run), and the champion pointing at the run's promotion."""
    problems = []
    verify = subprocess.run([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                             "verify", "--root", root], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH}, timeout=300)
    if verify.returncode != 0 or " 0 damaged" not in verify.stdout:
        problems.append("verify: " + verify.stdout.strip().splitlines()[-1] if verify.stdout else verify.stderr[-500:])
    # a stage folder holds one version per node of the run that builds there (the GANs' two feature
    # classifiers, mnist-classifier[convnet]/train and [mlp]/train, share mnist-classifier/train)
    folder = {key: os.path.dirname(v["uri"].rstrip("/")) for key, v in summary["stages"].items()}
    nodes = collections.Counter(folder.values())
    for key in summary["stages"]:
        n = len(glob.glob(f"{folder[key]}/*/_COMMITTED"))
        # promote records a decision per run: one for every run that got that far
        if n != nodes[folder[key]] and not (key.endswith("/promote") and n >= 1):
            problems.append(f"{key}: {n} committed versions in {folder[key]} for {nodes[folder[key]]} of the run's nodes")
    pipeline = summary["pipeline"]
    promote = summary["stages"].get(f"{pipeline}/promote")
    if promote is not None:
        from artifacts.store import open_store

        champion = open_store(root).champion(pipeline)  # its references resolved under the root
        # push.json holds the decision, never a claim that the push happened (champion.json is that)
        decision = json.load(open(f"{promote['uri']}/push.json"))
        if "pushed" in decision:
            problems.append(f"{promote['uri']}/push.json claims a push: {decision}")
        if summary.get("pushed") and (champion is None or champion["uri"] != promote["uri"]):
            problems.append(f"champion {champion and champion['uri']} is not the pushed {promote['uri']}")
        # on a fresh root the run's model is blessed: whichever run pushed it, it is the champion now
        model = summary["stages"][f"{pipeline}/train"]["uri"]
        if champion is None or champion.get("artifacts", {}).get("model") != model:
            problems.append(f"champion {champion and champion.get('artifacts')} is not the run's model {model}")
    return problems


def chain(pipeline: str, root: str, kills: list[str | float], sets: list[str] | None = None,
          env: dict | None = None) -> tuple[list[dict], Run]:
    """Kill the run at each of `kills` in turn on one root (a failpoint spec, or seconds after
    start), then let it finish. Returns one row per kill and the finishing run."""
    sets = CONFIGS[pipeline] if sets is None else sets
    rows = []
    for k in kills:
        r = run(pipeline, root, sets, **({"kill_after": k} if isinstance(k, float) else {"failpoints": k}), env=env)
        row = {"pipeline": pipeline, "kill": k if isinstance(k, str) else f"after {k:.1f} s",
               "landed": stage_of(r.moments[-1] if r.moments else None), "killed": killed(r),
               "resumed_from": r.resumed_from}
        if not killed(r) and r.returncode != 0:
            raise AssertionError(f"run failed instead of being killed at {k}: {r.stderr[-3000:]}")
        rows.append(row)
    final = run(pipeline, root, sets, env=env)
    if final.returncode != 0:
        raise AssertionError(f"rerun after {kills} failed: {final.stderr[-3000:]}")
    # each row's run resumed from what the one before it left; the last from the final run
    for row, nxt in zip(rows, rows[1:] + [{"resumed_from": final.resumed_from}]):
        row["resumed_from"] = nxt["resumed_from"]
    return rows, final

