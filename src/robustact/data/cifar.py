"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

Why a restricted unpickler: ``pickle.load`` runs whatever callable a file names, so a tampered
batch could execute code. The official batches only ever reference numpy's array-reconstruction
helpers (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``); the
unpickler below resolves exactly those (plus the equivalents newer Python/numpy write) and refuses
every other global, so loading cannot call ``os.system`` or anything else. Object dtypes are
refused too: the batches hold only uint8 pixels, integer labels and strings.

Layout under the data root (as extracted from the official archives)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta
"""

from __future__ import annotations

import codecs
import os
import pickle
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from robustact.data.dataset import ImageDataset
from robustact.data.download import DownloadError, Fetcher, download_and_extract
from robustact.data.root import (
    DataFormatError,
    check_split,
    describe_data_root,
    not_found_error,
    resolve_data_root,
)

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "restricted_load",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR100_URL",
    "CIFAR100_MD5",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_FILES = {"train": ("train",), "test": ("test",)}


class UnsafePickleError(DataFormatError, pickle.UnpicklingError):
    """A pickle referenced something other than the numpy array machinery CIFAR needs.

    A :class:`DataFormatError` (so a ``ValueError``) too: a refused file is bad input.
    """


def _plain_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError(f"refusing object dtype {dt!r}: CIFAR batches hold plain numbers")
    return dt


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Take numpy's own reconstruction helpers from what numpy itself pickles, so the table stays
    # right across numpy 1.x (numpy.core) and 2.x (numpy._core) without importing private paths.
    reconstruct = np.zeros(1, np.uint8).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        # Python 3 pickles at protocol <= 2 encode bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # protocol 5 pickles
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array reconstruction; every other global is refused."""

    def __init__(self, file: IO[bytes], *, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is "
                "allowed in dataset pickles"
            ) from None


# What a truncated or garbled pickle raises from inside the unpickler: an empty file gives
# EOFError (which the CLI framework would mistake for Ctrl-D and answer with only "Aborted."),
# random bytes UnpicklingError, a stream cut mid-opcode struct.error or IndexError, and a
# well-formed pickle of the wrong shape TypeError/ValueError/KeyError from numpy's reconstruction.
_CORRUPT_PICKLE = (pickle.UnpicklingError, EOFError, struct.error, IndexError, KeyError, TypeError,
                   ValueError, AttributeError, OverflowError, MemoryError)


def restricted_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle a dataset file with :class:`RestrictedUnpickler` (``encoding="latin1"``, which
    reads the Python 2 pickles the official batches are).

    Raises :class:`UnsafePickleError` for a file that names anything beyond numpy arrays, and
    :class:`DataFormatError` (naming the file) for an empty, truncated or garbled one.
    """
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except _CORRUPT_PICKLE as e:
            what = "is empty" if f.tell() == 0 and isinstance(e, EOFError) else \
                f"is truncated or corrupted ({type(e).__name__}: {e})"
            raise DataFormatError(
                f"{path} {what}; not a readable dataset pickle: delete it and download it again"
            ) from None


def _as_str(s: Any) -> Any:
    return s.decode("latin1") if isinstance(s, bytes) else s


def _load_dict(path: Path) -> dict[str, Any]:
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # Batches re-pickled after loading with encoding="bytes" have bytes keys; accept both.
    return {_as_str(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_dict(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataFormatError(f"{path}: missing key {key!r} (has {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' must be a uint8 array (N, 3072) with N >= 1, "
                              f"got {desc}")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataFormatError(f"{path}: {label_key!r} must be a list of integers ({e})") from None
    if labels.shape != (data.shape[0],):
        raise DataFormatError(f"{path}: {data.shape[0]} images but {label_key!r} has shape "
                              f"{labels.shape}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(path: Path, key: str) -> list[str]:
    d = _load_dict(path)
    if key not in d:
        raise DataFormatError(f"{path}: missing key {key!r} (has {sorted(map(str, d))})")
    names = d[key]
    if not isinstance(names, (list, tuple)) or not names:
        raise DataFormatError(f"{path}: {key!r} must be a non-empty list of class names, got "
                              f"{type(names).__name__}")
    return [str(_as_str(n)) for n in names]


def _load(
    dataset: str, name: str, split: str, root: str | os.PathLike[str] | None, download: bool,
    fetch: Fetcher | None, folder: str, files: tuple[str, ...], meta: str, url: str, md5: str,
    label_key: str, names_key: str,
) -> ImageDataset:
    check_split(split)
    root_dir, source = resolve_data_root(root), describe_data_root(root)
    directory = root_dir / folder
    expected = (*files, meta)
    missing = [f for f in expected if not (directory / f).is_file()]
    if missing:
        failure = None
        if download:
            try:
                download_and_extract([url], root_dir, url.rsplit("/", 1)[1], md5, folder,
                                     fetch=fetch)
            except DownloadError as e:
                failure = str(e)
            else:
                still = [f for f in expected if not (directory / f).is_file()]
                if still:
                    failure = f"the archive from {url} did not contain {', '.join(still)}"
        if failure is not None or not download:
            raise not_found_error(dataset, split, root_dir, directory, expected, missing, [url],
                                  source, failure)
    parts = [_read_batch(directory / f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    classes = _class_names(directory / meta, names_key)
    try:
        return ImageDataset(torch.from_numpy(np.ascontiguousarray(images)),
                            torch.from_numpy(labels), classes, name)
    except ValueError as e:  # labels beyond the class list, repeated class names
        raise DataFormatError(f"{directory}: the batches and {meta} disagree: {e}") from None


def load_cifar10(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    fetch: Fetcher | None = None,
) -> ImageDataset:
    """CIFAR-10 ``split`` ("train": 50000 images, "test": 10000) as (N, 3, 32, 32) uint8.

    Files are looked up under ``<root>/cifar-10-batches-py/``; with ``download=True`` the
    official archive is fetched, checked against :data:`CIFAR10_MD5` and extracted safely.
    """
    return _load("CIFAR-10", "cifar10", split, root, download, fetch, CIFAR10_FOLDER,
                 CIFAR10_FILES[check_split(split)], "batches.meta", CIFAR10_URL, CIFAR10_MD5,
                 "labels", "label_names")


def load_cifar100(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    label_mode: str = "fine",
    fetch: Fetcher | None = None,
) -> ImageDataset:
    """CIFAR-100 ``split`` as (N, 3, 32, 32) uint8, with 100 fine or 20 coarse labels.

    ``label_mode="fine"`` gives the 100 classes (dataset name ``"cifar100"``); ``"coarse"`` the 20
    superclasses (name ``"cifar100-coarse"``, so a checkpoint card cannot confuse the two).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    name = "cifar100" if label_mode == "fine" else "cifar100-coarse"
    return _load("CIFAR-100", name, split, root, download, fetch, CIFAR100_FOLDER,
                 CIFAR100_FILES[check_split(split)], "meta", CIFAR100_URL, CIFAR100_MD5,
                 f"{label_mode}_labels", f"{label_mode}_label_names")
