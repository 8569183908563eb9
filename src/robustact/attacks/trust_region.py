"""Trust-region attack (Yao, Gholami, Xu, Keutzer, Mahoney; arXiv:1812.06371), first-order,
with an adaptive radius.

Why it is here: it is the third minimum-norm attack of the JumpReLU paper (per-step radius 0.01,
overshoot 0.02, up to 40 iterations). Unlike DeepFool it does not trust the linear model
blindly: each step is limited to a radius r that grows when the linear prediction was accurate
and shrinks when it was not, which matters exactly on the non-smooth models (JumpReLU) studied
here.

One iteration, per sample still classified y (papers.md §1):
1. linearise the margins m_j = z_y − z_j of the candidate classes (the top ``candidates`` clean
   classes, as DeepFool) and pick j = argmin m_j / ‖∇m_j‖_q (q dual: L2 → 2, L∞ → 1);
2. step against g = ∇m_j with length t = min(r, (m_j + 1e-4)/‖g‖_q): L2 s = −t·g/‖g‖₂,
   L∞ s = −t·sign(g); clip to [0, 1];
3. ρ = actual decrease of m_j / decrease predicted by the linear model (g·(−s), computed on the
   clipped step); r ← min(grow·r, r_max) if ρ > rho_hi, r ← shrink·r if ρ < rho_lo;
4. accept the step unless it did not decrease m_j at all (actual ≤ 0), in which case the
   iterate is reverted and the next step reuses the cached linearisation with the smaller r;
5. stop as soon as the iterate is misclassified.
At the end the total perturbation is scaled by 1 + overshoot; if that (rarely) undoes the
misclassification, the un-overshot iterate is returned instead.

Choices marked as ours (the paper's text and the authors' code differ in details):
- the step is capped at the linearised boundary distance (as the authors' code does), so a large
  radius never overshoots the linear model; the 1e-4 nudge is DeepFool's;
- the class j is re-chosen at every accepted iterate (the authors' code fixes it at the start);
- steps that do not decrease the margin are reverted (step 4);
- grow ×2 / shrink ×0.5 at ρ thresholds 0.9 / 0.5 (papers.md §1; the authors' code uses ×/÷1.2);
- ``r_max`` defaults to the diameter of the [0, 1] box in the attack norm (1 for L∞, √D for L2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustact.attacks._utils import (
    check_int,
    check_nonnegative,
    check_norm,
    check_positive,
    normalize_direction,
)
from robustact.attacks.base import Attack, LogitsView
from robustact.attacks.deepfool import _NUDGE, candidate_classes, dual_norm, margin_jacobian

__all__ = ["TrustRegion"]


class TrustRegion(Attack):
    """Untargeted first-order trust-region attack with adaptive radius, L2 or L∞.

    Args:
        norm: "l2" or "linf".
        radius: initial per-step radius r (0.01 in the JumpReLU paper), in pixel units.
        steps: maximum iterations per sample.
        overshoot: the final perturbation is scaled by ``1 + overshoot``.
        candidates: number of top-scoring clean classes considered, true class included.
        grow, shrink: radius factors (> 1 and in (0, 1)).
        rho_hi, rho_lo: grow when ρ > rho_hi, shrink when ρ < rho_lo (0 < rho_lo ≤ rho_hi).
        r_max: cap on the radius; None for the box diameter (1 for L∞, √D for L2).
        logits_from, force_eval: see :class:`~robustact.attacks.base.Attack`.

    ``info`` of the result carries ``mean_steps`` and ``rejected_steps`` (total reverted steps).
    """

    name = "trust_region"
    takes_target = False

    def __init__(self, norm: str = "l2", radius: float = 0.01, steps: int = 40,
                 overshoot: float = 0.02, candidates: int = 10, grow: float = 2.0,
                 shrink: float = 0.5, rho_hi: float = 0.9, rho_lo: float = 0.5,
                 r_max: float | None = None, *, logits_from: str | None = None,
                 force_eval: bool = False) -> None:
        super().__init__(loss="margin", logits_from=logits_from, force_eval=force_eval)
        self.norm = check_norm(norm)
        self.radius = check_positive(radius, "radius")
        self.steps = check_int(steps, "steps")
        self.overshoot = check_nonnegative(overshoot, "overshoot")
        self.candidates = check_int(candidates, "candidates", minimum=2)
        self.grow = check_positive(grow, "grow")
        self.shrink = check_positive(shrink, "shrink")
        if self.grow < 1.0:
            raise ValueError(f"grow must be >= 1, got {grow}")
        if self.shrink > 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {shrink}")
        self.rho_hi = check_positive(rho_hi, "rho_hi")
        self.rho_lo = check_positive(rho_lo, "rho_lo")
        if self.rho_lo > self.rho_hi:
            raise ValueError(f"need rho_lo <= rho_hi, got rho_lo={rho_lo}, rho_hi={rho_hi}")
        self.r_max = None if r_max is None else check_positive(r_max, "r_max")
        if self.r_max is not None and self.r_max < self.radius:
            raise ValueError(f"r_max ({r_max}) must be >= radius ({radius})")

    # Long by design: one trust-region iteration (linearize, pick the class, step, compare actual
    # with predicted decrease, resize the radius) reads top to bottom as in Yao et al.; its pieces
    # share per-sample radius and iterate.
    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        if target is not None:
            raise ValueError("TrustRegion is untargeted; pass target=None")
        n, d = x.shape[0], x[0].numel()
        r_max = self.r_max if self.r_max is not None else (
            1.0 if self.norm == "linf" else math.sqrt(d))
        x_flat = x.flatten(1)
        with torch.no_grad():
            zl, z = view(x)
        cand = candidate_classes(zl, y, self.candidates)
        active = ~self.is_adversarial(z, y, None)
        x_cur = x_flat.clone()
        r = torch.full((n,), self.radius, dtype=x.dtype, device=x.device)
        need_jac = active.clone()  # whose linearisation at x_cur is not cached yet
        g_cache = torch.zeros_like(x_flat)  # ∇m_j at x_cur for the chosen j
        m_cache = torch.zeros(n, dtype=x.dtype, device=x.device)
        j_cache = torch.zeros(n, dtype=torch.long, device=x.device)
        steps_taken = torch.zeros(n, dtype=torch.long, device=x.device)
        rejected = 0
        for _ in range(self.steps):
            idx = (active & need_jac).nonzero().squeeze(1)
            if idx.numel():
                f, w = margin_jacobian(view, x_cur[idx].view(-1, *x.shape[1:]), y[idx],
                                       cand[idx])
                gn = dual_norm(w, self.norm)  # ‖∇m_j‖_q = ‖∇f_j‖_q
                score = torch.where(gn > 0, -f / gn, torch.full_like(f, float("inf")))
                j = score.argmin(1)
                rows = torch.arange(idx.numel(), device=x.device)
                m_cache[idx] = -f[rows, j]
                g_cache[idx] = -w[rows, j]
                j_cache[idx] = j
                need_jac[idx] = False
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            g, m, xc = g_cache[idx], m_cache[idx], x_cur[idx]
            gq = dual_norm(g, self.norm)
            t = torch.minimum(r[idx], (m + _NUDGE) / torch.where(gq > 0, gq, torch.ones_like(gq)))
            x_try = (xc - t[:, None] * normalize_direction(g, self.norm)).clamp(0.0, 1.0)
            predicted = (g * (xc - x_try)).sum(1)
            with torch.no_grad():
                zl_t, z_t = view(x_try.view(-1, *x.shape[1:]))
            cls = cand[idx].gather(1, j_cache[idx, None]).squeeze(1)
            m_new = (zl_t.gather(1, y[idx, None]) - zl_t.gather(1, cls[:, None])).squeeze(1)
            actual = m - m_new
            rho = torch.where(predicted > 0, actual / predicted.clamp_min(1e-30),
                              torch.zeros_like(actual))
            r_i = r[idx]
            r[idx] = torch.where(rho > self.rho_hi, (r_i * self.grow).clamp(max=r_max),
                                 torch.where(rho < self.rho_lo, r_i * self.shrink, r_i))
            success = self.is_adversarial(z_t, y[idx], None)
            accept = (actual > 0) | success
            x_cur[idx[accept]] = x_try[accept]
            need_jac[idx[accept]] = True
            rejected += int((~accept).sum())
            steps_taken[idx] += 1
            active[idx[success]] = False
        x_end = x_cur.view_as(x)
        x_adv = (x + (1.0 + self.overshoot) * (x_end - x)).clamp(0.0, 1.0)
        with torch.no_grad():
            _, z_end = view(x_end)
            _, z_adv = view(x_adv)
        undone = self.is_adversarial(z_end, y, None) & ~self.is_adversarial(z_adv, y, None)
        x_adv[undone] = x_end[undone]
        return x_adv, {"mean_steps": float(steps_taken.float().mean()),
                       "rejected_steps": rejected}
