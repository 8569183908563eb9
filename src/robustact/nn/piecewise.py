"""The common frame of the learnable piecewise-linear activations (APL, Maxout; SPLASH alike).

Each holds ``K`` learned pieces, either one set per channel (parameters of shape (C, K),
broadcast over dim 1 of the input, as BatchNorm does) or one set for the whole layer (shape
(K,)). What differs between them is only how the pieces combine; the bookkeeping (checking
``num_features``, the parameter shape, checking the input's channel count, shaping each piece to
broadcast against the input) lives here once.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelwisePieces"]


class ChannelwisePieces(nn.Module):
    """Base class of an activation made of learned pieces.

    Args:
        num_features: channels at this site (dim 1 of the input); used when ``per_channel``.
        per_channel: one set of pieces per channel, broadcast over dim 1; otherwise one set for
            the whole layer.
    """

    def __init__(self, num_features: int, per_channel: bool) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"{type(self).__name__} num_features must be a positive int, got {num_features!r}"
            )
        self.num_features = num_features
        self.per_channel = bool(per_channel)

    def piece_shape(self, k: int) -> tuple[int, ...]:
        """Shape of a parameter with ``k`` pieces: (C, k) per channel, else (k,)."""
        return (self.num_features, k) if self.per_channel else (k,)

    def pieces(self, param: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """The ``k`` pieces of ``param`` (shape :meth:`piece_shape`) in ``x``'s dtype, each
        shaped to broadcast against ``x``: (1, C, 1, …) per channel, a scalar per layer."""
        p = param.to(x.dtype)
        k = p.shape[-1]
        if not self.per_channel:
            return [p[j] for j in range(k)]
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"per-channel {type(self).__name__} was built for {self.num_features} channels "
                f"(dim 1) but got input of shape {tuple(x.shape)}"
            )
        view = (1, self.num_features) + (1,) * (x.ndim - 2)
        return [p[:, j].view(view) for j in range(k)]
