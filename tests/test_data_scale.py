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
    run_stages(f"{base}/root{k}", "pix2pix", [f"data.source=paired:{src}", "data.image_size=16"], "preprocess")
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
