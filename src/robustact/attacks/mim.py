"""Momentum iterative method, MI-FGSM (Dong et al. 2018).

The ascent direction is an accumulated gradient ``g_{t+1} = μ·g_t + ∇_t / ‖∇_t‖₁``: the L1
normalisation puts every step's gradient on the same scale, so the momentum averages directions
rather than magnitudes, and the accumulated direction is less prone to the poor local maxima a
plain sign step oscillates around (which is why MIM transfers better). The step is
``alpha · sign(g)`` for L∞ (``alpha · g/‖g‖₂`` for L2), projected onto the ε-ball and the box.
Defaults as in the paper: ``alpha = eps / steps``, ``decay μ = 1.0``, no random start.
"""

from __future__ import annotations

import torch

from robustact.attacks._utils import check_budget, check_eps, normalize_direction
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
        eps = check_budget(eps, norm)
        if alpha is None:
            alpha = eps / steps if isinstance(steps, int) and steps > 0 else 0.0
        super().__init__(eps, alpha, steps, norm=norm, random_start=False, restarts=1,
                         loss=loss, early_stop=early_stop, logits_from=logits_from,
                         force_eval=force_eval, seed=seed)
        self.decay = check_eps(decay, "decay")

    def _init_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)  # the accumulated gradient g, one per sample

    def _step(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
              bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
              state: torch.Tensor | None = None) -> torch.Tensor:
        """PGD's step along the momentum ``g ← μ·g + ∇/‖∇‖₁`` (updated in place in ``state``)."""
        assert state is not None
        state.mul_(self.decay).add_(normalize_direction(grad, "l1"))
        return super()._step(x_adv, x, state, bounds)
