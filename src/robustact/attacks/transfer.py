"""Transfer (black-box / gray-box) attack: craft on a surrogate, judge on the target.

Why: a defense that only masks gradients is still broken by examples crafted on a model with
honest gradients (the JumpReLU paper's gray-box setting crafts on the κ = 0 network; SPLASH's
black-box setting on a ReLU-trained surrogate). If the transfer attack beats the white-box one,
the white-box numbers are not to be trusted (gradient-masking audit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, LogitsView

__all__ = ["TransferAttack"]


class TransferAttack(Attack):
    """``TransferAttack(surrogate, attack)(target_model, x, y)``.

    The inner ``attack`` runs against ``surrogate`` (with the inner attack's own validation,
    mode handling and ε); its x_adv is then evaluated on ``target_model`` by the usual
    :class:`~robustact.attacks.base.Attack` protocol, so ``success`` and ``logits`` in the
    result are the target's. The target is queried once per sample (the final evaluation); no
    gradient of the target is ever computed. ``info`` reports the success rate on the
    surrogate, for comparison.
    """

    name = "transfer"

    def __init__(self, surrogate: nn.Module, attack: Attack, *, force_eval: bool = False) -> None:
        if not isinstance(surrogate, nn.Module):
            raise TypeError(f"surrogate must be an nn.Module, got {type(surrogate).__name__}")
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be a robustact Attack, got {type(attack).__name__}")
        super().__init__(force_eval=force_eval, seed=attack.seed)
        self.surrogate = surrogate
        self.attack = attack
        self.norm = attack.norm
        self.name = f"transfer-{attack.name}"

    def spec(self) -> dict[str, Any]:
        """The inner attack's spec and the options; the surrogate is a model, not a parameter,
        so a transfer attack is not in the registry and ``create_attack`` cannot rebuild it."""
        return {"name": "transfer", "attack": self.attack.spec(), "force_eval": self.force_eval}

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        res = self.attack(self.surrogate, x, y, target, keys=view.keys)
        info: dict[str, Any] = {"surrogate_success_rate": res.success_rate,
                                "queries": torch.ones(x.shape[0], dtype=torch.long,
                                                      device=x.device)}
        eps = getattr(self.attack, "eps", None)
        if eps is not None:
            info["eps"] = eps
        return res.x_adv, info
