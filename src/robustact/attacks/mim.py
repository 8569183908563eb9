"""Momentum iterative method, MI-FGSM (Dong et al. 2018).

The ascent direction is an accumulated gradient ``g_{t+1} = μ·g_t + ∇_t / ‖∇_t‖₁``: the L1
normalisation puts every step's gradient on the same scale, so the momentum averages directions
rather than magnitudes, and the accumulated direction is less prone to the poor local maxima a
plain sign step oscillates around (which is why MIM transfers better). The step is
``alpha · sign(g)`` for L∞ (``alpha · g/‖g‖₂`` for L2), projected onto the ε-ball and the box.
Defaults as in the paper: ``alpha = eps / steps``, ``decay μ = 1.0``, no random start.
"""

from __future__ import annotations

from typing import Any

import torch

from robustact.attacks._utils import (
    check_eps,
    clip_to_box,
    loss_and_grad,
    normalize_direction,
)
from robustact.attacks.base import LogitsView
from robustact.attacks.pgd import PGD
from robustact.losses.attack import AttackLoss

__all__ = ["MIM"]


class MIM(PGD):
    """MI-FGSM: PGD whose step follows an L1-normalised gradient accumulated with ``decay``.

    Args:
        eps: budget; alpha: step (default ``eps / steps``); steps: iterations;
        decay: momentum factor μ (μ = 0 gives BIM: sign(∇/‖∇‖₁) = sign(∇));
        norm: "linf" or "l2"; early_stop: freeze samples once adversarial (default).
    """

    name = "mim"

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10,
                 decay: float = 1.0, *, norm: str = "linf", loss: str | AttackLoss = "ce",
                 early_stop: bool = True, logits_from: str | None = None,
                 force_eval: bool = False, seed: int = 0) -> None:
        eps = check_eps(eps)
        if alpha is None:
            alpha = eps / steps if isinstance(steps, int) and steps > 0 else 0.0
        super().__init__(eps, alpha, steps, norm=norm, random_start=False, restarts=1,
                         loss=loss, early_stop=early_stop, logits_from=logits_from,
                         force_eval=force_eval, seed=seed)
        self.decay = check_eps(decay, "decay")

    def _run(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, x_adv: torch.Tensor) -> torch.Tensor:
        x_adv = x_adv.clone()
        momentum = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)
        full = True  # every sample still iterating: skip the indexing entirely
        for _ in range(self.steps):
            xa = x_adv if full else x_adv[active]
            ys = y if full else y[active]
            ts = target if (full or target is None) else target[active]
            _, grad, logits = loss_and_grad(view, xa, self.loss_fn, ys, ts)
            assert grad is not None
            if self.early_stop:
                keep = (~self.is_adversarial(logits, ys, ts)).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < xa.shape[0]:
                    active, xa, grad = active[keep], xa[keep], grad[keep]
                    full = False
            g = momentum if full else momentum[active]
            g = g.mul_(self.decay).add_(normalize_direction(grad, "l1"))
            if not full:
                momentum[active] = g
            step = normalize_direction(g, self.norm).mul_(self.alpha)
            new = clip_to_box(xa + step, x if full else x[active], self.eps, self.norm)
            if full:
                x_adv = new
            else:
                x_adv[active] = new
        return x_adv

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._run(view, x, y, target, x), {"eps": self.eps}
