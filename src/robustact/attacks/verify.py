"""Independent re-checks of attack results, and worst-case robust accuracy over attacks.

Why: an attack's own success flag is computed by the same code that produced the example; a bug
in projection, clipping or in the wrapper the attack ran against (BPDA, ``logits_from``) would
show up as an inflated success rate or an out-of-budget "adversarial" example. :func:`verify`
recomputes everything from (model, x, y, x_adv) alone: the prediction on x_adv (eval mode, no
gradients), the [0, 1] box and the budget, and reports where it disagrees with the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from robustact.attacks._utils import check_eps, check_norm
from robustact.attacks.base import Attack, AttackResult, lp_norms
from robustact.core.validate import (
    check_eval_mode,
    check_images,
    check_labels,
    check_logits,
    check_model_output,
    match_model_dtype,
)

__all__ = ["VerifiedResult", "WorstCaseResult", "verify", "robust_accuracy", "judged_input"]


def judged_input(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x_adv`` as a prediction is judged on it: non-finite entries taken from the clean ``x``,
    the rest clamped to [0, 1]. One rule for the engine, ``verify`` and ``export``, so a
    re-check sees exactly the input the reported break was decided on."""
    return torch.where(torch.isfinite(x_adv), x_adv, x).clamp(0.0, 1.0)


@dataclass
class VerifiedResult:
    """Per-sample re-check of an attack's output (all tensors (N,) on the inputs' device)."""

    success: torch.Tensor  # adversarial AND in budget AND in box
    adversarial: torch.Tensor  # prediction on x_adv is wrong (untargeted) / the target
    in_budget: torch.Tensor  # ‖x_adv − x‖ ≤ eps + tol (all True when eps is None)
    in_box: torch.Tensor  # x_adv ∈ [0, 1] (within tol) and finite
    clean_correct: torch.Tensor  # prediction on x equals y
    norms: torch.Tensor  # ‖x_adv − x‖ in ``norm``
    norm: str
    eps: float | None
    mismatch: int  # samples where the attack's claimed success differs from ``success``
    claimed: torch.Tensor | None = None  # the attack's own success flags, when given

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples classified correctly clean and not successfully attacked."""
        return float((self.clean_correct & ~self.success).float().mean())


@dataclass
class WorstCaseResult:
    """Worst case over several attacks, per sample."""

    robust: torch.Tensor  # (N,) correct clean and no attack succeeded (verified)
    clean_correct: torch.Tensor
    broken_by: list[str | None]  # the first attack that broke each sample (None: robust/wrong)
    success_rate: dict[str, float] = field(default_factory=dict)  # per attack, on its inputs
    mismatches: dict[str, int] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    x = match_model_dtype(model, x)
    with torch.no_grad():
        if batch_size is None or x.shape[0] <= batch_size:
            z = model(x)
        else:
            z = torch.cat([check_model_output(model(x[i:i + batch_size]))
                           for i in range(0, x.shape[0], batch_size)])
    check_logits(z, x.shape[0], name="model output")
    return z.argmax(1)


def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           result_or_x_adv: AttackResult | torch.Tensor, eps: float | None = None,
           norm: str | None = None, target: torch.Tensor | None = None, tol: float = 1e-6,
           batch_size: int | None = None) -> VerifiedResult:
    """Re-check an attack's output on the real ``model``.

    Args:
        model: the model to judge on; must be in eval mode (it is not switched).
        x, y: clean inputs in [0, 1] and labels.
        result_or_x_adv: an :class:`AttackResult` (its ``success`` is compared) or a tensor.
        eps: budget; None: taken from ``result.info["eps"]`` when present, else not checked.
        norm: "linf", "l2", "l1" or "l0"; None: the result's norm, else "linf".
        target: target labels for a targeted attack (success = prediction equals target).
        tol: slack for floating-point rounding in the budget and box checks.
    """
    check_eval_mode(model, "verifying an attack")
    check_images(x)
    check_labels(y, x.shape[0])
    if target is not None:
        check_labels(target, x.shape[0], name="target")
    claimed = None
    if isinstance(result_or_x_adv, AttackResult):
        x_adv = result_or_x_adv.x_adv
        claimed = result_or_x_adv.success
        norm = norm or result_or_x_adv.norm
        if eps is None:
            eps = result_or_x_adv.info.get("eps")
    elif isinstance(result_or_x_adv, torch.Tensor):
        x_adv = result_or_x_adv
    else:
        raise TypeError("result_or_x_adv must be an AttackResult or a tensor, "
                        f"got {type(result_or_x_adv).__name__}")
    norm = check_norm(norm or "linf", ("linf", "l2", "l1", "l0"))
    eps = None if eps is None else check_eps(eps)
    tol = check_eps(tol, "tol")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}")
    x_adv = x_adv.detach().to(x.dtype)

    flat = x_adv.flatten(1)
    in_box = (torch.isfinite(flat).all(1) & (flat >= -tol).all(1) & (flat <= 1 + tol).all(1))
    norms = lp_norms(x_adv - x, norm)
    in_budget = torch.ones_like(in_box) if eps is None else norms <= eps + tol
    # Judge on the box-clamped point only if it is finite: NaN must never count as a success.
    x_eval = torch.where(torch.isfinite(x_adv), x_adv, x).clamp(0.0, 1.0)
    pred_adv = _predict(model, x_eval, batch_size)
    pred_clean = _predict(model, x, batch_size)
    adversarial = pred_adv == target if target is not None else pred_adv != y
    success = adversarial & in_budget & in_box
    mismatch = 0 if claimed is None else int((claimed.to(success.device) != success).sum())
    return VerifiedResult(success=success, adversarial=adversarial, in_budget=in_budget,
                          in_box=in_box, clean_correct=pred_clean == y, norms=norms, norm=norm,
                          eps=eps, mismatch=mismatch, claimed=claimed)


def _attack_name(attack: Attack, i: int) -> str:
    return f"{i}:{getattr(attack, 'name', type(attack).__name__)}"


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attacks: Sequence[Attack], *, tol: float = 1e-6,
                    only_unbroken: bool = True,
                    batch_size: int | None = None) -> WorstCaseResult:
    """Worst-case robust accuracy: robust = correct clean and broken by none of ``attacks``.

    Every attack's output is re-verified with :func:`verify` (using the attack's ``eps`` and
    ``norm``); a claimed success that does not verify does not count, and is reported in
    ``mismatches``. With ``only_unbroken`` (default), each attack runs only on samples that
    are still robust, as AutoAttack does; the worst case is the same and it is cheaper.
    """
    check_eval_mode(model, "evaluating robust accuracy")
    check_images(x)
    check_labels(y, x.shape[0])
    if not attacks:
        raise ValueError("robust_accuracy needs at least one attack")
    robust = _predict(model, x, batch_size) == y
    clean_correct = robust.clone()
    broken_by: list[str | None] = [None] * x.shape[0]
    rates: dict[str, float] = {}
    mismatches: dict[str, int] = {}
    for i, attack in enumerate(attacks):
        if not isinstance(attack, Attack):
            raise TypeError(f"attacks[{i}] is not a robustact Attack: {type(attack).__name__}")
        name = _attack_name(attack, i)
        idx = robust.nonzero().squeeze(1) if only_unbroken else torch.arange(
            x.shape[0], device=x.device)
        if idx.numel() == 0:
            rates[name], mismatches[name] = 0.0, 0
            continue
        res = attack(model, x[idx], y[idx])
        eps = getattr(attack, "eps", None)
        v = verify(model, x[idx], y[idx], res, eps=eps, norm=attack.norm, tol=tol,
                   batch_size=batch_size)
        rates[name], mismatches[name] = v.success_rate, v.mismatch
        hit = idx[v.success]
        for j in hit.tolist():
            if robust[j]:
                broken_by[j] = name
        robust[hit] = False
    return WorstCaseResult(robust=robust, clean_correct=clean_correct, broken_by=broken_by,
                           success_rate=rates, mismatches=mismatches)
