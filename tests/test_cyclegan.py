"""cyclegan's own pieces: its unpaired training stream and its snapshot rows. Its end-to-end run
is in test_small_runs, one train step in test_recipes, Ctrl-C and the exact resume in test_interrupt."""
from __future__ import annotations

import numpy as np

from tests.conftest import PEOPLE
from tests.helpers import run_stages

N = 12  # training pairs


def _index(rows: np.ndarray, x: np.ndarray) -> int:
    """Which of the ordered examples x is (rows: N x H x W x C)."""
    hits = np.flatnonzero((rows == x).reshape(len(rows), -1).all(axis=1))
    assert len(hits) == 1, f"{len(hits)} matches"
    return int(hits[0])


def test_each_domain_is_shuffled_on_its_own_and_the_stream_resumes_exactly(tmp_path):
    import tensorflow as tf

    from components import tfrecords
    from components.stages import preprocess
    from pipelines.cyclegan import UNPAIRED

    done, _ = run_stages(str(tmp_path / "root"), "cyclegan", [
        f"data.source=paired:{PEOPLE}", f"data.max_examples={N}", "data.image_size=32", "data.jitter_copies=2"],
        "preprocess")
    art = done["cyclegan/preprocess"]
    parse = tfrecords.parse_fn(preprocess.transform(art), UNPAIRED.features, batched=True)
    copies = [tfrecords.split_files(art, "train", k) for k in range(2)]

    def stream():
        return UNPAIRED.stream(copies, 1, 1000, 0, parse, lambda b: b)

    s = stream()
    orders = []
    for epoch in range(2):
        ordered = list(tfrecords.dataset(art, "train", UNPAIRED.features, copy=epoch).as_numpy_iterator())
        photos = np.stack([e["image"] for e in ordered])
        outlines = np.stack([e["input"] for e in ordered])
        s.start(epoch)
        batches = [next(s.iterator) for _ in range(N)]
        x = [_index(photos, b["image"][0].numpy()) for b in batches]
        y = [_index(outlines, b["input"][0].numpy()) for b in batches]
        # every example once a domain an epoch, each domain in an order of its own
        assert sorted(x) == sorted(y) == list(range(N)), (x, y)
        assert x != y and sum(a == b for a, b in zip(x, y)) < N // 2, (x, y)
        orders.append((x, y))
    assert orders[0] != orders[1]  # a new shuffle each epoch

    # the epoch's iterator is in the checkpoint: a restored stream goes on with the same batches
    s = stream()
    s.start(1)
    for _ in range(5):
        next(s.iterator)
    path = tf.train.Checkpoint(data=s).write(str(tmp_path / "ckpt" / "c"))
    rest = [next(s.iterator) for _ in range(N - 5)]
    again = stream()
    again.start(1)
    tf.train.Checkpoint(data=again).read(path).assert_consumed()
    for a, b in zip(rest, (next(again.iterator) for _ in range(N - 5))):
        assert all(np.array_equal(a[k], b[k]) for k in ("image", "input"))


def test_snapshots_show_input_translation_and_reconstruction_of_both_domains():
    from pipelines.cyclegan import UNPAIRED

    rng = np.random.default_rng(0)
    n, k = 4, 3
    examples = [{"image": rng.integers(0, 255, (8, 8, 3), np.uint8), "input": rng.integers(0, 255, (8, 8, 3), np.uint8)}
                for _ in range(2 * n)]
    sample = rng.integers(0, 255, (2 * n, 2, 8, 8, 3), np.uint8)
    snap = UNPAIRED.snapshot(examples, sample, k)
    assert snap.titles == ("Input", "Translation", "Reconstruction")
    assert len(snap.rows) == 2 * k
    for i in range(k):  # photos first, then outlines, each with its own sample rows
        assert np.array_equal(snap.rows[i][0], examples[i]["image"]) and np.array_equal(snap.rows[i][1], sample[i, 0])
        assert np.array_equal(snap.rows[k + i][0], examples[i]["input"])
        assert np.array_equal(snap.rows[k + i][2], sample[n + i, 1])
