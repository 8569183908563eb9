"""JumpReLU: ReLU with a jump, the retrofit defense of Erichson, Yao and Mahoney (2019).

JumpReLU_κ(x) = x · 1[x > κ]: inputs at or below the threshold κ ≥ 0 are zeroed, inputs above it
pass unchanged, so the function jumps from 0 to κ at x = κ. κ = 0 is exactly ReLU.

Why a custom autograd function: ReLU's backward keeps only its *output* (which the next layer
keeps anyway) and routes the gradient where the output is positive. JumpReLU's output is positive
exactly where x > κ, so the same rule gives the derivative 1[x > κ] with the same memory cost, and
at κ = 0 forward and backward are bit-for-bit those of ``torch.relu`` (including ``-0.0`` and NaN
propagation). That bit-exactness is what lets a κ = 0 retrofit reproduce the original model.

The paper switches JumpReLU on at inference only; :class:`JumpReLU` therefore behaves as ReLU in
training mode unless ``train_kappa=True``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from robustact.core.attributes import Checked
from robustact.nn.factory import register_activation

__all__ = ["JumpReLU", "jump_relu", "check_kappa"]


def check_kappa(kappa: Any, name: str = "kappa") -> float:
    """κ must be a finite, non-negative real number; returns it as a float."""
    if isinstance(kappa, torch.Tensor) and kappa.numel() == 1 and kappa.is_floating_point():
        kappa = kappa.item()
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(kappa).__name__}")
    kappa = float(kappa)
    if not math.isfinite(kappa) or kappa < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 is ReLU), got {kappa}")
    return kappa


class _JumpReLUFunction(torch.autograd.Function):
    """y = x·1[x > κ]; dy/dx = 1[y > 0] (= 1[x > κ]); saves only y, like ReLU."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kappa: float, inplace: bool) -> torch.Tensor:
        # κ = 0 uses ``x < 0`` so that -0.0 and NaN survive exactly as in torch.relu.
        mask = x < 0 if kappa == 0.0 else x <= kappa
        if inplace:
            ctx.mark_dirty(x)
            y = x.masked_fill_(mask, 0)
        else:
            y = x.masked_fill(mask, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (y,) = ctx.saved_tensors
        # Same rule as ReLU's threshold_backward: no gradient where the output is <= 0.
        return grad.masked_fill(y <= 0, 0), None, None


def jump_relu(x: torch.Tensor, kappa: float = 0.0, inplace: bool = False) -> torch.Tensor:
    """Functional JumpReLU: ``x`` where ``x > kappa``, else 0 (in place if ``inplace``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"jump_relu expects a torch.Tensor, got {type(x).__name__}")
    return _JumpReLUFunction.apply(x, check_kappa(kappa), bool(inplace))


class JumpReLU(nn.Module):
    """Element-wise JumpReLU with threshold ``kappa`` (settable; 0 is ReLU).

    Args:
        kappa: the threshold κ ≥ 0.
        train_kappa: apply κ in training mode too. Off by default because the paper trains with
            ReLU and switches the jump on at inference only.
        inplace: overwrite the input (like ``nn.ReLU(inplace=True)``).
    """

    kappa = Checked(check_kappa)

    def __init__(self, kappa: float = 0.0, train_kappa: bool = False,
                 inplace: bool = False) -> None:
        super().__init__()
        self.kappa = kappa
        self.train_kappa = bool(train_kappa)
        self.inplace = bool(inplace)

    @property
    def effective_kappa(self) -> float:
        """The κ the next forward uses: 0 in training mode unless ``train_kappa``."""
        return self._kappa if (self.train_kappa or not self.training) else 0.0

    #: Set by the JumpReLU retrofit: a :class:`robustact.nn.surgery.JumpReLUMode` to pause while
    #: this module and its hooks run (so a hook's deliberate ``F.relu`` stays a ReLU).
    reroute_mode: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mode = self.reroute_mode
        if mode is None:
            return super().__call__(*args, **kwargs)
        with mode.suspended():
            return super().__call__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _JumpReLUFunction.apply(x, self.effective_kappa, self.inplace)

    def extra_repr(self) -> str:
        s = f"kappa={self._kappa:g}"
        if self.train_kappa:
            s += ", train_kappa=True"
        if self.inplace:
            s += ", inplace=True"
        return s


@register_activation("jumprelu")
def _build_jumprelu(num_features: int, kappa: float = 0.0, train_kappa: bool = False) -> nn.Module:
    """Factory builder: ``"jumprelu:kappa=1.0"``; element-wise, ``num_features`` is unused."""
    return JumpReLU(kappa=kappa, train_kappa=train_kappa)
