"""The model contract every robustact architecture follows.

- input: images in [0, 1], shape (N, C, H, W); normalization is the first layer
  (``self.normalize``);
- output: logits (N, num_classes), never probabilities;
- ``features(x)`` returns the penultimate representation φ(x) of shape (N, D) and ``head`` is the
  final ``nn.Linear(D, num_classes)``, so ``forward(x) == head(features(x))``. Differential
  training and feature-space analyses need φ; attacks only need ``forward``.
- every activation site is a module made by the activation factory, so surgery can find it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """Base class: subclasses build ``self.normalize``, ``self.body`` (or override ``features``)
    and ``self.head``; ``forward`` is fixed so the contract above always holds."""

    num_classes: int
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features
