"""FGSM (Goodfellow et al. 2015): one step of size ε along the sign of the input gradient.

With ``norm="l2"`` it is the fast gradient method (FGM): one step of L2 length ε along the
normalised gradient. A single linearisation is the weakest white-box attack; the masking audit
uses it as the baseline iterative attacks must beat.
"""

from __future__ import annotations

from typing import Any

import torch

from robustact.attacks._utils import (
    StepRecorder,
    check_budget,
    check_norm,
    clip_to_box,
    loss_and_grad,
    normalize_direction,
)
from robustact.attacks.base import Attack, LogitsView
from robustact.losses.attack import AttackLoss

__all__ = ["FGSM"]


class FGSM(Attack):
    """``x_adv = clip(x + ε · dir(∇ loss))``, dir = sign (L∞) or g/‖g‖₂ (L2).

    Args:
        eps: budget in [0, 1] pixel units.
        loss: "ce" (the original), "margin" or "dlr", or a callable.
        norm: "linf" (FGSM) or "l2" (FGM).
    """

    name = "fgsm"

    def __init__(self, eps: float, loss: str | AttackLoss = "ce", *, norm: str = "linf",
                 logits_from: str | None = None, force_eval: bool = False,
                 seed: int = 0) -> None:
        super().__init__(loss=loss, logits_from=logits_from, force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm)
        self.eps = check_budget(eps, self.norm)

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, grad, logits = loss_and_grad(view, x, self.loss_fn, y, target)
        assert grad is not None
        info: dict[str, Any] = {"eps": self.eps}
        if view.record:  # one forward and one backward per sample, the start point's loss
            rec = StepRecorder(x.shape[0], 1, x)
            rec.step(None, 0, 0, loss, grad, self.is_adversarial(logits, y, target))
            info.update(rec.info())
        step = normalize_direction(grad, self.norm).mul_(self.eps)
        if self.norm == "linf":
            # ε·sign(g) is exactly ±ε or 0 per pixel, so the step is in the ball already and a
            # projection would only re-round x + δ (a pass over the batch for nothing).
            return step.add_(x).clamp_(0.0, 1.0), info
        # The L2 step has norm ε up to rounding; projecting removes that excess.
        return clip_to_box(x + step, x, self.eps, self.norm), info
