"""LeNet-5 (LeCun et al. 1998), the small convolutional baseline of the SPLASH paper on MNIST.

Layout: conv 5×5 → 6, act, max-pool 2, conv 5×5 → 16, act, max-pool 2, flatten, fc 120, act,
fc 84, act, head. Modern choices (as in most reproductions): max-pooling instead of the original
trainable sub-sampling, a full C3 connection table, and a plain linear head instead of the RBF
output layer. On 28×28 MNIST the first convolution pads by 2 so the feature map is 5×5×16 = 400,
exactly as for the 32×32 inputs LeNet-5 was designed for.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, conv, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["LeNet5"]


@register_model("lenet5")
class LeNet5(ZooClassifier):
    """LeNet-5 with the activation taken from the factory at its four sites.

    ``padding`` of the first convolution defaults to 2 for 28×28 inputs (MNIST) and 0 otherwise
    (32×32 CIFAR), so both datasets end at the classic 5×5×16 feature map.
    """

    arch = "lenet5"
    fixed_size = True

    def __init__(
        self, *, activation: ActivationFactory, padding: int | None = None, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        if padding is None:
            padding = 2 if self.input_size == 28 else 0
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        side = self.side_after(
            [conv(5, padding=padding, label="conv1"), pool(2, label="pool1"),
             conv(5, label="conv2"), pool(2, label="pool2")],
        )
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 6, 5, padding=padding),
            activation(6),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            activation(16),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            activation(120),
            nn.Linear(120, 84),
            activation(84),
        )
        self.head = nn.Linear(84, self.num_classes)
