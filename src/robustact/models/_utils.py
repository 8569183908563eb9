"""Shared by the architectures: the zoo base class, argument checks, size arithmetic, conv-BN.

Why a module of its own: every architecture takes the same five keywords from ``create_model``
and several need a flatten size derived from ``input_size``. Checking those in one place gives
every model the same clear error (``lenet5 needs input_size >= 16, got 8``) instead of a shape
mismatch deep inside ``nn.Linear`` on the first forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from robustact.models.base import Classifier
from robustact.nn.normalize import Normalize

__all__ = [
    "ZooClassifier",
    "Layer",
    "conv",
    "conv_bn",
    "kaiming_init_convs",
    "pool",
    "out_size",
    "trace_size",
    "check_bool",
    "check_common",
    "check_positive_int",
    "check_rate",
    "check_spatial",
    "count_parameters",
]


class Layer(NamedTuple):
    """A spatial layer for size arithmetic: kernel, stride, padding, ceil mode, and a label."""

    kernel: int
    stride: int = 1
    padding: int = 0
    ceil_mode: bool = False
    label: str = "layer"


def conv(kernel: int, stride: int = 1, padding: int = 0, label: str = "conv") -> Layer:
    return Layer(kernel, stride, padding, False, label)


def pool(
    kernel: int, stride: int | None = None, ceil_mode: bool = False, label: str = "pool"
) -> Layer:
    return Layer(kernel, kernel if stride is None else stride, 0, ceil_mode, label)


def out_size(size: int, layer: Layer) -> int:
    """Output side length of a conv/pool layer, by PyTorch's formula (<= 0 means it fails).

    With ``ceil_mode`` PyTorch rounds up (a last window may hang over the edge, so even an input
    one pixel smaller than the kernel gives one output) but drops a window that would start in
    the right padding.
    """
    extra = layer.stride - 1 if layer.ceil_mode else 0
    out = (size + 2 * layer.padding - layer.kernel + extra) // layer.stride + 1
    if layer.ceil_mode and (out - 1) * layer.stride >= size + layer.padding:
        out -= 1
    return out


def _run(size: int, layers: Sequence[Layer]) -> tuple[int, str | None]:
    for layer in layers:
        size = out_size(size, layer)
        if size <= 0:
            return 0, layer.label
    return size, None


def trace_size(model: str, input_size: int, layers: Sequence[Layer]) -> int:
    """Side length after ``layers``; a clear ValueError (with the minimum size) if it vanishes."""
    size, failed = _run(input_size, layers)
    if failed is None:
        return size
    smallest = next((s for s in range(input_size + 1, 4097) if _run(s, layers)[1] is None), None)
    need = f"needs input_size >= {smallest}" if smallest else "cannot handle this input_size"
    raise ValueError(
        f"{model} {need}, got {input_size} (the feature map vanishes at {failed!r})"
    )


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_rate(value: object, name: str = "dropout") -> float:
    """A probability in [0, 1) such as a dropout rate."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_common(
    model: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    need_size: bool,
) -> None:
    """Validate the five keywords every architecture receives from ``create_model``.

    ``need_size``: the architecture flattens a feature map, so its ``nn.Linear`` width depends
    on ``input_size``; global-average-pooling networks accept ``input_size=None``.
    """
    check_positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    check_positive_int(in_channels, "in_channels")
    if input_size is None:
        if need_size:
            raise ValueError(
                f"{model} flattens its feature map, so it needs input_size "
                "(pass input_size=... or dataset=...)"
            )
    else:
        check_positive_int(input_size, "input_size")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"mean and std need one value per input channel ({in_channels}), "
            f"got {len(mean)} and {len(std)}"
        )


def check_spatial(x: torch.Tensor, in_channels: int, input_size: int | None, model: str) -> None:
    """Refuse inputs whose shape differs from what the model was built for.

    Without this a wrong image size reaches the first ``nn.Linear`` as an opaque matmul error.
    """
    if isinstance(x, torch.fx.Proxy):
        return  # traced into a bound graph (robustact.certify): real inputs are checked there
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{model} expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if input_size is not None and tuple(x.shape[1:]) != (in_channels, input_size, input_size):
        raise ValueError(
            f"{model} was built for inputs ({in_channels}, {input_size}, {input_size}), "
            f"got {tuple(x.shape[1:])}"
        )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as BN statistics and Normalize are excluded)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters expects an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ZooClassifier(Classifier):
    """:class:`Classifier` plus the preamble every zoo model shares.

    ``create_model`` passes every architecture the same five keywords describing the data
    (``num_classes``, ``in_channels``, ``input_size``, ``mean``, ``std``); a subclass takes its
    own options plus ``activation`` and hands those five on with ``super().__init__(**data)``.
    This constructor checks them (:func:`check_common`), records them as attributes and builds
    ``self.normalize``; the subclass then builds ``body`` and ``head``.

    ``features`` checks the input shape first: a network that flattens a feature map must see
    exactly the size it was built for (``fixed_size``, which also makes ``input_size``
    mandatory), a global-average-pooling one any size.
    """

    arch: str = "model"
    fixed_size: bool = False

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        arch: str | None = None,
    ) -> None:
        """``arch`` names a model whose name depends on its options (``resnet20``)."""
        super().__init__()
        if arch is not None:
            self.arch = arch
        check_common(
            self.arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
            mean=mean, std=std, need_size=self.fixed_size,
        )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = input_size
        # Buffers only: building it draws no random numbers, so parameter init is unaffected.
        self.normalize = Normalize(mean, std)

    def side_after(self, layers: Sequence[Layer]) -> int:
        """Side length of the feature map after ``layers``: the flatten width of a fixed-size
        model, and a clear error naming the minimum ``input_size`` if the map vanishes.

        A global-average-pooling model built without ``input_size`` accepts any size, so there
        is nothing to check and the answer is 0 (such a model never uses it).
        """
        if self.input_size is None:
            return 0
        return trace_size(self.arch, self.input_size, layers)

    def pool_into_head(self, layers: Sequence[nn.Module], width: int) -> None:
        """The ending of every global-average-pooling model: ``body`` is ``layers`` then global
        average pooling to a ``width``-vector (the features φ), ``head`` is
        ``nn.Linear(width, num_classes)``."""
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial(x, self.in_channels, self.input_size if self.fixed_size else None, self.arch)
        return self.body(self.normalize(x))


def conv_bn(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    groups: int = 1,
    batchnorm: bool = True,
) -> list[nn.Module]:
    """A convolution followed by BatchNorm, as a list to splice into an ``nn.Sequential``.

    ``padding`` defaults to "same" (``kernel // 2``). With BatchNorm the convolution has no bias
    (BatchNorm's shift replaces it); ``batchnorm=False`` gives a plain convolution with bias.
    """
    pad = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=not batchnorm)
    ]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return layers


def kaiming_init_convs(model: nn.Module, mode: str = "fan_out") -> None:
    """He-normal initialization of every convolution weight (He et al. 2015), in module order.

    The ResNet family and MobileNetV2 ask for it; PyTorch's default (Kaiming-uniform with
    a = sqrt(5)) shrinks the signal of deep networks.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
