"""What every audit check shares: its result, the noise rule, and how it probes a model.

Why a module of its own: the model-level diagnostics (:mod:`robustact.evaluate.checks`), the
checks that run a search of their own (:mod:`robustact.evaluate.attack_checks`) and the
table-level checks (:mod:`robustact.evaluate.audit`) all report a :class:`CheckResult` and judge
counts by one noise rule, and every check that runs the model goes through :func:`probe`
(validated, dtype-matched inputs; eval mode and no parameter gradients; true float32), so no two
checks can differ in how they run it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import prepared_model
from robustact.core.budget import check_budget
from robustact.core.validate import (
    check_images,
    check_labels,
    check_model_output,
    match_model_dtype,
)
from robustact.losses.attack import ce_loss, dlr_loss, margin_loss
from robustact.models.predict import correct_untied

__all__ = [
    "CheckResult",
    "binomial_tail",
    "gap_test",
    "beyond_noise",
    "noise_floor",
    "correct_untied",
    "full_fp32",
    "probe",
]


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


def decided(cid: str, name: str, fired: bool, numbers: dict[str, Any], kind: str = "diagnostic",
            *, if_fired: Callable[[], str], if_passed: Callable[[], str]) -> CheckResult:
    """A check's result with the evidence sentence for its outcome; each sentence is built only
    when it applies (a fired sentence may quote numbers that exist only then)."""
    return CheckResult(cid, name, fired, numbers, if_fired() if fired else if_passed(), kind=kind)


#: The share of the points the standard attacks leave robust that another *sound* attack
#: (FGSM, Square, APGD-DLR, random search, more restarts, a label-only attack) breaks on models
#: with no masking mechanism: the healthy disagreement a gap is tested against
#: (:func:`gap_test`). Chosen on the calibration part of the audit's zoo (docs/evaluation.md,
#: results/calibration).
HEALTHY_GAP_RATE = 0.05
#: A defense-specific adaptive attack (C20) or transfer from the undefended twin (C18) has no
#: healthy counterpart to disagree with: any systematic excess is the defense at work.
ADAPTIVE_GAP_RATE = 0.01
#: C4 fires when a margin/DLR input gradient is exactly zero (or not finite) on at least this
#: share of the probed samples (and on 2 of them): a statistically clear count, not one sample.
ZERO_GRADIENT_FRACTION = 0.02
#: C5 fires when the CE gradient vanishes next to the margin's on more than this share of the
#: samples: a healthy, very confident model saturates a few points (calibration zoo), a
#: saturated output activation or a huge logit scale nearly all of them.
SATURATION_FRACTION = 0.1
#: The one-sided p-value below which a gap is more than healthy disagreement.
GAP_ALPHA = 1e-3
#: C7 and C4's vanishing gradients: the share of samples on which a healthy (continuous,
#: exactly differentiated, piecewise-linear) network shows the mechanism: a jump of the loss, a
#: gradient wrong where the loss is smooth, a gradient vanishing on most input coordinates. The
#: calibration split of the zoo had none in 2100 samples (21 healthy cells × 100); 3/2100 ≈
#: 0.14 % is the 95 % upper bound of that rate (rule of three), rounded up to 0.2 %. A check
#: fires on a count beyond it (:func:`gap_test` at this rate), not on a fixed share: a JumpReLU
#: retrofit at a small ε jumps on a few percent of the samples, no accident of a healthy net.
HEALTHY_MECHANISM_RATE = 0.002
#: C4: an input-gradient coordinate *vanishes* when it is not zero but at most this fraction of
#: the sample's largest one, and a sample counts when more than :data:`VANISHING_SHARE` of its
#: coordinates do. A piecewise-linear network's coordinates are sums of weight products, zero or
#: of ordinary size; a saturating input transform (a steep sigmoid, a soft threshold) multiplies
#: them by its derivative, ~1e-10 for pixels far from its centre. Measured (first 100 test
#: images, margin gradient at x): at most 1.6 % of any healthy zoo sample's coordinates, 61 % and
#: 86 % (medians) under sigmoid(50 (x − 0.5)).
VANISHING_RATIO = 1e-6
VANISHING_SHARE = 0.25


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), exactly (log-space terms: no overflow for large n)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
             + (n - i) * lq for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def gap_test(extra: int, candidates: int, rate: float = HEALTHY_GAP_RATE
             ) -> tuple[bool, float]:
    """Is ``extra`` breaks among ``candidates`` more than healthy disagreement at ``rate``?

    One-sided exact binomial test at :data:`GAP_ALPHA`, and never on one sample (at least 2
    extra breaks): the issue with the old noise floor (max(1 sample, 0.5 pp)) was that a sound
    attack finding 2 of 22 survivors of an undefended MLP read "masking confirmed". Returns
    (significant, p-value).
    """
    pv = binomial_tail(extra, candidates, rate)
    return extra >= 2 and pv < GAP_ALPHA, pv


def noise_floor(n: int) -> float:
    """AUDIT.md's noise floor: max(1 sample, 0.5 pp) of the ``n`` evaluated points."""
    return max(1.0, 0.005 * n)


def beyond_noise(count: int, n: int) -> bool:
    """AUDIT.md's noise rule: more than :func:`noise_floor` of the ``n`` evaluated points."""
    return count > noise_floor(n)


def pct(v: float) -> str:
    """A fraction as the per cent every evidence sentence quotes (one decimal)."""
    return f"{100 * v:.1f} %"


# -- probing machinery --------------------------------------------------------------------------

def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Validated images and labels, ``x`` in the model's dtype (any image rank: the checks also
    take flat inputs)."""
    check_images(x, ndim=None)
    check_labels(y, x.shape[0])
    return match_model_dtype(model, x)


def need_eps(eps: float | None, what: str) -> float:
    """``eps`` as a float, or a ValueError naming the check ``what`` that needs a budget (most
    checks take ``eps=None`` and only some of them need one)."""
    if eps is None:
        raise ValueError(f"{what} needs a budget eps (pixel units, e.g. 0.3 or 8/255)")
    # The norm is the caller's; run_audit has checked eps against it. Here: the one rule's
    # message for anything that is not a positive finite number.
    return check_budget(eps, "l2", name=f"{what}'s eps")


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A fresh generator per check: its draws depend on ``seed`` alone, never on global state
    or on which checks ran before."""
    return torch.Generator(device=device).manual_seed(seed)


def batch_outputs(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  batch_size: int = 1024) -> torch.Tensor:
    """The validated outputs of ``model`` on ``x`` in chunks (random-point checks send many
    thousand rows), without autograd."""
    with torch.no_grad():
        return torch.cat([check_model_output(model(c)) for c in x.split(batch_size)])


def attack_losses(num_classes: int) -> dict[str, Callable[..., torch.Tensor]]:
    """The attack losses the gradient checks probe: CE, margin, and DLR where it is defined."""
    out: dict[str, Callable[..., torch.Tensor]] = {"ce": ce_loss, "margin": margin_loss}
    if num_classes >= 3:
        out["dlr"] = dlr_loss
    return out


def input_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
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


def pre_activation(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
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
def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
    """Validated, dtype-matched inputs inside :func:`prepared_model` (eval, no param grads), in
    true float32 (:func:`full_fp32`): the checks compare numbers at scales TF32 blurs."""
    xm = check_inputs(model, x, y)
    with prepared_model(model), full_fp32():
        yield xm
