"""The two small networks of the JumpReLU paper (Erichson, Yao, Mahoney 2019): LeNetLike, AlexLike.

They are built exactly as papers.md §1 describes them, because the JumpReLU retrofit is tuned and
compared on these very models (κ grids, the published AlexLike row). Every hidden layer's
activation is a factory site, so the retrofit can swap all of them for JumpReLU; the logits layer
(``head``) has none.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from robustact.models._utils import Layer, ZooClassifier, check_rate, conv, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["LeNetLike", "AlexLike"]


class _PaperNet(ZooClassifier):
    """What papers.md §1 gives both networks: a convolution stack (each subclass's own), then
    flatten, one dropout, two fully connected layers with activations, and the head."""

    fixed_size = True
    #: the stack's convolutions and poolings, for the flatten width (and the minimum input size)
    spatial: ClassVar[tuple[Layer, ...]]
    #: widths of the two fully connected layers
    fc: ClassVar[tuple[int, int]]

    def __init__(
        self, *, activation: ActivationFactory, dropout: float = 0.5, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        p = check_rate(dropout)
        side = self.side_after(self.spatial)
        convs, channels = self.conv_stack(activation)
        h1, h2 = self.fc
        self.body = nn.Sequential(
            *convs,
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(channels * side * side, h1),
            activation(h1),
            nn.Linear(h1, h2),
            activation(h2),
        )
        self.head = nn.Linear(h2, self.num_classes)

    def conv_stack(self, activation: ActivationFactory) -> tuple[list[nn.Module], int]:
        """The convolution layers, and the channel count they end with."""
        raise NotImplementedError


@register_model("lenetlike")
class LeNetLike(_PaperNet):
    """MNIST network: conv(→10, k5), max-pool 2, act, conv(→20, k5), max-pool 2, act, flatten
    (320 on 28×28), dropout, fc 120, act, fc 90, act, head.

    The activation follows the pooling (as the paper lists it); for monotone activations such as
    ReLU and JumpReLU pooling and activation commute, for others the order matters, so we keep
    the paper's. Convolutions are unpadded.
    """

    arch = "lenetlike"
    spatial = (conv(5, label="conv1"), pool(2, label="pool1"), conv(5, label="conv2"),
               pool(2, label="pool2"))
    fc = (120, 90)

    def conv_stack(self, activation: ActivationFactory) -> tuple[list[nn.Module], int]:
        return [
            nn.Conv2d(self.in_channels, 10, 5),
            nn.MaxPool2d(2),
            activation(10),
            nn.Conv2d(10, 20, 5),
            nn.MaxPool2d(2),
            activation(20),
        ], 20


@register_model("alexlike")
class AlexLike(_PaperNet):
    """CIFAR-10 network: conv 3×3 → 64, act, conv → 64, act, max-pool 2, conv → 128, act,
    conv → 128, act, max-pool 2, flatten (5·5·128 = 3200 on 32×32), dropout, fc 256, act,
    fc 256, act, head.

    Choices where the paper's description is terse: the convolutions are unpadded (that is what
    makes the stated 5·5·128 flatten size come out), and the single dropout sits between the
    flatten and the first fully connected layer, where papers.md §1 places it.
    """

    arch = "alexlike"
    spatial = (conv(3, label="conv1"), conv(3, label="conv2"), pool(2, label="pool1"),
               conv(3, label="conv3"), conv(3, label="conv4"), pool(2, label="pool2"))
    fc = (256, 256)

    def conv_stack(self, activation: ActivationFactory) -> tuple[list[nn.Module], int]:
        return [
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
        ], 128
