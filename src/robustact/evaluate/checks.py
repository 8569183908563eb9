"""Model-level diagnostics of the gradient-masking audit (AUDIT.md C1–C8, C12, C17, C21, C23, ties).

Each check is a function ``(model, x, y, *, eps, norm, ...) -> CheckResult``: it probes the model
itself (forward passes, input gradients, finite differences, random points), never the results
table (the table-level checks are in :mod:`robustact.evaluate.audit`). A check *fires* when it
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
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.attacks._utils import check_norm, normalize_direction, random_start
from robustact.attacks.base import Attack, prepared_model
from robustact.attacks.pgd import PGD
from robustact.core.validate import (
    check_images,
    check_labels,
    check_model_output,
    match_model_dtype,
    top_ties,
)
from robustact.losses.attack import ce_loss, dlr_loss, margin_loss

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


@dataclass
class CheckResult:
    """One check's outcome.

    ``kind`` says what firing means for the verdict: ``"diagnostic"`` (fires → masking suspected),
    ``"attack"`` (fires because an attack broke points the standard evaluation reported robust;
    with ``breaks_points`` beyond noise → masking confirmed), ``"info"`` (always reported, never
    changes the verdict: per-sample worst case, few classes, tie rate).
    """

    id: str
    name: str
    fired: bool | None
    numbers: dict[str, Any] = field(default_factory=dict)
    evidence: str = ""
    kind: str = "diagnostic"
    breaks_points: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "fired": self.fired, "kind": self.kind,
                "breaks_points": self.breaks_points, "numbers": dict(self.numbers),
                "evidence": self.evidence}


def _decided(cid: str, name: str, fired: bool, numbers: dict[str, Any], kind: str = "diagnostic",
             *, if_fired: Callable[[], str], if_passed: Callable[[], str]) -> CheckResult:
    """A check's result with the evidence sentence for its outcome; each sentence is built only
    when it applies (a fired sentence may quote numbers that exist only then)."""
    return CheckResult(cid, name, fired, numbers, if_fired() if fired else if_passed(), kind=kind)


def noise_floor(n: int) -> float:
    """AUDIT.md's noise floor: max(1 sample, 0.5 pp) of the ``n`` evaluated points."""
    return max(1.0, 0.005 * n)


def beyond_noise(count: int, n: int) -> bool:
    """AUDIT.md's noise rule: more than :func:`noise_floor` of the ``n`` evaluated points."""
    return count > noise_floor(n)


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def correct_untied(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: the prediction is right AND the top output is not tied.

    Why a tie is not correct: ``argmax`` breaks ties by index, so a tied "correct" prediction is
    an accident of class order, not a decision of the model.
    """
    return (outputs.argmax(1) == y) & ~top_ties(outputs)


# -- shared machinery ---------------------------------------------------------------------------

def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    check_images(x, ndim=None)
    check_labels(y, x.shape[0])
    return match_model_dtype(model, x)


def _need_eps(eps: float | None, what: str) -> float:
    if eps is None or isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps > 0):
        raise ValueError(f"{what} needs a finite budget eps > 0, got {eps!r}")
    return float(eps)


def _gen(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _outputs(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             batch_size: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([check_model_output(model(c)) for c in x.split(batch_size)])


def _losses(num_classes: int) -> dict[str, Callable[..., torch.Tensor]]:
    """The attack losses the gradient checks probe: CE, margin, and DLR where it is defined."""
    out: dict[str, Callable[..., torch.Tensor]] = {"ce": ce_loss, "margin": margin_loss}
    if num_classes >= 3:
        out["dlr"] = dlr_loss
    return out


def _input_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                loss: Callable[..., torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
    """Per-sample input gradient of ``loss(fn(x), y)`` (samples are independent, so the gradient
    of the sum is each sample's own); ``(None, why)`` when none reaches x."""
    xr = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            z = check_model_output(fn(xr))
            if not z.requires_grad:
                return None, "the output does not depend on x through autograd"
            (g,) = torch.autograd.grad(loss(z, y).sum(), xr, allow_unused=True)
    except RuntimeError as e:
        return None, f"backward raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if g is None:
        return None, "no gradient reaches x"
    return g, None


def _pre_activation(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The model's pre-activation logits if it exposes them (``logits(x)``), else its output."""
    fn = getattr(model, "logits", None)
    if callable(fn):
        return fn, "the pre-activation logits"
    return model, "the outputs (no pre-activation logits exposed)"


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """CUDA convolutions and matrix products in true float32 (no TF32) inside the block.

    Why: PyTorch runs cuDNN convolutions in TF32 (a 10-bit mantissa) by default on Ampere and
    later GPUs. C7 compares autograd with finite differences at steps of ε/100, far below that
    resolution, so TF32 rounding looks like the loss jumping: on an H200, C7 fired on 30 % of a
    sound fast-AT ResNet-20's CIFAR-10 points that pass it on a CPU (1 % raw disagreement, no
    jump). Restores the caller's settings; a no-op on a CPU.
    """
    parts = [getattr(getattr(torch.backends, mod, None), attr, None)
             for mod, attr in (("cudnn", "conv"), ("cuda", "matmul"))]
    parts = [p for p in parts if p is not None and hasattr(p, "fp32_precision")]
    saved = [p.fp32_precision for p in parts]
    try:
        for p in parts:
            p.fp32_precision = "ieee"
        yield
    finally:
        for p, v in zip(parts, saved, strict=True):
            p.fp32_precision = v


@contextlib.contextmanager
def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
    """Validated, dtype-matched inputs inside :func:`prepared_model` (eval, no param grads), in
    true float32 (:func:`full_fp32`): the checks compare numbers at scales TF32 blurs."""
    xm = _check_inputs(model, x, y)
    with prepared_model(model), full_fp32():
        yield xm


# -- C1 -----------------------------------------------------------------------------------------

def check_randomness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     eps: float | None = None, norm: str = "linf", passes: int = 5,
                     tol: float = 1e-4) -> CheckResult:
    """C1: ``passes`` forward passes of one batch; fires if predictions or normalized outputs
    (each row divided by its largest magnitude) change by more than ``tol`` → use EOT."""
    with _probe(model, x, y) as xm:
        outs = [_outputs(model, xm) for _ in range(passes)]
    ref = outs[0]
    scale = ref.abs().amax(1, keepdim=True).clamp_min(1e-12)
    diffs = torch.stack([((o - ref) / scale).abs().amax(1) for o in outs[1:]])
    preds_changed = torch.stack([o.argmax(1) != ref.argmax(1) for o in outs[1:]]).any(0)
    max_diff = float(diffs.max()) if diffs.numel() else 0.0
    changed = float(preds_changed.float().mean())
    fired = bool(changed > 0 or max_diff > tol)
    numbers = {"passes": passes, "pred_changed_fraction": changed, "max_rel_output_diff": max_diff}
    return _decided(
        "C1", "randomness", fired, numbers,
        if_fired=lambda: (
            f"{passes} forward passes of the same batch disagree: predictions change on "
            f"{_pct(changed)} of the samples and outputs by up to {max_diff:.3g} (relative); "
            "the model is randomized, so attack it with EOT."),
        if_passed=lambda: (
            f"{passes} forward passes of the same batch agree (max relative difference "
            f"{max_diff:.2g})."))


# -- C2 -----------------------------------------------------------------------------------------

def check_probabilities(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        eps: float | None = None, norm: str = "linf",
                        tol: float = 1e-5) -> CheckResult:
    """C2: fires when every output row lies in [0, 1] and sums to 1 (±``tol``): the model
    returns probabilities, and losses computed on them saturate."""
    with _probe(model, x, y) as xm:
        z = _outputs(model, xm)
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
        ev = (f"outputs are not probabilities ({_pct(prob_rows)} of rows sum to 1 within "
              f"[0, 1]; {_pct(bounded)} of rows lie in [0, 1]).")
    return CheckResult("C2", "probabilities, not logits", fired, numbers, ev)


# -- C3 -----------------------------------------------------------------------------------------

def check_broken_graph(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       eps: float | None = None, norm: str = "linf") -> CheckResult:
    """C3: backward of the CE loss to the input; fires on an exception or when no gradient
    reaches x (a detach, a non-differentiable comparison, a numpy round trip)."""
    with _probe(model, x, y) as xm:
        g, why = _input_grad(model, xm, y, ce_loss)
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


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         eps: float | None = None, norm: str = "linf",
                         seed: int = 0) -> CheckResult:
    """C4: per-sample input gradient of CE, margin (and DLR with ≥ 3 classes), at x and (given
    ``eps``) at a random start in the ε-ball; fires when any sample's gradient is all zero or
    not finite.

    Only points the model does not already misclassify count (a tied top output still counts):
    an attack has nothing to do at a misclassified point, and there DLR can be constant by
    construction, not by any fault of the model (label ranked third: numerator and denominator
    are both z_π1 − z_y, so DLR ≡ 1 and its gradient is zero). Counting those made C4 fire on a
    sound fast-AT ResNet-20 (5 of the first 100 CIFAR-10 test points, all misclassified).
    """
    check_norm(norm)
    numbers: dict[str, Any] = {}
    worst_name, worst = "", 0.0
    with _probe(model, x, y) as xm:
        k = _outputs(model, xm[:1]).shape[1]
        starts = {"x": xm}
        if eps is not None:
            starts["random start"] = random_start(xm, _need_eps(eps, "C4"), norm,
                                                  _gen(seed, xm.device))
        for where, pts in starts.items():
            out = _outputs(model, pts)
            live = ~((out.argmax(1) != y) & ~top_ties(out))
            numbers[f"probed[{where}]"] = int(live.sum())
            if not live.any():
                continue
            for lname, loss in _losses(k).items():
                g, _ = _input_grad(model, pts, y, loss)
                frac = float(_bad_rows(g, pts.shape[0], pts.device)[live].float().mean())
                key = f"{lname.upper()} input gradient at {where}"
                numbers[f"zero_or_nonfinite[{lname} at {where}]"] = frac
                if frac > worst:
                    worst_name, worst = key, frac
    numbers["max_fraction"] = worst
    fired = worst > 0
    return _decided(
        "C4", "zero / NaN / Inf gradients", fired, numbers,
        if_fired=lambda: (
            f"the {worst_name} is exactly zero or not finite for "
            f"{_pct(worst)} of the samples not already misclassified: gradient attacks get "
            "no signal there."),
        if_passed=lambda: (
            "input gradients (CE, margin" + (", DLR" if k >= 3 else "") +
            ") are non-zero and finite for every sample not already misclassified" +
            (" at x and at a random start." if eps is not None else " at x.")))


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
        logits_fn, where = _pre_activation(model)
    else:
        where = "the given logits"
    with _probe(model, x, y) as xm:
        g_ce, _ = _input_grad(model, xm, y, ce_loss)
        g_m, _ = _input_grad(logits_fn, xm, y, margin_loss)
        z = _outputs(model, xm)
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
               "margin_on": where, "ratio": ratio}
    fired = frac > 0
    return _decided(
        "C5", "output saturation", fired, numbers,
        if_fired=lambda: (
            f"the CE input gradient is ≈ 0 (below {ratio:g} of the margin gradient on {where}) "
            f"for {_pct(frac)} of the samples while the margin gradient is not: the output "
            "saturates, so attack the logits with a margin loss."),
        if_passed=lambda: (
            f"the CE gradient is not vanishing next to the margin gradient on {where} "
            f"({_pct(conf)} of samples have max probability ≥ 1 − 1e-6)."))


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
    with _probe(model, x, y) as xm, _count_backward_calls() as calls, torch.enable_grad():
        model(xm)
    fired = calls[0] > 0
    ev = (f"one forward pass made {calls[0]} backward/grad calls: the model optimizes inside "
          "its forward pass, so gradients through it are unreliable."
          if fired else "a forward pass makes no backward/grad calls.")
    return CheckResult("C6", "optimization inside forward", fired, {"backward_calls": calls[0]},
                       ev)


# -- C7 -----------------------------------------------------------------------------------------

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


def check_gradient_mismatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                            eps: float | None = None, norm: str = "linf", directions: int = 4,
                            step: float | None = None, rel_tol: float = 0.5,
                            max_fraction: float = 0.1, seed: int = 0,
                            bisections: int = 12) -> CheckResult:
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
    sample counts when half its directions do; the check fires when more than
    ``max_fraction`` of the samples count: the gradient does not describe the function
    (jumps, quantization) → BPDA. A gradient that is wrong where the function is smooth (a
    killed or detached path) is C3/C4's and the gradient-free attacks' to find.
    """
    h = float(step) if step is not None else (_need_eps(eps, "C7") / 100 if eps else 0.003)
    with _probe(model, x, y) as xm:
        g, why = _input_grad(model, xm, y, margin_loss)
        if g is None:
            return CheckResult("C7", "gradient vs function mismatch", None, {},
                               f"not applicable: {why}.")
        gen = _gen(seed, xm.device)
        bad = torch.zeros(xm.shape[0], device=xm.device)
        raw = torch.zeros(xm.shape[0], device=xm.device)
        rels, jumps = [], 0

        def loss_at(t: torch.Tensor, d: torch.Tensor, rows: Any = slice(None)) -> torch.Tensor:
            """The margin loss at x + t·h·d for ``rows`` of the batch (t per row, in [-1, 1])."""
            return margin_loss(model(xm[rows] + (t * h).view(-1, *[1] * (xm.ndim - 1)) * d),
                               y[rows])

        for _ in range(directions):
            d = torch.randint(0, 2, xm.shape, generator=gen, device=xm.device).to(xm.dtype) * 2 - 1
            # Keep both probes inside [0, 1]: drop coordinates where x ± h would leave the box.
            d = torch.where((xm + h > 1) | (xm - h < 0), torch.zeros_like(d), d)
            ad = (g * d).flatten(1).sum(1)
            with torch.no_grad():
                one = torch.ones(xm.shape[0], device=xm.device, dtype=xm.dtype)
                lp, lm = loss_at(one, d), loss_at(-one, d)
                fd = (lp - lm) / (2 * h)
                scale = torch.maximum(torch.maximum(ad.abs(), fd.abs()),
                                      torch.full_like(ad, 1e-3))
                rel = (ad - fd).abs() / scale
                off = rel > rel_tol
                # Only the disagreeing rows: an agreeing direction counts either way.
                rows = off.nonzero().flatten()
                jump = torch.zeros_like(off)
                if rows.numel():
                    jump[rows] = _jumps(lambda t, r=rows, dr=d[rows]: loss_at(t, dr, r),
                                        lm[rows], lp[rows], bisections)
            rels.append(rel)
            raw += off.float()
            jumps += int((off & jump).sum())
            bad += (off & jump).float()
    mism = bad >= directions / 2
    frac = float(mism.float().mean())
    raw_frac = float((raw >= directions / 2).float().mean())
    med = float(torch.stack(rels).median())
    fired = frac > max_fraction
    numbers = {"mismatch_fraction": frac, "raw_mismatch_fraction": raw_frac,
               "median_rel_error": med, "fd_step": h, "directions": directions,
               "jump_directions": jumps}
    return _decided(
        "C7", "gradient vs function mismatch", fired, numbers,
        if_fired=lambda: (
            f"autograd and finite differences (step {h:.3g}) disagree on {_pct(raw_frac)} of "
            f"the samples (median relative error {med:.2g}), and the loss jumps there on "
            f"{_pct(frac)} ({jumps} directions): the gradient does not describe the function "
            "(jumps or quantization); use BPDA."),
        if_passed=lambda: (
            f"{_pct(raw_frac)} of the samples disagree with finite differences at step {h:.3g} "
            f"(median relative error {med:.2g}), but the loss jumps on only {_pct(frac)}: "
            "kinks of a continuous (piecewise-linear) function explain the rest."
            if raw_frac > max_fraction else
            f"autograd agrees with finite differences (median relative error {med:.2g}; "
            f"{_pct(raw_frac)} of samples disagree at step {h:.3g})."))


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
    e = _need_eps(eps, "C8") / 2
    check_norm(norm)
    with _probe(model, x, y) as xm:
        gen = _gen(seed, xm.device)
        l0 = margin_loss(_outputs(model, xm), y)
        n = xm.shape[0]
        rep = xm.repeat_interleave(draws, 0)
        pts = random_start(rep, e, norm, gen)
        yr = y.repeat_interleave(draws)
        l1 = margin_loss(_outputs(model, pts, batch_size), yr).view(n, draws)
    rel = ((l1 - l0[:, None]).abs() / l0.abs().clamp_min(1e-12)[:, None]).clamp(max=1.0)
    per_sample = rel.mean(1)
    score = float(per_sample.mean())
    over = float((per_sample > threshold).float().mean())
    fired = score > threshold
    numbers = {"mean_rel_loss_change": score, "samples_over_threshold": over, "draws": draws}
    return _decided(
        "C8", "unstable predictions", fired, numbers,
        if_fired=lambda: (
            f"random points within ε/2 change the margin loss by {_pct(score)} on average "
            f"(relative, capped at 1): the loss surface is noisy; use EOT and smaller steps."),
        if_passed=lambda: (
            f"random points within ε/2 change the margin loss by {_pct(score)} on average."))


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
    with _probe(model, x, y) as xm:
        if x_adv is None:
            x_adv = PGD(_need_eps(eps, "C12"), steps=steps, norm=norm, seed=seed)(
                surrogate, xm, y).x_adv
        with prepared_model(surrogate):
            s_ok = _outputs(surrogate, x_adv).argmax(1) != y
        m_ok = _outputs(model, x_adv).argmax(1) != y
    mismatch = int((s_ok & ~m_ok).sum())
    n = xm.shape[0]
    fired = beyond_noise(mismatch, n)
    numbers = {"surrogate_success": float(s_ok.float().mean()),
               "model_success": float(m_ok.float().mean()), "mismatch": mismatch, "n": n}
    ev = (f"{mismatch} of {n} adversarials fool the surrogate but not the model "
          f"(surrogate success {_pct(numbers['surrogate_success'])}, model "
          f"{_pct(numbers['model_success'])})" +
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
    e = _need_eps(eps, "C17")
    check_norm(norm)
    n = min(x.shape[0], max_samples)
    with _probe(model, x[:n], y[:n]) as xm:
        yy = y[:n]
        gen = _gen(seed, xm.device)
        correct = correct_untied(_outputs(model, xm), yy)
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
            wrong = ~correct_untied(_outputs(model, pts, batch_size),
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
    numbers["extra_broken"] = extra
    fired = beyond_noise(extra, n)
    n_robust = int((robust[:n].to(correct.device) & correct).sum())
    numbers["reported_robust"] = n_robust
    ev = (f"{points} random points per sample in the ε-ball broke {extra} of the {n_robust} "
          f"samples (of the first {n}) that the evaluation reported robust" +
          (": the gradients mislead the attacks." if fired else "."))
    return CheckResult("C17", "random search", fired, numbers, ev, kind="attack",
                       breaks_points=fired)


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
    e = _need_eps(eps, "C21")
    check_norm(norm)
    if not callable(getattr(model, "features", None)):
        return CheckResult("C21", "binarization test", None, {},
                           "not applicable: the model has no features(x) for the readout.")
    attack = attack if attack is not None else PGD(e, steps=20, norm=norm, seed=seed)
    n = min(x.shape[0], max_samples)
    fitted, succeeded = 0, 0
    with _probe(model, x[:n], y[:n]) as xm:
        gen = _gen(seed, xm.device)
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
    numbers = {"samples": n, "readout_fits": fitted, "attack_success": succeeded,
               "inner_points": inner}
    if fitted == 0:
        return CheckResult("C21", "binarization test", None, numbers,
                           f"not applicable: the linear readout could not separate the boundary "
                           f"point from the inner points on any of {n} samples.")
    rate = succeeded / fitted
    numbers["success_rate"] = rate
    fired = rate < min_success
    ev = (f"on the binarized task (a reachable target in the ε-ball by construction) the attack "
          f"succeeded on {succeeded} of {fitted} samples ({_pct(rate)})" +
          (": the attack is too weak for this model." if fired else "."))
    return CheckResult("C21", "binarization test", fired, numbers, ev)


# -- C23, ties ------------------------------------------------------------------------------------

def check_few_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      eps: float | None = None, norm: str = "linf") -> CheckResult:
    """C23: 2 classes → no DLR and no targeted attacks; 3 → no targeted DLR (information)."""
    with _probe(model, x[:1], y[:1]) as xm:
        k = int(_outputs(model, xm).shape[1])
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
    with _probe(model, x, y) as xm:
        z = _outputs(model, xm)
    tied = top_ties(z)
    rate = float(tied.float().mean())
    acc_argmax = float((z.argmax(1) == y.to(z.device)).float().mean())
    acc = float(correct_untied(z, y.to(z.device)).float().mean())
    numbers = {"tie_rate": rate, "clean_accuracy": acc, "clean_accuracy_argmax": acc_argmax}
    fired = rate > 0
    return _decided(
        "ties", "tied top outputs", fired, numbers, kind="info",
        if_fired=lambda: (
            f"{_pct(rate)} of the samples have tied top outputs (float saturation): argmax "
            f"breaks ties by index; counting a tie as not correct, clean accuracy is "
            f"{_pct(acc)} (argmax alone: {_pct(acc_argmax)})."),
        if_passed=lambda: (
            "no sample has tied top outputs."))


#: The model-level checks :func:`robustact.evaluate.audit.run_audit` runs, in order (C12, C17
#: and C21 need extra inputs and are called separately).
MODEL_CHECKS: tuple[Callable[..., CheckResult], ...] = (
    check_randomness, check_probabilities, check_broken_graph, check_zero_gradients,
    check_saturation, check_forward_optimization, check_gradient_mismatch,
    check_unstable_predictions, check_few_classes, check_ties,
)
