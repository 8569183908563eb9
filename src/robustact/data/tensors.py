"""``(images, labels)`` tensors from whatever a caller holds: a dataset, a pair, a bare tensor.

Why here, in the data layer: training, evaluation and :func:`robustact.models.predict.predict`
all read datasets the same way, and the models layer may not import training. Images stay uint8
when they come as uint8 (converted per batch by :func:`to_float`: 4× less memory than float32);
float images must already lie in [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from robustact.core.validate import check_images, check_labels

__all__ = ["as_images", "as_tensors", "to_float"]


def as_images(x: Any, name: str = "images") -> torch.Tensor:
    """``x`` checked as images: a uint8 (N, C, H, W) tensor or a float one with values in [0, 1].

    Why uint8 gets only a shape check: every byte is a valid pixel, and scanning a whole
    training set for a range it cannot leave would cost a pass for nothing.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.ndim != 4:
            raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    else:
        check_images(x, name)
    return x


def as_tensors(data: Any, name: str = "train_data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a tuple or an object with ``.images``/``.labels``.

    Images are uint8 (kept as is, converted per batch, 4× less memory) or float in [0, 1];
    labels come back as int64.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    else:
        raise TypeError(f"{name} must be (images, labels) or have .images and .labels, "
                        f"got {type(data).__name__}")
    as_images(x, f"{name} images")
    check_labels(y, x.shape[0], name=f"{name} labels")
    return x, y.long()


def to_float(xb: torch.Tensor) -> torch.Tensor:
    """A batch as float32: uint8 pixels divided by 255, anything else cast."""
    return xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
