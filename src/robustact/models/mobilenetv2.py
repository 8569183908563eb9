"""MobileNetV2 (Sandler et al., CVPR 2018), CIFAR variant; one of the JumpReLU paper's models.

Inverted residual blocks: a 1×1 expansion (t×), a 3×3 depthwise convolution, a linear 1×1
projection (no activation: the paper's "linear bottleneck"), each followed by BatchNorm; a
residual connection when the block keeps its shape. Then a 1×1 convolution to 1280 channels,
global average pooling and the head.

CIFAR changes, as in the common CIFAR port: the stem has stride 1 and the first strided stage
(24 channels) has stride 1 too, so a 32×32 image ends at 4×4 instead of 1×1. Every place
MobileNetV2 uses ReLU6 takes the factory's activation instead (ReLU6's clipping is an
activation choice like any other here). ``width_mult`` scales the channels, rounded to
multiples of 8 as in the paper's code; the final 1280 is scaled only when ``width_mult > 1``.
Convolutions use Kaiming-normal initialization with fan-in. (The fan-out rule of some ports
counts all 9·C outputs of a depthwise convolution, and PyTorch's default init shrinks the
variance ~3× per layer; either way the signal of a fresh model in eval mode vanishes ~10⁸-fold
over its 52 convolutions.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.models._utils import ZooClassifier, conv_bn, kaiming_init_convs
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["MobileNetV2", "InvertedResidual"]

# (expansion t, output channels c, repeats n, first stride s); CIFAR strides.
_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet model
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` without losing more than 10 % (the paper's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class InvertedResidual(nn.Module):
    """Expand (1×1, act) → depthwise 3×3 (act) → project (1×1, linear), plus a residual."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, expansion: int, activation: ActivationFactory
    ) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*conv_bn(c_in, hidden, 1), activation(hidden)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), activation(hidden)]
        layers += conv_bn(hidden, c_out, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


@register_model("mobilenetv2")
class MobileNetV2(ZooClassifier):
    """MobileNetV2 for small images; any input size works (global average pooling)."""

    arch = "mobilenetv2"

    def __init__(
        self, *, activation: ActivationFactory, width_mult: float = 1.0, **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        c = _divisible(32 * width_mult)
        layers: list[nn.Module] = [*conv_bn(self.in_channels, c, 3), activation(c)]
        for t, c_out, n, s in _CONFIG:
            c_out = _divisible(c_out * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t, activation))
                c = c_out
        last = _divisible(1280 * max(1.0, width_mult))
        layers += [*conv_bn(c, last, 1), activation(last)]
        self.pool_into_head(layers, last)
        kaiming_init_convs(self, mode="fan_in")
