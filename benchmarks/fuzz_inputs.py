"""The fuzzer's inputs: clean IDX files and JPEG pairs, and the seeded mutations of each kind."""
from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import struct

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
KINDS = ("idx-header", "idx-count", "idx-truncate", "idx-gzip", "jpeg-bytes", "paired-files", "paired-names")


# -- the clean inputs each case mutates ----------------------------------------------------------
def _idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def base_idx(d: str, n: int = 16) -> None:
    """The first n examples of each MNIST split, re-encoded as the four IDX .gz files."""
    os.makedirs(d, exist_ok=True)
    for prefix in ("train", "t10k"):
        with gzip.open(os.path.join(MNIST, f"{prefix}-images-idx3-ubyte.gz")) as f:
            images = f.read(16 + n * 784)[16:]
        with gzip.open(os.path.join(MNIST, f"{prefix}-labels-idx1-ubyte.gz")) as f:
            labels = f.read(8 + n)[8:]
        _write(d, f"{prefix}-images-idx3-ubyte.gz", gzip.compress(_idx_bytes(2051, (n, 28, 28), images)))
        _write(d, f"{prefix}-labels-idx1-ubyte.gz", gzip.compress(_idx_bytes(2049, (n,), labels)))


def _pair(rng: random.Random, w: int = 64, h: int = 32, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A side-by-side pair of random blocks (distinct per call, so no duplicates across splits)."""
    from PIL import Image

    im = Image.frombytes("RGB", (w // 8, max(h // 8, 1)), bytes(rng.getrandbits(8) for _ in range(
        3 * (w // 8) * max(h // 8, 1)))).resize((w, h), Image.NEAREST).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def base_paired(d: str, rng: random.Random) -> None:
    for split, n in (("train", 4), ("val", 2)):
        os.makedirs(os.path.join(d, split))
        for i in range(n):
            _write(os.path.join(d, split), f"{i}.jpg", _pair(rng))


def _write(d: str, name: str, data: bytes) -> None:
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def _read(d: str, name: str) -> bytes:
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


# -- mutations: each returns a short description of what it did --------------------------------
def _idx_file(rng):
    return rng.choice(["train", "t10k"]) + rng.choice(["-images-idx3-ubyte.gz", "-labels-idx1-ubyte.gz"])


def mutate_idx_header(rng, d):
    name = _idx_file(rng)
    raw = bytearray(gzip.decompress(_read(d, name)))
    ndim = 3 if "images" in name else 1
    field = rng.randrange(1 + ndim)  # 0: magic, then the dimensions
    value = rng.choice([0, 1, 2, 3, 27, 29, 255, 2049, 2051, 0x0800 | rng.randrange(256),
                        0xFFFFFFFF, rng.getrandbits(32)])
    raw[4 * field:4 * field + 4] = struct.pack(">I", value)
    _write(d, name, gzip.compress(bytes(raw)))
    return f"{name} header field {field} = {value}"


def mutate_idx_count(rng, d):
    """Images and labels that disagree: extra or missing records, with or without a matching header."""
    name = _idx_file(rng)
    raw = gzip.decompress(_read(d, name))
    ndim = 3 if "images" in name else 1
    dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))
    rec = 784 if ndim == 3 else 1
    body = raw[4 + 4 * ndim:]
    delta = rng.choice([-dims[0], -3, -1, 1, 5])
    body = body[:max(0, len(body) + delta * rec)] if delta < 0 else body + bytes(rng.getrandbits(8)
                                                                                 for _ in range(delta * rec))
    if rng.random() < 0.5:
        dims[0] = max(0, dims[0] + delta)  # a consistent file with a different count
    _write(d, name, gzip.compress(_idx_bytes(struct.unpack(">I", raw[:4])[0], tuple(dims), body)))
    return f"{name} count {delta:+d} header {'fixed' if dims[0] else 'zero'}"


def mutate_idx_truncate(rng, d):
    name = _idx_file(rng)
    raw = gzip.decompress(_read(d, name))
    cut = rng.choice([0, 3, 8, 15, rng.randrange(len(raw))])
    if rng.random() < 0.5:
        _write(d, name, gzip.compress(raw[:cut]))
        return f"{name} payload cut at {cut}"
    data = _read(d, name)
    cut = rng.randrange(len(data))
    _write(d, name, data[:cut])
    return f"{name} gzip stream cut at {cut}"


def mutate_idx_gzip(rng, d):
    name = _idx_file(rng)
    data = bytearray(_read(d, name))
    how = rng.choice(["flip", "crc", "not-gzip", "empty", "garbage-tail", "missing", "directory"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(10, len(data))] ^= 1 << rng.randrange(8)
    elif how == "crc":
        data[-8] ^= 0xFF
    elif how == "not-gzip":
        data = bytearray(gzip.decompress(bytes(data)))
    elif how == "empty":
        data = bytearray()
    elif how == "garbage-tail":
        data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    if how == "missing":
        os.remove(os.path.join(d, name))
    elif how == "directory":
        os.remove(os.path.join(d, name))
        os.makedirs(os.path.join(d, name))
    else:
        _write(d, name, bytes(data))
    return f"{name} gzip {how}"


def _some_image(rng, d):
    """(folder, name) of a random file of a random non-empty split; an earlier mutation may have
    emptied one."""
    def files(s):
        f = os.path.join(d, s)
        return sorted(n for n in os.listdir(f) if os.path.isfile(os.path.join(f, n))) if os.path.isdir(f) else []

    splits = [s for s in ("train", "val") if files(s)]
    split = rng.choice(splits or ["train"])
    names = files(split)
    if not names:
        os.makedirs(os.path.join(d, split), exist_ok=True)
        names = ["new.jpg"]
        _write(os.path.join(d, split), "new.jpg", _pair(rng))
    return os.path.join(d, split), rng.choice(names)


def mutate_jpeg_bytes(rng, d):
    folder, name = _some_image(rng, d)
    data = bytearray(_read(folder, name))
    how = rng.choice(["flip", "truncate", "zero-run", "sof-size", "garbage-head", "no-eoi"])
    if how == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(2, len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[:rng.randrange(len(data))]
    elif how == "zero-run":
        i = rng.randrange(len(data))
        data[i:i + rng.randint(1, 200)] = bytes(min(200, len(data) - i))
    elif how == "sof-size":  # the frame header's height and width
        i = bytes(data).find(b"\xff\xc0")
        if i >= 0:
            h, w = rng.choice([0, 1, 31, 32, 33, 4000, 65535]), rng.choice([0, 1, 63, 64, 65, 8000, 65535])
            data[i + 5:i + 9] = struct.pack(">HH", h, w)
    elif how == "garbage-head":
        data[:rng.randint(1, 16)] = bytes(rng.getrandbits(8) for _ in range(16))[:rng.randint(1, 16)]
    elif how == "no-eoi":
        data = data[:-2]
    _write(folder, name, bytes(data))
    return f"{os.path.basename(folder)}/{name} {how}"


def mutate_paired_files(rng, d):
    folder, name = _some_image(rng, d)
    how = rng.choice(["missing-half", "odd-width", "tall", "tiny", "grayscale", "cmyk", "rgba-png", "palette-png",
                      "16bit-png", "zero-bytes", "text", "directory", "empty-split", "duplicate", "extra-split",
                      "big"])
    path = os.path.join(folder, name)
    if how == "missing-half":
        data = _pair(rng, 32, 32)
    elif how == "odd-width":
        data = _pair(rng, 65, 32)
    elif how == "tall":
        data = _pair(rng, 64, 40)
    elif how == "tiny":
        data = _pair(rng, 2, 1)
    elif how == "grayscale":
        data = _pair(rng, mode="L")
    elif how == "cmyk":
        data = _pair(rng, mode="CMYK")
    elif how == "rgba-png":
        data = _pair(rng, mode="RGBA", fmt="PNG")
    elif how == "palette-png":
        data = _pair(rng, mode="P", fmt="PNG")
    elif how == "16bit-png":
        data = _pair(rng, mode="I;16", fmt="PNG")
    elif how == "zero-bytes":
        data = b""
    elif how == "text":
        data = b"not an image\n"
    elif how == "big":
        data = _pair(rng, 1024, 512)
    else:
        data = None
    if how == "directory":
        os.remove(path)
        os.makedirs(path)
    elif how == "empty-split":
        for n in os.listdir(folder):
            os.remove(os.path.join(folder, n))
    elif how == "duplicate":
        other = os.path.join(d, "val" if folder.endswith("train") else "train")
        shutil.copy(path, os.path.join(other, "copy-" + name))
    elif how == "extra-split":
        os.makedirs(os.path.join(d, "test"))
        _write(os.path.join(d, "test"), "notes.txt", b"x")
    else:
        _write(folder, name, data)
    return f"{os.path.basename(folder)}/{name} {how}"


def mutate_paired_names(rng, d):
    folder, name = _some_image(rng, d)
    new = rng.choice(["with space.jpg", "ünïcødé-画像.jpg", "UPPER.JPG", "x.jpeg", "x.png", ".hidden.jpg",
                      "a%20b.jpg", "semi;colon.jpg", "#hash.jpg", "long-" + "n" * 200 + ".jpg",
                      "no-extension", "trailing.jpg.txt"])
    os.rename(os.path.join(folder, name), os.path.join(folder, new))
    return f"{os.path.basename(folder)}/{name} renamed {new!r}"


MUTATIONS = {"idx-header": mutate_idx_header, "idx-count": mutate_idx_count, "idx-truncate": mutate_idx_truncate,
             "idx-gzip": mutate_idx_gzip, "jpeg-bytes": mutate_jpeg_bytes, "paired-files": mutate_paired_files,
             "paired-names": mutate_paired_names}
