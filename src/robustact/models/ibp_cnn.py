"""The small and medium CNNs of Gowal et al. (2018), the usual models for certified training.

small:  conv 4×4 → 16 stride 2, act, conv 4×4 → 32 stride 1, act, fc 100, act, head.
medium: conv 3×3 → 32, act, conv 4×4 → 32 stride 2, act, conv 3×3 → 64, act, conv 4×4 → 64
        stride 2, act, fc 512, act, fc 512, act, head.

Why these and not LeNet-5 or Madry's network: interval bounds loosen with every layer and
every max-pooling window, so IBP and CROWN-IBP papers use strided convolutions, no pooling and
no batch norm (its training-mode statistics make the bound depend on the batch); every one of
their layers is one the bounds cross exactly (:mod:`robustact.certify`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, conv
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["IBPMedium", "IBPSmall"]


@register_model("ibp_small")
class IBPSmall(ZooClassifier):
    """Gowal et al.'s small certified-training CNN."""

    arch = "ibp_small"
    fixed_size = True

    def __init__(self, *, activation: ActivationFactory, **data: Any) -> None:
        super().__init__(**data)
        side = self.side_after([conv(4, stride=2), conv(4)])
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 16, 4, stride=2), activation(16),
            nn.Conv2d(16, 32, 4), activation(32),
            nn.Flatten(), nn.Linear(32 * side * side, 100), activation(100),
        )
        self.head = nn.Linear(100, self.num_classes)


@register_model("ibp_medium")
class IBPMedium(ZooClassifier):
    """Gowal et al.'s medium certified-training CNN."""

    arch = "ibp_medium"
    fixed_size = True

    def __init__(self, *, activation: ActivationFactory, **data: Any) -> None:
        super().__init__(**data)
        side = self.side_after([conv(3), conv(4, stride=2), conv(3), conv(4, stride=2)])
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 32, 3), activation(32),
            nn.Conv2d(32, 32, 4, stride=2), activation(32),
            nn.Conv2d(32, 64, 3), activation(64),
            nn.Conv2d(64, 64, 4, stride=2), activation(64),
            nn.Flatten(), nn.Linear(64 * side * side, 512), activation(512),
            nn.Linear(512, 512), activation(512),
        )
        self.head = nn.Linear(512, self.num_classes)
