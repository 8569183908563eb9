"""Datasets as in-memory uint8 tensors served as [0, 1] floats: MNIST, CIFAR-10/100, digits.

- :class:`ImageDataset` — the one dataset type every loader returns.
- :func:`load_dataset` — by name; or :func:`load_mnist`, :func:`load_cifar10`,
  :func:`load_cifar100`, :func:`load_digits` directly.
- :func:`resolve_data_root` — argument, else ``$ROBUSTACT_DATA``, else ``~/.cache/robustact/data``.
- :func:`train_val_split`, :func:`binary_task` — seeded stratified splits, two-class tasks.
- :func:`as_tensors`, :func:`as_images`, :func:`to_float` — checked ``(images, labels)`` from a
  dataset or a pair, uint8 batches as floats (training, prediction and evaluation share them).

Missing files raise :class:`DatasetNotFoundError`; ``download=True`` fetches them with
checksums (:mod:`robustact.data.download`). Unreadable files (truncated, corrupted) raise
:class:`DataFormatError`, a ``ValueError`` naming the file.
"""

from robustact.data.catalog import DATASET_INFO, DatasetInfo, available_datasets, dataset_info
from robustact.data.cifar import load_cifar10, load_cifar100, restricted_load
from robustact.data.dataset import ImageDataset
from robustact.data.digits import load_digits
from robustact.data.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    safe_extract_tar,
)
from robustact.data.mnist import load_mnist, read_idx
from robustact.data.registry import load_dataset
from robustact.data.root import ENV_VAR, DataFormatError, DatasetNotFoundError, resolve_data_root
from robustact.data.splits import binary_task, fixed_subset, split_indices, train_val_split
from robustact.data.tensors import as_images, as_tensors, to_float

__all__ = [
    "ImageDataset",
    "load_dataset",
    "available_datasets",
    "dataset_info",
    "DatasetInfo",
    "DATASET_INFO",
    "load_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "read_idx",
    "restricted_load",
    "resolve_data_root",
    "ENV_VAR",
    "DatasetNotFoundError",
    "DataFormatError",
    "DownloadError",
    "ChecksumError",
    "UnsafeArchiveError",
    "download_file",
    "safe_extract_tar",
    "train_val_split",
    "fixed_subset",
    "split_indices",
    "binary_task",
    "as_images",
    "as_tensors",
    "to_float",
]
