"""The two small networks of the JumpReLU paper (Erichson, Yao, Mahoney 2019): LeNetLike, AlexLike.

They are built exactly as papers.md §1 describes them, because the JumpReLU retrofit is tuned and
compared on these very models (κ grids, the published AlexLike row). Every hidden layer's
activation is a factory site, so the retrofit can swap all of them for JumpReLU; the logits layer
(``head``) has none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, check_rate, conv, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["LeNetLike", "AlexLike"]


@register_model("lenetlike")
class LeNetLike(ZooClassifier):
    """MNIST network: conv(→10, k5), max-pool 2, act, conv(→20, k5), max-pool 2, act, flatten
    (320 on 28×28), dropout, fc 120, act, fc 90, act, head.

    The activation follows the pooling (as the paper lists it); for monotone activations such as
    ReLU and JumpReLU pooling and activation commute, for others the order matters, so we keep
    the paper's. Convolutions are unpadded.
    """

    arch = "lenetlike"
    fixed_size = True

    def __init__(
        self, *, activation: ActivationFactory, dropout: float = 0.5, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        p = check_rate(dropout)
        side = self.side_after(
            [conv(5, label="conv1"), pool(2, label="pool1"), conv(5, label="conv2"),
             pool(2, label="pool2")],
        )
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 10, 5),
            nn.MaxPool2d(2),
            activation(10),
            nn.Conv2d(10, 20, 5),
            nn.MaxPool2d(2),
            activation(20),
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(20 * side * side, 120),
            activation(120),
            nn.Linear(120, 90),
            activation(90),
        )
        self.head = nn.Linear(90, self.num_classes)


@register_model("alexlike")
class AlexLike(ZooClassifier):
    """CIFAR-10 network: conv 3×3 → 64, act, conv → 64, act, max-pool 2, conv → 128, act,
    conv → 128, act, max-pool 2, flatten (5·5·128 = 3200 on 32×32), dropout, fc 256, act,
    fc 256, act, head.

    Choices where the paper's description is terse: the convolutions are unpadded (that is what
    makes the stated 5·5·128 flatten size come out), and the single dropout sits between the
    flatten and the first fully connected layer, where papers.md §1 places it.
    """

    arch = "alexlike"
    fixed_size = True

    def __init__(
        self, *, activation: ActivationFactory, dropout: float = 0.5, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        p = check_rate(dropout)
        side = self.side_after(
            [conv(3, label="conv1"), conv(3, label="conv2"), pool(2, label="pool1"),
             conv(3, label="conv3"), conv(3, label="conv4"), pool(2, label="pool2")],
        )
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, 64, 3),
            activation(64),
            nn.Conv2d(64, 64, 3),
            activation(64),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3),
            activation(128),
            nn.Conv2d(128, 128, 3),
            activation(128),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(128 * side * side, 256),
            activation(256),
            nn.Linear(256, 256),
            activation(256),
        )
        self.head = nn.Linear(256, self.num_classes)
