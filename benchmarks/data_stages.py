"""Issue 3: ingest + validate + preprocess of all of Fashion-MNIST (70,000 images) on Beam's
DirectRunner, against a plain single-process numpy -> TFRecord conversion of the same files
(decode the IDX files, the same statistics, uint8 pixels + label + id written as TFRecords:
the same bytes tapeline stores, normalization being applied when read).
Target: the Beam stages within 3x of the plain conversion."""
from __future__ import annotations

import gzip
import os
import sys
import time

import numpy as np

from common import FASHION, report, run_stages, scratch_root


def plain_conversion(src: str, out: str) -> int:
    """What a one-off script would do: numpy reads the IDX files, writes one TFRecord per split."""
    import tensorflow as tf

    n = 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = np.frombuffer(gzip.decompress(open(f"{src}/{prefix}-images-idx3-ubyte.gz", "rb").read()),
                               np.uint8, offset=16).reshape(-1, 28, 28, 1)
        labels = np.frombuffer(gzip.decompress(open(f"{src}/{prefix}-labels-idx1-ubyte.gz", "rb").read()),
                               np.uint8, offset=8)
        x = images.astype(np.float64)
        _stats = (x.mean(), x.std(), x.min(), x.max(), np.bincount(labels, minlength=10))
        with tf.io.TFRecordWriter(f"{out}/{split}.tfrecord") as w:
            for i in range(len(images)):
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[i].tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[i])])),
                    "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{split}/{i}".encode()]))}))
                w.write(ex.SerializeToString())
                n += 1
    return n


def main() -> int:
    if not os.path.isdir(FASHION):
        print(f"benchmark needs Fashion-MNIST at {FASHION} (make data, or set TAPELINE_FASHION)")
        return 2
    import tensorflow as tf  # noqa: F401 - imported before timing, as both sides need it

    t = time.perf_counter()
    n = plain_conversion(FASHION, scratch_root("plain"))
    plain = time.perf_counter() - t

    stages = run_stages(scratch_root("beam"), "fashion-dcgan", [f"data.source=idx:{FASHION}"],
                        ("ingest", "validate", "preprocess"))
    total = sum(s for s, _ in stages.values())
    rows = [("plain numpy -> TFRecord (%d examples)" % n, plain, "s")]
    rows += [(f"tapeline {k} (Beam {os.environ.get('BEAM_RUNNER', 'DirectRunner')})", s, "s")
             for k, (s, _) in stages.items()]
    rows += [("tapeline ingest + validate + preprocess", total, "s"),
             ("ratio (tapeline / plain), target <= 3", total / plain, "x")]
    report("data stages on all of Fashion-MNIST", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
