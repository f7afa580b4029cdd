"""Fuzz the data sources: seeded mutations of IDX files, JPEG bytes and paired folders.

Every case must end in a run of the data stages that completes or in the one-line error the CLI
turns into exit 2; never another exception, a hang, or a committed artifact from a failed stage.
Inputs are read only by ingest / validate / preprocess, so those run (in this process, through
the store and the stage graph as the flow runs them); `--cli N` also puts N failing cases through
`tapeline run` and checks its exit status and last line. Usage: python benchmarks/fuzz.py
[--seed S] [--cases N] [--cli N]; exits 1 if any case lands in "anything else"."""
from __future__ import annotations

import argparse
import gzip
import io
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # as the tests run it: the error line is the last
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded machine

MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
KINDS = ("idx-header", "idx-count", "idx-truncate", "idx-gzip", "jpeg-bytes", "paired-files", "paired-names")
OUTCOMES = ("completed", "one-line error", "anything else")
IDX_SETS = ["data.max_examples=24", "data.val_holdout=4"]
PAIRED_SETS = ["data.image_size=16", "data.jitter_copies=1", "data.max_examples=6"]
CASE_SECONDS = 120  # a case running longer is a hang


# -- the clean inputs each case mutates ----------------------------------------------------------
def _idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def base_idx(d: str, n: int = 16) -> None:
    """The first n examples of each MNIST split, re-encoded as the four IDX .gz files."""
    os.makedirs(d, exist_ok=True)
    for prefix in ("train", "t10k"):
        with gzip.open(os.path.join(MNIST, f"{prefix}-images-idx3-ubyte.gz")) as f:
            images = f.read(16 + n * 784)[16:]
        with gzip.open(os.path.join(MNIST, f"{prefix}-labels-idx1-ubyte.gz")) as f:
            labels = f.read(8 + n)[8:]
        _write(d, f"{prefix}-images-idx3-ubyte.gz", gzip.compress(_idx_bytes(2051, (n, 28, 28), images)))
        _write(d, f"{prefix}-labels-idx1-ubyte.gz", gzip.compress(_idx_bytes(2049, (n,), labels)))


def _pair(rng: random.Random, w: int = 64, h: int = 32, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A side-by-side pair of random blocks (distinct per call, so no duplicates across splits)."""
    from PIL import Image

    im = Image.frombytes("RGB", (w // 8, max(h // 8, 1)), bytes(rng.getrandbits(8) for _ in range(
        3 * (w // 8) * max(h // 8, 1)))).resize((w, h), Image.NEAREST).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def base_paired(d: str, rng: random.Random) -> None:
    for split, n in (("train", 4), ("val", 2)):
        os.makedirs(os.path.join(d, split))
        for i in range(n):
            _write(os.path.join(d, split), f"{i}.jpg", _pair(rng))


def _write(d: str, name: str, data: bytes) -> None:
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def _read(d: str, name: str) -> bytes:
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


# -- mutations: each returns a short description of what it did --------------------------------
def _idx_file(rng):
    return rng.choice(["train", "t10k"]) + rng.choice(["-images-idx3-ubyte.gz", "-labels-idx1-ubyte.gz"])


def mutate_idx_header(rng, d):
    name = _idx_file(rng)
    raw = bytearray(gzip.decompress(_read(d, name)))
    ndim = 3 if "images" in name else 1
    field = rng.randrange(1 + ndim)  # 0: magic, then the dimensions
    value = rng.choice([0, 1, 2, 3, 27, 29, 255, 2049, 2051, 0x0800 | rng.randrange(256),
                        0xFFFFFFFF, rng.getrandbits(32)])
    raw[4 * field:4 * field + 4] = struct.pack(">I", value)
    _write(d, name, gzip.compress(bytes(raw)))
    return f"{name} header field {field} = {value}"


def mutate_idx_count(rng, d):
    """Images and labels that disagree: extra or missing records, with or without a matching header."""
    name = _idx_file(rng)
    raw = gzip.decompress(_read(d, name))
    ndim = 3 if "images" in name else 1
    dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))
    rec = 784 if ndim == 3 else 1
    body = raw[4 + 4 * ndim:]
    delta = rng.choice([-dims[0], -3, -1, 1, 5])
    body = body[:max(0, len(body) + delta * rec)] if delta < 0 else body + bytes(rng.getrandbits(8)
                                                                                 for _ in range(delta * rec))
    if rng.random() < 0.5:
        dims[0] = max(0, dims[0] + delta)  # a consistent file with a different count
    _write(d, name, gzip.compress(_idx_bytes(struct.unpack(">I", raw[:4])[0], tuple(dims), body)))
    return f"{name} count {delta:+d} header {'fixed' if dims[0] else 'zero'}"


def mutate_idx_truncate(rng, d):
    name = _idx_file(rng)
    raw = gzip.decompress(_read(d, name))
    cut = rng.choice([0, 3, 8, 15, rng.randrange(len(raw))])
    if rng.random() < 0.5:
        _write(d, name, gzip.compress(raw[:cut]))
        return f"{name} payload cut at {cut}"
    data = _read(d, name)
    cut = rng.randrange(len(data))
    _write(d, name, data[:cut])
    return f"{name} gzip stream cut at {cut}"


def mutate_idx_gzip(rng, d):
    name = _idx_file(rng)
    data = bytearray(_read(d, name))
    how = rng.choice(["flip", "crc", "not-gzip", "empty", "garbage-tail", "missing", "directory"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(10, len(data))] ^= 1 << rng.randrange(8)
    elif how == "crc":
        data[-8] ^= 0xFF
    elif how == "not-gzip":
        data = bytearray(gzip.decompress(bytes(data)))
    elif how == "empty":
        data = bytearray()
    elif how == "garbage-tail":
        data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    if how == "missing":
        os.remove(os.path.join(d, name))
    elif how == "directory":
        os.remove(os.path.join(d, name))
        os.makedirs(os.path.join(d, name))
    else:
        _write(d, name, bytes(data))
    return f"{name} gzip {how}"


def _some_image(rng, d):
    """(folder, name) of a random file of a random non-empty split; an earlier mutation may have
    emptied one."""
    def files(s):
        f = os.path.join(d, s)
        return sorted(n for n in os.listdir(f) if os.path.isfile(os.path.join(f, n))) if os.path.isdir(f) else []

    splits = [s for s in ("train", "val") if files(s)]
    split = rng.choice(splits or ["train"])
    names = files(split)
    if not names:
        os.makedirs(os.path.join(d, split), exist_ok=True)
        names = ["new.jpg"]
        _write(os.path.join(d, split), "new.jpg", _pair(rng))
    return os.path.join(d, split), rng.choice(names)


def mutate_jpeg_bytes(rng, d):
    folder, name = _some_image(rng, d)
    data = bytearray(_read(folder, name))
    how = rng.choice(["flip", "truncate", "zero-run", "sof-size", "garbage-head", "no-eoi"])
    if how == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(2, len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[:rng.randrange(len(data))]
    elif how == "zero-run":
        i = rng.randrange(len(data))
        data[i:i + rng.randint(1, 200)] = bytes(min(200, len(data) - i))
    elif how == "sof-size":  # the frame header's height and width
        i = bytes(data).find(b"\xff\xc0")
        if i >= 0:
            h, w = rng.choice([0, 1, 31, 32, 33, 4000, 65535]), rng.choice([0, 1, 63, 64, 65, 8000, 65535])
            data[i + 5:i + 9] = struct.pack(">HH", h, w)
    elif how == "garbage-head":
        data[:rng.randint(1, 16)] = bytes(rng.getrandbits(8) for _ in range(16))[:rng.randint(1, 16)]
    elif how == "no-eoi":
        data = data[:-2]
    _write(folder, name, bytes(data))
    return f"{os.path.basename(folder)}/{name} {how}"


def mutate_paired_files(rng, d):
    folder, name = _some_image(rng, d)
    how = rng.choice(["missing-half", "odd-width", "tall", "tiny", "grayscale", "cmyk", "rgba-png", "palette-png",
                      "16bit-png", "zero-bytes", "text", "directory", "empty-split", "duplicate", "extra-split",
                      "big"])
    path = os.path.join(folder, name)
    if how == "missing-half":
        data = _pair(rng, 32, 32)
    elif how == "odd-width":
        data = _pair(rng, 65, 32)
    elif how == "tall":
        data = _pair(rng, 64, 40)
    elif how == "tiny":
        data = _pair(rng, 2, 1)
    elif how == "grayscale":
        data = _pair(rng, mode="L")
    elif how == "cmyk":
        data = _pair(rng, mode="CMYK")
    elif how == "rgba-png":
        data = _pair(rng, mode="RGBA", fmt="PNG")
    elif how == "palette-png":
        data = _pair(rng, mode="P", fmt="PNG")
    elif how == "16bit-png":
        data = _pair(rng, mode="I;16", fmt="PNG")
    elif how == "zero-bytes":
        data = b""
    elif how == "text":
        data = b"not an image\n"
    elif how == "big":
        data = _pair(rng, 1024, 512)
    else:
        data = None
    if how == "directory":
        os.remove(path)
        os.makedirs(path)
    elif how == "empty-split":
        for n in os.listdir(folder):
            os.remove(os.path.join(folder, n))
    elif how == "duplicate":
        other = os.path.join(d, "val" if folder.endswith("train") else "train")
        shutil.copy(path, os.path.join(other, "copy-" + name))
    elif how == "extra-split":
        os.makedirs(os.path.join(d, "test"))
        _write(os.path.join(d, "test"), "notes.txt", b"x")
    else:
        _write(folder, name, data)
    return f"{os.path.basename(folder)}/{name} {how}"


def mutate_paired_names(rng, d):
    folder, name = _some_image(rng, d)
    new = rng.choice(["with space.jpg", "ünïcødé-画像.jpg", "UPPER.JPG", "x.jpeg", "x.png", ".hidden.jpg",
                      "a%20b.jpg", "semi;colon.jpg", "#hash.jpg", "long-" + "n" * 200 + ".jpg",
                      "no-extension", "trailing.jpg.txt"])
    os.rename(os.path.join(folder, name), os.path.join(folder, new))
    return f"{os.path.basename(folder)}/{name} renamed {new!r}"


MUTATIONS = {"idx-header": mutate_idx_header, "idx-count": mutate_idx_count, "idx-truncate": mutate_idx_truncate,
             "idx-gzip": mutate_idx_gzip, "jpeg-bytes": mutate_jpeg_bytes, "paired-files": mutate_paired_files,
             "paired-names": mutate_paired_names}


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
    from pipelines.graph import nodes, run_node
    from pipelines.registry import get

    store, arts, done = ArtifactStore(root), {}, set()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        p = get(pipeline)
        for n in nodes(p, p.config(sets)):
            if n.pipeline.name == pipeline and n.stage in ("ingest", "validate", "preprocess"):
                arts[n.key] = run_node(store, n, arts).artifact
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


def tracebacks(stderr: str) -> list[str]:
    """The exception line ending each traceback in stderr. Prefect logs a failed task's exception,
    a UserError too (issue 15 silences that); any other exception there is a bug."""
    lines, out = stderr.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            out.append(next((ln for ln in lines[i + 1:] if not ln.startswith(" ")), ""))
    return out


def only_user_errors(stderr: str) -> bool:
    """Every traceback is of a UserError (itself, or tagged inside a Beam worker's RuntimeError)."""
    return all(t.startswith("artifacts.errors.UserError: ") or "[tapeline-user-error]" in t for t in tracebacks(stderr))


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
        ok = code == 2 and last == f"tapeline: error: {detail}" and only_user_errors(stderr) and \
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
