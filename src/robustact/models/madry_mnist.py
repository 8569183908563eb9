"""The MNIST network of Madry et al. (2018), the usual model for adversarial training at ε = 0.3.

Layout (their ``mnist_challenge`` model): conv 5×5 → 32 ("same" padding), act, max-pool 2,
conv 5×5 → 64 ("same"), act, max-pool 2, flatten (7×7×64 = 3136 on MNIST), fc 1024, act, head.
Why in the zoo: robust training at ε = 0.3 needs capacity; Madry et al. found that small
networks such as LeNet-5 reach much lower robust accuracy (capacity is part of their result),
and AutoAttack's MNIST reference figures are for this network.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, conv, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["MadryMNIST"]


@register_model("madry_mnist")
class MadryMNIST(ZooClassifier):
    """Madry et al.'s MNIST CNN with the activation taken from the factory at its three sites."""

    arch = "madry_mnist"
    fixed_size = True

    def __init__(self, *, activation: ActivationFactory, **data: Any) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        side = self.side_after(
            [conv(5, padding=2, label="conv1"), pool(2, label="pool1"),
             conv(5, padding=2, label="conv2"), pool(2, label="pool2")],
        )
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 32, 5, padding=2),
            activation(32),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            activation(64),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 1024),
            activation(1024),
        )
        self.head = nn.Linear(1024, self.num_classes)
