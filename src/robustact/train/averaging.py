"""Weight averaging: an exponential moving average (EMA) of the weights over training steps.

Why: late in adversarial training the weights wander across a region of similar robust loss;
their running average sits nearer its middle and is more robust than the last iterate
(Gowal et al. 2020, "Uncovering the limits of adversarial training", who use a decay of 0.995
per step; the averaging idea is Polyak's, and Izmailov et al. 2018 for deep nets). It costs one
``lerp`` per tensor per step, nothing next to an attack.

The trainer keeps the average beside the weights the optimizer moves. Everything that judges or
hands out the model (validation, the fast-AT guard, the ``best``/``last`` checkpoints, the model
left after ``fit``) sees the average; the optimizer keeps stepping the raw weights, which a
checkpoint stores as well so a resumed run continues bit-for-bit.

The decay is ramped in as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (as in
TensorFlow's ``ExponentialMovingAverage``), so that a short run or a fine-tune is not dominated
by its initial weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["WeightAverage", "check_decay"]


def check_decay(decay: object, name: str = "ema") -> float:
    """The decay as a float in (0, 1), or one clear ``ValueError``."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(
            decay) or not 0 < decay < 1:
        raise ValueError(f"{name} must be a decay in (0, 1), e.g. 0.999, got {decay!r}")
    return float(decay)


class WeightAverage:
    """EMA of a model's ``state_dict``: floating tensors averaged, the rest (counters) copied.

    ``update`` after each optimizer step; ``applied(model)`` puts the average in place for a
    ``with`` block and restores the raw weights after it (``raw`` holds them meanwhile).
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        self.decay = check_decay(decay)
        self.updates = updates
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.raw: dict[str, torch.Tensor] | None = None

    def rate(self) -> float:
        """The weight of the newest weights in the next update (1 - the ramped decay)."""
        t = self.updates
        return 1.0 - min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        w = self.rate()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), w)
            else:
                s.copy_(v)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """The average in ``model`` for the block; yields the raw weights (a copy).

        What the block changes in the model (a callback that sets the head's bias to fit the
        judged weights) is kept in the average; the raw weights come back unchanged.
        """
        self.raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield self.raw
        finally:
            self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.raw)
            self.raw = None

    def copy_to(self, model: nn.Module) -> None:
        """Put the average in ``model`` for good (the end of training)."""
        model.load_state_dict(self.shadow)
