"""Norm-ball geometry shared by every attack: projection, box clipping, step directions, starts.

Why one module: the budget an attack promises (‖x_adv − x‖_p ≤ ε, x_adv ∈ [0, 1]) is only as
trustworthy as the code that enforces it. Keeping that code in one place, tested once, means
FGSM, PGD, APGD, DeepFool, C&W, trust-region and Square all agree on what "inside the budget"
means, including the corner cases (zero gradients, ε = 0, per-sample radii).

Conventions: perturbations and images are batches (N, ...); ``eps`` is a Python float or a
tensor of shape (N,) (a per-sample radius, used by minimum-norm searches); norms are the strings
``"linf"``, ``"l2"`` and, where it makes sense, ``"l1"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from robustact.core.budget import NORMS, check_norm
from robustact.core.budget import check_budget as _check_budget
from robustact.losses.attack import AttackLoss, dlr_loss, dlr_targeted_loss

__all__ = [
    "objective",
    "loss_and_grad",
    "check_norm",
    "check_eps",
    "check_budget",
    "check_positive",
    "check_int",
    "per_sample",
    "project",
    "clip_to_box",
    "normalize_direction",
    "random_start",
]

#: Norms whose projection and steepest-ascent direction are implemented here: the budget
#: norms of :mod:`robustact.core.budget`, whose ``check_norm`` is re-exported here.
BALL_NORMS = NORMS


def check_eps(eps: float, name: str = "eps") -> float:
    """A finite, non-negative number: step sizes, decays, tolerances (ε: :func:`check_budget`)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {eps}")
    return float(eps)


def check_budget(eps: float, norm: str) -> float:
    """An attack's budget ε for ``norm``: the one rule, :func:`robustact.core.budget.check_budget`.

    Attacks accept ε = 0 (a no-op that returns x: the engine's ε grid starts there). An L2 ε is
    not bounded by √d here: an attack is built before it sees data; the engine, which knows d,
    checks that bound before building its attacks.
    """
    return _check_budget(eps, norm, allow_zero=True)


def check_positive(value: float, name: str) -> float:
    """Step sizes, decays and radii that must be strictly positive and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def check_nonnegative(value: float, name: str) -> float:
    """Overshoots and confidence margins: finite and >= 0 (0 is the published default)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 <= value < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(value: int, name: str, minimum: int = 1) -> int:
    """Step and restart counts: integers >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """Broadcast a scalar or (N,) radius against a batch ``like`` (N, ...).

    Floats stay floats (cheapest for the common case); a tensor is reshaped to (N, 1, 1, ...).
    """
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return value.to(like)
        if value.shape != (like.shape[0],):
            raise ValueError(
                f"a per-sample radius must have shape ({like.shape[0]},), got {tuple(value.shape)}"
            )
        return value.to(like).view(-1, *([1] * (like.ndim - 1)))
    return float(value)


def _row_norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm, shaped (N, 1, 1, ...) for broadcasting."""
    flat = t.flatten(1)
    if norm == "linf":
        n = flat.abs().amax(1)
    elif norm == "l2":
        n = flat.norm(p=2, dim=1)
    elif norm == "l1":
        n = flat.abs().sum(1)
    else:
        raise ValueError(f"unknown norm {norm!r}; choose from ('linf', 'l2', 'l1')")
    return n.view(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` onto the ε-ball of ``norm`` (new tensor).

    L∞: clamp every coordinate to [−ε, ε]. L2: rescale rows whose norm exceeds ε to norm ε;
    rows already inside are returned unchanged (bit for bit), so projection is idempotent.
    """
    check_norm(norm)
    e = per_sample(eps, delta)
    if norm == "linf":
        if isinstance(e, float):
            return delta.clamp(-e, e)
        return torch.maximum(torch.minimum(delta, e), -e)
    n = _row_norms(delta, "l2")
    # factor = min(1, ε/‖δ‖); rows with ‖δ‖ ≤ ε (including δ = 0) keep factor exactly 1.
    factor = torch.where(n > e, e / n.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
    return delta * factor


def clip_to_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor | None,
                norm: str) -> torch.Tensor:
    """Bring ``x_adv`` back into the ε-ball around ``x`` and then into the [0, 1] box.

    Order matters and is safe: x ∈ [0, 1], so clamping x + δ to [0, 1] only shrinks |δ_i|
    coordinate-wise, which cannot increase any ℓp norm; the result is in both sets.
    ``eps=None`` means unbounded (box only), used by I-FGSM as in the JumpReLU paper.
    """
    if eps is None:
        return x_adv.clamp(0.0, 1.0)
    return (x + project(x_adv - x, eps, norm)).clamp_(0.0, 1.0)


def normalize_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` for a gradient ``g`` (per row).

    L∞: sign(g) (zero where g is zero). L2: g/‖g‖₂. L1: g/‖g‖₁ (MIM's gradient normalisation).
    A zero gradient row stays exactly zero instead of becoming NaN: a masked gradient must show
    up as "no progress", never as a poisoned iterate.
    """
    if norm == "linf":
        return g.sign()
    if norm not in ("l2", "l1"):
        raise ValueError(f"unknown norm {norm!r}; choose from ('linf', 'l2', 'l1')")
    n = _row_norms(g, norm)
    return g / torch.where(n > 0, n, torch.ones_like(n))


def random_start(x: torch.Tensor, eps: float | torch.Tensor, norm: str,
                 generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the ε-ball around ``x``, clamped to [0, 1].

    L∞: δ ~ U[−ε, ε]^d (Madry et al. 2018). L2: uniform in the ball: a Gaussian direction scaled
    to radius ε·u^(1/d), u ~ U[0, 1]. Draws come only from ``generator`` (never the global RNG),
    which must live on ``x``'s device.
    """
    check_norm(norm)
    e = per_sample(eps, x)
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2.0 * u - 1.0) * e
    else:
        d = x[0].numel()
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator,
                       device=x.device, dtype=x.dtype).pow(1.0 / d)
        delta = normalize_direction(g, "l2") * r * e
    return (x + delta).clamp_(0.0, 1.0)


def objective(loss_fn: AttackLoss, z: torch.Tensor, y: torch.Tensor,
              target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample quantity an attack maximises: ``loss_fn(z, y)`` or its targeted form.

    Why a helper: targeted DLR needs both the true label and the target, which the generic
    ``(z, labels, targeted)`` loss signature cannot carry; every attack routes through here so
    ``loss="dlr"`` works for targeted attacks too.
    """
    if target is None:
        return loss_fn(z, y, False)
    if loss_fn is dlr_loss:
        return dlr_targeted_loss(z, y, target)
    return loss_fn(z, target, True)


def loss_and_grad(
    view: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x_adv: torch.Tensor,
    loss_fn: AttackLoss,
    y: torch.Tensor,
    target: torch.Tensor | None,
    need_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward (+ input-gradient backward): ``(loss (N,), grad or None, logits (N, K))``.

    The gradient is ``d loss.sum() / d x_adv`` computed with ``torch.autograd.grad`` only, so no
    ``.grad`` field of anything is touched. Samples are independent in eval mode, so the sum's
    gradient row i is sample i's own gradient. Gradient mode is switched on locally, so an
    attack also works when called under ``torch.no_grad()``. If the loss does not depend on the
    input at all (a hard threshold cut the graph), the gradient is returned as zeros: masked
    gradients must surface as "no signal", not as a crash. Returned tensors are detached.
    """
    x_adv = x_adv.detach().requires_grad_(need_grad)
    with torch.set_grad_enabled(need_grad):
        loss_logits, logits = view(x_adv)
        loss = objective(loss_fn, loss_logits, y, target)
        if not need_grad:
            return loss.detach(), None, logits.detach()
        grad = None
        if hasattr(view, "backwards"):  # a LogitsView counts the sample-backwards it caused
            view.backwards += x_adv.shape[0]  # type: ignore[attr-defined]
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x_adv, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x_adv)
    return loss.detach(), grad, logits.detach()


# -- per-sample keyed randomness ------------------------------------------------------------------
# Why counter-based: an evaluation must give each sample the same random numbers whatever batch it
# sits in and whichever process runs it, so its rows can be sharded and merged bit for bit. A
# ``torch.Generator`` per call ties the draws to batch positions; a hash of (seed, sample key,
# stream, element index) does not, and is one vectorised pass on any device. The hash is the
# "lowbias32" integer mixer (Wellons), applied on int64 tensors masked to 32 bits.

_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit avalanche mix of the low 32 bits of an int64 tensor."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def keyed_bits(seed: int, keys: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(N, count) int64 tensor of uniform 32-bit integers, a function of (seed, key, stream, j).

    ``keys`` (N,) are the samples' identities (their index in the evaluated dataset); ``stream``
    separates independent uses (a restart, an iteration). Row i depends only on ``keys[i]``.
    """
    k = keys.to(torch.int64).view(-1, 1)
    base = _mix32(k ^ _mix32(torch.tensor(seed & _M32, device=k.device)
                             ^ _mix32(torch.tensor((stream * 0x9E3779B9 + 0x632BE5AB) & _M32,
                                                   device=k.device))))
    j = torch.arange(count, device=k.device, dtype=torch.int64).view(1, -1)
    return _mix32(base ^ _mix32(j * 0x27D4EB2F + 0x165667B1))


def keyed_uniform(seed: int, keys: torch.Tensor, stream: int, shape: tuple[int, ...],
                  dtype: torch.dtype) -> torch.Tensor:
    """U[0, 1) draws of shape (N, *shape) keyed per sample (24 bits of resolution)."""
    count = math.prod(shape)
    bits = keyed_bits(seed, keys, stream, count) >> 8
    return (bits.to(dtype) * (1.0 / 16777216.0)).view(keys.shape[0], *shape)


def keyed_normal(seed: int, keys: torch.Tensor, stream: int, shape: tuple[int, ...],
                 dtype: torch.dtype) -> torch.Tensor:
    """N(0, 1) draws keyed per sample (Box–Muller on two keyed uniform streams)."""
    u1 = keyed_uniform(seed, keys, 2 * stream + 1, shape, dtype)
    u2 = keyed_uniform(seed, keys, 2 * stream + 2, shape, dtype)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 − u1 ∈ (0, 1]: finite
    return r * torch.cos(2.0 * math.pi * u2)


def keyed_random_start(x: torch.Tensor, eps: float | torch.Tensor, norm: str, seed: int,
                       keys: torch.Tensor, stream: int) -> torch.Tensor:
    """:func:`random_start` with each sample's draw keyed by (seed, its key, ``stream``).

    Same distributions (L∞: uniform cube; L2: uniform ball), independent of batch composition.
    """
    check_norm(norm)
    e = per_sample(eps, x)
    shape = tuple(x.shape[1:])
    if norm == "linf":
        u = keyed_uniform(seed, keys, 2 * stream, shape, x.dtype).to(x.device)
        delta = (2.0 * u - 1.0) * e
    else:
        d = x[0].numel()
        g = keyed_normal(seed, keys, 2 * stream, shape, x.dtype).to(x.device)
        r = keyed_uniform(seed, keys, 2 * stream + 1, (1,) * (x.ndim - 1), x.dtype)
        delta = normalize_direction(g, "l2") * r.to(x.device).pow(1.0 / d) * e
    return (x + delta).clamp_(0.0, 1.0)


def trace_summary(trace: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample summary of a loss trace (T, N), NaN where a sample did not run that step.

    Returns ``loss_first`` (the loss at the start point), ``loss_best`` (highest loss) and
    ``stall`` (AUDIT C10, after the Indicators of Attack Failure's I4): the trace of the
    maximised loss, min-max normalised per sample, its running maximum, and the rise of that
    running maximum over the sample's last 10 steps. > 0.05 means the attack was still
    improving when it stopped. Samples with fewer than 2 steps get 0.
    """
    t = trace.shape[0]
    valid = ~torch.isnan(trace)
    length = valid.sum(0)
    first = trace[0]
    filled_lo = torch.where(valid, trace, torch.full_like(trace, math.inf))
    filled_hi = torch.where(valid, trace, torch.full_like(trace, -math.inf))
    lo, hi = filled_lo.amin(0), filled_hi.amax(0)
    span = hi - lo
    norm = torch.where(span > 0, (filled_hi - lo) / torch.where(span > 0, span, 1.0), 0.0)
    run = torch.cummax(torch.where(valid, norm, torch.zeros_like(norm)), 0).values
    last = (length - 1).clamp_min(0)
    back = (length - 11).clamp_min(0)
    cols = torch.arange(trace.shape[1], device=trace.device)
    stall = run[last, cols] - run[back, cols] if t else torch.zeros_like(first)
    stall = torch.where(length >= 2, stall, torch.zeros_like(stall))
    return {"loss_first": first, "loss_best": hi, "stall": stall}


def compose_rows(base: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """Compose two optional row selections (None: all rows)."""
    if base is None:
        return idx
    return base if idx is None else base[idx]


class StepRecorder:
    """Per-sample instrumentation of an iterative gradient attack, built only when recording.

    Rows are the attack call's batch rows; ``rows`` arguments select the rows a (compacted)
    step ran on (None: all). Only the first run's (restart 0's) losses form the trace read by
    :func:`trace_summary` (C10 ``stall``, ``loss_first``); ``loss_best`` is over all runs.
    """

    def __init__(self, n: int, steps: int, like: torch.Tensor) -> None:
        dev = like.device
        self.forward = torch.zeros(n, dtype=torch.long, device=dev)
        self.backward = torch.zeros(n, dtype=torch.long, device=dev)
        self.trace = torch.full((steps, n), math.nan, dtype=like.dtype, device=dev)
        self.best = torch.full((n,), -math.inf, dtype=like.dtype, device=dev)
        self.ever = torch.zeros(n, dtype=torch.bool, device=dev)
        self.grad_zero = torch.zeros(n, dtype=torch.bool, device=dev)

    def step(self, rows: torch.Tensor | None, k: int, restart: int, loss: torch.Tensor,
             grad: torch.Tensor | None, adversarial: torch.Tensor) -> None:
        """Record one forward (+ backward when ``grad``) of iterate ``k`` of run ``restart``."""
        sel: Any = slice(None) if rows is None else rows
        self.forward[sel] += 1
        if grad is not None:
            self.backward[sel] += 1
        if restart == 0 and k < self.trace.shape[0]:
            self.trace[k, sel] = loss
            if k == 0 and grad is not None:
                flat = grad.flatten(1)
                self.grad_zero[sel] = ~(flat != 0).any(1) | ~torch.isfinite(flat).all(1)
        self.best[sel] = torch.maximum(self.best[sel], loss)
        self.ever[sel] = self.ever[sel] | adversarial

    def info(self) -> dict[str, torch.Tensor]:
        s = trace_summary(self.trace)
        best = torch.where(torch.isfinite(self.best), self.best,
                           torch.full_like(self.best, math.nan))
        return {"forward": self.forward, "backward": self.backward,
                "loss_first": s["loss_first"], "loss_best": best, "stall": s["stall"],
                "ever_adversarial": self.ever, "grad_zero": self.grad_zero}


#: How :func:`target_classes` picks a targeted attack's class for each sample.
TARGET_RULES = ("next", "random")


def target_classes(rule: str, labels: torch.Tensor, keys: torch.Tensor, num_classes: int,
                   seed: int) -> torch.Tensor:
    """Each sample's target class for a targeted attack, never its label.

    ``next``: the class after the label, (y + 1) mod K, the usual choice of papers that report
    one targeted figure. ``random``: a wrong class drawn per sample, keyed by (seed, the
    sample's key) as the random starts are, so a shard, a resumed cell or another batch size
    aims every sample at the same class.
    """
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, the model has {num_classes}")
    if rule == "next":
        return (labels + 1) % num_classes
    if rule == "random":
        shift = keyed_bits(seed, keys, stream=0x7A, count=1)[:, 0] % (num_classes - 1)
        return (labels + 1 + shift.to(labels.device)) % num_classes
    raise ValueError(f"unknown target rule {rule!r}; choose from {', '.join(TARGET_RULES)}")
