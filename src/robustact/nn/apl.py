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
from robustact.nn.piecewise import ChannelwisePieces

__all__ = ["APL"]


@register_activation("apl")  # "apl", "apl:S=3,per_channel=false"
class APL(ChannelwisePieces):
    """APL activation with ``S`` ≥ 1 learned hinges (default 2), per channel by default.

    Parameters ``a`` (hinge slopes) and ``b`` (hinge locations), shape (C, S) per channel or (S,)
    per layer; ``num_features`` and ``per_channel`` as in :class:`ChannelwisePieces`.
    """

    def __init__(self, num_features: int = 1, S: int = 2, per_channel: bool = True) -> None:
        if isinstance(S, bool) or not isinstance(S, int) or S < 1:
            raise ValueError(f"APL S (number of hinges) must be an int >= 1, got {S!r}")
        super().__init__(num_features, per_channel)
        self.S = S
        b0 = torch.linspace(-1.0, 1.0, S) if S > 1 else torch.zeros(1)
        shape = self.piece_shape(S)
        self.a = nn.Parameter(torch.zeros(shape))
        self.b = nn.Parameter(b0.expand(shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_s, b_s = self.pieces(self.a, x), self.pieces(self.b, x)
        # clamp_min rather than F.relu: a JumpReLU retrofit's function mode reroutes F.relu.
        out = torch.clamp_min(x, 0)
        for s in range(self.S):
            out = out + a_s[s] * torch.clamp_min(b_s[s] - x, 0)
        return out

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, S={self.S}, per_channel={self.per_channel}"
