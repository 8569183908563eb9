"""Auto-PGD (Croce & Hein, ICML 2020): PGD whose step size adapts itself, per sample.

Why it exists: a fixed-step PGD under-reports vulnerability when the step is badly tuned for a
model, and defenses that flatten or rescale the loss make that easy. APGD removes the knob:

- it starts with step η = 2ε and a plain projected step, then uses momentum
  ``x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1}))`` with
  ``z_{k+1} = P(x_k + η·dir(∇f(x_k)))`` and α = 0.75;
- at checkpoints w_j = ⌈p_j·N⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
  0.06), it halves η for a sample when (1) fewer than ρ·(w_j − w_{j−1}) of the steps since the
  previous checkpoint increased the loss, or (2) η was not reduced at the previous checkpoint and
  the best loss has not improved since then; a sample whose η is halved restarts from its best
  (highest-loss) point;
- it returns, per sample, an adversarial iterate if one was met, else the highest-loss point;
  a sample leaves the batch at its first adversarial iterate (per-sample early stop).

Restarts (random starts in the ε-ball) run only on samples not broken yet. With ``loss="dlr"``
(scale-invariant) it is APGD-DLR, the adaptive choice against logit-rescaling defenses.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustact.attacks._utils import (
    StepRecorder,
    check_budget,
    check_eps,
    check_int,
    check_norm,
    clip_to_box,
    compose_rows,
    loss_and_grad,
    normalize_direction,
)
from robustact.attacks.base import Attack, LogitsView
from robustact.losses.attack import AttackLoss

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iteration indices w_j = ⌈p_j·steps⌉ (j ≥ 1) at which APGD may halve its step size.

    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    ps = [0.0, 0.22]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06)
        if nxt > 1.0:
            break
        ps.append(nxt)
    # round() first: p·N in floating point can land a hair above an integer (0.22·100).
    ws = sorted({math.ceil(round(p * steps, 9)) for p in ps[1:]})
    return [w for w in ws if 0 < w <= steps]


class APGD(Attack):
    """Auto-PGD with CE or DLR loss, L∞ or L2.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: "linf" or "l2".
        steps: iterations N per restart (100 in AutoAttack).
        loss: "ce" or "dlr" (any attack loss works; targeted DLR uses the 4-class form).
        restarts: random restarts, each only on samples not yet adversarial.
        rho: fraction of loss-increasing steps below which the step size is halved (0.75).
        momentum: α of the momentum update (0.75).
        early_stop: drop a sample from the batch at its first adversarial iterate (its result
            is that iterate either way; False only makes every sample pay for every step, which
            is what a per-step cost benchmark needs).
        seed: seed of the random starts.
    """

    name = "apgd"

    def __init__(self, eps: float, *, norm: str = "linf", steps: int = 100,
                 loss: str | AttackLoss = "ce", restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, early_stop: bool = True,
                 logits_from: str | None = None, force_eval: bool = False,
                 seed: int = 0) -> None:
        super().__init__(loss=loss, logits_from=logits_from, force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm)
        self.eps = check_budget(eps, self.norm)
        self.steps = check_int(steps, "steps")
        self.restarts = check_int(restarts, "restarts")
        self.rho = check_eps(rho, "rho")
        self.momentum = check_eps(momentum, "momentum")
        if self.rho > 1 or self.momentum > 1:
            raise ValueError(f"rho and momentum must lie in [0, 1], got {rho} and {momentum}")
        self.early_stop = bool(early_stop)

    def _step(self, x_cur: torch.Tensor, x_prev: torch.Tensor, grad: torch.Tensor,
              eta: torch.Tensor, x: torch.Tensor, first: bool) -> torch.Tensor:
        """APGD's update (Croce & Hein 2020, Algorithm 1): z = P(x_k + η·dir(∇f(x_k))); the
        first step is z, later ones x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))."""
        z = clip_to_box(x_cur + normalize_direction(grad, self.norm).mul_(eta),
                        x, self.eps, self.norm)
        if first:
            return z
        a = self.momentum
        return clip_to_box(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev),
                           x, self.eps, self.norm)

    def _halve(self, losses: torch.Tensor, last_w: int, t: int, f_max: torch.Tensor,
               f_max_at_last_w: torch.Tensor, reduced_last: torch.Tensor) -> torch.Tensor:
        """The checkpoint rule at step ``t`` (previous checkpoint ``last_w``), per sample: halve
        η when (1) fewer than ρ·(t − w) of the steps since then increased the loss, or (2) η was
        not halved at w and the best loss has not improved since then."""
        increased = (losses[last_w + 1:t + 1] > losses[last_w:t]).sum(0)
        cond1 = increased < self.rho * (t - last_w)
        cond2 = ~reduced_last & (f_max <= f_max_at_last_w)
        return cond1 | cond2

    def _run(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, x0: torch.Tensor,
             rec: StepRecorder | None = None, rows: torch.Tensor | None = None,
             restart: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from ``x0``: returns (x_result, found_adversarial, best_loss).

        A sample leaves the batch as soon as one of its iterates is adversarial: its result is
        that iterate whatever happens later, and every quantity of the step-size schedule is
        per sample, so the samples left are unaffected (eval mode: samples are independent).
        """
        col = (-1,) + (1,) * (x.ndim - 1)  # per-sample values against image batches
        checkpoints = set(apgd_checkpoints(self.steps))

        loss, grad, logits = loss_and_grad(view, x0, self.loss_fn, y, target)
        assert grad is not None
        found = self.is_adversarial(logits, y, target)
        if rec is not None:
            rec.step(rows, 0, restart, loss, grad, found)
        result = x0.clone()  # a sample's entry is final once found (or at the end)
        best_loss = loss.clone()
        # Working state on the samples still unbroken (compacted as samples finish).
        act = (~found).nonzero().squeeze(1)
        if act.numel() == 0:
            return result, found, best_loss
        xs, ys = x[act], y[act]
        ts = None if target is None else target[act]
        x_cur, grad, loss = x0[act], grad[act], loss[act]
        m = act.numel()
        eta = torch.full((m,) + col[1:], 2.0 * self.eps, dtype=x.dtype, device=x.device)
        losses = torch.empty(self.steps + 1, m, dtype=x.dtype, device=x.device)
        losses[0] = loss
        x_prev, x_max, f_max, grad_max = x_cur, x_cur.clone(), loss.clone(), grad.clone()
        last_w, f_max_at_last_w = 0, f_max.clone()
        reduced_last = torch.zeros(m, dtype=torch.bool, device=x.device)

        for k in range(self.steps):
            x_prev, x_cur = x_cur, self._step(x_cur, x_prev, grad, eta, xs, first=k == 0)
            loss, g_new, logits = loss_and_grad(view, x_cur, self.loss_fn, ys, ts,
                                                need_grad=k < self.steps - 1)
            losses[k + 1] = loss
            adv = self.is_adversarial(logits, ys, ts)
            if rec is not None:
                rec.step(compose_rows(rows, act), k + 1, restart, loss, g_new, adv)
            better = loss > f_max
            x_max = torch.where(better.view(col), x_cur, x_max)
            f_max = torch.where(better, loss, f_max)
            best_loss[act] = f_max
            # First adversarial iterate of each sample is its result. With early stopping
            # nothing in the batch has been found yet; without, earlier hits are kept.
            hit = adv & ~found[act]
            result[act[hit]] = x_cur[hit]
            found[act[hit]] = True
            if g_new is None:  # the last step: only its loss was needed
                break
            grad = g_new
            grad_max = torch.where(better.view(col), grad, grad_max)
            if self.early_stop and bool(hit.any()):
                keep = ~hit
                if not bool(keep.any()):
                    return result, found, best_loss
                act, xs, ys = act[keep], xs[keep], ys[keep]
                ts = None if ts is None else ts[keep]
                x_cur, x_prev, grad = x_cur[keep], x_prev[keep], grad[keep]
                x_max, f_max, grad_max = x_max[keep], f_max[keep], grad_max[keep]
                eta, losses = eta[keep], losses[:, keep]
                f_max_at_last_w, reduced_last = f_max_at_last_w[keep], reduced_last[keep]

            t = k + 1
            if t in checkpoints and t < self.steps:
                reduce = self._halve(losses, last_w, t, f_max, f_max_at_last_w, reduced_last)
                rs = reduce.view(col)
                eta = torch.where(rs, eta * 0.5, eta)
                x_cur = torch.where(rs, x_max, x_cur)
                grad = torch.where(rs, grad_max, grad)
                reduced_last, f_max_at_last_w, last_w = reduce, f_max.clone(), t
        unfound = ~found[act]
        result[act[unfound]] = x_max[unfound]
        return result, found, best_loss

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        gen = self.generator(x.device) if view.keys is None else None
        rec = StepRecorder(x.shape[0], self.steps + 1, x) if view.record else None
        best, best_adv, best_loss = self._run(view, x, y, target,
                                              self.start_point(view, x, None, 0, gen), rec)
        for r in range(1, self.restarts):
            todo = (~best_adv).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            xs, ys = x[todo], y[todo]
            ts = None if target is None else target[todo]
            cand, adv, loss = self._run(view, xs, ys, ts,
                                        self.start_point(view, xs, todo, r, gen), rec, todo, r)
            better = adv | (loss > best_loss[todo])
            sel = todo[better]
            best[sel], best_adv[sel], best_loss[sel] = cand[better], adv[better], loss[better]
        info: dict[str, Any] = {"eps": self.eps}
        if rec is not None:
            info.update(rec.info())
        return best, info
