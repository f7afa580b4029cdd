"""The training input: one deterministic, checkpointable tf.data stream per epoch.

Why not `shuffle(reshuffle_each_iteration=True).batch().repeat()`: the seed generator behind a
reshuffling shuffle inside `repeat` does not restore exactly. Restored in the middle of an epoch
after the first, its next epoch can take the seed of the epoch after that (TF 2.21; seen with
600 records at batch 256: saved after 4 batches, the restored stream skips epoch 3's order), so
a resumed run trained on other data than an uninterrupted one. Here epoch e's order is a pure
function of (seed, e): its own dataset with a fixed shuffle seed, built when the epoch starts.
The checkpoint holds only the iterator of the current epoch; which epoch that is follows from
the step, so nothing about past epochs has to be restored at all.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf


class EpochStream(tf.Module):
    """`.iterator` yields global batches of the current epoch; `start(e)` begins epoch e.

    copies[k] lists the record files of jitter copy k; epoch e reads copy e mod K. Each epoch
    ends with a partial batch when the data does not divide, exactly like the seeds' loops."""

    def __init__(self, copies: Sequence[Sequence[str]], batch_size: int, shuffle_buffer: int, seed: int,
                 parse: Callable, to_batch: Callable):
        super().__init__(name="epoch_stream")
        self._copies = [list(files) for files in copies]
        self._batch, self._buffer, self._seed = batch_size, shuffle_buffer, seed
        self._parse, self._to_batch = parse, to_batch
        self.epoch = -1

    def dataset(self, epoch: int) -> tf.data.Dataset:
        files = self._copies[epoch % len(self._copies)]
        # shuffle the serialized records (bytes, not float32 images), then parse whole batches
        d = tf.data.TFRecordDataset(files).shuffle(self._buffer, seed=epoch_seed(self._seed, epoch),
                                                   reshuffle_each_iteration=False)
        d = d.batch(self._batch).map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return d.map(self._to_batch).prefetch(2)

    def start(self, epoch: int) -> None:
        """Make epoch `epoch` current. Tracked as an attribute, so a checkpoint saved from now on
        holds this epoch's iterator (call it before restoring one saved during that epoch)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.iterator = iter(self.dataset(epoch))


def epoch_seed(seed: int, epoch: int) -> int:
    """A shuffle seed per (run seed, epoch); epochs differ, runs with the same seed agree."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**31 - 1)
