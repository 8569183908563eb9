"""MNIST from the original IDX files (``<root>/MNIST/raw/*-ubyte.gz``), parsed with numpy.

Why parse IDX ourselves: the format is a 4-byte magic number (two zero bytes, a type code, the
number of dimensions), the dimensions as big-endian uint32, then the raw values; twenty lines of
numpy read it exactly, with no torchvision dependency and with checks that name the file when a
download was truncated.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from robustact.data.dataset import ImageDataset
from robustact.data.download import DownloadError, Fetcher, download_file
from robustact.data.root import (
    DataFormatError,
    check_split,
    describe_data_root,
    not_found_error,
    resolve_data_root,
)

__all__ = ["load_mnist", "read_idx", "MNIST_FOLDER", "MNIST_FILES", "MNIST_MD5", "MNIST_MIRRORS"]

MNIST_FOLDER = "MNIST/raw"
#: (images, labels) file names per split.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Base URLs tried in order; the file name is appended.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_CLASSES = [str(d) for d in range(10)]

# IDX type codes -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in ``.gz``) into a native-endian array.

    Raises :class:`DataFormatError` (a ValueError) naming the file if the gzip stream is cut off
    or corrupted, the magic number is wrong, or the byte count does not match the dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        # EOFError is what a cut-off download raises; left alone it reaches the CLI framework,
        # which treats it as Ctrl-D and prints only "Aborted."
        raise DataFormatError(
            f"{path}: not a valid gzip file, truncated or corrupted ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number {data[:4].hex()!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(
            f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataFormatError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file has "
            f"{len(data)} bytes; the file is truncated or corrupted"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find(directory: Path, gz_name: str) -> Path | None:
    """The ``.gz`` file, or its decompressed twin (torchvision keeps both)."""
    for p in (directory / gz_name, directory / gz_name[: -len(".gz")]):
        if p.is_file():
            return p
    return None


def load_mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    fetch: Fetcher | None = None,
) -> ImageDataset:
    """MNIST ``split`` ("train": 60000 images, "test": 10000) as (N, 1, 28, 28) uint8.

    Files are looked up under ``<root>/MNIST/raw/``; with ``download=True`` missing ones are
    fetched from :data:`MNIST_MIRRORS` and checked against :data:`MNIST_MD5`.
    """
    check_split(split)
    root_dir, source = resolve_data_root(root), describe_data_root(root)
    directory = root_dir / MNIST_FOLDER
    names = MNIST_FILES[split]
    found = [_find(directory, n) for n in names]
    missing = [n for n, p in zip(names, found, strict=True) if p is None]
    if missing:
        failure = None
        if download:
            try:
                for n in missing:
                    download_file([m + n for m in MNIST_MIRRORS], directory / n, MNIST_MD5[n],
                                  fetch=fetch)
            except DownloadError as e:
                failure = str(e)
        if failure is not None or not download:
            raise not_found_error("MNIST", split, root_dir, directory, names, missing,
                                  MNIST_MIRRORS, source, failure)
        found = [_find(directory, n) for n in names]
    img_path, lbl_path = found
    assert img_path is not None and lbl_path is not None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) \
            or images.shape[0] == 0:
        raise DataFormatError(f"{img_path}: expected uint8 images (N, 28, 28) with N >= 1, got "
                              f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise DataFormatError(f"{lbl_path}: expected {images.shape[0]} uint8 labels, got "
                              f"{labels.dtype} {labels.shape}")
    if int(labels.max()) >= len(MNIST_CLASSES):
        raise DataFormatError(f"{lbl_path}: labels must be digits 0-9, found {int(labels.max())}")
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        MNIST_CLASSES,
        "mnist",
    )
