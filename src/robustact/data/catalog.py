"""Static facts about each dataset: image shape, class count, normalization statistics.

Why a plain table in the data layer: the loaders check what they read against it, and the model
registry fills in input shape, class count and the ``Normalize`` constants from it. Keeping it
here, at the bottom of the stack, lets both use it without the data layer importing models.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASET_INFO", "available_datasets", "dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """Shape (C, H, W), class count and the per-channel (mean, std) the papers normalize with."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: One row per dataset. Statistics as used by the papers (papers.md); the digits' are rounded.
DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                           (0.2023, 0.1994, 0.2010)),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762)),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.38,)),
}


def available_datasets() -> list[str]:
    return sorted(DATASET_INFO)


def dataset_key(name: str) -> str:
    """The catalog key for ``name`` ("CIFAR-10", "cifar_10" → "cifar10"), or one clear error."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    return DATASET_INFO[dataset_key(name)]
