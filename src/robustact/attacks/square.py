"""Square Attack, L∞ (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020): score-based
black-box random search.

Why it is here: it uses only the model's outputs, never a gradient, so it is the standard check
that a defense is not merely masking gradients (JumpReLU's jump, saturated output activations).
If Square succeeds where PGD fails, the PGD number was an artefact.

Algorithm (per sample, ε-ball in L∞, box [0, 1]):
1. query the clean input; samples already misclassified are done (1 query);
2. start from vertical stripes: δ = ±ε per (channel, column), signs uniform; one query;
3. repeat: pick a square window of side s at a uniformly random position; set the window, per
   channel, to x ± ε (a random sign, redrawn when it would leave the window unchanged); clamp
   to [0, 1]; query; keep the candidate if the loss improved (or the sample is now adversarial);
   stop once adversarial or when the query budget is spent.
The side follows the paper's piecewise-constant schedule of the fraction p of pixels changed:
p = p_init, halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000 iterations,
with the breakpoints rescaled to ``n_queries`` (AutoAttack's ``resc_schedule``);
the side is s = round(√(p·h·w)).

Our choices: windows and signs are drawn per sample (the paper's reference code; AutoAttack
shares one window across the batch); ``p_init`` 0.8 and 5000 queries are AutoAttack's standard
settings. Every forward pass is counted per sample and reported as ``queries``; the total never
exceeds ``n_queries``. The model is only ever called inside ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustact.attacks._utils import check_eps, check_int, check_norm, check_positive
from robustact.attacks.base import Attack, LogitsView
from robustact.losses.attack import AttackLoss

__all__ = ["Square", "p_schedule"]

#: Breakpoints of the p schedule on the paper's 10 000-iteration scale; p halves after each.
_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_RESAMPLE_TRIES = 10


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of pixels changed at iteration ``it`` of a run with budget ``n_queries``.

    >>> p_schedule(0.8, 0, 10000), p_schedule(0.8, 11, 10000), p_schedule(0.8, 9000, 10000)
    (0.8, 0.4, 0.0015625)
    """
    scaled = int(it / n_queries * 10000)
    halvings = sum(scaled > b for b in _BREAKPOINTS)
    return p_init / (2 ** halvings)


class Square(Attack):
    """Square Attack (L∞), untargeted or targeted, gradient-free.

    Args:
        eps: L∞ budget ε (pixel units); 0 returns the inputs without querying the model.
        norm: only "linf" (the L2 variant is not implemented).
        n_queries: query budget per sample, the clean query included.
        p_init: initial fraction of pixels in the square (0.8 as AutoAttack; the paper's
            ImageNet runs used 0.05).
        loss: "margin" (default) or "ce", maximised; acceptance compares this loss.
        seed: seed of the attack's generator (all randomness comes from it).
        logits_from, force_eval: see :class:`~robustact.attacks.base.Attack`.
    """

    name = "square"

    def __init__(self, eps: float, norm: str = "linf", n_queries: int = 5000,
                 p_init: float = 0.8, loss: str | AttackLoss = "margin", seed: int = 0, *,
                 logits_from: str | None = None, force_eval: bool = False) -> None:
        super().__init__(loss=loss, logits_from=logits_from, force_eval=force_eval, seed=seed)
        self.eps = check_eps(eps)
        self.norm = check_norm(norm, ("linf",))
        self.n_queries = check_int(n_queries, "n_queries")
        self.p_init = check_positive(p_init, "p_init")
        if self.p_init > 1.0:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")

    def _objective(self, view: LogitsView, x: torch.Tensor, label: torch.Tensor,
                   y: torch.Tensor, target: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One query: (loss to maximise, adversarial?) for a batch."""
        with torch.no_grad():
            zl, z = view(x)
            return self.loss_fn(zl, label, target is not None), self.is_adversarial(z, y, target)

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        n, c, h, w = x.shape
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        if self.eps == 0.0:
            return x.clone(), {"queries": queries, "eps": self.eps}
        gen = self.generator(x.device)
        label = target if target is not None else y
        eps = self.eps

        _, done = self._objective(view, x, label, y, target)
        queries += 1
        x_best = x.clone()
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0 or self.n_queries < 2:
            return x_best, {"queries": queries, "eps": eps}

        # The search works on compact copies of the still-unbroken samples; a sample leaves
        # (and is written back) the moment it is broken, so no step gathers from full tensors.
        idx = todo
        xa = x[idx]
        ya, la = y[idx], label[idx]
        ta = None if target is None else target[idx]
        signs = torch.randint(0, 2, (idx.numel(), c, 1, w), generator=gen, device=x.device)
        xb = (xa + eps * (2.0 * signs.to(x.dtype) - 1.0)).clamp(0.0, 1.0)
        lb, adv = self._objective(view, xb, la, ya, ta)
        queries[idx] += 1

        rows_h = torch.arange(h, device=x.device)
        rows_w = torch.arange(w, device=x.device)
        # The two vertex values of every pixel, x ± ε clamped to the box, computed once (and
        # compacted with the batch) instead of per query; bitwise what x + ε·(±1) then clamp
        # gives. Queries are counted when a sample leaves (2 before the loop + 1 per iteration
        # it took part in) rather than with an indexed add per iteration.
        hi_v, lo_v = (xa + eps).clamp(0.0, 1.0), (xa - eps).clamp(0.0, 1.0)
        done_iters = 0
        for it in range(self.n_queries - 2):
            if adv.any():  # write back the broken ones and drop them
                x_best[idx[adv]] = xb[adv]
                queries[idx[adv]] += it
                keep = ~adv
                idx, xa, xb, lb = idx[keep], xa[keep], xb[keep], lb[keep]
                hi_v, lo_v = hi_v[keep], lo_v[keep]
                ya, la = ya[keep], la[keep]
                ta = None if ta is None else ta[keep]
            m = idx.numel()
            if m == 0:
                break
            p = p_schedule(self.p_init, it, self.n_queries)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            vh = torch.randint(0, h - s + 1, (m,), generator=gen, device=x.device)
            vw = torch.randint(0, w - s + 1, (m,), generator=gen, device=x.device)
            in_h = (rows_h >= vh[:, None]) & (rows_h < vh[:, None] + s)
            in_w = (rows_w >= vw[:, None]) & (rows_w < vw[:, None] + s)
            window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (m, 1, h, w)
            sgn = torch.randint(0, 2, (m, c, 1, 1), generator=gen, device=x.device)
            x_new = torch.where(window, torch.where(sgn.bool(), hi_v, lo_v), xb)
            same = ~(x_new != xb).flatten(1).any(1)
            for _ in range(_RESAMPLE_TRIES):  # a draw that changes nothing wastes a query
                if not bool(same.any()):
                    break
                r = same.nonzero().squeeze(1)
                sgn = torch.randint(0, 2, (r.numel(), c, 1, 1), generator=gen, device=x.device)
                vertex = torch.where(sgn.bool(), hi_v[r], lo_v[r])
                x_new[r] = torch.where(window[r], vertex, xb[r])
                same[r] = ~(x_new[r] != xb[r]).flatten(1).any(1)
            loss, adv = self._objective(view, x_new, la, ya, ta)
            done_iters = it + 1
            better = (loss > lb) | adv
            xb = torch.where(better[:, None, None, None], x_new, xb)
            lb = torch.where(better, loss, lb)
        x_best[idx] = xb
        # Samples still in the batch took part in every iteration run; those broken by the
        # last query were not dropped by the loop (it ended first), so count them here too.
        queries[idx] += done_iters
        return x_best, {"queries": queries, "eps": eps}
