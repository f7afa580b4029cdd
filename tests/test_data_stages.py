"""ingest, validate, preprocess on ../shared/data: counts, statistics, determinism, bad input."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from artifacts import gfile
from artifacts.errors import UserError
from components import tfrecords
from tests.conftest import MNIST, PEOPLE, tapeline
from tests.helpers import bad_mnist_dirs, paired_dir, run_stages


def test_idx_ingest_counts_and_statistics_match_numpy(root):
    done, _ = run_stages(root, "mnist-classifier", [f"data.source=idx:{MNIST}"], "validate")
    ingest = done["mnist-classifier/ingest"]
    assert gfile.read_json(ingest.path("splits.json"))["splits"] == {"train": 22699, "test": 10000}
    stats = gfile.read_json(done["mnist-classifier/validate"].path("statistics.json"))
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    x = np.frombuffer(raw, np.uint8, offset=16).astype(np.float64)
    labels = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    t = stats["test"]
    assert t["count"] == 10000 and t["shapes"] == {"[28, 28, 1]": 10000}
    assert t["pixels"]["mean"] == pytest.approx(x.mean(), rel=1e-9)
    assert t["pixels"]["std"] == pytest.approx(x.std(), rel=1e-6)
    assert (t["pixels"]["min"], t["pixels"]["max"]) == (x.min(), x.max())
    assert t["labels"] == {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}


def test_max_examples_and_paired_ingest_with_odd_heights(tmp_path):
    done, _ = run_stages(str(tmp_path / "r"), "pix2pix", [f"data.source=paired:{PEOPLE}"], "validate")
    assert gfile.read_json(done["pix2pix/ingest"].path("splits.json"))["splits"] == {"train": 100, "val": 55}
    shapes = gfile.read_json(done["pix2pix/validate"].path("statistics.json"))["train"]["shapes"]
    assert "[157, 512, 3]" in shapes and shapes["[256, 512, 3]"] == 86
    done, _ = run_stages(str(tmp_path / "r"), "mnist-classifier",
                         [f"data.source=idx:{MNIST}", "data.max_examples=250"], "ingest")
    assert gfile.read_json(done["mnist-classifier/ingest"].path("splits.json"))["splits"] == {"train": 250, "test": 250}


def _preprocess(root, seed, copies=2):
    done, _ = run_stages(root, "pix2pix", [f"data.source=paired:{PEOPLE}", "data.image_size=64",
                                           f"data.jitter_copies={copies}", f"seed={seed}"], "preprocess")
    art = done["pix2pix/preprocess"]
    return art, {rel: gfile.read_bytes(art.path(rel)) for rel in art.manifest["files"]}


def test_preprocess_is_byte_identical_for_a_seed_and_differs_for_another(tmp_path):
    _, a = _preprocess(str(tmp_path / "a"), 0)
    _, b = _preprocess(str(tmp_path / "b"), 0)
    _, c = _preprocess(str(tmp_path / "c"), 1)
    assert a == b
    jittered = [k for k in a if k.startswith("train/")]
    assert any(a[k] != c[k] for k in jittered)
    assert all(a[k] == c[k] for k in a if k.startswith("val/"))  # no jitter on val


def test_jitter_keeps_input_and_target_aligned(tmp_path):
    from components.layouts import PAIRED, example_rng, jitter_pair
    from components.stages.preprocess import Params

    p = Params(seed=0, layout=PAIRED, size=64, channels=3, normalize="symmetric", train_splits=("train",),
               eval_split="val", jitter=True, jitter_size=72, jitter_copies=2, val_holdout=0,
               val_max_share=0.2, max_image_pixels=10 ** 6)
    # a pair whose halves are the same picture: any jitter must keep them equal
    half = np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)
    for copy in range(8):
        rng = example_rng(0, "x", copy)
        inp, tar = jitter_pair(half, half.copy(), p, rng)
        assert inp.shape == (64, 64, 3) and np.array_equal(inp, tar)
    art, _ = _preprocess(str(tmp_path / "r"), 0, copies=1)
    ex = next(tfrecords.dataset(art, "train", PAIRED.features).as_numpy_iterator())
    assert ex["input"].shape == ex["image"].shape == (64, 64, 3)
    assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0


@pytest.mark.parametrize("case", ["truncated", "magic", "counts"])
def test_bad_idx_files_fail_with_one_line_naming_the_file(tmp_path, case):
    d, name = bad_mnist_dirs(tmp_path)[case]
    root = tmp_path / "root"
    proc = tapeline("run", "mnist-classifier", "--root", str(root), "--set", f"data.source=idx:{d}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tapeline: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and name in lines[0]
    assert not list(root.glob("*/*/*/_COMMITTED"))


@pytest.mark.parametrize("case,expect", [("corrupt", "2.jpg"), ("square", "2.jpg"), ("empty", "val"),
                                         ("missing", "nowhere")])
def test_bad_pairs_fail_with_one_line_and_nothing_committed(tmp_path, case, expect):
    files = [("train", "1.jpg", "ok"), ("val", "1.jpg", "ok")]
    if case in ("corrupt", "square"):
        files.append(("train", "2.jpg", case))
    d = paired_dir(tmp_path, "pairs", files)
    if case == "empty":
        for f in (d / "val").iterdir():
            f.unlink()
    if case == "missing":
        d = tmp_path / "nowhere"
    root = tmp_path / "root"
    with pytest.raises(UserError) as err:
        run_stages(str(root), "pix2pix", [f"data.source=paired:{d}", "data.image_size=32"], "preprocess")
    assert expect in err.value.line()
    assert not list(root.glob("*/*/*/_COMMITTED"))


def test_a_pair_in_two_splits_is_reported_by_validate(tmp_path):
    d = paired_dir(tmp_path, "pairs", [("train", "1.jpg", "ok"), ("val", "7.jpg", "ok")])
    with pytest.raises(UserError) as err:
        run_stages(str(tmp_path / "r"), "pix2pix", [f"data.source=paired:{d}"], "validate")
    assert "in both train and val" in err.value.line()
    assert f"e.g. paired:{d}#train/1.jpg = paired:{d}#val/7.jpg" in err.value.line()  # read back by index
    done, _ = run_stages(str(tmp_path / "r"), "pix2pix", [f"data.source=paired:{d}", "validate.duplicates=warn"],
                         "validate")
    anomalies = gfile.read_json(done["pix2pix/validate"].path("anomalies.json"))
    assert [a["kind"] for a in anomalies] == ["duplicate_across_splits"]
