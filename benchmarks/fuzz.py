"""Fuzz the data sources: seeded mutations of IDX files, JPEG bytes and paired folders.

Every case must end in a run of the data stages that completes or in the one-line error the CLI
turns into exit 2; never another exception, a hang, or a committed artifact from a failed stage.
Inputs are read only by ingest / validate / preprocess, so those run (in this process, through
the store and the stage graph as the flow runs them); `--cli N` also puts N failing cases through
`tapeline run` and checks its exit status and last line. Usage: python benchmarks/fuzz.py
[--seed S] [--cases N] [--cli N]; exits 1 if any case lands in "anything else"."""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.fuzz_inputs import KINDS, MUTATIONS, base_idx, base_paired  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # as the tests run it: the error line is the last
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded machine

OUTCOMES = ("completed", "one-line error", "anything else")
IDX_SETS = ["data.max_examples=24", "data.val_holdout=4"]
PAIRED_SETS = ["data.image_size=32", "data.jitter_copies=1", "data.max_examples=6"]
CASE_SECONDS = 120  # a case running longer is a hang


# -- running one case ------------------------------------------------------------------------------
class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def make_case(seed: int, index: int, work: str):
    """(kind, pipeline, sets, description) of case `index`; its data is written under work."""
    rng = random.Random(f"{seed}-{index}")
    kind = KINDS[index % len(KINDS)]
    d = os.path.join(work, f"case-{index:04d}")
    if kind.startswith("idx"):
        base_idx(d)
        pipeline, sets = "mnist-classifier", [f"data.source=idx:{d}"] + IDX_SETS
    else:
        base_paired(d, rng)
        pipeline, sets = "pix2pix", [f"data.source=paired:{d}"] + PAIRED_SETS
    done = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        try:
            done.append(MUTATIONS[kind](rng, d))
        except (OSError, EOFError, ValueError, struct.error) as e:  # a second mutation of a file the first broke
            done.append(f"(second mutation skipped: {type(e).__name__})")
    return kind, pipeline, sets, "; ".join(done)


def _committed(root: str) -> set[str]:
    import glob

    return {p.rsplit("/", 3)[-3] for p in glob.glob(f"{root}/*/*/*/_COMMITTED")}


def _leftovers(root: str) -> list[str]:
    import glob

    return [p for p in glob.glob(f"{root}/*/*/*") if p.rsplit("/", 1)[-1] not in ("_work", "_locks")
            and not os.path.exists(f"{p}/_COMMITTED")]


def run_case(pipeline: str, sets: list[str], root: str) -> tuple[str, str]:
    """(outcome, detail) of the data stages on one input, judged as the CLI would."""
    from artifacts.errors import UserError
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    store, arts, done = ArtifactStore(root), {}, set()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        p = get(pipeline)
        for n, run in build(store, nodes(p, p.config(sets)), [f"{pipeline}/preprocess"]):
            arts[n.key] = run.artifact
            done.add(n.stage)
        outcome, detail = "completed", ""
    except _Hang:
        return "anything else", f"hang: over {CASE_SECONDS} s"
    except BaseException as exc:  # noqa: BLE001 - classifying every outcome is the point
        user = UserError.find(exc)
        if user is None:
            import traceback

            return "anything else", "".join(traceback.format_exception_only(type(exc), exc)).strip()[-300:]
        outcome, detail = "one-line error", user.line()
        if "\n" in detail:
            return "anything else", f"multi-line error: {detail!r}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if _committed(root) != done:
        return "anything else", f"committed {sorted(_committed(root))} but completed {sorted(done)}"
    if _leftovers(root):
        return "anything else", f"uncommitted leftovers: {_leftovers(root)}"
    return outcome, detail


def no_traceback(stderr: str) -> bool:
    """A user error's stderr holds no traceback (Prefect logs a failed task's UserError as one line)."""
    return "Traceback (most recent call last)" not in stderr


def run_cli(pipeline: str, sets: list[str], root: str) -> tuple[int, str, str]:
    """(exit status, last stderr line, stderr) of `tapeline run` on one case."""
    args = [x for s in sets for x in ("--set", s)]
    proc = subprocess.run([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                           "run", pipeline, "--root", root, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO})
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else "", proc.stderr


def fuzz(seed: int, cases: int, cli: int = 0, work: str | None = None, log=print) -> dict:
    """Run the cases; returns {"table": {kind: Counter(outcome)}, "bad": [...], "cli": [...]}."""
    work = work or tempfile.mkdtemp(prefix="tapeline-fuzz-")
    table: dict[str, Counter] = defaultdict(Counter)
    bad, errors, cli_results = [], [], []
    for i in range(cases):
        kind, pipeline, sets, what = make_case(seed, i, work)
        root = os.path.join(work, f"root-{i:04d}")
        outcome, detail = run_case(pipeline, sets, root)
        table[kind][outcome] += 1
        log(f"{i:4d} {kind:13s} {outcome:14s} {what} -> {detail[:160]}")
        if outcome == "anything else":
            bad.append((i, kind, what, detail))
        elif outcome == "one-line error":
            errors.append((i, kind, pipeline, sets, detail))
    # through the CLI: the first failing case of each kind, JPEG and pairs before IDX
    order = ("jpeg-bytes", "idx-header", "paired-files", "idx-gzip", "idx-count", "idx-truncate")
    picked = [next(e for e in errors if e[1] == k) for k in order if any(e[1] == k for e in errors)][:cli]
    for i, _kind, pipeline, sets, detail in picked:
        code, last, stderr = run_cli(pipeline, sets, os.path.join(work, f"cli-{i:04d}"))
        ok = code == 2 and last == f"tapeline: error: {detail}" and no_traceback(stderr) and \
            not _cli_committed_failure(work, i)
        cli_results.append((i, code, last, ok))
        log(f"cli  {i:4d} exit {code} {'ok' if ok else 'MISMATCH'}: {last[:160]}")
    return {"table": table, "bad": bad, "cli": cli_results, "work": work}


def _cli_committed_failure(work: str, i: int) -> bool:
    return bool(_leftovers(os.path.join(work, f"cli-{i:04d}")))


def print_table(result: dict, seed: int, cases: int) -> None:
    table = result["table"]
    print(f"\n== fuzz: seed {seed}, {cases} cases")
    print(f"  {'kind':14s}" + "".join(f"{o:>16s}" for o in OUTCOMES))
    for kind in KINDS:
        print(f"  {kind:14s}" + "".join(f"{table[kind][o]:16d}" for o in OUTCOMES))
    total = Counter()
    for c in table.values():
        total.update(c)
    print(f"  {'total':14s}" + "".join(f"{total[o]:16d}" for o in OUTCOMES))
    if result["cli"]:
        ok = sum(1 for *_, good in result["cli"] if good)
        print(f"  through `tapeline run`: {ok}/{len(result['cli'])} failing cases gave exit 2 and the same line")
    for i, kind, what, detail in result["bad"]:
        print(f"  ANYTHING ELSE case {i} ({kind}: {what}): {detail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--cases", type=int, default=210)
    ap.add_argument("--cli", type=int, default=4, help="failing cases also run through `tapeline run`")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    result = fuzz(a.seed, a.cases, a.cli, log=(lambda *_: None) if a.quiet else print)
    print_table(result, a.seed, a.cases)
    shutil.rmtree(result["work"], ignore_errors=True)
    return 1 if result["bad"] or not all(good for *_, good in result["cli"]) else 0


if __name__ == "__main__":
    sys.exit(main())
