"""tf.train.Example encoding shared by the data stages, and the tf.data reader the others use."""
from __future__ import annotations

import io
import math
import re
from typing import Any, Iterable, Iterator

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError

NO_LABEL = -1  # what iter_examples gives for an example without a label


def encode(ex: dict[str, Any]) -> bytes:
    """bytes and str values become bytes features, ints and int tuples int64 features.
    Filled in place on the protobuf: three times faster than building Feature objects.
    Serialized deterministically (map keys sorted): the feature map's order otherwise varies
    from process to process, and the same example must be the same bytes on every worker."""
    from tensorflow.core.example import example_pb2

    proto = example_pb2.Example()
    feats = proto.features.feature
    for k, v in ex.items():
        if isinstance(v, (bytes, np.bytes_)):
            feats[k].bytes_list.value.append(bytes(v))
        elif isinstance(v, str):
            feats[k].bytes_list.value.append(v.encode())
        elif isinstance(v, (tuple, list)):
            feats[k].int64_list.value.extend(map(int, v))
        else:
            feats[k].int64_list.value.append(int(v))
    return proto.SerializeToString(deterministic=True)


def iter_examples(path: str, batch: int = 64) -> Iterator[dict[str, Any]]:
    """The examples of one ingested shard, one at a time (id, index, image, format, label, shape),
    parsed a small batch at a time by tf.io.parse_example rather than one protobuf at a time in
    Python: memory follows the batch, not the shard."""
    import tensorflow as tf

    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64),
            "image": tf.io.FixedLenFeature([], tf.string),
            "format": tf.io.FixedLenFeature([], tf.string, default_value=b"encoded"),
            "label": tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
            "shape": tf.io.RaggedFeature(tf.int64)}
    for raw in tf.data.TFRecordDataset(path).batch(batch):
        b = tf.io.parse_example(raw, spec)
        cols = {k: b[k].numpy().tolist() for k in spec if k != "shape"}
        # RaggedTensor.to_list is slow: split the flat values ourselves
        flat, splits = b["shape"].flat_values.numpy().tolist(), b["shape"].row_splits.numpy().tolist()
        cols["shape"] = [flat[a:z] for a, z in zip(splits, splits[1:])]
        for i in range(len(cols["id"])):
            yield {k: v[i] for k, v in cols.items()}


def open_image(data: bytes, where: str, max_pixels: int):
    """A PIL image of encoded bytes whose header (read without decoding) says it has at most
    max_pixels pixels; a UserError naming where otherwise. Decode it inside `with`."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))  # the header only: decoding waits for load()
    except Exception as e:
        raise UserError(f"undecodable image: {image_error(e)}", where, "replace or remove the file") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise UserError(f"image is {w} x {h} = {w * h} pixels, more than data.max_image_pixels={max_pixels}",
                        where, "give smaller images, or raise --set data.max_image_pixels=N if this is meant")
    return im


def image_error(e: Exception) -> str:
    """PIL's reason, without the in-memory buffer's address it names (the line stays the same)."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)) or type(e).__name__


def decode_rgb(data: bytes, where: str, max_pixels: int) -> np.ndarray:
    """An encoded image (JPEG, PNG) as H x W x 3 uint8; a UserError naming where if it is not one
    or has more than max_pixels pixels (checked from its header, before decoding). Every mode keeps
    its values: 16-bit samples are scaled to 8 bits (PIL's convert would clip them to 255),
    palette, grayscale with alpha, CMYK and 1-bit images are converted, an EXIF orientation is
    applied, and floating-point images are refused."""
    from PIL import ImageOps

    with open_image(data, where, max_pixels) as im:
        try:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                wide = np.asarray(im, dtype=np.int64)
                top = 65535 if im.mode != "I" or wide.max(initial=0) > 255 else 255
                if wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
                    raise UserError(f"image samples outside 0..65535 (mode {im.mode})", where,
                                    "save it as an 8- or 16-bit image")
                gray = np.rint(wide * (255 / top)).astype(np.uint8) if top != 255 else wide.astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            if im.mode == "F":
                raise UserError("floating-point image (mode F)", where, "save it as an 8- or 16-bit image")
            if im.mode in ("LA", "PA"):
                im = im.convert("L" if im.mode == "LA" else "RGBA")
            return np.asarray(im.convert("RGB"))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"undecodable image: {image_error(e)}", where, "replace or remove the file") from None


def pixels(data: bytes, fmt: bytes, shape, where: str, max_pixels: int) -> np.ndarray:
    """One stored example's pixels as H x W x C uint8, whichever way ingest stored them: raw
    bytes of `shape`, or an encoded image (RGB); a UserError naming where if they are neither."""
    if fmt != b"raw":
        return decode_rgb(data, where, max_pixels)
    if len(data) != math.prod(shape):
        raise UserError(f"undecodable image: {len(data)} raw bytes, not {shape}", where, "replace or remove the file")
    return np.frombuffer(data, np.uint8).reshape(shape)


def arrays(artifact, split: str, features: tuple[str, ...], limit: int | None = None) -> dict[str, np.ndarray]:
    """A whole preprocessed split (or its first `limit` examples) as numpy arrays by feature."""
    ds = dataset(artifact, split, features)
    if limit:
        ds = ds.take(limit)
    batches = list(ds.batch(1000).as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def shard_name(i: int, n: int) -> str:
    return f"data-{i:05d}-of-{n:05d}.tfrecord"


def shard_writer(path: str):
    """A TFRecord writer of one shard (a context manager): records written one at a time."""
    import tensorflow as tf

    return tf.io.TFRecordWriter(path)


def write_shard(path: str, records: Iterable[bytes]) -> int:
    import tensorflow as tf

    count = 0
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
            count += 1
    return count


SHARD_BYTES = 64 << 20  # what one ingest shard holds at most when beam.shards=0 (the default)


def auto_shards(nbytes: int, count: int) -> int:
    """Shards for a split of `count` examples taking `nbytes` as stored: a large split gets many
    (each a unit of parallel work of at most SHARD_BYTES), a small one one."""
    return max(1, min(count, math.ceil(nbytes / SHARD_BYTES)))


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges, so shards read in order give the original order."""
    shards = max(1, min(shards, count)) if count else 1
    return [(count * i // shards, count * (i + 1) // shards) for i in range(shards)]


def load_transform(artifact) -> dict:
    return gfile.read_json(artifact.path("transform.json"))


def unnormalize(x, normalize: dict):
    """Images back in pixel values (0..255, float) from the normalization that parse_fn applied
    and transform.json records as `normalize`: the one inverse for every consumer."""
    return (x - normalize["offset"]) / normalize["scale"]


def split_files(artifact, split: str, copy: int = 0) -> list[str]:
    return gfile.glob(artifact.path(split, f"copy-{copy}", "data-*.tfrecord"))


def parse_fn(transform: dict, features: tuple[str, ...], batched: bool = False):
    """serialized record(s) -> {feature: image} (the layout's features) and "label" if the data
    is labeled, as float32 in the recorded range.
    Normalization happens here, exactly as transform.json records it, for every consumer.
    batched=True parses a vector of records at once (after shuffling the compact serialized
    records: a shuffle buffer of bytes, not of float32 images)."""
    import tensorflow as tf

    h, w, c = transform["image_shape"]
    scale, offset = transform["normalize"]["scale"], transform["normalize"]["offset"]
    labeled = transform.get("labeled", False)
    spec = {f: tf.io.FixedLenFeature([], tf.string) for f in features}
    if labeled:
        spec["label"] = tf.io.FixedLenFeature([], tf.int64)
    shape = [-1, h, w, c] if batched else [h, w, c]

    def image(raw):
        x = tf.reshape(tf.io.decode_raw(raw, tf.uint8), shape)
        return tf.cast(x, tf.float32) * scale + offset

    def parse(record):
        ex = (tf.io.parse_example if batched else tf.io.parse_single_example)(record, spec)
        out = {f: image(ex[f]) for f in features}
        if labeled:
            out["label"] = tf.cast(ex["label"], tf.int32)
        return out

    return parse


def dataset(artifact, split: str, features: tuple[str, ...], copy: int = 0):
    """An unbatched, ordered tf.data.Dataset of one preprocessed split: the layout's features."""
    import tensorflow as tf

    files = split_files(artifact, split, copy)
    return tf.data.TFRecordDataset(files).map(parse_fn(load_transform(artifact), features),
                                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
