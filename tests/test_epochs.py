"""The epoch stream restores exactly from a checkpoint taken after any batch, at any batch size."""
from __future__ import annotations

import numpy as np
import pytest


def _records(path, n):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(n):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString())
    return str(path)


def _stream(files, batch, buffer):
    import tensorflow as tf

    from components.epochs import EpochStream

    parse = lambda s: tf.io.parse_example(s, {"i": tf.io.FixedLenFeature([], tf.int64)})["i"]  # noqa: E731
    return EpochStream(files, batch, buffer, seed=7, parse=parse, to_batch=lambda x: x)


def _take(stream, steps_per_epoch, start, n):
    """Batches start..start+n-1 the way the engine reads them (epoch from the step)."""
    out = []
    for step in range(start, start + n):
        stream.start(step // steps_per_epoch)
        out.append(next(stream.iterator).numpy())
    return out


# the DCGAN's default batch and buffer over a small split (partial last batch, buffer > data),
# and the classifier's (buffer < data); copies: pix2pix's jitter copies, epoch e reads e mod K
@pytest.mark.parametrize("n,batch,buffer,copies", [(600, 256, 60000, 1), (600, 32, 1024, 1), (90, 1, 400, 3)])
def test_restore_after_every_batch_gives_the_uninterrupted_stream(tmp_path, n, batch, buffer, copies):
    import tensorflow as tf

    files = [[_records(tmp_path / f"c{k}.tfrecord", n)] for k in range(copies)]
    spe = -(-n // batch)
    total = 3 * spe
    ref = _take(_stream(files, batch, buffer), spe, 0, total)
    assert sum(len(b) for b in ref[:spe]) == n and sorted(np.concatenate(ref[:spe])) == list(range(n))
    assert not np.array_equal(np.concatenate(ref[:spe]), np.concatenate(ref[spe:2 * spe]))  # epochs reshuffle
    points = range(total) if total <= 12 else sorted({0, 1, spe - 1, spe, spe + 1, 2 * spe - 1, 2 * spe + 3})
    for k in points:
        s = _stream(files, batch, buffer)
        _take(s, spe, 0, k)
        s.start(k // spe)  # what the engine does before it saves
        path = tf.train.Checkpoint(data=s).save(str(tmp_path / f"ck{k}" / "c"))
        fresh = _stream(files, batch, buffer)
        fresh.start(k // spe)
        tf.train.Checkpoint(data=fresh).restore(path).assert_existing_objects_matched()
        got = _take(fresh, spe, k, total - k)
        assert all(np.array_equal(a, b) for a, b in zip(ref[k:], got)), f"restored after batch {k}"
