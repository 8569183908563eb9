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

__all__ = ["Maxout"]


class Maxout(nn.Module):
    """Element-wise maxout over ``k`` learned affine pieces (default 2, initialised to ReLU).

    Args:
        num_features: channels at this site (dim 1 of the input) when ``per_channel``.
        k: number of affine pieces (≥ 2).
        per_channel: pieces per channel, shape (C, k), broadcast over dim 1; otherwise (k,).

    Parameters ``weight`` (slopes w) and ``bias`` (intercepts c).
    """

    def __init__(self, num_features: int = 1, k: int = 2, per_channel: bool = True) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"Maxout k (number of pieces) must be an int >= 2, got {k!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"Maxout num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.k = k
        self.per_channel = bool(per_channel)
        w0 = torch.cat([torch.tensor([1.0, 0.0]), torch.linspace(0.0, 1.0, k)[1:-1]])
        shape = (num_features, k) if self.per_channel else (k,)
        self.weight = nn.Parameter(w0.expand(shape).clone())
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, c = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if self.per_channel:
            if x.ndim < 2 or x.shape[1] != self.num_features:
                raise ValueError(
                    f"per-channel Maxout was built for {self.num_features} channels (dim 1) but "
                    f"got input of shape {tuple(x.shape)}"
                )
            view = (1, self.num_features) + (1,) * (x.ndim - 2)
            pieces = [w[:, j].view(view) * x + c[:, j].view(view) for j in range(self.k)]
        else:
            pieces = [w[j] * x + c[j] for j in range(self.k)]
        out = pieces[0]
        for p in pieces[1:]:
            out = torch.maximum(out, p)
        return out

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, k={self.k}, per_channel={self.per_channel}"


@register_activation("maxout")
def _build_maxout(num_features: int, k: int = 2, per_channel: bool = True) -> nn.Module:
    """Factory builder: ``"maxout"``, ``"maxout:k=3"``."""
    return Maxout(num_features, k=k, per_channel=per_channel)
