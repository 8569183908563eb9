"""``load_dataset(name, split)``: one entry point for every dataset, by name.

Why a registry: the CLI, checkpoint cards and experiment configs name datasets by string. The
shapes, class counts and normalization constants are not repeated here: they come from
:data:`robustact.data.catalog.DATASET_INFO`, which the model registry reads too, and every
loaded dataset is checked against it, so the data and the models cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from robustact.data.catalog import DATASET_INFO, dataset_key
from robustact.data.cifar import load_cifar10, load_cifar100
from robustact.data.dataset import ImageDataset
from robustact.data.digits import load_digits
from robustact.data.mnist import load_mnist

__all__ = ["load_dataset"]

_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits,
}


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **kw: Any,
) -> ImageDataset:
    """Load ``name`` ("mnist", "cifar10", "cifar100", "digits") ``split`` ("train" or "test").

    Extra keywords go to the loader: ``fetch=`` (mnist, cifar*), ``label_mode=`` (cifar100),
    ``test_fraction=`` / ``seed=`` (digits). Raises :class:`DatasetNotFoundError` when the files
    are missing and cannot be downloaded.
    """
    key = dataset_key(name)
    ds = _LOADERS[key](split, root, download, **kw)
    info = DATASET_INFO[key]
    if ds.shape != info.shape:
        raise ValueError(f"{key} loaded with image shape {ds.shape}, expected {info.shape}")
    if ds.name == key and ds.num_classes != info.num_classes:
        raise ValueError(f"{key} loaded with {ds.num_classes} classes, expected "
                         f"{info.num_classes}")
    return ds
