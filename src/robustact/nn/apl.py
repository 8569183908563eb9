"""Adaptive piecewise-linear units (APL; Agostinelli, Hoffman, Sadowski, Baldi 2014).

    h(x) = max(0, x) + Σ_{s=1}^{S} a_s · max(0, −x + b_s)

a ReLU plus S learned hinges on the left, with learned slopes a_s and learned hinge locations
b_s. One of the nine activations SPLASH is compared against (papers.md §2); unlike SPLASH, the hinge
locations are trained too and h(0) = Σ a_s·max(0, b_s) need not be 0.

Initialisation (a choice, documented): a = 0 so a fresh APL layer is exactly a ReLU (as with
SPLASH, any difference in training comes from the learned shape, not a different starting
function), and b spread evenly over [−1, 1] (linspace; 0 when S = 1) so the hinges start in the
bulk of a unit-scale input and receive gradient through a as soon as it moves. Deterministic, no
random number generator involved. Gradients are autograd's: APL is small (S = 2 by default).
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.nn.factory import register_activation

__all__ = ["APL"]


class APL(nn.Module):
    """APL activation with ``S`` hinges (default 2), per channel by default.

    Args:
        num_features: channels at this site (dim 1 of the input) when ``per_channel``.
        S: number of learned hinges (≥ 1).
        per_channel: one (a, b) set per channel, shape (C, S), broadcast over dim 1; otherwise
            one set per layer, shape (S,).
    """

    def __init__(self, num_features: int = 1, S: int = 2, per_channel: bool = True) -> None:
        super().__init__()
        if isinstance(S, bool) or not isinstance(S, int) or S < 1:
            raise ValueError(f"APL S (number of hinges) must be an int >= 1, got {S!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"APL num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.S = S
        self.per_channel = bool(per_channel)
        b0 = torch.linspace(-1.0, 1.0, S) if S > 1 else torch.zeros(1)
        shape = (num_features, S) if self.per_channel else (S,)
        self.a = nn.Parameter(torch.zeros(shape))
        self.b = nn.Parameter(b0.expand(shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a.to(x.dtype), self.b.to(x.dtype)
        if self.per_channel:
            if x.ndim < 2 or x.shape[1] != self.num_features:
                raise ValueError(
                    f"per-channel APL was built for {self.num_features} channels (dim 1) but got "
                    f"input of shape {tuple(x.shape)}"
                )
            view = (1, self.num_features) + (1,) * (x.ndim - 2)
            a_s = [a[:, s].view(view) for s in range(self.S)]
            b_s = [b[:, s].view(view) for s in range(self.S)]
        else:
            a_s = [a[s] for s in range(self.S)]
            b_s = [b[s] for s in range(self.S)]
        # clamp_min rather than F.relu: a JumpReLU retrofit's function mode reroutes F.relu.
        out = torch.clamp_min(x, 0)
        for s in range(self.S):
            out = out + a_s[s] * torch.clamp_min(b_s[s] - x, 0)
        return out

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, S={self.S}, per_channel={self.per_channel}"


@register_activation("apl")
def _build_apl(num_features: int, S: int = 2, per_channel: bool = True) -> nn.Module:
    """Factory builder: ``"apl"``, ``"apl:S=3,per_channel=false"``."""
    return APL(num_features, S=S, per_channel=per_channel)
