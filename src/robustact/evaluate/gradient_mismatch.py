"""C7 of the gradient-masking audit: does the gradient describe the function?

Why a module of its own: the check is the audit's most involved probe (finite differences along
random directions, bisection of the segments where they disagree with autograd, a test of the
counts against healthy networks) and reads best in one sitting; :mod:`robustact.evaluate.checks`
re-exports it with the other model-level checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustact.evaluate.check_base import (
    HEALTHY_MECHANISM_RATE,
    CheckResult,
    gap_test,
    input_grad,
    need_eps,
    pct,
    probe,
    seeded_generator,
)
from robustact.losses.attack import margin_loss

__all__ = ["SMOOTH_TOL", "check_gradient_mismatch", "gradient_mismatch_fires"]

#: The forward and backward differences agree within this share of the derivative's size when
#: the loss is smooth (linear) along the probe segment.
SMOOTH_TOL = 0.05


def _jumps(f: Callable[[torch.Tensor], torch.Tensor], f_minus: torch.Tensor,
           f_plus: torch.Tensor, bisections: int) -> torch.Tensor:
    """Per row: does ``f`` (of t in [-1, 1], one t per row) jump on [-1, 1]? Bisect towards the
    half with the larger change; a continuous function's change shrinks with the interval, a
    jump's stays: a jump is kept when more than a tenth of the whole change survives."""
    lo, hi = -torch.ones_like(f_minus), torch.ones_like(f_plus)
    f_lo, f_hi = f_minus, f_plus
    for _ in range(bisections):
        mid = (lo + hi) / 2
        f_mid = f(mid)
        left = (f_mid - f_lo).abs() >= (f_hi - f_mid).abs()
        hi, f_hi = torch.where(left, mid, hi), torch.where(left, f_mid, f_hi)
        lo, f_lo = torch.where(left, lo, mid), torch.where(left, f_lo, f_mid)
    return (f_hi - f_lo).abs() > 0.1 * (f_plus - f_minus).abs().clamp_min(1e-12)


def _direction_mismatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                        d: torch.Tensor, h: float, rel_tol: float, bisections: int,
                        l0: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """C7 along one direction ``d``, per sample: the relative error of autograd's directional
    derivative (``g``·d) against the central difference at step ``h``, whether it exceeds
    ``rel_tol``, whether the margin loss jumps on [x − h·d, x + h·d] (:func:`_jumps`), and
    whether it is *smooth* there while autograd disagrees (a wrong gradient: the forward and
    backward differences from ``l0``, the loss at x, agree with each other and not with
    autograd, which no kink can explain)."""

    def loss_at(t: torch.Tensor, d: torch.Tensor, rows: Any = slice(None)) -> torch.Tensor:
        """The margin loss at x + t·h·d for ``rows`` of the batch (t per row, in [-1, 1])."""
        return margin_loss(model(x[rows] + (t * h).view(-1, *[1] * (x.ndim - 1)) * d), y[rows])

    ad = (g * d).flatten(1).sum(1)
    with torch.no_grad():
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        lp, lm = loss_at(one, d), loss_at(-one, d)
        fd = (lp - lm) / (2 * h)
        scale = torch.maximum(torch.maximum(ad.abs(), fd.abs()), torch.full_like(ad, 1e-3))
        rel = (ad - fd).abs() / scale
        off = rel > rel_tol
        fwd, bwd = (lp - l0) / h, (l0 - lm) / h
        smooth = (fwd - bwd).abs() <= SMOOTH_TOL * scale
        # Only the disagreeing rows: an agreeing direction counts either way.
        rows = off.nonzero().flatten()
        jump = torch.zeros_like(off)
        if rows.numel():
            jump[rows] = _jumps(lambda t, r=rows, dr=d[rows]: loss_at(t, dr, r),
                                lm[rows], lp[rows], bisections)
    return rel, off, jump, off & smooth & ~jump


def check_gradient_mismatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                            eps: float | None = None, norm: str = "linf", directions: int = 4,
                            step: float | None = None, rel_tol: float = 0.5,
                            seed: int = 0, bisections: int = 12) -> CheckResult:
    """C7: autograd directional derivative of the margin loss vs central finite differences,
    and whether the function *jumps* where they disagree (shattered gradients).

    Per sample, ``directions`` random sign directions d (unit L∞ steps); FD step h = ε/100 (or
    ``step``; 0.003 without ε): big enough to cross a quantization level or a jump. A direction
    disagrees when |D_ad − D_fd| > ``rel_tol`` · max(|D_ad|, |D_fd|, 1e-3).

    A disagreement alone is no sign of masking: a continuous piecewise-linear network has kinks
    near (or at) the data, and the chain rule then differs from finite differences. Measured on
    MNIST at ε = 0.3 (100 test images): plain LeNet-5 disagrees on 3 % of the samples, an
    adversarially trained small CNN on 49 % (it does even at h = 1e-6 in float64, where forward-
    and reverse-mode derivatives agree with each other), while strong gradient-free attacks
    found nothing the gradient attacks missed on it. So a disagreeing direction counts only
    when the loss jumps on the segment [x − h·d, x + h·d]: bisected ``bisections`` times
    towards the larger change, a continuous function's change shrinks with the interval (about
    4096-fold after 12 halvings), a jump's stays; a jump is kept when more than a tenth of the
    change survives. Measured: no jump on the plain or the adversarially trained model; jumps
    in 217 of 400 directions on each JumpReLU retrofit of LeNet-5 (κ = 1 and 1.5). A
    sample counts when half its directions do; the check fires when more samples count than a
    healthy network shows (:func:`gradient_mismatch_fires`: a binomial test against
    :data:`HEALTHY_MECHANISM_RATE`): the gradient does not describe the function (jumps,
    quantization) → BPDA. It also fires on a gradient that is *wrong where the function
    is smooth*: along the segment the forward and backward differences agree (within
    :data:`SMOOTH_TOL`; no kink lies on it, a kink makes them differ) yet autograd disagrees
    with them, which a detached branch or an altered backward produces and a healthy network
    cannot (its autograd derivative is exact wherever the function is linear).
    """
    h = float(step) if step is not None else (need_eps(eps, "C7") / 100 if eps else 0.003)
    with probe(model, x, y) as xm:
        g, why = input_grad(model, xm, y, margin_loss)
        if g is None:
            return CheckResult("C7", "gradient vs function mismatch", None, {},
                               f"not applicable: {why}.")
        gen = seeded_generator(seed, xm.device)
        bad = torch.zeros(xm.shape[0], device=xm.device)
        raw = torch.zeros(xm.shape[0], device=xm.device)
        wrong = torch.zeros(xm.shape[0], device=xm.device)
        rels, jumps = [], 0
        with torch.no_grad():
            l0 = margin_loss(model(xm), y)
        for _ in range(directions):
            d = torch.randint(0, 2, xm.shape, generator=gen, device=xm.device).to(xm.dtype) * 2 - 1
            # Keep both probes inside [0, 1]: drop coordinates where x ± h would leave the box.
            d = torch.where((xm + h > 1) | (xm - h < 0), torch.zeros_like(d), d)
            rel, off, jump, smooth_off = _direction_mismatch(model, xm, y, g, d, h, rel_tol,
                                                             bisections, l0)
            rels.append(rel)
            raw += off.float()
            jumps += int((off & jump).sum())
            bad += (off & jump).float()
            wrong += smooth_off.float()
    n = int(xm.shape[0])
    counts = {"jumps": int((bad >= directions / 2).sum()),
              "wrong gradient": int((wrong >= directions / 2).sum()),
              "disagree": int((raw >= directions / 2).sum())}
    frac, wrong_frac = counts["jumps"] / n, counts["wrong gradient"] / n
    numbers = {"mismatch_fraction": frac, "raw_mismatch_fraction": counts["disagree"] / n,
               "wrong_gradient_fraction": wrong_frac,
               "median_rel_error": float(torch.stack(rels).median()), "fd_step": h,
               "directions": directions, "jump_directions": jumps, "samples": n,
               "counts": {k: [v, n] for k, v in counts.items()}}
    jumps, wrong = gradient_mismatch_fires(numbers)
    return CheckResult("C7", "gradient vs function mismatch", jumps or wrong, numbers,
                       _c7_evidence(numbers, jumps, wrong))


def gradient_mismatch_fires(nb: dict[str, Any]) -> tuple[bool, bool]:
    """Whether C7's stored counts show (jumps, a wrong gradient) on more samples than a healthy
    network does: each count tested against :data:`HEALTHY_MECHANISM_RATE` (:func:`gap_test`).
    Shared with the verdict's re-judging of stored results, so a change of the rate is
    measured on the calibration zoo without re-running the check."""
    counts = nb.get("counts") or {}
    jumps, samples = counts.get("jumps", (0, 0))
    wrong, _ = counts.get("wrong gradient", (0, 0))
    return (gap_test(jumps, samples, HEALTHY_MECHANISM_RATE)[0],
            gap_test(wrong, samples, HEALTHY_MECHANISM_RATE)[0])


def _c7_evidence(nb: dict[str, Any], jumps: bool, wrong: bool) -> str:
    """C7's sentence: what disagreed, and whether jumps or a wrong gradient explain it."""
    h, med, raw = nb["fd_step"], nb["median_rel_error"], nb["raw_mismatch_fraction"]
    if jumps or wrong:
        return (f"autograd and finite differences (step {h:.3g}) disagree on {pct(raw)} of the "
                f"samples (median relative error {med:.2g})" + (
                    f", and the loss jumps there on {pct(nb['mismatch_fraction'])} "
                    f"({nb['jump_directions']} directions): the gradient does not describe the "
                    "function (jumps or quantization); use BPDA" if jumps else "") + (
                    f"{';' if jumps else ','} and on {pct(nb['wrong_gradient_fraction'])} the "
                    "loss is smooth along the direction yet autograd disagrees: the gradient "
                    "misses part of the function (a detached or altered backward path); "
                    "attack end to end" if wrong else "") + ".")
    if raw > 0:
        return (f"{pct(raw)} of the samples disagree with finite differences at step {h:.3g} "
                f"(median relative error {med:.2g}), but the loss jumps on only "
                f"{pct(nb['mismatch_fraction'])} and is smooth there on only "
                f"{pct(nb['wrong_gradient_fraction'])}: kinks of a continuous "
                "(piecewise-linear) function explain the rest.")
    return (f"autograd agrees with finite differences (median relative error {med:.2g}; "
            f"{pct(raw)} of samples disagree at step {h:.3g}).")
