"""RayS (Chen & Gu, KDD 2020, "RayS: A Ray Searching Method for Hard-label Adversarial
Attack"): an L∞ attack that only ever sees the model's predicted label.

Why it is here: a gradient-masking defense (a saturated output activation, JumpReLU's jump, a
detached forward) hides gradients, and a score-based attack can still be fooled by flattened
scores; nothing can hide the labels. If RayS breaks points that PGD left robust, the PGD
number was an artefact (audit check C25). RayS found falsely robust models on leaderboards.

The idea: an L∞ perturbation of radius r along a sign direction s ∈ {−1, +1}^d is the point
x + r·s (clamped to [0, 1]); the L∞-closest adversarial point lies on such a ray, so the attack
searches over the 2^d sign vectors for the ray whose decision boundary is closest, and along a
ray finds the boundary radius by binary search. Per sample:
1. query x itself; a misclassified sample is done at radius 0 (1 query);
2. the first ray is s = (1, …, 1); its boundary radius is found by binary search on [0, 1]
   if its end point (r = 1, a vertex of the box) is adversarial;
3. hierarchical search: at level k the d coordinates (flattened C·H·W) are cut into 2^k
   consecutive blocks; each block in turn is flipped in s. A flipped direction can only beat
   the best radius r* if its point at r* is already adversarial: one query decides; only then
   a binary search on [0, r*] (tolerance ``tol``) finds its new radius, and s and r* are
   replaced. After the last block of a level the next level starts; at block size 1 the
   passes over single coordinates repeat (as in the paper's code) until the budget is spent.
4. with ``eps``: stop as soon as r* ≤ ε (early stop); a sample whose best radius stays above ε
   gets x back (not a success). Without ``eps`` it is a minimum-norm attack: all the budget
   goes into shrinking r*, and the point at r* is returned.

Our choices: the radius is measured in L∞ units directly (the paper's code works with an L2
radius along s/‖s‖₂, which only rescales it). The first ray's boundary is found by binary
search instead of the paper's line search in steps of 1/255: a binary search finds *a*
crossing (any adversarial point on the ray is valid), in about log2(1/tol) queries instead of
up to 255. The block schedule is shared by the batch (it is deterministic), the state (s, r*,
best point, queries) is per sample, and a sample leaves the batch when it is done. Every query
goes through :class:`~robustact.attacks._decision.LabelOracle`: a yes/no per point, from the
argmax of the model's output, never the scores. RayS has no randomness, hence no seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from robustact.attacks._decision import LabelOracle
from robustact.attacks._utils import check_budget, check_int, check_positive
from robustact.attacks.base import Attack, LogitsView

__all__ = ["RayS", "block_schedule"]


def block_schedule(d: int) -> Iterator[tuple[int, int]]:
    """The blocks ``[lo, hi)`` flipped in turn: level k cuts d into 2^k blocks; endless.

    >>> from itertools import islice
    >>> list(islice(block_schedule(3), 7))
    [(0, 3), (0, 2), (2, 3), (0, 1), (1, 2), (2, 3), (0, 1)]
    """
    level = 0
    while True:
        size = math.ceil(d / 2 ** level)
        for lo in range(0, d, size):
            yield lo, min(d, lo + size)
        if size > 1:
            level += 1


class RayS(Attack):
    """RayS, L∞, untargeted or targeted; label-only (decision-based).

    Args:
        eps: L∞ budget ε; the attack stops for a sample once its boundary radius is ≤ ε, and a
            sample not broken within ε gets x back. None (default): minimum-norm attack, the
            smallest-radius adversarial point found is returned. ε = 0 returns the inputs
            without querying the model.
        n_queries: query budget per sample (the clean query included).
        tol: binary-search tolerance on the L∞ radius (the returned radius is at most this much
            above the boundary of its ray).
        force_eval: see :class:`~robustact.attacks.base.Attack`.
    """

    name = "rays"
    norm = "linf"

    def __init__(self, eps: float | None = None, n_queries: int = 10000, tol: float = 1e-5, *,
                 force_eval: bool = False) -> None:
        super().__init__(force_eval=force_eval)
        self.eps = None if eps is None else check_budget(eps, "linf")
        self.n_queries = check_int(n_queries, "n_queries")
        self.tol = check_positive(tol, "tol")

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        n, shape = x.shape[0], x.shape[1:]
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        radius = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        info: dict[str, Any] = {"queries": queries, "eps": self.eps, "radius": radius}
        if self.eps == 0.0:
            return x.clone(), info
        oracle = LabelOracle(view, self.is_adversarial, y, target, queries)
        flat = x.flatten(1)
        best = flat.clone()  # the best adversarial point found (x while none)
        sign = torch.ones_like(flat)  # the current best ray direction
        everyone = torch.arange(n, device=x.device)
        clean_adv = oracle(x, everyone)
        radius[clean_adv] = 0.0

        def done(rows: torch.Tensor) -> torch.Tensor:
            out = queries[rows] >= self.n_queries
            if self.eps is not None:
                out |= radius[rows] <= self.eps
            return out

        active = everyone[~clean_adv & ~done(everyone)]
        blocks = block_schedule(flat.shape[1])
        first = True
        while active.numel() > 0:
            cand = sign[active]
            if not first:
                lo, hi = next(blocks)
                cand = cand.clone()
                cand[:, lo:hi] *= -1.0
            first = False
            xa = flat[active]
            # Beats the best radius r* only if already adversarial at r* (at the box vertex,
            # r = 1, while none was found).
            r_top = radius[active].clamp(max=1.0)
            top = (xa + r_top[:, None] * cand).clamp(0.0, 1.0)
            hit = oracle(top.view(-1, *shape), active)
            if bool(hit.any()):
                rows = active[hit]
                r_hi, point = self._bisect(oracle, xa[hit], cand[hit], r_top[hit], top[hit],
                                           rows, shape)
                radius[rows], sign[rows], best[rows] = r_hi, cand[hit], point
            active = active[~done(active)]
        if self.eps is not None:  # a radius above ε is not a success within the budget
            best[radius > self.eps] = flat[radius > self.eps]
        return best.view_as(x), info

    def _bisect(self, oracle: LabelOracle, xs: torch.Tensor, cand: torch.Tensor,
                r_hi: torch.Tensor, point: torch.Tensor, rows: torch.Tensor,
                shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Shrink [0, r_hi] (r_hi adversarial) on each ray to ``tol``; returns (r_hi, point).

        ``point`` is always the adversarial point actually queried at ``r_hi``; a sample whose
        budget runs out stops with the interval it has (its r_hi is still adversarial).
        """
        r_lo = torch.zeros_like(r_hi)
        r_hi, point = r_hi.clone(), point.clone()
        while True:
            busy = ((r_hi - r_lo > self.tol) & (oracle.queries[rows] < self.n_queries)
                    ).nonzero().squeeze(1)
            if busy.numel() == 0:
                return r_hi, point
            mid = (r_lo[busy] + r_hi[busy]) / 2
            p = (xs[busy] + mid[:, None] * cand[busy]).clamp(0.0, 1.0)
            adv = oracle(p.view(-1, *shape), rows[busy])
            r_hi[busy] = torch.where(adv, mid, r_hi[busy])
            r_lo[busy] = torch.where(adv, r_lo[busy], mid)
            point[busy[adv]] = p[adv]
