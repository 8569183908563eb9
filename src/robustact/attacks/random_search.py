"""Random search in the ε-ball (Carlini et al. 2019, §4.11): the dumbest attack that can work.

Why: it uses nothing but the model's predicted labels at random points, so a defense whose
gradients point nowhere (shattered or masked) cannot hide from it; if it breaks points that
gradient attacks reported robust, the gradient numbers were artefacts (AUDIT C17). Each sample
gets up to ``n_samples`` uniform draws from the ε-ball (L∞: the cube, L2: the ball), clamped to
[0, 1]; a sample stops at its first adversarial draw. With ``keys`` each sample's draws are keyed
by (seed, its key, draw index), so its result does not depend on batching.
"""

from __future__ import annotations

from typing import Any

import torch

from robustact.attacks._utils import check_budget, check_int, check_norm, random_start
from robustact.attacks.base import Attack, LogitsView

__all__ = ["RandomSearch"]


class RandomSearch(Attack):
    """Uniform random points in the ε-ball; the first adversarial one per sample is kept.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: "linf" or "l2".
        n_samples: draws per sample (each one forward pass; AUDIT C17 asks for ≥ 10⁴).
        seed: seed of the draws.
    """

    name = "random_search"

    def __init__(self, eps: float, norm: str = "linf", n_samples: int = 1000, *,
                 seed: int = 0, force_eval: bool = False) -> None:
        super().__init__(force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm)
        self.eps = check_budget(eps, self.norm)
        self.n_samples = check_int(n_samples, "n_samples")

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        gen = self.generator(x.device) if view.keys is None else None
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        best = x.clone()
        act = torch.arange(x.shape[0], device=x.device)
        for q in range(self.n_samples):
            if act.numel() == 0 or self.eps == 0.0:
                break
            cand = (random_start(x[act], self.eps, self.norm, gen) if gen is not None
                    else self.start_point(view, x[act], act, q, None))
            with torch.inference_mode():
                _, z = view(cand)
            queries[act] += 1
            hit = self.is_adversarial(z, y[act], None if target is None else target[act])
            if bool(hit.any()):
                best[act[hit]] = cand[hit]
                act = act[~hit]
        return best, {"queries": queries, "eps": self.eps}
