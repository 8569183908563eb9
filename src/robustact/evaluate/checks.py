"""Model-level diagnostics of the gradient-masking audit (AUDIT.md C1–C8, C23, ties).

Each check is a function ``(model, x, y, *, eps, norm, ...) -> CheckResult``: it probes the model
itself (forward passes, input gradients, finite differences, random points), never the results
table (the table-level checks are in :mod:`robustact.evaluate.audit`; C12, C17 and C21,
which run a search of their own, in :mod:`robustact.evaluate.attack_checks`; C7, the gradient
against the function, in :mod:`robustact.evaluate.gradient_mismatch`; what all checks share
in :mod:`robustact.evaluate.check_base`; this module re-exports them). A check *fires* when it
sees what a masked gradient looks like; ``fired is None`` means it does not apply here (the reason
is the evidence). Every result carries its numbers and one or two plain sentences with them, so
the verdict can quote the evidence rather than a flag.

Why model-level checks exist beside the attacks: an attack that fails looks exactly like a robust
model. These probes explain *why* an attack may fail (zero gradients, saturation, randomness,
gradients that disagree with the function) before anyone trusts its number.

All randomness comes from explicit ``torch.Generator`` s seeded by the ``seed`` argument; the
model is put through :func:`robustact.attacks.base.prepared_model` (eval mode required, parameter
gradients off and restored), so a check leaves no trace on the model or on global state.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from robustact.attacks._utils import check_norm, random_start
from robustact.core.validate import top_ties
from robustact.evaluate.attack_checks import (
    check_binarization,
    check_random_search,
    check_transfer_mismatch,
)
from robustact.evaluate.check_base import (
    HEALTHY_MECHANISM_RATE,
    SATURATION_FRACTION,
    VANISHING_RATIO,
    VANISHING_SHARE,
    ZERO_GRADIENT_FRACTION,
    CheckResult,
    attack_losses,
    batch_outputs,
    beyond_noise,
    correct_untied,
    decided,
    gap_test,
    input_grad,
    need_eps,
    noise_floor,
    pct,
    pre_activation,
    probe,
    seeded_generator,
)
from robustact.evaluate.gradient_mismatch import check_gradient_mismatch, gradient_mismatch_fires
from robustact.losses.attack import ce_loss, margin_loss
from robustact.models.outputs import LogOf

__all__ = [
    "CheckResult",
    "beyond_noise",
    "noise_floor",
    "correct_untied",
    "check_randomness",
    "check_probabilities",
    "check_broken_graph",
    "check_zero_gradients",
    "check_saturation",
    "check_forward_optimization",
    "check_gradient_mismatch",
    "gradient_mismatch_fires",
    "zero_gradients_fire",
    "check_unstable_predictions",
    "check_transfer_mismatch",
    "check_random_search",
    "check_binarization",
    "check_few_classes",
    "check_ties",
    "top_ties",
    "MODEL_CHECKS",
]

#: Relative size below which a CE input gradient counts as "≈ 0" next to the logit-margin one
#: (C5). 1e-20 is a logit gap of ~46 under a plain softmax: far beyond what a healthy model
#: produces, while a saturated sigmoid(T·z) gives exactly 0 or ~1e-40.
SATURATION_RATIO = 1e-20


# -- C1 -----------------------------------------------------------------------------------------

def check_randomness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     eps: float | None = None, norm: str = "linf", passes: int = 5,
                     tol: float = 1e-4) -> CheckResult:
    """C1: ``passes`` forward passes of one batch; fires if predictions or normalized outputs
    (each row divided by its largest magnitude) change by more than ``tol`` → use EOT."""
    with probe(model, x, y) as xm:
        outs = [batch_outputs(model, xm) for _ in range(passes)]
    ref = outs[0]
    scale = ref.abs().amax(1, keepdim=True).clamp_min(1e-12)
    diffs = torch.stack([((o - ref) / scale).abs().amax(1) for o in outs[1:]])
    preds_changed = torch.stack([o.argmax(1) != ref.argmax(1) for o in outs[1:]]).any(0)
    max_diff = float(diffs.max()) if diffs.numel() else 0.0
    changed = float(preds_changed.float().mean())
    fired = bool(changed > 0 or max_diff > tol)
    numbers = {"passes": passes, "pred_changed_fraction": changed, "max_rel_output_diff": max_diff}
    return decided(
        "C1", "randomness", fired, numbers,
        if_fired=lambda: (
            f"{passes} forward passes of the same batch disagree: predictions change on "
            f"{pct(changed)} of the samples and outputs by up to {max_diff:.3g} (relative); "
            "the model is randomized, so attack it with EOT."),
        if_passed=lambda: (
            f"{passes} forward passes of the same batch agree (max relative difference "
            f"{max_diff:.2g})."))


# -- C2 -----------------------------------------------------------------------------------------

def check_probabilities(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        eps: float | None = None, norm: str = "linf",
                        tol: float = 1e-5) -> CheckResult:
    """C2: fires when every output row lies in [0, 1] and sums to 1 (±``tol``): the model
    returns probabilities, and losses computed on them saturate. A model robustact already
    wraps in :class:`~robustact.models.outputs.LogOf` (its probabilities attacked through their
    logarithm) is judged on the probabilities it returns, and the evidence says so."""
    wrapped = isinstance(model, LogOf)
    with probe(model, x, y) as xm:
        z = batch_outputs(model.model if wrapped else model, xm)
    in_unit = ((z >= 0) & (z <= 1)).all(1)
    sums_one = (z.sum(1) - 1).abs() <= tol
    prob_rows = float((in_unit & sums_one).float().mean())
    bounded = float(in_unit.float().mean())
    fired = bool((in_unit & sums_one).all())
    numbers = {"probability_rows": prob_rows, "rows_in_unit_interval": bounded}
    if fired and bool(((z == 0) | (z == 1)).all()):
        ev = ("every output row is exactly one-hot (outputs saturated to 0 and 1): CE and "
              "margin losses on them are flat.")
    elif fired:
        ev = ("every output row lies in [0, 1] and sums to 1: the model returns probabilities, "
              "not logits, so CE and margin losses on them saturate.")
    else:
        ev = (f"outputs are not probabilities ({pct(prob_rows)} of rows sum to 1 within "
              f"[0, 1]; {pct(bounded)} of rows lie in [0, 1]).")
    if fired and wrapped:
        ev += " robustact attacked their logarithm (the logits up to a constant)."
    return CheckResult("C2", "probabilities, not logits", fired, numbers, ev)


# -- C3 -----------------------------------------------------------------------------------------

def check_broken_graph(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       eps: float | None = None, norm: str = "linf") -> CheckResult:
    """C3: backward of the CE loss to the input; fires on an exception or when no gradient
    reaches x (a detach, a non-differentiable comparison, a numpy round trip)."""
    with probe(model, x, y) as xm:
        g, why = input_grad(model, xm, y, ce_loss)
    fired = g is None
    ev = (f"no input gradient: {why}; gradient attacks cannot run on this model as it is."
          if fired else "a CE input gradient reaches x.")
    return CheckResult("C3", "broken graph", fired, {"gradient_reaches_input": not fired}, ev)


# -- C4 -----------------------------------------------------------------------------------------

def _bad_rows(g: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Per sample: the gradient is all zero or has a non-finite entry (missing: all rows)."""
    if g is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    flat = g.flatten(1)
    return (flat == 0).all(1) | ~torch.isfinite(flat).all(1)


def _vanishing_rows(g: torch.Tensor | None) -> torch.Tensor | None:
    """Per sample: more than VANISHING_SHARE of the gradient's coordinates are non-zero but at
    most VANISHING_RATIO of its largest one (a saturating transform's derivative). Relative to
    the sample's own largest coordinate, so an image needs some pixels near the transform's
    centre (edges, grey levels) to show it; one saturated everywhere does not."""
    if g is None:
        return None
    flat = g.flatten(1).abs()
    top = flat.max(1, keepdim=True).values
    tiny = (flat > 0) & (flat <= VANISHING_RATIO * top)
    return tiny.float().mean(1) > VANISHING_SHARE


def zero_gradients_fire(nb: dict[str, Any]) -> tuple[bool, bool]:
    """Whether C4's stored numbers show (exactly zero or non-finite gradients on a clear count
    of samples, vanishing gradients on more samples than a healthy network shows). Shared with
    the verdict's re-judging of stored results."""
    frac, n = float(nb.get("max_fraction", 0.0)), int(nb.get("samples") or 0)
    # the count itself; results stored before it was recorded estimate it from the fraction
    count = nb.get("zero_count")
    zero = frac >= ZERO_GRADIENT_FRACTION and (frac * n if count is None else count) >= 2
    count, of = nb.get("vanishing", (0, 0))
    return zero, gap_test(int(count), int(of), HEALTHY_MECHANISM_RATE)[0]


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         eps: float | None = None, norm: str = "linf",
                         seed: int = 0) -> CheckResult:
    """C4: per-sample input gradient of CE, margin (and DLR with ≥ 3 classes), at x and (given
    ``eps``) at a random start in the ε-ball; fires when a clear count of samples has a
    gradient that is all zero or not finite, or when more samples than a healthy network shows
    have a margin gradient that *vanishes* on most coordinates (:data:`VANISHING_RATIO`): a
    steep input sigmoid leaves gradients of 1e-10 that are not zero yet tell an attack nothing
    about how far a pixel must move.

    Only points the model does not already misclassify count (a tied top output still counts):
    an attack has nothing to do at a misclassified point, and there DLR can be constant by
    construction, not by any fault of the model (label ranked third: numerator and denominator
    are both z_π1 − z_y, so DLR ≡ 1 and its gradient is zero). Counting those made C4 fire on a
    sound fast-AT ResNet-20 (5 of the first 100 CIFAR-10 test points, all misclassified).
    """
    check_norm(norm)
    numbers: dict[str, Any] = {"vanishing": [0, 0]}
    worst_name, worst, count = "", 0.0, 0
    with probe(model, x, y) as xm:
        k = batch_outputs(model, xm[:1]).shape[1]
        starts = {"x": xm}
        if eps is not None:
            starts["random start"] = random_start(xm, need_eps(eps, "C4"), norm,
                                                  seeded_generator(seed, xm.device))
        for where, pts in starts.items():
            out = batch_outputs(model, pts)
            live = ~((out.argmax(1) != y) & ~top_ties(out))
            numbers[f"probed[{where}]"] = int(live.sum())
            if not live.any():
                continue
            for lname, loss in attack_losses(k).items():
                g, _ = input_grad(model, pts, y, loss)
                bad = _bad_rows(g, pts.shape[0], pts.device)[live]
                frac = float(bad.float().mean())
                numbers[f"zero_or_nonfinite[{lname} at {where}]"] = frac
                van = _vanishing_rows(g) if lname == "margin" else None
                if van is not None and int(van[live].sum()) >= numbers["vanishing"][0]:
                    numbers["vanishing"] = [int(van[live].sum()), int(live.sum())]
                    numbers["vanishing_at"] = where
                # CE alone vanishing is saturation (C5's); a margin or DLR gradient that is
                # exactly zero means the function looks flat to every gradient attack.
                if lname != "ce" and frac > worst:
                    worst_name, worst, count = f"{lname.upper()} input gradient at {where}", \
                        frac, int(bad.sum())
    numbers["max_fraction"] = worst
    numbers["zero_count"] = count
    numbers["samples"] = int(xm.shape[0])
    zero, vanishing = zero_gradients_fire(numbers)
    van, of = numbers["vanishing"]
    return decided(
        "C4", "zero / NaN / Inf gradients", zero or vanishing, numbers,
        if_fired=lambda: " ".join([
            f"the {worst_name} is exactly zero or not finite for {pct(worst)} of the samples "
            "not already misclassified: gradient attacks get no signal there." if zero else "",
            f"the margin input gradient at {numbers.get('vanishing_at')} vanishes (non-zero "
            f"but at most {VANISHING_RATIO:g} of its largest entry) on more than "
            f"{pct(VANISHING_SHARE)} of the coordinates for {van} of {of} samples: a "
            "saturating input transform; attack through a smooth substitute (BPDA)."
            if vanishing else ""]).strip(),
        if_passed=lambda: (
            "margin" + (" and DLR" if k >= 3 else "") + " input gradients are non-zero and "
            "finite for every sample not already misclassified" +
            (" at x and at a random start" if eps is not None else " at x") +
            (f" but {count} (below a clear count)" if worst > 0 else "") +
            " (CE alone vanishing is saturation: C5)."))


# -- C5 -----------------------------------------------------------------------------------------

def check_saturation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     eps: float | None = None, norm: str = "linf",
                     logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     ratio: float = SATURATION_RATIO) -> CheckResult:
    """C5: per sample, ‖∇CE(output)‖ vs ‖∇margin(pre-activation logits)‖; fires when CE's is
    ≈ 0 (below ``ratio`` of the margin one) on some sample where the margin's is not.

    The margin is taken on ``logits_fn`` (default: the model's ``logits(x)`` if it has one, e.g.
    an output-activation wrapper, else its output). Also reports the fraction of samples whose
    largest probability (the outputs if they are probabilities, else their softmax) is
    ≥ 1 − 1e-6.
    """
    if logits_fn is None:
        logits_fn, where = pre_activation(model)
    else:
        where = "the given logits"
    with probe(model, x, y) as xm:
        g_ce, _ = input_grad(model, xm, y, ce_loss)
        g_m, _ = input_grad(logits_fn, xm, y, margin_loss)
        z = batch_outputs(model, xm)
    n = xm.shape[0]
    zero = torch.zeros(n, device=xm.device)
    ce_n = g_ce.flatten(1).norm(dim=1) if g_ce is not None else zero
    m_n = g_m.flatten(1).norm(dim=1) if g_m is not None else zero
    ok = torch.isfinite(ce_n) & torch.isfinite(m_n) & (m_n > 0)
    saturated = ok & (ce_n <= ratio * m_n)
    frac = float(saturated.float().mean())
    probs_like = bool((((z >= 0) & (z <= 1)).all(1) & ((z.sum(1) - 1).abs() <= 1e-5)).all())
    p = z if probs_like else z.softmax(1)
    conf = float((p.amax(1) >= 1 - 1e-6).float().mean())
    numbers = {"ce_grad_zero_margin_not_fraction": frac, "max_prob_ge_1-1e-6_fraction": conf,
               "margin_on": where, "ratio": ratio, "samples": n,
               "counts": {"saturated": [int(saturated.sum()), n]}}
    fired = frac > SATURATION_FRACTION
    return decided(
        "C5", "output saturation", fired, numbers,
        if_fired=lambda: (
            f"the CE input gradient is ≈ 0 (below {ratio:g} of the margin gradient on {where}) "
            f"for {pct(frac)} of the samples while the margin gradient is not: the output "
            "saturates, so attack the logits with a margin loss."),
        if_passed=lambda: (
            f"the CE gradient vanishes next to the margin gradient on {where} for {pct(frac)} "
            f"of the samples, within the {pct(SATURATION_FRACTION)} very confident healthy "
            f"models reach ({pct(conf)} of samples have max probability ≥ 1 − 1e-6)."))


# -- C6 -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _count_backward_calls() -> Iterator[list[int]]:
    """Count calls to ``torch.autograd.grad``/``backward``/``Tensor.backward`` in the block.

    The originals are restored on exit (also on error), so nothing outlives the block. A call
    made through a name imported before the block (``from torch.autograd import grad``) is not
    seen; AutoAttack's check_dynamic has the same blind spot.
    """
    calls = [0]
    saved = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return fn(*args, **kwargs)
        return wrapper

    torch.autograd.grad = counted(saved[0])  # type: ignore[assignment]
    torch.autograd.backward = counted(saved[1])  # type: ignore[assignment]
    torch.Tensor.backward = counted(saved[2])  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        torch.autograd.grad, torch.autograd.backward = saved[0], saved[1]
        torch.Tensor.backward = saved[2]  # type: ignore[method-assign]


def check_forward_optimization(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                               eps: float | None = None, norm: str = "linf") -> CheckResult:
    """C6: fires when one forward pass calls backward/grad (an optimization inside the model,
    e.g. input purification by gradient steps: attacks then differentiate through a solver)."""
    with probe(model, x, y) as xm, _count_backward_calls() as calls, torch.enable_grad():
        model(xm)
    fired = calls[0] > 0
    ev = (f"one forward pass made {calls[0]} backward/grad calls: the model optimizes inside "
          "its forward pass, so gradients through it are unreliable."
          if fired else "a forward pass makes no backward/grad calls.")
    return CheckResult("C6", "optimization inside forward", fired, {"backward_calls": calls[0]},
                       ev)


# -- C8 -----------------------------------------------------------------------------------------

def check_unstable_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                               eps: float | None = None, norm: str = "linf", draws: int = 25,
                               threshold: float = 0.3, seed: int = 0,
                               batch_size: int = 4096) -> CheckResult:
    """C8 (IoAF I2): ``draws`` uniform points in the ε/2-ball; per sample, the mean of
    |L(x) − L(x+δ)| / |L(x)| capped at 1; fires when its mean over samples exceeds
    ``threshold`` → EOT, smaller steps. The threshold is 0.3, not IoAF's 0.1: a healthy MNIST
    LeNet-5 at ε = 0.3 scores 0.14 and its JumpReLU retrofits 0.14–0.24 (random points at
    ±0.15 per pixel legitimately move the margin), so 0.1 flags sound models; the self-test's
    model with dropout left on at inference scores 0.48, and C1 catches it independently.

    L is the margin loss, not CE: CE is ≈ 0 on confidently correct points, where any relative
    change is huge without meaning anything.

    25 draws, not AUDIT.md's 100: the statistic is a mean over samples × draws (2500 of them on
    the audit's 100 samples), so it hardly moves (MNIST, ε = 0.3, 100 vs 25 draws: LeNet-5
    0.162 vs 0.160, an adversarially trained CNN 0.054 vs 0.051, dropout left on 0.738 vs
    0.748), and at 100 draws C8 was 1.0 of the 1.3 s audit of a LeNet-5 whose evaluation took
    0.9 s.
    """
    e = need_eps(eps, "C8") / 2
    check_norm(norm)
    with probe(model, x, y) as xm:
        gen = seeded_generator(seed, xm.device)
        l0 = margin_loss(batch_outputs(model, xm), y)
        n = xm.shape[0]
        rep = xm.repeat_interleave(draws, 0)
        pts = random_start(rep, e, norm, gen)
        yr = y.repeat_interleave(draws)
        l1 = margin_loss(batch_outputs(model, pts, batch_size), yr).view(n, draws)
    rel = ((l1 - l0[:, None]).abs() / l0.abs().clamp_min(1e-12)[:, None]).clamp(max=1.0)
    per_sample = rel.mean(1)
    score = float(per_sample.mean())
    over = float((per_sample > threshold).float().mean())
    fired = score > threshold
    numbers = {"mean_rel_loss_change": score, "samples_over_threshold": over, "draws": draws}
    return decided(
        "C8", "unstable predictions", fired, numbers,
        if_fired=lambda: (
            f"random points within ε/2 change the margin loss by {pct(score)} on average "
            f"(relative, capped at 1): the loss surface is noisy; use EOT and smaller steps."),
        if_passed=lambda: (
            f"random points within ε/2 change the margin loss by {pct(score)} on average."))


# -- C23, ties ------------------------------------------------------------------------------------

def check_few_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      eps: float | None = None, norm: str = "linf") -> CheckResult:
    """C23: 2 classes → no DLR and no targeted attacks; 3 → no targeted DLR (information)."""
    with probe(model, x[:1], y[:1]) as xm:
        k = int(batch_outputs(model, xm).shape[1])
    fired = k <= 3
    if k == 2:
        ev = "2 classes: DLR and targeted attacks are undefined; use CE and margin losses."
    elif k == 3:
        ev = "3 classes: targeted DLR is undefined (it needs 4 classes)."
    else:
        ev = f"{k} classes: every attack loss applies."
    return CheckResult("C23", "few classes", fired, {"num_classes": k}, ev, kind="info")


def check_ties(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               eps: float | None = None, norm: str = "linf") -> CheckResult:
    """Tied top outputs: the fraction of samples whose largest output occurs more than once
    (float saturation); a tied prediction counts as not correct."""
    with probe(model, x, y) as xm:
        z = batch_outputs(model, xm)
    tied = top_ties(z)
    rate = float(tied.float().mean())
    acc_argmax = float((z.argmax(1) == y.to(z.device)).float().mean())
    acc = float(correct_untied(z, y.to(z.device)).float().mean())
    numbers = {"tie_rate": rate, "clean_accuracy": acc, "clean_accuracy_argmax": acc_argmax}
    fired = rate > 0
    return decided(
        "ties", "tied top outputs", fired, numbers, kind="info",
        if_fired=lambda: (
            f"{pct(rate)} of the samples have tied top outputs (float saturation): argmax "
            f"breaks ties by index; counting a tie as not correct, clean accuracy is "
            f"{pct(acc)} (argmax alone: {pct(acc_argmax)})."),
        if_passed=lambda: (
            "no sample has tied top outputs."))


#: The model-level checks :func:`robustact.evaluate.audit.run_audit` runs, in order (C12, C17
#: and C21 need extra inputs and are called separately).
MODEL_CHECKS: tuple[Callable[..., CheckResult], ...] = (
    check_randomness, check_probabilities, check_broken_graph, check_zero_gradients,
    check_saturation, check_forward_optimization, check_gradient_mismatch,
    check_unstable_predictions, check_few_classes, check_ties,
)
