"""Projected gradient descent (Madry et al. 2018), L∞ and L2, with restarts and early stopping.

Each step moves by ``alpha`` along the steepest-ascent direction of the loss for the threat
model (sign of the gradient for L∞, the normalised gradient for L2), then projects back onto the
ε-ball around x and the [0, 1] box.

Per-sample early stopping is on by default (``early_stop=True``): a sample is frozen at its
first iterate that is adversarial (judged on the real model output of the forward pass the step
needed anyway) and leaves the batch, so the perturbation is not pushed further than needed and
broken samples stop costing gradient evaluations. It can only raise the success rate: the
standard protocol's *final* iterate may have left the adversarial region again.
``early_stop=False`` returns the final iterate, like other libraries (the cross-checks against
torchattacks use it) and makes every sample pay for every step (per-step cost benchmarks).
Across restarts the attack keeps, per sample, the first restart whose result is adversarial, or
else the one with the highest loss; later restarts only run on samples still unbroken. BIM and
the JumpReLU paper's I-FGSM (``bim.py``) are this loop with other defaults; MIM (``mim.py``)
changes only the step's direction, carrying its momentum as per-sample state.
"""

from __future__ import annotations

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

__all__ = ["PGD"]


def _take(t: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or idx is None else t[idx]


class PGD(Attack):
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``eps``.

    Args:
        eps: budget in [0, 1] pixel units (``None``: unbounded, box constraint only; then
            ``random_start`` must be False).
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        steps: gradient steps per restart.
        norm: "linf" or "l2".
        random_start: start each restart from a uniform point of the ε-ball.
        restarts: number of runs; > 1 needs ``random_start=True`` (else all runs coincide).
        loss: "ce", "margin" or "dlr" (or a callable ``(z, y, targeted) -> (N,)``).
        early_stop: freeze a sample as soon as it is adversarial (default; False returns the
            final iterate).
        logits_from, force_eval, seed: see :class:`~robustact.attacks.base.Attack`.
    """

    name = "pgd"

    def __init__(self, eps: float | None, alpha: float | None = None, steps: int = 10, *,
                 norm: str = "linf", random_start: bool = True, restarts: int = 1,
                 loss: str | AttackLoss = "ce", early_stop: bool = True,
                 logits_from: str | None = None, force_eval: bool = False,
                 seed: int = 0) -> None:
        super().__init__(loss=loss, logits_from=logits_from, force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm)
        self.eps = None if eps is None else check_budget(eps, self.norm)
        self.steps = check_int(steps, "steps")
        self.restarts = check_int(restarts, "restarts")
        if alpha is None:
            if self.eps is None:
                raise ValueError("an unbounded attack (eps=None) needs an explicit alpha")
            alpha = 2.5 * self.eps / self.steps
        self.alpha = check_eps(alpha, "alpha")
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        if self.random_start and self.eps is None:
            raise ValueError("random_start needs a finite eps (the start is drawn in the ε-ball)")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 needs random_start=True; otherwise every run is equal")

    # -- one run -----------------------------------------------------------------------------
    def _init_state(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample state a subclass carries across steps (MIM: its momentum); None here.

        :meth:`_run` keeps it aligned with the batch as samples leave.
        """
        return None

    def _step(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
              bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
              state: torch.Tensor | None = None) -> torch.Tensor:
        """One ascent step and projection; subclasses (MIM) change the direction only.

        ``bounds``: per-pixel [lo, hi] of the L∞ ball ∩ [0, 1] (see :meth:`_bounds`); with
        them the projection is one clamp instead of subtract, clamp, add, clamp. ``state``:
        see :meth:`_init_state` (unused here).
        """
        step = normalize_direction(grad, self.norm).mul_(self.alpha)
        if bounds is not None:
            return step.add_(x_adv).clamp_(*bounds)
        return clip_to_box(x_adv + step, x, self.eps, self.norm)

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The L∞ ball ∩ [0, 1] as per-pixel bounds, computed once per run (None otherwise).

        Each coordinate's feasible set is an interval, so clamping to the intersection of
        [x − ε, x + ε] and [0, 1] is the exact projection onto ball ∩ box.
        """
        if self.norm != "linf" or self.eps is None:
            return None
        return (x - self.eps).clamp_min_(0.0), (x + self.eps).clamp_max_(1.0)

    def _run(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, x_adv: torch.Tensor,
             rec: StepRecorder | None = None, rows: torch.Tensor | None = None,
             restart: int = 0) -> torch.Tensor:
        """``steps`` iterations from ``x_adv``; returns the final iterate (frozen when early).

        With early stopping the still-running samples are kept in compact tensors that shrink
        only when some sample leaves, so a step gathers nothing. ``rec`` (recording only)
        gets every step's per-sample loss; ``rows`` maps this run's rows to the call's batch.
        """
        x_adv = x_adv.clone()
        xa, x0, ys, ts, bounds = x_adv, x, y, target, self._bounds(x)
        state = self._init_state(x)
        idx: torch.Tensor | None = None  # indices still iterating (None: all of them)
        for k in range(self.steps):
            loss, grad, logits = loss_and_grad(view, xa, self.loss_fn, ys, ts)
            assert grad is not None
            if rec is not None:
                rec.step(compose_rows(rows, idx), k, restart, loss, grad,
                         self.is_adversarial(logits, ys, ts))
            if self.early_stop:
                keep = (~self.is_adversarial(logits, ys, ts)).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < xa.shape[0]:
                    idx = keep if idx is None else idx[keep]
                    xa, x0, grad, ys = xa[keep], x0[keep], grad[keep], ys[keep]
                    ts = _take(ts, keep)
                    bounds = None if bounds is None else (bounds[0][keep], bounds[1][keep])
                    state = _take(state, keep)
            xa = self._step(xa, x0, grad, bounds, state)
            if idx is None:
                x_adv = xa
            else:
                x_adv[idx] = xa
        return x_adv

    # -- restarts ----------------------------------------------------------------------------
    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        info: dict[str, Any] = {"eps": self.eps} if self.eps is not None else {}
        gen = (self.generator(x.device)
               if self.random_start and view.keys is None else None)
        rec = StepRecorder(x.shape[0], self.steps, x) if view.record else None

        def start(xs: torch.Tensor, rows: torch.Tensor | None, restart: int) -> torch.Tensor:
            if not self.random_start:
                return xs.clone()
            return self.start_point(view, xs, rows, restart, gen)

        best = self._run(view, x, y, target, start(x, None, 0), rec)
        if self.restarts == 1:
            if rec is not None:
                info.update(rec.info())
            return best, info
        best_loss, best_adv = self._score(view, best, y, target, rec, None)
        for r in range(1, self.restarts):
            todo = (~best_adv).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            xs, ys, ts = x[todo], y[todo], _take(target, todo)
            cand = self._run(view, xs, ys, ts, start(xs, todo, r), rec, todo, r)
            loss, adv = self._score(view, cand, ys, ts, rec, todo)
            better = adv | (loss > best_loss[todo])
            sel = todo[better]
            best[sel] = cand[better]
            best_loss[sel] = loss[better]
            best_adv[sel] = adv[better]
        if rec is not None:
            info.update(rec.info())
        return best, info

    def _score(self, view: LogitsView, x_adv: torch.Tensor, y: torch.Tensor,
               target: torch.Tensor | None, rec: StepRecorder | None = None,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and adversarial flag of a run's final point, to choose between restarts."""
        loss, _, logits = loss_and_grad(view, x_adv, self.loss_fn, y, target, need_grad=False)
        adv = self.is_adversarial(logits, y, target)
        if rec is not None:
            rec.step(rows, self.steps, -1, loss, None, adv)
        return loss, adv
