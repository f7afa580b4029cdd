"""Helpers that several test files share: tiny configs, stage runs, bad inputs, store artifacts, processes."""
from __future__ import annotations

import atexit
import contextlib
import glob
import gzip
import os
import pickle
import posixpath
import re
import shutil
import struct
import tempfile

from tests.conftest import CORRUPT, DATASETS, MNIST

# ---- tiny configs and stage runs

def suite_sets(pipeline: str, size: str) -> list[str]:
    """The --set strings of one of a pipeline's own test sizes (its recipe's TestRuns), on this
    machine's copy of its data: tiny (a whole flow, fast), small (its own batch size and intervals
    on little data), longer (small, trained long enough to stop inside), small-run (every default
    but the data size and a few steps)."""
    from flows.registry import get

    t = get(pipeline).tests
    out = [f"data.source={DATASETS[t.data]}"] + ([f"data.image_size={t.image_size}"] if t.image_size else [])
    return out + list({"tiny": t.tiny, "small": t.small, "longer": t.small + t.longer,
                       "small-run": ("data.max_examples=300", "train.max_steps=3")}[size])


def covered_pipelines() -> list[str]:
    """Every registered pipeline whose recipe declares its test sizes: the five built in, and any
    $TAPELINE_PIPELINES adds (a new pipeline is covered by every per-pipeline test unedited)."""
    from flows.registry import all_pipelines

    return sorted(name for name, p in all_pipelines().items() if p.tests is not None)


# each pipeline's smallest flow that still exercises every stage
TINY = {name: suite_sets(name, "tiny") for name in covered_pipelines()}
TINY_IMAGE_SIZE = 32


def run_stages(root, pipeline, sets, upto, runtime=None):
    """Run a pipeline's stages in graph order up to `upto` without Prefect: ({key: artifact}, store)."""
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    p = get(pipeline)
    store = ArtifactStore(root)
    done = {n.key: run.artifact for n, run in build(store, nodes(p, p.config(sets)), [f"{pipeline}/{upto}"], runtime)}
    return done, store


def weights(uri):
    """Every saved model's weights in a train artifact: {file name: [arrays]}."""
    import keras

    out = {}
    for path in sorted(glob.glob(f"{uri}/models/*.keras")):
        out[os.path.basename(path)] = [w.copy() for w in keras.saving.load_model(path, compile=False).get_weights()]
    return out


# ---- copies: a root's references are relative to it, so its artifacts move

def copy_artifact(src: str, dst: str) -> None:
    """A committed artifact folder copied whole to dst (a local path, ram:// or any gfile URI),
    _COMMITTED last. References inside a root are relative to it: the copy is the same artifact."""
    from artifacts import gfile
    from artifacts.store import COMMITTED

    for rel in sorted(gfile.walk_files(src), key=lambda r: r == COMMITTED):
        gfile.makedirs(posixpath.dirname(gfile.join(dst, rel)))
        gfile.copy(gfile.join(src, rel), gfile.join(dst, rel))


def copy_root(src: str, dst: str) -> None:
    """A whole root copied (local or ram://): a copy is the same store, its references relative."""
    from artifacts import gfile

    if "://" not in src and "://" not in dst:
        shutil.copytree(src, dst, symlinks=True)
        return
    for rel in gfile.walk_files(src):
        gfile.makedirs(posixpath.dirname(gfile.join(dst, rel)))
        gfile.copy(gfile.join(src, rel), gfile.join(dst, rel))


def relocated(summary: dict, old: str, new: str) -> dict:
    """A run summary of root `old` as it reads for a copy of that root at `new`."""
    from artifacts.store import canonical_root

    old, new = canonical_root(old), canonical_root(new)

    def move(v):
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, str) and (v == old or v.startswith(old + "/")):
            return new + v[len(old):]
        return v
    return move(summary)


# ---- Prefect

def prefect_artifacts(pipeline: str) -> dict:
    """The latest Prefect artifact of each key of a pipeline, read back from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [f"{pipeline}-training", f"{pipeline}-run"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    latest = {}
    for a in sorted(found, key=lambda a: a.created):
        latest[a.key] = a
    return latest


# ---- feature models built once per pytest run, copied into each GAN root that needs them

_FEATURE_CACHE: dict[str, str] = {}  # {"root": this pytest run's cache root}, made on first use


def _feature_cache() -> str:
    """The root the feature models are built in: the one this pytest run shares between its workers
    (conftest.pytest_configure), else a folder of this process's own."""
    if "root" not in _FEATURE_CACHE:
        shared = os.environ.get("TAPELINE_TEST_FEATURE_CACHE")
        _FEATURE_CACHE["root"] = shared or tempfile.mkdtemp(prefix="tapeline-feature-models-")
        if shared is None:
            atexit.register(shutil.rmtree, _FEATURE_CACHE["root"], True)
    return _FEATURE_CACHE["root"]


@contextlib.contextmanager
def _without_failpoints():
    """A test's TAPELINE_FAILPOINTS* are for the run under test, never for the cache's build."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("TAPELINE_FAILPOINTS")}
    try:
        yield
    finally:
        os.environ.update(saved)


def seed_feature_models(root, pipeline, sets) -> list[str]:
    """Put into root exactly the committed artifacts the feature nodes of a `pipeline` run with
    `sets` need (flows.graph's _feature_nodes: the classifiers' data stages and each space's
    train), nothing else, so the run finds them by fingerprint and reuses them. They are built
    once per data config per pytest run, in a cache root. Returns the seeded node keys ([] for a
    pipeline without feature models). Not for a test about that build: there the run builds them."""
    from artifacts import gfile
    from artifacts.store import ArtifactStore
    from flows.graph import fingerprints, nodes, run_node
    from flows.registry import get

    p = get(pipeline)
    feature = [n for n in nodes(p, p.config(sets)) if n.pipeline.name != p.name]
    if not feature:
        return []
    fps = {key: fp for key, (fp, _) in fingerprints(feature).items()}
    cache = ArtifactStore(_feature_cache())
    arts = {n.key: cache.find(n.pipeline.name, n.stage, fps[n.key]) for n in feature}
    if None in arts.values():
        with _without_failpoints():
            for n in feature:
                arts[n.key] = run_node(cache, n, arts).artifact
    store = ArtifactStore(root)
    for n in feature:
        art = arts[n.key]
        assert art.fingerprint == fps[n.key], (n.key, art.fingerprint, fps[n.key])
        if store.find(n.pipeline.name, n.stage, art.fingerprint) is None:
            copy_artifact(art.uri, gfile.join(store.stage_root(n.pipeline.name, n.stage), art.version))
    return [n.key for n in feature]


# ---- bad inputs

CPP_LOG = re.compile(r"^[IWEF]\d{4} [\d:. ]+\d+ [\w./-]+:\d+\]|absl::InitializeLog|oneDNN custom operations",
                     re.M)


def _idx(path, magic, dims, payload):
    path.write_bytes(gzip.compress(struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload,
                                   mtime=0))


def write_idx(d, prefix: str, images, labels) -> None:
    """One split of an IDX source folder (prefix train or t10k) from uint8 N x 28 x 28 images and N labels."""
    n = len(labels)
    _idx(d / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, 28, 28), images.tobytes())
    _idx(d / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), labels.tobytes())


def bad_mnist_dirs(tmp_path):
    """{case: (folder, the file that is bad)} for a truncated file, a wrong magic and mismatched counts."""
    out = {}
    d = tmp_path / "truncated"
    d.mkdir()
    shutil.copy(CORRUPT, d / "train-images-idx3-ubyte.gz")
    shutil.copy(MNIST / "train-labels-idx1-ubyte.gz", d)
    out["truncated"] = (d, "train-images-idx3-ubyte.gz")
    d = tmp_path / "magic"
    d.mkdir()
    _idx(d / "train-images-idx3-ubyte.gz", 1234, (2, 28, 28), bytes(2 * 784))
    _idx(d / "train-labels-idx1-ubyte.gz", 2049, (2,), bytes(2))
    out["magic"] = (d, "train-images-idx3-ubyte.gz")
    d = tmp_path / "counts"
    d.mkdir()
    _idx(d / "train-images-idx3-ubyte.gz", 2051, (3, 28, 28), bytes(3 * 784))
    _idx(d / "train-labels-idx1-ubyte.gz", 2049, (2,), bytes(2))
    out["counts"] = (d, "train-labels-idx1-ubyte.gz")
    return out


def paired_dir(tmp_path, name, files):
    """A paired source folder from (split, file name, "ok" | "square" | "corrupt") triples."""
    from PIL import Image

    d = tmp_path / name
    for split, fname, kind in files:
        (d / split).mkdir(parents=True, exist_ok=True)
        if kind == "ok":
            Image.new("RGB", (128, 64), (10, 20, 30)).save(d / split / fname)
        elif kind == "square":
            Image.new("RGB", (64, 64)).save(d / split / fname)
        elif kind == "corrupt":
            Image.new("RGB", (128, 64)).save(d / split / fname)
            data = (d / split / fname).read_bytes()
            (d / split / fname).write_bytes(data[: len(data) // 3])
    return d


class PickleBomb:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_bomb(marker: str) -> bytes:
    return pickle.dumps(PickleBomb(marker))


# ---- tiny store artifacts

def _src():
    from artifacts.store import InputRef

    return InputRef("idx:/data", "f" * 64)


def build_into(payload: bytes):
    """A build function that writes data.bin (the payload) and sub/more.txt."""
    from artifacts import gfile

    def build(w):
        gfile.write_bytes(w.file("data.bin"), payload)
        gfile.makedirs(w.file("sub"))
        gfile.write_bytes(w.file("sub", "more.txt"), b"more")
    return build


def put(store, fp, payload=b"x", stage="ingest", inputs=None):
    """Commit a tiny artifact of pipeline "p" and return it."""
    return store.get_or_build("p", stage, fp, type="T", params={}, inputs=inputs or {"source": _src()},
                              code="c", build=build_into(payload)).artifact


def small_root(root: str):
    """p/ingest: an old artifact and the champion's input; p/train: the champion."""
    from artifacts.store import ArtifactStore

    store = ArtifactStore(root)
    old = put(store, "1" * 64, b"old")
    data = put(store, "2" * 64, b"data")
    model = put(store, "3" * 64, b"model", stage="train", inputs={"examples": data})
    store.set_champion("p", {"version": model.version, "artifacts": {"model": model.uri}})
    return store, old, data, model


# ---- processes

def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(name))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below pid now (the temporary Prefect server, Beam or Dask workers, ...)."""
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    """The pids still running (not gone, not zombies)."""
    left = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    left.add(p)
        except OSError:
            pass
    return left


# The heaviest signal and kill tests run every case under `make test-long`; the default suite runs
# a slice of them drawn with this seed (a new one each day, so CI covers every case over a week;
# TAPELINE_SLICE_SEED=N draws another, printed in pytest's header), to fit its 30-minute budget.
SLICE_SEED = os.environ.get("TAPELINE_SLICE_SEED") or __import__("datetime").date.today().isoformat()


def drawn(cases: list, keep: int, name: str) -> list:
    """cases as pytest params, all but `keep` of them (drawn with SLICE_SEED) marked long."""
    import random

    import pytest

    chosen = set(random.Random(f"{SLICE_SEED}/{name}").sample(range(len(cases)), min(keep, len(cases))))
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=() if i in chosen else pytest.mark.long)
            for i, c in enumerate(cases)]


# ---- a run stopped (SIGSTOP) past its lease, and a gc from another machine

def stop_boundary(pipeline: str, name: str) -> str:
    """A stage boundary of pipeline drawn with SLICE_SEED (any stage but the last, promote)."""
    import random

    from flows.registry import get

    stages = [s.name for s in get(pipeline).stages if s.name != "promote"]
    boundary = random.Random(f"{SLICE_SEED}/{name}").choice(stages)
    print(f"SIGSTOP after {pipeline}/{boundary} (TAPELINE_SLICE_SEED={SLICE_SEED})")
    return boundary


def stopped_past_lease(run, pauses, pipeline: str, boundary: str) -> None:
    """Wait for run (its own session; failpoint flow.after.PIPELINE/BOUNDARY@1:pause, a lease
    heartbeat of 0.5 s) to reach the boundary, SIGSTOP its group (what Ctrl-Z sends the
    foreground group) and wait past its lease's four missed heartbeats. SIGCONT lets it go on."""
    import signal
    import time

    paused = pauses / f"flow.after.{pipeline}_{boundary}.paused"
    deadline = time.time() + 900
    while not paused.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert paused.exists(), run.communicate(timeout=60)[1][-3000:]
    os.killpg(run.pid, signal.SIGSTOP)
    paused.with_suffix(".resume").touch()  # seen once it runs again
    time.sleep(3)


def can_unshare() -> bool:
    import subprocess

    try:
        return subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def from_another_host(env: dict, *args: str, cwd: str | None = None):
    """`tapeline ARGS` as another machine sees the root: a UTS namespace of its own with another
    host name (a container's view), so no process of this one can be told alive from there."""
    import subprocess
    import sys

    return subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$@"', "sh", sys.executable,
                           "-c", "import sys; from flows.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def woken(run) -> dict:
    """SIGCONT to a run stopped_past_lease; it must end well, having rebuilt what was collected
    while it was stopped. Its --json summary."""
    import json
    import signal

    os.killpg(run.pid, signal.SIGCONT)
    out, err = run.communicate(timeout=900)
    assert run.returncode == 0, err[-4000:]
    assert "was collected while this run was stopped: rebuilt" in err, err[-4000:]
    return json.loads(out)


def release(run) -> None:
    """Whatever a failed test left of a stopped run: woken and killed, its whole group."""
    import signal

    if run.poll() is None:
        os.killpg(run.pid, signal.SIGCONT)
        os.killpg(run.pid, signal.SIGKILL)
