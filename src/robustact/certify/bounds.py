"""Certified lower bounds on a classifier's margins: IBP and CROWN-IBP over a bound graph.

A sample is *certified* at ε when every margin z_y − z_j (j ≠ y) has a positive lower bound over
the whole ball {x' : ‖x' − x‖ ≤ ε, x' ∈ [0, 1]^d}: no attack can change its prediction. The
margins are the rows of the specification C (one row e_y − e_j per wrong class j).

- **IBP** (interval bound propagation, Gowal et al. 2018): an interval per unit, layer by layer
  (centre and radius through affine maps, end points through monotone activations). The last
  affine maps are merged with C before the interval is used ("elision"), which is what makes the
  margins of IBP-trained networks tight.
- **CROWN-IBP** (Zhang et al. 2020): linear bounds of C·z propagated backward to the input
  through every layer, each activation replaced by linear functions above and below it on its
  IBP interval; the input ball then gives the bound in closed form. Reported as the larger of the
  backward bound and IBP's, per margin: both are sound, so is their maximum, and so CROWN-IBP is
  never looser than IBP (the backward bound alone can be, on IBP-trained networks).

Input sets: L∞ ball ∩ box: the box [max(x − ε, 0), min(x + ε, 1)]. L2 ball ∩ box: IBP uses the
same box (the L2 ball lies inside it; loose for large ε); the backward bound uses the larger of
the box's bound and the ball's (a·x − ε‖a‖₂).

Arithmetic: bounds are computed in the dtype given (float64 in :func:`certify`), so rounding
stays far below any margin that matters; they are not certified against floating-point error in
the model's own inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustact.certify.graph import Step

__all__ = ["crown_margins", "ibp_bounds", "input_box", "margin_spec", "wrong_classes"]

Interval = tuple[torch.Tensor, torch.Tensor]


def input_box(x: torch.Tensor, eps: float) -> Interval:
    """The box holding the ε-ball (either norm) around ``x``, clipped to [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def wrong_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K − 1): each sample's wrong classes in order (the margins' order)."""
    b = y.shape[0]
    others = torch.arange(num_classes, device=y.device).expand(b, -1)
    return others[others != y[:, None]].view(b, num_classes - 1)


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """C of shape (B, K − 1, K): row j is e_y − e_j over the wrong classes j in order."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[wrong_classes(y, num_classes)]


def _act_value(s: Step, t: torch.Tensor) -> torch.Tensor:
    if s.act == "relu":
        return torch.relu(t)
    if s.act == "jump":
        return t * (t > s.kappa)
    assert s.fn is not None
    return s.fn(t)


def _act_range(s: Step, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    """(min, max) of an element-wise activation over [lo, hi]."""
    if s.act == "pwl":
        assert s.range_fn is not None
        return s.range_fn(lo, hi)
    return _act_value(s, lo), _act_value(s, hi)  # monotone non-decreasing


def ibp_bounds(steps: Sequence[Step], box: Interval) -> list[Interval]:
    """The interval of every step's output, the input's being ``box``."""
    out: list[Interval] = []
    for s in steps:
        if s.kind == "input":
            out.append(box)
            continue
        lo, hi = out[s.inputs[0]]
        if s.kind == "affine":
            assert s.fn is not None and s.abs_fn is not None
            centre = torch.lerp(lo, hi, 0.5)  # one pass each: the cost next to the layer's
            mid, rad = s.fn(centre), s.abs_fn(hi - centre)
            out.append((mid - rad, mid.add_(rad)))
        elif s.kind == "act":
            out.append(_act_range(s, lo, hi))
        elif s.kind == "const":
            assert s.fn is not None
            out.append((s.fn(lo), s.fn(hi)))
        elif s.kind == "add":
            lo2, hi2 = out[s.inputs[1]]
            out.append((lo + lo2, hi + hi2))
        else:
            raise AssertionError(s.kind)
    return out


def _relax(s: Step, lo: torch.Tensor, hi: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slope, intercept) below and (slope, intercept) above the activation on [lo, hi]."""
    zero, one = torch.zeros_like(lo), torch.ones_like(lo)
    if s.act in ("relu", "jump"):
        k = s.kappa if s.act == "jump" else 0.0
        dead, live = hi <= k, lo > k
        width = (hi - lo).clamp_min(1e-12)
        # above: ReLU's chord when lo < 0 (ReLU ≥ the jump for κ ≥ 0), the identity when lo ≥ 0
        chord = lo < 0
        a_up = torch.where(dead, zero, torch.where(chord & ~live, hi / width, one))
        b_up = torch.where(dead | live | ~chord, zero, -lo * hi / width)
        # below: the identity shifted by κ (x − κ ≤ f) or 0, whichever covers more of [lo, hi]
        steep = (hi - k) > (k - lo)
        a_lo = torch.where(dead, zero, torch.where(live | steep, one, zero))
        b_lo = torch.where(dead | live, zero, torch.where(steep, torch.full_like(lo, -k), zero))
        return a_lo, b_lo, a_up, b_up
    low, high = _act_range(s, lo, hi)  # constants: the function's range on [lo, hi]
    return zero, low, zero, high


def _affine_back(fn: nn.Module | object, a: torch.Tensor, in_shape: torch.Size
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a·M, a·c) for the affine map x ↦ Mx + c, differentiable in the map's parameters (for
    certified training). Linear and Conv2d by their transposes (one matrix product, one
    transposed convolution); any other affine step by a vector-Jacobian product at x = 0,
    exact for an affine map."""
    if isinstance(fn, nn.Linear):
        bias = (a * fn.bias).sum(2) if fn.bias is not None else a.new_zeros(a.shape[:2])
        return a @ fn.weight, bias
    if isinstance(fn, nn.Conv2d) and not isinstance(fn.padding, str):
        return _conv_back(fn, a, in_shape)
    b, k = a.shape[:2]
    zeros = torch.zeros((b * k, *in_shape), dtype=a.dtype, device=a.device)
    const, vjp = torch.func.vjp(fn, zeros)  # type: ignore[arg-type]
    flat = a.reshape(b * k, *const.shape[1:])
    (back,) = vjp(flat)
    bias = (flat * const).flatten(1).sum(1).view(b, k)
    return back.view(b, k, *in_shape), bias


def _conv_back(conv: nn.Conv2d, a: torch.Tensor, in_shape: torch.Size
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """a·W for a convolution: its input gradient (the backward-data kernel, much faster on
    the CPU than a transposed convolution; differentiable in W for certified training)."""
    b, k = a.shape[:2]
    flat = a.reshape(b * k, *a.shape[2:])
    back = torch.nn.grad.conv2d_input((b * k, *in_shape), conv.weight, flat, conv.stride,
                                      conv.padding, conv.dilation, conv.groups)
    bias = ((a.sum((3, 4)) * conv.bias).sum(2) if conv.bias is not None
            else a.new_zeros(a.shape[:2]))
    return back.view(b, k, *in_shape), bias


def _concretize(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min over [lo, hi] of a·z, per (sample, margin)."""
    lo, hi = lo.unsqueeze(1).flatten(2), hi.unsqueeze(1).flatten(2)
    a = a.flatten(2)
    return (a.clamp_min(0) * lo + a.clamp_max(0) * hi).sum(2)


def _at_input(a: torch.Tensor, x: torch.Tensor, box: Interval, eps: float, norm: str
              ) -> torch.Tensor:
    bound = _concretize(a, *box)
    if norm == "l2":
        flat = a.flatten(2)
        ball = (flat * x.unsqueeze(1).flatten(2)).sum(2) - eps * flat.norm(dim=2)
        bound = torch.maximum(bound, ball)
    return bound


def crown_margins(steps: Sequence[Step], bounds: Sequence[Interval], spec: torch.Tensor,
                  x: torch.Tensor, eps: float, norm: str, *, relax: bool = True
                  ) -> torch.Tensor:
    """Lower bounds (B, K − 1) of spec·z by backward linear bounds.

    ``relax=True`` (CROWN-IBP): through every step, each activation relaxed on its IBP
    interval (``bounds`` of its input). ``relax=False`` (IBP with elision): through the affine
    steps and additions that end the network only, then the IBP interval of the step reached.
    """
    last = len(steps) - 1
    pending: dict[int, torch.Tensor] = {last: spec}
    total = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
    for i in range(last, -1, -1):
        a = pending.pop(i, None)
        if a is None:
            continue
        s = steps[i]
        if s.kind == "input":
            total = total + _at_input(a, x, bounds[0], eps, norm)
        elif s.kind == "affine":
            back, bias = _affine_back(s.fn, a, bounds[s.inputs[0]][0].shape[1:])
            total = total + bias
            _add(pending, s.inputs[0], back)
        elif s.kind == "add":
            _add(pending, s.inputs[0], a)
            _add(pending, s.inputs[1], a)
        elif s.kind == "act" and relax:
            back, bias = _relaxed_back(s, a, *bounds[s.inputs[0]])
            total = total + bias
            _add(pending, s.inputs[0], back)
        else:  # max pooling, or an activation when not relaxing: its output interval
            total = total + _concretize(a, *bounds[i])
    return total


def _relaxed_back(s: Step, a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a⁺·slope_lo + a⁻·slope_up, a⁺·b_lo + a⁻·b_up) through an activation relaxed on
    [lo, hi], written as a·slope_up + a⁺·(slope_lo − slope_up) and a·b_up + a⁺·(b_lo − b_up) so
    that the (sample, margin, unit) tensors are read a few times only: the backward pass's
    element-wise cost on the CPU."""
    a_lo, b_lo, a_up, b_up = _relax(s, lo, hi)
    b, k = a.shape[:2]
    flat = a.reshape(b, k, -1)
    pos = flat.clamp_min(0)
    back = (flat * a_up.reshape(b, 1, -1)).addcmul_(pos, (a_lo - a_up).reshape(b, 1, -1))
    bias = (torch.bmm(flat, b_up.reshape(b, -1, 1))
            + torch.bmm(pos, (b_lo - b_up).reshape(b, -1, 1))).squeeze(2)
    return back.view_as(a), bias


def _add(pending: dict[int, torch.Tensor], i: int, a: torch.Tensor) -> None:
    pending[i] = pending[i] + a if i in pending else a
