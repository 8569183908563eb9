"""The audit's checks that run an attack or a search of their own (AUDIT.md C12, C17, C21).

Why apart from :mod:`robustact.evaluate.checks`: these do not diagnose the model's gradients;
they look for adversarials by other means (a surrogate's transfer, random points of the ε-ball,
an attack on a binarized task) and compare what they find with what the evaluation reported, so
they take extra inputs (a surrogate, the points reported robust, an attack) and cost far more.
:func:`robustact.evaluate.audit.run_audit` calls them separately (C17 and C21 through the
versions at the end, which read from the results table which samples the evaluation claims
robust); ``robustact.evaluate.checks`` re-exports them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks._utils import check_norm, normalize_direction, random_start
from robustact.attacks.base import Attack, prepared_model
from robustact.attacks.pgd import PGD
from robustact.defenses.base import DefenseWrapper
from robustact.evaluate.check_base import (
    CheckResult,
    batch_outputs,
    beyond_noise,
    correct_untied,
    gap_test,
    need_eps,
    pct,
    probe,
    seeded_generator,
)
from robustact.evaluate.samples import Samples, per_row, robust_mask, rows_at
from robustact.evaluate.table import ResultsTable

__all__ = ["check_transfer_mismatch", "check_random_search", "check_binarization",
           "binarization_on_reported_robust", "random_search_beyond_black_box"]


# -- C12 ----------------------------------------------------------------------------------------

def check_transfer_mismatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                            eps: float | None = None, norm: str = "linf",
                            surrogate: nn.Module | None = None,
                            x_adv: torch.Tensor | None = None, steps: int = 20,
                            seed: int = 0) -> CheckResult:
    """C12 (IoAF I5): adversarials crafted on ``surrogate`` (given as ``x_adv`` or made here by
    PGD at ε) that fool the surrogate but not the model; fires when such label mismatches
    exceed noise → the surrogate is a poor stand-in: attack the model end to end."""
    if surrogate is None:
        return CheckResult("C12", "transfer failure", None, {},
                           "not applicable: no surrogate model given.")
    with probe(model, x, y) as xm:
        if x_adv is None:
            x_adv = PGD(need_eps(eps, "C12"), steps=steps, norm=norm, seed=seed)(
                surrogate, xm, y).x_adv
        with prepared_model(surrogate):
            s_ok = batch_outputs(surrogate, x_adv).argmax(1) != y
        m_ok = batch_outputs(model, x_adv).argmax(1) != y
    mismatch = int((s_ok & ~m_ok).sum())
    n = xm.shape[0]
    fired = beyond_noise(mismatch, n)
    numbers = {"surrogate_success": float(s_ok.float().mean()),
               "model_success": float(m_ok.float().mean()), "mismatch": mismatch, "n": n}
    ev = (f"{mismatch} of {n} adversarials fool the surrogate but not the model "
          f"(surrogate success {pct(numbers['surrogate_success'])}, model "
          f"{pct(numbers['model_success'])})" +
          (": the surrogate misleads, attack end to end." if fired else "."))
    return CheckResult("C12", "transfer failure", fired, numbers, ev)


# -- C17 ----------------------------------------------------------------------------------------

def check_random_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        eps: float | None = None, norm: str = "linf", points: int = 10_000,
                        robust: torch.Tensor | None = None, max_samples: int = 100,
                        seed: int = 0, batch_size: int = 8192) -> CheckResult:
    """C17: ``points`` uniform points of the ε-ball per sample (first ``max_samples`` samples).

    ``robust`` (bool per sample): the samples the evaluation reports robust (the audit passes
    the per-sample worst case of its table). The check fires, as an attack, when random search
    breaks some of them beyond noise; without ``robust`` it reports what it found and does not
    apply.

    Cost: points are drawn only for the clean-correct samples still in question (with
    ``robust``, those the attacks left robust: a sample they broke cannot be *extra* broken),
    and a sample stops drawing at its first misclassified point. On an undefended model the
    attacks break almost everything, so the check costs one forward pass per sample instead of
    ``points`` (measured: 14.7 s → 0.01 s of CPU for 100 MNIST images and 1000 points).
    """
    e = need_eps(eps, "C17")
    check_norm(norm)
    n = min(x.shape[0], max_samples)
    with probe(model, x[:n], y[:n]) as xm:
        yy = y[:n]
        gen = seeded_generator(seed, xm.device)
        correct = correct_untied(batch_outputs(model, xm), yy)
        broken = torch.zeros(n, dtype=torch.bool, device=xm.device)
        todo = correct.clone()
        if robust is not None:
            todo &= robust[:n].to(todo.device)
        done = 0
        while done < points and bool(todo.any()):
            idx = todo.nonzero().flatten()
            per_chunk = max(1, batch_size // idx.numel())
            m = min(per_chunk, points - done)
            pts = random_start(xm[idx].repeat_interleave(m, 0), e, norm, gen)
            wrong = ~correct_untied(batch_outputs(model, pts, batch_size),
                                    yy[idx].repeat_interleave(m))
            hit = wrong.view(idx.numel(), m).any(1)
            broken[idx[hit]] = True
            todo[idx[hit]] = False
            done += m
    broken &= correct
    numbers: dict[str, Any] = {"points_per_sample": points, "samples": n,
                               "broken": int(broken.sum()), "clean_correct": int(correct.sum())}
    if robust is None:
        return CheckResult("C17", "random search", None, numbers,
                           f"random search broke {int(broken.sum())} of {int(correct.sum())} "
                           "correctly classified samples; not applicable as a check: no "
                           "standard-attack results to compare with.", kind="attack")
    extra = int((broken & robust[:n].to(broken.device)).sum())
    n_robust = int((robust[:n].to(correct.device) & correct).sum())
    significant, pv = gap_test(extra, n_robust)
    numbers.update(extra_broken=extra, reported_robust=n_robust, standard_robust=n_robust,
                   p_value=pv)
    ev = (f"{points} random points per sample in the ε-ball broke {extra} of the {n_robust} "
          f"samples (of the first {n}) that the evaluation reported robust" +
          (f": far more than sound attacks disagree on healthy models (p = {pv:.2g}): the "
           "gradients mislead the attacks." if significant else
           " (a protocol gap, not in the table: rerun with the thorough protocol)." if extra
           else "."))
    return CheckResult("C17", "random search", extra > 0, numbers, ev, kind="gap",
                       breaks_points=significant)


# -- C21 ----------------------------------------------------------------------------------------

class _Readout(nn.Module):
    """Binary task of the binarization test: 2 logits (0, w·features(x) + b)."""

    def __init__(self, model: nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.w = nn.Parameter(w, requires_grad=False)
        self.b = nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.model.features(x).flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def _fit_readout(f_in: torch.Tensor, f_b: torch.Tensor, steps: int
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A linear readout scoring the boundary point above 0 and every inner point below 0
    (balanced logistic loss, Adam on standardized features); returns (w, b, separates)."""
    mu = f_in.mean(0)
    sd = f_in.std(0).clamp_min(1e-6)
    a_in, a_b = (f_in - mu) / sd, (f_b - mu) / sd
    w = torch.zeros(f_in.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = (torch.nn.functional.softplus(a_in @ w + b).mean()
                    + torch.nn.functional.softplus(-(a_b @ w + b)).mean())
            loss.backward()
            opt.step()
    with torch.no_grad():
        w_raw = w / sd
        b_raw = b - (mu * w_raw).sum()
        sep = bool((f_in @ w_raw + b_raw < 0).all() and (f_b @ w_raw + b_raw > 0).all())
    return w_raw.detach(), b_raw.detach(), sep


def _has_features(model: nn.Module) -> bool:
    """Whether ``model.features(x)`` exists; a defense wrapper always defines the method and
    forwards it to the model it wraps, so look through the wrappers to that model."""
    inner = model
    while isinstance(inner, DefenseWrapper):
        inner = inner.base
    return callable(getattr(inner, "features", None))


def check_binarization(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       eps: float | None = None, norm: str = "linf", inner: int = 999,
                       max_samples: int = 20, attack: Attack | None = None,
                       readout_steps: int = 300, min_success: float = 0.9,
                       seed: int = 0) -> CheckResult:
    """C21, binarization test (after Zimmermann et al., NeurIPS 2022), our version:

    per sample, ``inner`` points uniform in the ε/2-ball and one boundary point at a random
    vertex of the ε-ball (L∞; a random point on the ε-sphere for L2). A linear readout on the
    penultimate features (``model.features``) is fitted to score the boundary point positive and
    the inner points (and x) negative; where it cannot separate them the sample is excluded
    (the test is invalid there). The same attack (``attack``, default PGD-20 at ε) then runs on
    the binary task "features → readout" from x. A point scoring positive exists in the ε-ball
    by construction, so a sound attack succeeds on nearly every sample; fires when its success
    rate is below ``min_success``. Not applicable for models without ``features(x)``.
    """
    e = need_eps(eps, "C21")
    check_norm(norm)
    if not _has_features(model):
        return CheckResult("C21", "binarization test", None, {},
                           "not applicable: the model has no features(x) for the readout.")
    attack = attack if attack is not None else PGD(e, steps=20, norm=norm, seed=seed)
    n = min(x.shape[0], max_samples)
    fitted, succeeded = 0, 0
    with probe(model, x[:n], y[:n]) as xm:
        gen = seeded_generator(seed, xm.device)
        for i in range(n):
            xi = xm[i:i + 1]
            pts = random_start(xi.expand(inner, *xi.shape[1:]), e / 2, norm, gen)
            if norm == "linf":
                s = torch.randint(0, 2, xi.shape, generator=gen, device=xi.device) * 2 - 1
                xb = (xi + e * s.to(xi.dtype)).clamp(0, 1)
            else:
                d = normalize_direction(torch.randn(xi.shape, generator=gen, device=xi.device,
                                                    dtype=xi.dtype), "l2")
                xb = (xi + e * d).clamp(0, 1)
            with torch.no_grad():
                f_in = model.features(torch.cat([xi, pts])).flatten(1).float().cpu()
                f_b = model.features(xb).flatten(1).float().cpu()
            w, b, sep = _fit_readout(f_in, f_b, readout_steps)
            if not sep:
                continue
            fitted += 1
            binary = _Readout(model, w.to(xi.device, xi.dtype), b.to(xi.device, xi.dtype))
            res = attack(binary.eval(), xi, torch.zeros(1, dtype=torch.long, device=xi.device))
            succeeded += int(res.success.sum())
    # "samples" is what the decision rests on (the verdict never lets a handful decide alone)
    numbers = {"probed": n, "samples": fitted, "readout_fits": fitted,
               "attack_success": succeeded, "inner_points": inner}
    if fitted == 0:
        return CheckResult("C21", "binarization test", None, numbers,
                           f"not applicable: the linear readout could not separate the boundary "
                           f"point from the inner points on any of {n} samples.")
    rate = succeeded / fitted
    numbers["success_rate"] = rate
    fired = rate < min_success
    ev = (f"on the binarized task (a reachable target in the ε-ball by construction) the attack "
          f"succeeded on {succeeded} of {fitted} samples ({pct(rate)})" +
          (": the attack is too weak for this model." if fired else "."))
    return CheckResult("C21", "binarization test", fired, numbers, ev)


# -- C17 and C21 where the evaluation claims robustness ---------------------------------------

def binarization_on_reported_robust(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor,
                                     table: ResultsTable | None, ids: torch.Tensor, *,
                                     eps: float, norm: str, **kw: Any) -> CheckResult:
    """C21 on the samples the evaluation reports robust (all of ``xs`` without a table).

    Why: the binarization test asks whether the attack is strong enough to trust a robustness
    claim; where the evaluation broke a point there is no claim to test, and where it broke
    every point the question does not arise (measured: C21 was 4.0 of the 5.5 s audit of an
    undefended LeNet-5 whose evaluation of 1000 MNIST images took 1.0 s).
    """
    robust = robust_mask(table, eps, ids) if table is not None else None
    if robust is not None:
        if not bool(robust.any()):
            return CheckResult("C21", "binarization test", None, {"reported_robust": 0},
                               "not applicable: the evaluation reports no point robust, so "
                               "there is no robustness claim whose attack to test.")
        keep = robust.to(xs.device)
        xs, ys = xs[keep], ys[keep]
    return check_binarization(model, xs, ys, eps=eps, norm=norm, **kw)


def random_search_beyond_black_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                    table: ResultsTable | None, ids: torch.Tensor, *,
                                    eps: float, norm: str, max_samples: int,
                                    **kw: Any) -> CheckResult:
    """C17 on the reported-robust samples that no black-box attack of the table (Square, the
    C16 screen) attacked at ``eps``.

    Why: Square is a random search too, and a stronger one (it keeps what raised the loss and
    starts from the vertices of the ε-ball), so uniform points add nothing on a sample it
    already searched; C16 asks the question there. Measured: on the calibration zoo under audit
    version 4, C17 was significant only on cells where C16 was too; and on a fast-AT ResNet-20
    (CIFAR-10, 100 images) it drew its 1000 points for each of the 35 robust samples, all of
    which Square had searched: as many forward passes as the screen itself.
    """
    robust = robust_mask(table, eps, ids) if table is not None else None
    if table is None or robust is None:
        return check_random_search(model, x, y, eps=eps, norm=norm, robust=robust,
                                   max_samples=max_samples, **kw)
    s = Samples.of(table)
    _, searched = s.broken(rows_at(table, table.attacks("black_box"), eps))
    left = ~per_row(s.ids, searched, ids)
    n = min(x.shape[0], max_samples)
    by_square = int((robust[:n] & ~left[:n]).sum())
    if by_square and not bool((robust[:n] & left[:n]).any()):
        return CheckResult("C17", "random search", None, {"left_to_black_box": by_square},
                           f"not applicable: the black-box screen (C16) searched all {by_square}"
                           f" reported-robust samples of the first {n}, and a uniform random "
                           "search is weaker than it.", kind="gap")
    res = check_random_search(model, x, y, eps=eps, norm=norm, robust=robust & left,
                              max_samples=max_samples, **kw)
    if by_square:
        res.numbers["left_to_black_box"] = by_square
        res.evidence += (f" {by_square} reported-robust samples were left to the black-box "
                         "screen (C16), which searched them already.")
    return res
