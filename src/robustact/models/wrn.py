"""Wide ResNet (Zagoruyko & Komodakis, BMVC 2016), CIFAR layout; WRN-34-4 is a JumpReLU model.

Depth 6n + 4: a 3×3 stem with 16 channels, three stages of n pre-activation blocks with 16k,
32k and 64k channels (k = widen factor; stages 2 and 3 start with stride 2), then BN, act,
global average pooling and the head. A pre-activation block computes
``conv(drop(act(bn(conv(act(bn(x)))))))`` plus a shortcut: the identity, or, where the shape
changes, a 1×1 strided convolution of the block's first ``act(bn(x))`` (as in the authors' code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.models._utils import (
    ZooClassifier,
    check_positive_int,
    check_rate,
    kaiming_init_convs,
)
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["WideResNet", "WRN34_4", "PreActBlock"]


class PreActBlock(nn.Module):
    """BN-act-conv twice, with two activation sites and an optional dropout between the convs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activation: ActivationFactory,
        dropout: float,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = activation(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = activation(out_channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.project = (
            None
            if stride == 1 and in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        shortcut = x if self.project is None else self.project(o)
        out = self.conv2(self.drop(self.act2(self.bn2(self.conv1(o)))))
        return out + shortcut


@register_model("wideresnet")
class WideResNet(ZooClassifier):
    """WRN-depth-k; ``create_model("wideresnet", depth=28, widen_factor=10)`` for WRN-28-10."""

    def __init__(
        self,
        *,
        activation: ActivationFactory,
        depth: int = 34,
        widen_factor: int = 4,
        dropout: float = 0.0,
        **data: Any,
    ) -> None:
        check_positive_int(depth, "depth")
        check_positive_int(widen_factor, "widen_factor")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        super().__init__(arch=f"wrn{depth}_{widen_factor}", **data)  # and the dataset keywords
        p = check_rate(dropout)
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, 16, 3, 1, 1, bias=False)]
        c_in = 16
        for stage, width in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(PreActBlock(c_in, width, stride, activation, p))
                c_in = width
        layers += [nn.BatchNorm2d(c_in), activation(c_in)]
        self.pool_into_head(layers, c_in)
        kaiming_init_convs(self, mode="fan_out")


@register_model("wrn34_4")
class WRN34_4(WideResNet):
    """WRN-34-4 (the JumpReLU paper's wide model), about 7.4 M parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(depth=34, widen_factor=4, **kwargs)
