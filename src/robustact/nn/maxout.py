"""Maxout as a drop-in activation: h(x) = max_j (w_j · x + c_j).

A choice, documented: the original maxout unit (Goodfellow et al. 2013) takes the maximum over k
*linear projections of the layer input*, so it multiplies the preceding layer's width by k and
cannot be swapped in at an activation site. To stay a drop-in activation (same width, same
``num_features -> module`` factory contract as the others in the SPLASH comparison), robustact's
"maxout" is the element-wise maximum of ``k`` learned affine pieces per channel: a learnable
convex piecewise-linear unit, which is what a maxout unit computes along any single input
direction.

Initialisation: pieces (w, c) = (1, 0) and (0, 0), i.e. exactly ReLU. For k > 2 the extra pieces
start with slopes spread strictly between 0 and 1 and intercept 0: the unit is still exactly
ReLU (those pieces lie below max(x, 0) everywhere except at 0), and they become active once
training moves the first two pieces (e.g. when the flat piece's intercept drops below 0).
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.nn.factory import register_activation
from robustact.nn.piecewise import ChannelwisePieces

__all__ = ["Maxout"]


@register_activation("maxout")  # "maxout", "maxout:k=3"
class Maxout(ChannelwisePieces):
    """Element-wise maxout over ``k`` ≥ 2 learned affine pieces (default 2, initialised to ReLU).

    Parameters ``weight`` (slopes w) and ``bias`` (intercepts c), shape (C, k) per channel or
    (k,) per layer; ``num_features`` and ``per_channel`` as in :class:`ChannelwisePieces`.
    """

    def __init__(self, num_features: int = 1, k: int = 2, per_channel: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"Maxout k (number of pieces) must be an int >= 2, got {k!r}")
        super().__init__(num_features, per_channel)
        self.k = k
        w0 = torch.cat([torch.tensor([1.0, 0.0]), torch.linspace(0.0, 1.0, k)[1:-1]])
        shape = self.piece_shape(k)
        self.weight = nn.Parameter(w0.expand(shape).clone())
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_s, c_s = self.pieces(self.weight, x), self.pieces(self.bias, x)
        pieces = [w * x + c for w, c in zip(w_s, c_s, strict=True)]
        out = pieces[0]
        for p in pieces[1:]:
            out = torch.maximum(out, p)
        return out

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, k={self.k}, per_channel={self.per_channel}"

