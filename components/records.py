"""tf.train.Example encoding shared by the data stages, and the tf.data reader the others use."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from artifacts import gfile


def _bytes(v: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(*v: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))


def encode(ex: dict[str, Any]) -> bytes:
    """bytes values become bytes features, ints and int tuples int64 features."""
    import tensorflow as tf

    feats = {}
    for k, v in ex.items():
        if isinstance(v, (bytes, np.bytes_)):
            feats[k] = _bytes(bytes(v))
        elif isinstance(v, str):
            feats[k] = _bytes(v.encode())
        elif isinstance(v, (tuple, list)):
            feats[k] = _ints(*map(int, v))
        else:
            feats[k] = _ints(int(v))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def decode(record: bytes) -> dict[str, Any]:
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    out = {}
    for k, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        vals = list(getattr(f, kind).value)
        out[k] = vals[0] if len(vals) == 1 and k != "shape" else vals
    return out


def shard_name(i: int, n: int) -> str:
    return f"data-{i:05d}-of-{n:05d}.tfrecord"


def write_shard(path: str, records: Iterable[bytes]) -> int:
    import tensorflow as tf

    count = 0
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
            count += 1
    return count


def read_shard(path: str) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges, so shards read in order give the original order."""
    shards = max(1, min(shards, count)) if count else 1
    return [(count * i // shards, count * (i + 1) // shards) for i in range(shards)]


def load_transform(artifact) -> dict:
    return gfile.read_json(artifact.path("transform.json"))


def split_files(artifact, split: str, copy: int = 0) -> list[str]:
    return gfile.glob(artifact.path(split, f"copy-{copy}", "data-*.tfrecord"))


def parse_fn(transform: dict):
    """serialized record -> {"image", "input"?, "label"?} as float32 in the recorded range.
    Normalization happens here, exactly as transform.json records it, for every consumer."""
    import tensorflow as tf

    h, w, c = transform["image_shape"]
    scale, offset = transform["normalize"]["scale"], transform["normalize"]["offset"]
    paired = transform["layout"] == "paired"
    labeled = transform.get("labeled", False)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if paired:
        spec["input"] = tf.io.FixedLenFeature([], tf.string)
    if labeled:
        spec["label"] = tf.io.FixedLenFeature([], tf.int64)

    def image(raw):
        x = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [h, w, c])
        return tf.cast(x, tf.float32) * scale + offset

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        out = {"image": image(ex["image"])}
        if paired:
            out["input"] = image(ex["input"])
        if labeled:
            out["label"] = tf.cast(ex["label"], tf.int32)
        return out

    return parse


def dataset(artifact, split: str, copy: int = 0):
    """An unbatched, ordered tf.data.Dataset of one preprocessed split."""
    import tensorflow as tf

    files = split_files(artifact, split, copy)
    return tf.data.TFRecordDataset(files).map(parse_fn(load_transform(artifact)),
                                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
