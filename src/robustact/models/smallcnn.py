"""A two-convolution network for fast experiments on 8×8 digits, MNIST and CIFAR, and for tests.

conv 3×3 → 32, act, max-pool 2, conv 3×3 → 64, act, max-pool 2, flatten, fc 128, act, head.
The convolutions are padded ("same"), so any input of at least 4×4 works: 8×8 → 2×2, 28×28 →
7×7, 32×32 → 8×8 before the flatten.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, check_positive_int, conv, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["SmallCNN"]


@register_model("smallcnn")
class SmallCNN(ZooClassifier):
    """Small CNN with three activation sites (two convolutional, one fully connected).

    ``width`` is the first convolution's channel count (the second has twice as many) and
    ``hidden`` the fully connected width; the defaults give the 32/64/128 layout.
    """

    arch = "smallcnn"
    fixed_size = True

    def __init__(
        self, *, activation: ActivationFactory, width: int = 32, hidden: int = 128, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        c1 = check_positive_int(width, "width")
        c2 = 2 * c1
        check_positive_int(hidden, "hidden")
        side = self.side_after(
            [conv(3, padding=1, label="conv1"), pool(2, label="pool1"),
             conv(3, padding=1, label="conv2"), pool(2, label="pool2")],
        )
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, c1, 3, padding=1),
            activation(c1),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            activation(c2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            activation(hidden),
        )
        self.head = nn.Linear(hidden, self.num_classes)
