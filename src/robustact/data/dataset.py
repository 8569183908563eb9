"""``ImageDataset``: a whole dataset held in memory as uint8, converted to [0, 1] floats on demand.

Why uint8 storage: CIFAR-10's training set is 150 MB as bytes but 600 MB as float32. Attacks and
evaluation slice batches anyway, so converting per slice (``x(idx)``) costs nothing noticeable and
keeps several datasets in memory affordable on a laptop. Every loader in :mod:`robustact.data`
returns one of these, so downstream code sees one type whatever the source format was.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch.utils.data import Dataset

from robustact.core.validate import check_images

__all__ = ["ImageDataset", "Index"]

#: What ``x()`` / ``y()`` / ``subset()`` accept: a slice, a 1-D integer or boolean tensor, or a
#: sequence of integers.
Index: TypeAlias = slice | torch.Tensor | Sequence[int]


class ImageDataset(Dataset):
    """Images (N, C, H, W) uint8, labels (N,) int64, class names and a dataset name.

    The dataset is treated as immutable: :meth:`subset` may share storage with its parent when
    given a slice, so never write into ``images`` or ``labels`` in place.

    Args:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), values in ``[0, len(classes))``.
        classes: class names; index ``k`` names label ``k``. Names must be unique.
        name: short dataset name (e.g. ``"cifar10"``), recorded in checkpoint cards and reports.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], name: str
    ) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TypeError(
                f"images must be uint8 (0..255), got dtype {images.dtype}; build float images "
                "in [0, 1] with ImageDataset.from_float"
            )
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got dtype {labels.dtype}")
        n = images.shape[0]
        if labels.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},) to match {n} images, got {tuple(labels.shape)}"
            )
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise TypeError("classes must be a sequence of class-name strings")
        classes = list(classes)
        if len(classes) < 1:
            raise ValueError("classes must name at least one class")
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(f"class names must be unique; repeated: {dup}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}) for {len(classes)} classes, "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.images = images
        self.labels = labels
        self.classes = classes
        self.name = name

    @classmethod
    def from_float(
        cls, x: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], name: str
    ) -> ImageDataset:
        """Build from float images in [0, 1], quantised to the nearest of 256 levels.

        Why quantise: the class stores bytes; ``round(x * 255)`` is the inverse of ``x()`` for
        any image that came from 8-bit data, so a round trip is exact.
        """
        check_images(x, "x")
        images = torch.round(x.detach().to("cpu", torch.float64) * 255).to(torch.uint8)
        return cls(images, labels.to("cpu"), classes, name)

    # --- size and shape -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    # --- access ---------------------------------------------------------------------------
    def _index(self, idx: Index | None) -> slice | torch.Tensor:
        if idx is None:
            return slice(None)
        if isinstance(idx, slice):
            return idx
        if isinstance(idx, (bool, int)) or (
            isinstance(idx, torch.Tensor) and idx.ndim == 0
        ):
            raise TypeError(
                "a single integer index is ambiguous here; use ds[i] for one (image, label) "
                "pair or slice(i, i + 1) for a batch of one"
            )
        t = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(list(idx), dtype=torch.long)
        if t.ndim != 1:
            raise ValueError(f"index must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype == torch.bool:
            if t.numel() != len(self):
                raise ValueError(
                    f"boolean mask has {t.numel()} entries but the dataset has {len(self)}"
                )
            return t
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"index must hold integers or booleans, got dtype {t.dtype}")
        t = t.to(torch.long)
        if t.numel() and (int(t.min()) < -len(self) or int(t.max()) >= len(self)):
            raise IndexError(
                f"index out of range for a dataset of {len(self)} images "
                f"(got values in [{int(t.min())}, {int(t.max())}])"
            )
        return t

    def x(self, idx: Index | None = None) -> torch.Tensor:
        """Float32 images in [0, 1], shape (n, C, H, W); ``idx=None`` means all of them."""
        return self.images[self._index(idx)].to(torch.float32).div_(255.0)

    def y(self, idx: Index | None = None) -> torch.Tensor:
        """int64 labels, shape (n,); ``idx=None`` means all of them."""
        return self.labels[self._index(idx)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """One ``(image (C, H, W) float in [0, 1], label)`` pair, for ``torch.utils.data``."""
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(
                "ds[i] takes one integer; for batches use ds.x(idx) / ds.y(idx) or "
                f"ds.subset(idx), got {type(i).__name__}"
            ) from None
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        return self.images[i].to(torch.float32).div_(255.0), int(self.labels[i])

    def subset(self, indices: Index) -> ImageDataset:
        """A new dataset of the selected images, same classes and name."""
        ix = self._index(indices)
        return ImageDataset(self.images[ix], self.labels[ix], self.classes, self.name)

    def class_counts(self) -> torch.Tensor:
        """Number of images per class, shape (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes})"
        )
