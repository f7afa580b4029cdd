"""Data sources for ingest: tfds:NAME, idx:DIR (MNIST format) and paired:DIR (facades layout)."""
from __future__ import annotations

import gzip
import io
import os
import re
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError
from artifacts.fingerprint import digest, files_digest

IDX_SPLITS = {"train": "train", "test": "t10k"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PAIRED_SPLITS = ("train", "val", "test")
# Known local copies for offline machines, by tfds name.
LOCAL_COPIES = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
                "mnist": ("/usr/share/datasets/mnist",)}


@dataclass(frozen=True)
class Split:
    name: str
    count: int


def _expand(path: str) -> str:
    return os.path.expanduser(path) if gfile.is_local(path) else path


# -- idx ------------------------------------------------------------------------------------
def _idx_files(d: str, split: str) -> tuple[str, str]:
    prefix = IDX_SPLITS[split]
    return (gfile.join(d, f"{prefix}-images-idx3-ubyte.gz"), gfile.join(d, f"{prefix}-labels-idx1-ubyte.gz"))


def _gunzip(path: str) -> bytes:
    try:
        return gzip.decompress(gfile.read_bytes(path))
    except (EOFError, OSError, gzip.BadGzipFile, Exception) as e:  # zlib.error too
        raise UserError(f"corrupt or truncated gzip file: {e}", path,
                        "replace the file with a complete copy") from None


def _idx_header(data: bytes, path: str, magic: int, ndim: int) -> tuple[int, ...]:
    if len(data) < 4 + 4 * ndim:
        raise UserError("file too short for an IDX header", path, "replace the file with a complete copy")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        raise UserError(f"wrong IDX magic number {got} (expected {magic})", path,
                        "give the MNIST-format images-idx3 / labels-idx1 files")
    return struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])


def read_idx(d: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x H x W uint8, labels N) of one split, checked against the IDX format."""
    img_path, lbl_path = _idx_files(d, split)
    stamps = []
    for p in (img_path, lbl_path):
        if not gfile.exists(p) or gfile.isdir(p):
            raise UserError("missing IDX file", p, "an idx: folder needs the four MNIST-format .gz files")
        stamps.append(gfile.stat(p))
    # cached per process (ingest's workers read a split once per shard), keyed by the files' size
    # and mtime too: a long-lived process (serve) must see data that changed on disk
    return _read_idx(img_path, lbl_path, tuple(stamps))


@lru_cache(maxsize=8)
def _read_idx(img_path: str, lbl_path: str, _stamps: tuple) -> tuple[np.ndarray, np.ndarray]:
    raw = _gunzip(img_path)
    n, h, w = _idx_header(raw, img_path, 2051, 3)
    if not (h and w):
        raise UserError(f"IDX images file says its images are {h} x {w} pixels", img_path,
                        "replace the file with a complete copy")
    if len(raw) != 16 + n * h * w:
        raise UserError(f"IDX images file holds {len(raw) - 16} pixel bytes, header says "
                        f"{n} x {h} x {w} = {n * h * w}", img_path, "replace the file with a complete copy")
    lraw = _gunzip(lbl_path)
    (nl,) = _idx_header(lraw, lbl_path, 2049, 1)
    if len(lraw) != 8 + nl:
        raise UserError(f"IDX labels file holds {len(lraw) - 8} labels, header says {nl}", lbl_path,
                        "replace the file with a complete copy")
    if nl != n:
        raise UserError(f"{n} images but {nl} labels", f"{img_path}, {lbl_path}",
                        "give image and label files of the same split")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w), np.frombuffer(lraw, np.uint8, offset=8)


# -- paired ---------------------------------------------------------------------------------
def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def paired_files(d: str, split: str) -> list[str]:
    """The pair images of one split: files (a folder named x.jpg is not one) with an image extension."""
    names = [n for n in gfile.listdir(gfile.join(d, split)) if n.lower().endswith(IMAGE_EXTS)
             and not gfile.isdir(gfile.join(d, split, n))]
    return [gfile.join(d, split, n) for n in sorted(names, key=_natural)]


def image_error(e: Exception) -> str:
    """PIL's reason, without the in-memory buffer's address it names (the line stays the same)."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)) or type(e).__name__


def check_pair(path: str, data: bytes) -> tuple[int, int]:
    """Decode one side-by-side pair fully; (height, width) or a UserError naming the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
    except Exception as e:
        raise UserError(f"undecodable image: {image_error(e)}", path, "replace or remove the file") from None
    # Facades layout: two halves side by side. Halves are resized to the model size later, so a
    # half may be shorter than it is wide (some real pairs are), never taller.
    if w % 2 or h > w // 2 or h < w // 8:
        raise UserError(f"pair is {w}x{h}: width must be twice the height (target left, input right)",
                        path, "give side-by-side pairs in the facades layout")
    return h, w


# -- resolving a source URI -------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    kind: str         # idx | paired | tfds
    location: str     # folder, or tfds name
    splits: tuple[Split, ...]
    digest: str
    uri: str
    tfds_splits: tuple[str, ...] = ()


def _online(host: str = "storage.googleapis.com", timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(source: str) -> Resolved:
    kind, sep, rest = source.partition(":")
    if not sep or kind not in ("tfds", "idx", "paired"):
        raise UserError(f"unknown data source {source!r}", "data.source",
                        "use tfds:NAME, idx:DIR or paired:DIR")
    if kind == "idx":
        d = _expand(rest)
        if not gfile.isdir(d):
            raise UserError("data folder does not exist", d, "give --set data.source=idx:DIR with the MNIST files")
        splits = [s for s in IDX_SPLITS if gfile.exists(_idx_files(d, s)[0])]
        if not splits:
            raise UserError("no MNIST-format files (train-images-idx3-ubyte.gz, t10k-...)", d,
                            "give a folder with the four IDX .gz files")
        files = [f for s in splits for f in _idx_files(d, s)]
        counts = tuple(Split(s, len(read_idx(d, s)[1])) for s in splits)
        return Resolved("idx", d, counts, files_digest(files), f"idx:{d}")
    if kind == "paired":
        d = _expand(rest)
        if not gfile.isdir(d):
            raise UserError("paired data folder does not exist", d,
                            "download the facades archive or give --set data.source=paired:DIR")
        present = [s for s in PAIRED_SPLITS if gfile.isdir(gfile.join(d, s))]
        if not present:
            raise UserError("no train/ val/ test/ folders", d, "put the pairs in train/, val/, test/")
        files, counts = [], []
        for s in present:
            fs = paired_files(d, s)
            if not fs:
                raise UserError(f"split {s!r} has no .jpg or .png pairs", gfile.join(d, s),
                                "add pairs or remove the empty folder")
            files += fs
            counts.append(Split(s, len(fs)))
        return Resolved("paired", d, tuple(counts), files_digest(files), f"paired:{d}")
    return _resolve_tfds(rest, source)


def _resolve_tfds(spec: str, source: str) -> Resolved:
    name, _, query = spec.partition("?")
    wanted = tuple(s for s in query.removeprefix("split=").split(",") if s) if query else ()
    import tensorflow_datasets as tfds

    builder = tfds.builder(name)
    if not builder.is_prepared():
        if _online():
            builder.download_and_prepare()
        else:
            for local in LOCAL_COPIES.get(name, ()):
                if gfile.isdir(local):
                    return resolve(f"idx:{local}")
            raise UserError(f"tfds dataset {name!r} is not prepared and there is no internet",
                            builder.data_dir,
                            "prepare it where there is internet, or --set data.source=idx:DIR / paired:DIR "
                            "(for Fashion-MNIST: apt-get install dataset-fashion-mnist)")
    splits = wanted or tuple(builder.info.splits.keys())
    counts = tuple(Split(s, builder.info.splits[s].num_examples) for s in splits)
    files = gfile.glob(gfile.join(builder.data_dir, "*"))
    return Resolved("tfds", name, counts, digest({"files": files_digest(files), "splits": splits}),
                    source, tfds_splits=splits)


# -- reading one split --------------------------------------------------------------------------
def load_split(r: Resolved, split: str):
    """(images: uint8 N x H x W x C array or list of encoded bytes, labels or None, fmt)."""
    if r.kind == "idx":
        images, labels = read_idx(r.location, split)
        return images[..., None], labels, "raw"
    if r.kind == "paired":
        return [gfile.read_bytes(f) for f in paired_files(r.location, split)], None, "encoded"
    import tensorflow_datasets as tfds

    ds = tfds.as_numpy(tfds.load(r.location, split=split, shuffle_files=False))
    images, labels = [], []
    for ex in ds:
        images.append(ex["image"])
        labels.append(ex.get("label", -1))
    return np.stack(images), np.asarray(labels), "raw"


def example_ids(r: Resolved, split: str, start: int, end: int) -> list[str]:
    if r.kind == "paired":
        names = [f.rsplit("/", 1)[-1] for f in paired_files(r.location, split)[start:end]]
        return [f"{split}/{n}" for n in names]
    return [f"{split}/{i:07d}" for i in range(start, end)]
