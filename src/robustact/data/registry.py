"""``load_dataset(name, split)``: one entry point for every dataset, by name.

Why a registry: the CLI, checkpoint cards and experiment configs name datasets by string. The
shapes, class counts and normalization constants are not repeated here: they come from
:data:`robustact.models.registry.DATASET_SHAPES` and :data:`robustact.nn.normalize.DATASET_STATS`,
and every loaded dataset is checked against them, so the data and the models cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustact.data.cifar import load_cifar10, load_cifar100
from robustact.data.dataset import ImageDataset
from robustact.data.digits import load_digits
from robustact.data.mnist import load_mnist
from robustact.models.registry import DATASET_SHAPES
from robustact.nn.normalize import DATASET_STATS

__all__ = ["DatasetInfo", "DATASET_INFO", "available_datasets", "dataset_info", "load_dataset"]

_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits,
}


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, assembled from the model registry and normalization."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _info(name: str) -> DatasetInfo:
    c, h, w, k = DATASET_SHAPES[name]
    mean, std = DATASET_STATS[name]
    return DatasetInfo(name, (c, h, w), k, tuple(mean), tuple(std))


DATASET_INFO: dict[str, DatasetInfo] = {name: _info(name) for name in _LOADERS}


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def dataset_info(name: str) -> DatasetInfo:
    key = _key(name)
    return DATASET_INFO[key]


def _key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return key


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
    key = _key(name)
    ds = _LOADERS[key](split, root, download, **kw)
    info = DATASET_INFO[key]
    if ds.shape != info.shape:
        raise ValueError(f"{key} loaded with image shape {ds.shape}, expected {info.shape}")
    if ds.name == key and ds.num_classes != info.num_classes:
        raise ValueError(f"{key} loaded with {ds.num_classes} classes, expected "
                         f"{info.num_classes}")
    return ds
