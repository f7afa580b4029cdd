"""Issue 26: the data stages stream. Their memory does not grow with the data (a child process's
peak RSS, read with resource.getrusage), and the examples they write are the ones they wrote
before they streamed (decoded, in order; shard files and fingerprints changed once)."""
from __future__ import annotations

import hashlib
import json

from tests.conftest import MNIST, PEOPLE, run_py

# Runs in a child: the stages on 100 pairs (every code path warmed up), then on N pairs; prints
# the peak RSS after each. Pairs are 128x64 JPEGs of one colour each (under 1 KB on disk, 24 KB
# decoded), made here; the colour differs per pair, and the blue channel per split (no duplicates).
CHILD = r"""
import json, os, resource, sys
from PIL import Image
from tests.helpers import run_stages

base, n = sys.argv[1], int(sys.argv[2])
peaks = []
for k in (100, n):
    src = f"{base}/src{k}"
    for split, blue, m in (("train", 77, k), ("val", 200, 10)):
        os.makedirs(f"{src}/{split}")
        for i in range(m):
            Image.new("RGB", (128, 64), (i % 256, i // 256 % 256, blue)).save(f"{src}/{split}/{i}.jpg")
    run_stages(f"{base}/root{k}", "pix2pix", [f"data.source=paired:{src}", "data.image_size=32"], "preprocess")
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(peaks))
"""

# Measured on 2,000 pairs (MiB of peak RSS over the 100-pair run): before streaming (a298f4b,
# 4 shards) +116; streaming +3.
GROWTH_MIB = 32


def test_data_stage_memory_does_not_grow_with_the_pairs(tmp_path):
    proc = run_py(CHILD, str(tmp_path), "2000", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    assert large - small < GROWTH_MIB, (small, large)


def examples_digest(artifacts: dict, source: str) -> str:
    """sha256 of every example the data stages wrote, decoded, folder by folder (split, copy) in
    shard order (the order of the data), with the source's location taken out of the ids."""
    import glob
    import os

    import tensorflow as tf

    h = hashlib.sha256()
    for key, art in sorted(artifacts.items()):
        base = art.path()
        folders: dict[str, list[str]] = {}
        for f in sorted(glob.glob(os.path.join(base, "**", "data-*.tfrecord"), recursive=True)):
            folders.setdefault(os.path.relpath(os.path.dirname(f), base), []).append(f)
        for folder, files in sorted(folders.items()):
            h.update(f"{key}:{folder}".encode())
            for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
                feats = tf.train.Example.FromString(raw).features.feature
                ex = {k: [x.replace(source.encode(), b"SRC") if isinstance(x, bytes) else x
                          for x in getattr(v, v.WhichOneof("kind")).value] for k, v in sorted(feats.items())}
                h.update(repr(ex).encode())
    return h.hexdigest()


# What the stages wrote before they streamed (a298f4b, 4 shards per split). Not jittered: the
# jitter's seed takes the example id, which holds the source's path (the checkout's).
CASES = {
    "mnist-classifier": ([f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50"],
                         str(MNIST), "9658955c3026a7b36b63dbf2c9326e13bd28a90544865cf89e8ccb376dfabd5b"),
    "pix2pix": ([f"data.source=paired:{PEOPLE}", "data.max_examples=8", "data.image_size=32", "data.jitter=false"],
                str(PEOPLE), "bbf007ded7110e03f4addb849c2dfa984ed23eac0d91ea0854c3382ccd221a56"),
}


def stage_digest(root, pipeline: str) -> str:
    from tests.helpers import run_stages

    sets, source, _ = CASES[pipeline]
    done, _ = run_stages(root, pipeline, sets, "preprocess")
    return examples_digest(done, source)


def test_the_examples_written_are_the_ones_written_before_streaming(tmp_path):
    for pipeline, (_, _, golden) in CASES.items():
        assert stage_digest(str(tmp_path / pipeline), pipeline) == golden, pipeline


def test_the_duplicate_check_reads_hashes_shard_by_shard(tmp_path):
    """validate.duplicates on hash files as shards write them: distinct images in both splits are
    counted once (a repeat inside a split is not another), and the example named is the first index
    of the smallest common hash in each split, whichever shard holds it."""
    import io

    import numpy as np

    from components.stages import validate

    rng = np.random.default_rng(7)
    pool = rng.integers(0, 256, (20, 16), np.uint8)  # 20 distinct 16-byte hashes

    def write(name, rows):
        h = np.empty(len(rows), validate.HASHES)
        h["h"] = np.frombuffer(pool[[k for k, _ in rows]].tobytes(), "V16")
        h["i"] = [i for _, i in rows]
        buf = io.BytesIO()
        np.save(buf, h, allow_pickle=False)
        (tmp_path / name).write_bytes(buf.getvalue())
        return str(tmp_path / name)

    # train: two shards; hashes 3 and 5 are also in val, 3 twice in train
    train = [write("t0.npy", [(0, 0), (3, 1), (1, 2)]), write("t1.npy", [(5, 3), (3, 4), (2, 5)])]
    val = [write("v0.npy", [(9, 0), (5, 1), (3, 2), (3, 3)])]
    first = min((3, 5), key=lambda k: pool[k].tobytes())
    want = (2, {3: 1, 5: 3}[first], {3: 2, 5: 1}[first])
    assert validate.duplicates(train, val) == want
    assert validate.duplicates(val, train) == (2, want[2], want[1])
    assert validate.duplicates(train, [write("v1.npy", [(7, 0)])]) == (0, -1, -1)
