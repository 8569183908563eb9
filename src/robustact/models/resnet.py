"""CIFAR ResNets (He, Zhang, Ren, Sun; "Deep Residual Learning", CVPR 2016, Section 4.2).

Depth 6n + 2: a 3×3 stem with 16 channels, then three stages of n basic blocks with 16, 32 and
64 channels (the first block of stages 2 and 3 halves the map with stride 2), global average
pooling and the head. ResNet-20/32/56 are n = 3/5/9. Used by SPLASH (ResNet-20) and JumpReLU.

Each basic block is ``act(bn(conv(act(bn(conv(x))))) + shortcut(x))``: its two activation sites
(the second after the addition, as in the paper) each get their own factory call, and so does
the stem, so a depth-d network has d − 1 activation modules.

Shortcuts where the shape changes:

- option "A" (default, the paper's CIFAR choice): parameter-free, subsample by the stride and
  zero-pad the new channels; ResNet-20 then has 269,722 parameters for 10 classes;
- option "B": a 1×1 strided convolution plus BatchNorm (272,474 parameters for ResNet-20).

Convolutions use Kaiming-normal initialization (He et al. 2015), as the paper does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.models._utils import (
    ZooClassifier,
    check_positive_int,
    conv_bn,
    kaiming_init_convs,
)
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["CifarResNet", "ResNet20", "ResNet32", "ResNet56", "BasicBlock", "PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, zero-pad channels to ``out_channels``.

    The zeros are split evenly before and after the existing channels (as in common CIFAR
    ports); the identity part then lines up with the middle of the block's output channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"a zero-padding shortcut cannot shrink channels ({in_channels} -> {out_channels})"
            )
        self.stride = stride
        self.before = (out_channels - in_channels) // 2
        self.after = out_channels - in_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a shortcut; ``act1`` inside, ``act2`` after the addition."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activation: ActivationFactory,
        shortcut: str,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = activation(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.act2 = activation(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class CifarResNet(ZooClassifier):
    """ResNet-(6n+2) for small images; any input size works (global average pooling)."""

    def __init__(
        self, *, depth: int, activation: ActivationFactory, shortcut: str = "A", **data: Any
    ) -> None:
        check_positive_int(depth, "depth")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        super().__init__(arch=f"resnet{depth}", **data)  # and the five dataset keywords
        key = shortcut.upper() if isinstance(shortcut, str) else shortcut
        if key not in ("A", "B"):
            raise ValueError(
                f"shortcut must be 'A' (zero-padding) or 'B' (1x1 conv), got {shortcut!r}"
            )
        self.depth = depth
        n = (depth - 2) // 6

        layers: list[nn.Module] = [*conv_bn(self.in_channels, 16, 3), activation(16)]
        c_in = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(c_in, width, stride, activation, key))
                c_in = width
        self.pool_into_head(layers, c_in)
        kaiming_init_convs(self, mode="fan_out")


@register_model("resnet20")
class ResNet20(CifarResNet):
    """ResNet-20 (n = 3), 0.27 M parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(depth=20, **kwargs)


@register_model("resnet32")
class ResNet32(CifarResNet):
    """ResNet-32 (n = 5), 0.46 M parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(depth=32, **kwargs)


@register_model("resnet56")
class ResNet56(CifarResNet):
    """ResNet-56 (n = 9), 0.85 M parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(depth=56, **kwargs)
