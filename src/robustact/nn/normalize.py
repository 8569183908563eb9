"""Normalization as a layer inside the model, so every model takes raw [0, 1] inputs.

Why: attacks, budgets (ε) and clipping are all defined in pixel space. Keeping the mean/std
inside the model means nobody has to convert ε between normalized and pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]

class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, saved with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"input has {x.shape[1]} channels but the model's normalization expects "
                f"{self.mean.shape[1]}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
