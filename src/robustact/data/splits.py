"""Seeded train/validation splits and two-class tasks.

Why stratified by default: a validation set used to tune κ (JumpReLU) or pick an epoch must have
the class balance of the training data, or the tuned value drifts with whichever class happened
to be over-represented. Why a ``torch.Generator``: the split must be the same on every machine
and every run for a given seed, and must not depend on (or disturb) global RNG state.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from robustact.data.dataset import ImageDataset

__all__ = ["split_indices", "train_val_split", "binary_task", "fixed_subset"]


def _allocate(total: int, counts: torch.Tensor) -> torch.Tensor:
    """Split ``total`` across classes in proportion to ``counts`` (largest remainder method).

    Why not ``round`` per class: rounding each class separately can miss the requested total by
    up to the number of classes; largest remainder hits it exactly and never gives a class more
    than it has. Ties go to the lower class index.
    """
    n = int(counts.sum())
    quota = counts.to(torch.float64) * total / n
    base = torch.floor(quota).to(torch.long)
    rest = total - int(base.sum())
    if rest:
        frac = quota - base.to(torch.float64)
        order = sorted(range(len(counts)), key=lambda c: (-float(frac[c]), c))
        base[order[:rest]] += 1
    return base


def split_indices(
    labels: torch.Tensor,
    *,
    val_fraction: float | None = None,
    val_size: int | None = None,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, val) index tensors that partition ``range(len(labels))``.

    Give exactly one of ``val_fraction`` (in (0, 1); the size is ``round(fraction * N)``) or
    ``val_size``. With ``stratified=True`` each class contributes to the validation set in
    proportion to its size (exact total, largest-remainder rounding).
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor of class indices")
    n = labels.numel()
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give exactly one of val_fraction and val_size")
    if val_fraction is not None:
        if isinstance(val_fraction, bool) or not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        k = int(round(float(val_fraction) * n))
    else:
        k = operator.index(val_size)  # type: ignore[arg-type]
    if not 1 <= k <= n - 1:
        raise ValueError(
            f"the validation set would have {k} of {n} samples; both parts need at least one"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(seed)
    labels = labels.to("cpu", torch.long)
    if not stratified:
        val = torch.randperm(n, generator=g)[:k]
    else:
        classes = torch.unique(labels)  # sorted, so the draw order is fixed
        by_class = [torch.nonzero(labels == c).flatten() for c in classes]
        take = _allocate(k, torch.tensor([len(ix) for ix in by_class]))
        picks = [
            ix[torch.randperm(len(ix), generator=g)[: int(t)]]
            for ix, t in zip(by_class, take, strict=True)
        ]
        val = torch.cat(picks)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[val] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def train_val_split(
    ds: ImageDataset,
    val_fraction: float | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[ImageDataset, ImageDataset]:
    """Split a dataset into disjoint (train, val) parts; 10 % validation if nothing is given.

    Reproducible for a given ``seed``; images keep their original order within each part.
    """
    if val_fraction is None and val_size is None:
        val_fraction = 0.1
    tr, va = split_indices(ds.labels, val_fraction=val_fraction, val_size=val_size, seed=seed,
                           stratified=stratified)
    return ds.subset(tr), ds.subset(va)


def _class_index(ds: ImageDataset, c: str | int) -> int:
    if isinstance(c, str):
        if c not in ds.classes:
            raise ValueError(f"unknown class {c!r} for {ds.name}; classes: {ds.classes}")
        return ds.classes.index(c)
    if isinstance(c, bool):
        raise TypeError(f"class must be a name or an index, got {c!r}")
    try:
        i = operator.index(c)
    except TypeError:
        raise TypeError(f"class must be a name or an index, got {type(c).__name__}") from None
    if not 0 <= i < ds.num_classes:
        raise ValueError(f"class index {i} out of range for {ds.name} ({ds.num_classes} classes)")
    return i


def binary_task(ds: ImageDataset, classes: Sequence[str | int] = ("cat", "dog")) -> ImageDataset:
    """Keep two classes and relabel them: the first becomes 0, the second 1.

    So the "positive" class (label 1) is the *second* one given; ``binary_task(cifar, ("cat",
    "dog"))`` has dog = 1. Classes are given by name or by index; images keep their order. The
    new dataset's ``classes`` are the two names and its name is ``"<name>-<a>-vs-<b>"``.
    """
    if isinstance(classes, str) or len(classes) != 2:
        raise ValueError(f"classes must be a pair (first -> 0, second -> 1), got {classes!r}")
    a, b = (_class_index(ds, c) for c in classes)
    if a == b:
        raise ValueError(f"the two classes must differ, got {ds.classes[a]!r} twice")
    keep = (ds.labels == a) | (ds.labels == b)
    labels = (ds.labels[keep] == b).to(torch.long)
    names = [ds.classes[a], ds.classes[b]]
    return ImageDataset(ds.images[keep], labels, names, f"{ds.name}-{names[0]}-vs-{names[1]}")



def fixed_subset(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """``n`` images of ``ds`` drawn by a seeded permutation, kept in their original order; all of
    ``ds`` when ``n`` is None or not smaller.

    Why its own generator: the same images on every machine and every rerun, whatever else
    has drawn from torch's global RNG (short training runs on a subset: the calibration zoo,
    ``robustact reproduce --quick``).
    """
    if n is None or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(order[:n].sort().values)
