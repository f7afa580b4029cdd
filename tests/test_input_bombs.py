"""Small inputs that expand past memory: a gzip IDX bomb and an image-dimension bomb end in the
one-line error (exit 2) under an address-space limit the test sets, never an OOM kill."""
from __future__ import annotations

import shutil
import struct
import zlib

import pytest

from tests.conftest import MNIST, run_py

LIMIT = 768 << 20  # `tapeline plan` peaks near 180 MiB of address space; a bomb needs gigabytes

UNDER_LIMIT = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from flows.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _gzip_stream(path, head: bytes, zeros: int) -> None:
    """head, then `zeros` zero bytes, gzipped a chunk at a time (a few MB on disk)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(16 << 20)
    with open(path, "wb") as f:
        f.write(z.compress(head))
        for _ in range(zeros // len(chunk)):
            f.write(z.compress(chunk))
        f.write(z.flush())


def _png(path, width: int, height: int) -> None:
    """A grayscale PNG of width x height zero pixels: ~100 KB on disk per 100 megapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _plan(tmp_path, pipeline: str, source: str):
    return run_py(UNDER_LIMIT, str(LIMIT), "plan", pipeline, "--root", str(tmp_path / "root"),
                  "--set", f"data.source={source}", timeout=300)


def _one_line(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("tapeline: error:") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(w in lines[-1] for w in words), lines[-1]


@pytest.mark.parametrize("case", ["stream past its header", "header past memory"])
def test_a_gzip_idx_bomb_is_one_line_under_a_memory_limit(tmp_path, case):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST / name, d)
    n = 22699 if case == "stream past its header" else 2 ** 31
    # 2 GiB of pixels behind a header that claims 22699 images (18 MB): inflating it all needs 2 GiB
    _gzip_stream(d / "train-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, n, 28, 28),
                 2 << 30 if n == 22699 else 16 << 20)
    proc = _plan(tmp_path, "mnist-classifier", f"idx:{d}")
    _one_line(proc, "train-images-idx3-ubyte.gz", "more than" if n == 22699 else "claims")


def test_an_image_dimension_bomb_is_one_line_under_a_memory_limit(tmp_path):
    from PIL import Image

    d = tmp_path / "pairs"
    (d / "train").mkdir(parents=True)
    Image.new("RGB", (128, 64)).save(d / "train" / "1.jpg")
    _png(d / "train" / "2.png", 14000, 7000)  # 98 megapixels: 294 MB as RGB, more as PIL decodes it
    assert (d / "train" / "2.png").stat().st_size < 1 << 20
    proc = _plan(tmp_path, "pix2pix", f"paired:{d}")
    _one_line(proc, "2.png", "data.max_image_pixels")
    # the key raises the limit: then the header passes (and the plan, which decodes nothing, too)
    ok = run_py(UNDER_LIMIT, str(LIMIT), "plan", "pix2pix", "--root", str(tmp_path / "root"),
                "--set", f"data.source=paired:{d}", "--set", "data.max_image_pixels=100000000", timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
