"""HopSkipJump (Chen, Jordan, Wainwright, IEEE S&P 2020, "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack"): a minimum-norm attack (L2, or L∞) that only sees predicted labels.

Why it is here: with RayS (L∞) it is the label-only check of the gradient-masking audit (C25):
it estimates the direction of the decision boundary from label flips alone, so a model whose
gradients or scores are masked gives it exactly the information an honest model would.

Algorithm, per sample (x the clean input, φ(p) = +1 if p is adversarial else −1, d = dim x):
1. query x; a misclassified sample is done. Else draw uniform noise in [0, 1]^d until a draw
   is adversarial (at most ``init_evals`` draws) and binary-search the blend (1 − α)x + α·noise
   for the boundary: x₀ (a blended uniform-noise start). A sample with no adversarial draw is
   given up (x is returned).
2. iteration t = 1, 2, …: at the boundary point x_t, with dist_t = ‖x_t − x‖,
   - gradient direction: B_t = min(init_evals·√t, max_evals) unit directions u_b (Gaussian,
     L2-normalised; uniform in [−1, 1]^d for L∞), probes x_t + δ_t·u_b clamped to the box,
     labels φ_b; v = mean_b (φ_b − mean φ)·u_b (the baseline reduces variance; when all φ_b
     agree, mean_b φ_b·u_b), with u_b recomputed from the clamped probe. δ_1 = 0.1 and
     δ_t = √d·θ·dist_{t−1} (L2) or d·θ·dist_{t−1} (L∞);
   - step: direction v/‖v‖₂ (L2) or sign(v) (L∞); geometric step-size search from
     ξ = dist_t/√t, halved until x_t + ξ·v is adversarial;
   - projection back to the boundary: binary search on the segment from x to that point
     (L2: the blend (1 − α)x + α·p; L∞: x + clip(p − x, ±α‖p − x‖∞)) to α-tolerance θ, where
     θ = γ/d^{3/2} (L2) or γ/d² (L∞).
3. stop at ``max_iter`` iterations, when the query budget is spent, or (with ``eps``) as soon as
   dist ≤ ε. The closest adversarial point seen is returned (the iterates need not shrink
   monotonically); with ``eps`` a sample not broken within ε gets x back.

Our choices: every query is counted per sample and no sample ever exceeds ``n_queries``: the
gradient estimate of a sample near the end of its budget uses fewer probes, and its searches
stop with the adversarial end of their interval (always a valid point). The geometric search
gives up after 30 halvings (ξ below 1e-9·dist; the paper's loop is unbounded). Probes are
queried in chunks so memory stays bounded on large images. Every query goes through
:class:`~robustact.attacks._decision.LabelOracle` (label only); all randomness comes from the
attack's seeded generator.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustact.attacks._decision import LabelOracle
from robustact.attacks._utils import (
    check_budget,
    check_int,
    check_norm,
    check_positive,
    normalize_direction,
    project,
)
from robustact.attacks.base import Attack, LogitsView, lp_norms

__all__ = ["HopSkipJump"]

#: Halvings of the geometric step-size search before a sample keeps its current point.
_MAX_HALVINGS = 30
#: Probe elements (rows × pixels) per model call in the gradient estimate.
_CHUNK_ELEMENTS = 2 ** 22


class HopSkipJump(Attack):
    """HopSkipJump, L2 (default) or L∞, untargeted or targeted; label-only (decision-based).

    Args:
        eps: budget ε in ``norm``; the attack stops for a sample once its distance is ≤ ε, and
            a sample not broken within ε gets x back. None (default): minimum-norm attack.
            ε = 0 returns the inputs without querying the model.
        norm: "l2" or "linf".
        n_queries: query budget per sample (the clean query included).
        max_iter: iterations (gradient estimate + step + projection) at most.
        init_evals: probes of the first gradient estimate (B_t grows as init_evals·√t); also
            the most uniform-noise draws tried for the start.
        max_evals: most probes of one gradient estimate.
        gamma: sets the binary-search tolerance θ and the probe radius δ (see the module).
        seed: seed of the attack's generator (noise start, probe directions).
        force_eval: see :class:`~robustact.attacks.base.Attack`.
    """

    name = "hsj"

    def __init__(self, eps: float | None = None, norm: str = "l2", n_queries: int = 10000,
                 max_iter: int = 64, init_evals: int = 100, max_evals: int = 10000,
                 gamma: float = 1.0, seed: int = 0, *, force_eval: bool = False) -> None:
        super().__init__(force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm, ("l2", "linf"))
        self.eps = None if eps is None else check_budget(eps, self.norm)
        self.n_queries = check_int(n_queries, "n_queries")
        self.max_iter = check_int(max_iter, "max_iter")
        self.init_evals = check_int(init_evals, "init_evals")
        self.max_evals = check_int(max_evals, "max_evals")
        self.gamma = check_positive(gamma, "gamma")

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        n = x.shape[0]
        d = x[0].numel()
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        info: dict[str, Any] = {"queries": queries, "eps": self.eps}
        if self.eps == 0.0:
            return x.clone(), info
        gen = self.generator(x.device)
        oracle = LabelOracle(view, self.is_adversarial, y, target, queries)
        l2 = self.norm == "l2"
        theta = self.gamma / (d ** 1.5 if l2 else d ** 2)
        everyone = torch.arange(n, device=x.device)

        clean_adv = oracle(x, everyone)
        cur = x.clone()  # the current boundary point (x while none)
        found = self._noise_start(oracle, x, cur, everyone[~clean_adv], gen)
        cur[found] = self._bisect(oracle, x[found], cur[found], found, theta)
        dist = lp_norms(cur - x, self.norm)
        best, best_dist = cur.clone(), dist.clone()
        best_dist[~clean_adv & ~self._has(found, n)] = math.inf

        active = found
        for t in range(1, self.max_iter + 1):
            left = self.n_queries - queries[active]
            keep = left > 0
            if self.eps is not None:
                keep &= best_dist[active] > self.eps
            active = active[keep]
            if active.numel() == 0:
                break
            delta = (torch.full_like(dist[active], 0.1) if t == 1 else
                     (math.sqrt(d) if l2 else d) * theta * dist[active])
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            v = self._direction(oracle, cur[active], active, delta, evals, gen)
            step = normalize_direction(v, "l2") if l2 else v.sign()
            moved, point = self._step(oracle, cur[active], step, dist[active] / math.sqrt(t),
                                      active)
            rows = active[moved]
            if rows.numel() == 0:
                continue
            cur[rows] = self._bisect(oracle, x[rows], point[moved], rows, theta)
            dist[rows] = lp_norms(cur[rows] - x[rows], self.norm)
            better = rows[dist[rows] < best_dist[rows]]
            best[better], best_dist[better] = cur[better], dist[better]
        if self.eps is not None:  # beyond ε is not a success within the budget
            far = best_dist > self.eps
            best[far] = x[far]
        info["dist"] = best_dist
        return best, info

    @staticmethod
    def _has(rows: torch.Tensor, n: int) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool, device=rows.device)
        mask[rows] = True
        return mask

    def _noise_start(self, oracle: LabelOracle, x: torch.Tensor, cur: torch.Tensor,
                     todo: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Uniform-noise draws until adversarial; writes them into ``cur``; returns the rows."""
        found = []
        for _ in range(self.init_evals):
            todo = todo[oracle.queries[todo] < self.n_queries]
            if todo.numel() == 0:
                break
            noise = torch.rand((todo.numel(), *x.shape[1:]), generator=gen, device=x.device,
                               dtype=x.dtype)
            adv = oracle(noise, todo)
            cur[todo[adv]] = noise[adv]
            found.append(todo[adv])
            todo = todo[~adv]
        if not found:
            return todo.new_zeros(0)
        return torch.cat(found).sort().values

    def _segment(self, x0: torch.Tensor, p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The point at fraction ``alpha`` (M,) from x0 towards p, in the attack's norm."""
        a = alpha.view(-1, *([1] * (x0.ndim - 1)))
        if self.norm == "l2":
            return torch.lerp(x0, p, a)
        radius = lp_norms(p - x0, "linf")
        return x0 + project(p - x0, alpha * radius, "linf")

    def _bisect(self, oracle: LabelOracle, x0: torch.Tensor, p: torch.Tensor,
                rows: torch.Tensor, theta: float) -> torch.Tensor:
        """Binary search on the segment x0 → p (p adversarial) to α-tolerance θ.

        Returns the adversarial end of each final interval, a point that was actually queried
        (or p itself); a sample whose budget runs out stops with the interval it has.
        """
        lo = torch.zeros(rows.shape, dtype=x0.dtype, device=x0.device)
        hi = torch.ones_like(lo)
        out = p.clone()
        while True:
            busy = ((hi - lo > theta) & (oracle.queries[rows] < self.n_queries)
                    ).nonzero().squeeze(1)
            if busy.numel() == 0:
                return out
            mid = (lo[busy] + hi[busy]) / 2
            q = self._segment(x0[busy], p[busy], mid)
            adv = oracle(q, rows[busy])
            hi[busy] = torch.where(adv, mid, hi[busy])
            lo[busy] = torch.where(adv, lo[busy], mid)
            out[busy[adv]] = q[adv]

    def _direction(self, oracle: LabelOracle, cur: torch.Tensor, rows: torch.Tensor,
                   delta: torch.Tensor, evals: int, gen: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of the boundary normal at ``cur`` (M, ...) from label flips.

        Sample i uses min(evals, its remaining budget) probes; the draws do not depend on the
        budget (every sample draws ``evals`` directions), so a run is reproducible.
        """
        m, shape = cur.shape[0], cur.shape[1:]
        d = cur[0].numel()
        uses = (self.n_queries - oracle.queries[rows]).clamp(max=evals)
        dl = delta.view(-1, 1, *([1] * len(shape)))
        sum_phi_u = torch.zeros_like(cur)
        sum_u = torch.zeros_like(cur)
        sum_phi = torch.zeros(m, dtype=cur.dtype, device=cur.device)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, m * d))
        for b0 in range(0, evals, chunk):
            k = min(chunk, evals - b0)
            if self.norm == "l2":
                u = torch.randn((m, k, *shape), generator=gen, device=cur.device,
                                dtype=cur.dtype)
            else:
                u = 2 * torch.rand((m, k, *shape), generator=gen, device=cur.device,
                                   dtype=cur.dtype) - 1
            u = u / u.flatten(2).norm(dim=2).view(m, k, *([1] * len(shape)))
            probe = (cur[:, None] + dl * u).clamp(0.0, 1.0)
            u = (probe - cur[:, None]) / dl  # the direction actually probed after clamping
            valid = (b0 + torch.arange(k, device=cur.device))[None, :] < uses[:, None]
            phi = torch.zeros((m, k), dtype=cur.dtype, device=cur.device)
            if bool(valid.any()):
                adv = oracle(probe[valid], rows[:, None].expand(m, k)[valid])
                phi[valid] = adv.to(cur.dtype) * 2 - 1
            w = phi.view(m, k, *([1] * len(shape)))
            sum_phi_u += (w * u).sum(1)
            sum_u += (valid.to(cur.dtype).view_as(w) * u).sum(1)
            sum_phi += phi.sum(1)
        count = uses.clamp(min=1).to(cur.dtype)
        mean_phi = (sum_phi / count).view(-1, *([1] * len(shape)))
        agree = mean_phi.abs() == 1.0  # all probes agree: no baseline (it would cancel them)
        baseline = torch.where(agree, torch.zeros_like(mean_phi), mean_phi)
        return (sum_phi_u - baseline * sum_u) / count.view_as(mean_phi)

    def _step(self, oracle: LabelOracle, cur: torch.Tensor, step: torch.Tensor,
              size: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric step-size search: halve ``size`` until cur + size·step is adversarial.

        Returns (moved (M,) bool, the adversarial point where moved).
        """
        moved = torch.zeros(rows.shape, dtype=torch.bool, device=cur.device)
        point = cur.clone()
        size = size.clone()
        for _ in range(_MAX_HALVINGS):
            busy = (~moved & (oracle.queries[rows] < self.n_queries)).nonzero().squeeze(1)
            if busy.numel() == 0:
                break
            s = size[busy].view(-1, *([1] * (cur.ndim - 1)))
            q = (cur[busy] + s * step[busy]).clamp(0.0, 1.0)
            adv = oracle(q, rows[busy])
            point[busy[adv]] = q[adv]
            moved[busy[adv]] = True
            size[busy[~adv]] /= 2
        return moved, point
