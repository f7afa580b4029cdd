"""Data sources for ingest: a source URI is KIND:LOCATION, and each kind is an object that finds,
keys and reads its splits: tfds:NAME, idx:DIR (MNIST format), and a folder of encoded images per
split that a data layout brings (components.layouts: the facades pairs' paired:DIR)."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError
from artifacts.fingerprint import digest, file_sha, files_digest

IDX_SPLITS = {"train": "train", "test": "t10k"}
_CHUNK = 1 << 20
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FOLDER_SPLITS = ("train", "val", "test")
# Known local copies for offline machines, by tfds name.
LOCAL_COPIES = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
                "mnist": ("/usr/share/datasets/mnist",)}


@dataclass(frozen=True)
class Split:
    name: str
    count: int
    nbytes: int = 0              # about what its examples take as stored: what sizes its shards
    shape: tuple[int, ...] = ()  # of every example, when the source says so (IDX)


def _expand(path: str) -> str:
    return os.path.expanduser(path) if gfile.is_local(path) else path


# -- idx ------------------------------------------------------------------------------------
def _idx_files(d: str, split: str) -> tuple[str, str]:
    prefix = IDX_SPLITS[split]
    return (gfile.join(d, f"{prefix}-images-idx3-ubyte.gz"), gfile.join(d, f"{prefix}-labels-idx1-ubyte.gz"))


_GZIP_ERRORS = (EOFError, OSError, gzip.BadGzipFile, zlib.error)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold: a 4.3 GiB RGBA image stays out


def memory_budget() -> int:
    """Bytes one file may take in memory (an encoded image read whole): half the machine's
    memory, or of the process's address-space limit when one is set."""
    import resource

    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return budget if soft == resource.RLIM_INFINITY else min(budget, soft // 2)


def _check_idx_file(path: str, magic: int, ndim: int, max_pixels: int) -> tuple[int, ...]:
    """The dims of one gzipped IDX file, after inflating it a chunk at a time (nothing kept) up to
    the size its header claims and one byte more: a stream longer or shorter than its header is
    refused here, so the shards that read it later by offset find what the header says."""
    try:
        with gfile.open_read(path, follow=True) as raw, gzip.GzipFile(fileobj=raw) as z:
            dims = _idx_header(z.read(4 + 4 * ndim), path, magic, ndim)
            if ndim == 3:
                _check_pixels(dims[1], dims[2], max_pixels, path)
            size = int(np.prod(dims, dtype=np.uint64))
            got = 0
            while got < size:
                n = len(z.read(min(_CHUNK, size - got)))
                if not n:
                    break
                got += n
            extra = z.read(1)
    except gfile.NotRegular as e:
        raise UserError(f"IDX file is {e.strerror}", path, "give a regular file") from None
    except _GZIP_ERRORS as e:
        raise UserError(f"corrupt or truncated gzip file: {e}", path,
                        "replace the file with a complete copy") from None
    if got != size or extra:
        what = "pixel bytes" if ndim == 3 else "labels"
        held = f"more than {size}" if extra else str(got)
        raise UserError(f"IDX {'images' if ndim == 3 else 'labels'} file holds {held} {what}, header claims "
                        f"{' x '.join(map(str, dims))} = {size}", path, "replace the file with a complete copy")
    return dims


def _check_pixels(h: int, w: int, max_pixels: int, path: str) -> None:
    if not (h and w):
        raise UserError(f"IDX images file says its images are {h} x {w} pixels", path,
                        "replace the file with a complete copy")
    if h * w > max_pixels:
        raise UserError(f"image is {w} x {h} = {w * h} pixels, more than data.max_image_pixels={max_pixels}",
                        path, "give smaller images, or raise --set data.max_image_pixels=N if this is meant")


def _idx_header(data: bytes, path: str, magic: int, ndim: int) -> tuple[int, ...]:
    if len(data) < 4 + 4 * ndim:
        raise UserError("file too short for an IDX header", path, "replace the file with a complete copy")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        raise UserError(f"wrong IDX magic number {got} (expected {magic})", path,
                        "give the MNIST-format images-idx3 / labels-idx1 files")
    return struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])


def check_idx(d: str, split: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int, int]:
    """(count, height, width) of one split, its two files checked against the IDX format."""
    img_path, lbl_path = _idx_files(d, split)
    for p in (img_path, lbl_path):
        if not gfile.exists(p) or gfile.isdir(p):
            raise UserError("missing IDX file", p, "an idx: folder needs the four MNIST-format .gz files")
    n, h, w = _check_idx_file(img_path, 2051, 3, max_pixels)
    (nl,) = _check_idx_file(lbl_path, 2049, 1, max_pixels)
    if nl != n:
        raise UserError(f"{n} images but {nl} labels", f"{img_path}, {lbl_path}",
                        "give image and label files of the same split")
    return n, h, w


class _Cursor:
    """An inflating reader of one gzipped file, kept open between the shards a worker reads: a
    worker that reads shards in order inflates each file once; one that goes back reopens it.
    (gzip cannot seek: a forward seek inflates and drops the bytes between, a chunk at a time.)"""
    _open: dict[str, "_Cursor"] = {}

    def __init__(self, path: str):
        self.raw = gfile.open_read(path, follow=True)
        self.z = gzip.GzipFile(fileobj=self.raw)

    @classmethod
    def at(cls, path: str, offset: int) -> "gzip.GzipFile":
        c = cls._open.get(path)
        if c is None or c.z.tell() > offset:
            if c is not None:
                c.close()
            c = cls._open[path] = cls(path)
        c.z.seek(offset)
        return c.z

    def close(self) -> None:
        self.z.close()
        self.raw.close()


def read_idx_range(d: str, split: str, start: int, end: int, shape: tuple[int, int]):
    """(image h x w uint8, label) of examples [start, end) of a split, one at a time, read by
    offset from files that resolve checked (their headers and lengths)."""
    img_path, lbl_path = _idx_files(d, split)
    size = shape[0] * shape[1]
    for i in range(start, end):
        try:
            img = _Cursor.at(img_path, 16 + i * size).read(size)
            lbl = _Cursor.at(lbl_path, 8 + i).read(1)
        except _GZIP_ERRORS as e:
            raise UserError(f"corrupt or truncated gzip file: {e}", img_path,
                            "replace the file with a complete copy") from None
        if len(img) != size or len(lbl) != 1:
            raise UserError("IDX file changed or got shorter since it was read", img_path,
                            "run again with a complete copy")
        yield np.frombuffer(img, np.uint8).reshape(shape), lbl[0]


# -- resolving a source URI -------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A source found and keyed: its splits and a digest of its content."""
    kind: "SourceKind"  # what reads it
    location: str       # folder, or tfds name
    splits: tuple[Split, ...]
    digest: str
    uri: str
    tfds_splits: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        return next(s for s in self.splits if s.name == name)

    def read(self, split: str, start: int, end: int,
             max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[tuple[str, dict[str, Any]]]:
        """Examples [start, end) of a split, one at a time: (stable id, fields)."""
        return self.kind.read(self, split, start, end, max_pixels)


def _online(host: str = "storage.googleapis.com", timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class SourceKind:
    """One kind of source URI, KIND:LOCATION: how to find its splits, key them and read one."""
    scheme = ""

    def resolve(self, location: str, uri: str, max_pixels: int) -> Resolved:
        raise NotImplementedError

    def read(self, r: Resolved, split: str, start: int, end: int,
             max_pixels: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Examples [start, end) of a split, one at a time, never the whole split: (stable id,
        fields: image (raw bytes with its shape, or encoded), format, maybe label). A shard of
        ingest reads only its own range, so memory follows one example, not the data."""
        raise NotImplementedError

    @staticmethod
    def position_id(split: str, i: int) -> str:
        """The stable id of an example known by its position in its split."""
        return f"{split}/{i:07d}"


class Idx(SourceKind):
    """idx:DIR, the MNIST-format gzipped files of train and t10k."""
    scheme = "idx"

    def resolve(self, location: str, uri: str, max_pixels: int) -> Resolved:
        d = _expand(location)
        if not gfile.isdir(d):
            raise UserError("data folder does not exist", d, "give --set data.source=idx:DIR with the MNIST files")
        splits = [s for s in IDX_SPLITS if gfile.exists(_idx_files(d, s)[0])]
        if not splits:
            raise UserError("no MNIST-format files (train-images-idx3-ubyte.gz, t10k-...)", d,
                            "give a folder with the four IDX .gz files")
        files = [f for s in splits for f in _idx_files(d, s)]
        counts = []
        for s in splits:
            n, h, w = check_idx(d, s, max_pixels)
            counts.append(Split(s, n, n * h * w, (h, w, 1)))
        return Resolved(self, d, tuple(counts), files_digest(files), f"idx:{d}")

    def read(self, r: Resolved, split: str, start: int, end: int, max_pixels: int):
        shape = r.split(split).shape
        for i, (img, label) in zip(range(start, end), read_idx_range(r.location, split, start, end, shape[:2])):
            yield self.position_id(split, i), {"image": img.tobytes(), "format": "raw", "shape": shape,
                                               "label": int(label)}


class Tfds(SourceKind):
    """tfds:NAME[?split=a,b]: a prepared tensorflow-datasets dataset (or its local IDX copy offline)."""
    scheme = "tfds"

    def resolve(self, location: str, uri: str, max_pixels: int) -> Resolved:
        name, _, query = location.partition("?")
        wanted = tuple(s for s in query.removeprefix("split=").split(",") if s) if query else ()
        import tensorflow_datasets as tfds

        builder = tfds.builder(name)
        if not builder.is_prepared():
            if _online():
                builder.download_and_prepare()
            else:
                for local in LOCAL_COPIES.get(name, ()):
                    if gfile.isdir(local):
                        return IDX.resolve(local, f"idx:{local}", max_pixels)
                raise UserError(f"tfds dataset {name!r} is not prepared and there is no internet",
                                builder.data_dir,
                                "prepare it where there is internet, or --set data.source=idx:DIR / paired:DIR "
                                "(for Fashion-MNIST: apt-get install dataset-fashion-mnist)")
        splits = wanted or tuple(builder.info.splits.keys())
        counts = tuple(Split(s, builder.info.splits[s].num_examples, int(builder.info.splits[s].num_bytes or 0))
                       for s in splits)
        files = gfile.glob(gfile.join(builder.data_dir, "*"))
        return Resolved(self, name, counts, digest({"files": files_digest(files), "splits": splits}),
                        uri, tfds_splits=splits)

    def read(self, r: Resolved, split: str, start: int, end: int, max_pixels: int):
        import tensorflow_datasets as tfds

        # a slice of the split: tfds reads only the files (and records) that hold it
        ds = tfds.as_numpy(tfds.load(r.location, split=f"{split}[{start}:{end}]", shuffle_files=False))
        for i, ex in zip(range(start, end), ds):
            img = np.asarray(ex["image"], np.uint8)
            yield self.position_id(split, i), {"image": img.tobytes(), "format": "raw", "shape": img.shape,
                                               "label": int(ex.get("label", -1))}


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class ImageFolder(SourceKind):
    """SCHEME:DIR, a folder with train/ val/ test/ subfolders of encoded images (JPEG, PNG), one
    example each, read unlabeled and in natural name order; a data layout names its scheme and
    what it says about the folder (`what`, `fix`)."""

    def __init__(self, scheme: str, what: str, fix: str):
        self.scheme, self.what, self.fix = scheme, what, fix

    def files(self, d: str, split: str) -> list[str]:
        """The images of one split: files (a folder named x.jpg is not one) with an image extension."""
        names = [n for n in gfile.listdir(gfile.join(d, split)) if n.lower().endswith(IMAGE_EXTS)
                 and not gfile.isdir(gfile.join(d, split, n))]
        return [gfile.join(d, split, n) for n in sorted(names, key=_natural)]

    def resolve(self, location: str, uri: str, max_pixels: int) -> Resolved:
        d = _expand(location)
        if not gfile.isdir(d):
            raise UserError(f"{self.what} folder does not exist", d, self.fix)
        present = [s for s in FOLDER_SPLITS if gfile.isdir(gfile.join(d, s))]
        if not present:
            raise UserError("no train/ val/ test/ folders", d, "put the images in train/, val/, test/")
        files, by_split = [], {}
        for s in present:
            fs = self.files(d, s)
            if not fs:
                raise UserError(f"split {s!r} has no .jpg or .png images", gfile.join(d, s),
                                "add images or remove the empty folder")
            files += fs
            by_split[s] = fs
        key, sizes = _images_digest(files, max_pixels)
        counts = tuple(Split(s, len(fs), sum(sizes[f] for f in fs)) for s, fs in by_split.items())
        return Resolved(self, d, counts, key, f"{self.scheme}:{d}")

    def read(self, r: Resolved, split: str, start: int, end: int, max_pixels: int):
        # the names only (a worker lists a split once); each shard reads its own files
        for f in _listing(self, r.location, split, r.digest)[start:end]:
            yield f"{split}/{f.rsplit('/', 1)[-1]}", {"image": gfile.read_bytes(f, follow=True), "format": "encoded"}


@lru_cache(maxsize=8)
def _listing(kind: ImageFolder, d: str, split: str, _key: str) -> list[str]:
    """kind.files(d, split), once per process and source content (the key)."""
    return kind.files(d, split)


def _images_digest(files: list[str], max_pixels: int) -> tuple[str, dict[str, int]]:
    """files_digest of the images, read once each (one at a time), with every image's header
    checked against the pixel limit on the way (before anything decodes one); and their sizes."""
    from components.tfrecords import open_image

    def sha(f: str) -> str:
        try:
            data = gfile.read_bytes(f, memory_budget() // 8, follow=True)
        except (OSError, ValueError) as e:
            raise UserError(f"unreadable image: {e}", f, "replace or remove the file") from None
        open_image(data, f, max_pixels).close()
        return hashlib.sha256(data).hexdigest()

    # an image the watch hashed before, unchanged since, is not read again (its header was checked then)
    key = digest({f: file_sha(f, lambda f=f: sha(f)) for f in sorted(files)})
    return key, {f: gfile.stat(f)[0] for f in files}


IDX, TFDS = Idx(), Tfds()
KINDS: dict[str, SourceKind] = {k.scheme: k for k in (TFDS, IDX)}


def resolve(source: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
            kinds: dict[str, SourceKind] = KINDS) -> Resolved:
    """The source URI found and keyed by its kind, one of `kinds` (a layout adds its own)."""
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in kinds:
        raise UserError(f"unknown data source {source!r}", "data.source",
                        "use " + ", ".join(f"{k}:{'NAME' if k == TFDS.scheme else 'DIR'}" for k in kinds))
    return kinds[scheme].resolve(rest, source, max_pixels)
