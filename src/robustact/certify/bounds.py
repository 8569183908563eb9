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

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustact.certify.graph import Step
from robustact.nn.normalize import Normalize

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


def ibp_bounds(steps: Sequence[Step], box: Interval, *, keep: bool = True) -> list[Interval]:
    """The interval of every step's output, the input's being ``box``.

    ``keep=False`` (IBP with elision alone, grad off): intervals that it does not read are
    overwritten as soon as their one reader is done with them: a ReLU or jump clamps its input
    interval in place, the next affine step turns it into its centre and radius in place.
    Only CROWN-IBP's relaxation reads pre-activation intervals, and each fresh tensor of a
    layer's size costs page faults on the CPU: a quarter of IBP's time on the medium model."""
    uses = Counter(i for s in steps for i in s.inputs)
    inplace = not keep and not torch.is_grad_enabled()
    reads, fresh = _elision_reads(steps) if inplace else set(), set()
    out: list[Interval] = []
    for n, s in enumerate(steps):
        if s.kind == "input":
            out.append(box)
            continue
        lo, hi = out[s.inputs[0]]
        if s.kind == "affine" and s.monotone:
            assert s.fn is not None
            out.append((s.fn(lo), s.fn(hi)))
        elif s.kind == "affine":
            assert s.fn is not None and s.abs_fn is not None
            if s.inputs[0] in fresh and uses[s.inputs[0]] == 1 and s.inputs[0] not in reads:
                centre = lo.lerp_(hi, 0.5)  # the same values, in the input's own tensors
                radius = hi.sub_(centre)
            else:  # one pass each: the cost next to the layer's
                centre = torch.lerp(lo, hi, 0.5)
                radius = hi - centre
            mid, rad = s.fn(centre), s.abs_fn(radius)
            out.append((mid - rad, mid.add_(rad)))
        elif s.kind == "act" and inplace and s.act in ("relu", "jump") and \
                uses[s.inputs[0]] == 1 and steps[s.inputs[0]].kind == "affine" and \
                not steps[s.inputs[0]].monotone:  # the affine step's own fresh tensors
            k = s.kappa if s.act == "jump" else 0.0
            out.append((lo.mul_(lo > k), hi.mul_(hi > k)) if k else (lo.relu_(), hi.relu_()))
            fresh.add(n)
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


def _elision_reads(steps: Sequence[Step]) -> set[int]:
    """The steps whose intervals IBP with elision reads (:func:`crown_margins`, relax=False):
    the first steps that are neither affine nor additions, back from the output."""
    reads, todo = set(), [len(steps) - 1]
    while todo:
        i = todo.pop()
        if steps[i].kind in ("affine", "add"):
            todo.extend(steps[i].inputs)
        else:
            reads.add(i)
    return reads


def _relu_relax(s: Step, lo: torch.Tensor, hi: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slope above a_up, a_lo − a_up, minus the intercept above −b_up, b_lo − b_up) of ReLU
    or the jump (κ ≥ 0) on [lo, hi]: what the backward pass multiplies.

    Above: ReLU's chord when lo < 0 (ReLU ≥ the jump for κ ≥ 0), the identity when lo ≥ 0, 0
    when dead (hi ≤ κ). Below: the identity shifted by κ (x − κ ≤ f) or 0, whichever covers
    more of [lo, hi]; the identity when live (lo > κ). Written with clamps and signs, not masks
    and ``torch.where``: the CPU's masked selects cost several times a clamp."""
    k = s.kappa if s.act == "jump" else 0.0
    ip = not torch.is_grad_enabled()  # then temporaries are overwritten: fewer fresh tensors
    lo_neg, hi_pos = lo.clamp_max(0), hi.clamp_min(0)
    # the chord's slope u/(u − l) when lo < 0, 1 when lo ≥ 0 (u/u), 0 when hi ≤ 0 (the guard
    # only keeps 0/0 out at lo = hi = 0)
    width = (hi_pos - lo_neg).clamp_min(torch.finfo(lo.dtype).tiny)
    a_up = hi_pos.div_(width) if ip else hi_pos / width
    with torch.no_grad():  # piecewise constant in the bounds: no gradient to carry
        # [hi − κ > κ − lo], as the sign of the difference (exact: a float difference is > 0
        # iff its terms are ordered so)
        steep = (hi + lo if k == 0 else (hi - k) - (k - lo)).clamp_min_(0).sign_()
        if k > 0:
            alive = (hi - k).clamp_min_(0).sign_()  # [hi > κ]
            b_lo = (lo - k).clamp_min_(0).sign_().sub_(1).mul_(steep).mul_(k)  # −κ in between
    if k > 0:
        a_up = a_up.mul_(alive) if ip else a_up * alive
    neg_b_up = lo_neg.mul_(a_up) if ip else lo_neg * a_up
    diff = steep.sub_(a_up) if ip else steep - a_up
    return a_up, diff, neg_b_up, (b_lo + neg_b_up if k > 0 else neg_b_up)


def _affine_back(s: Step, a: torch.Tensor, in_shape: torch.Size
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a·M, a·c or None when c = 0) for the affine step x ↦ Mx + c, differentiable in the
    map's parameters (for certified training). Reshapes by a reshape; Linear and Conv2d by
    their transposes (one matrix product, one transposed convolution); any other affine step
    by a vector-Jacobian product at x = 0, exact for an affine map."""
    fn, (b, k) = s.fn, a.shape[:2]
    if s.reshape:
        return a.reshape(b, k, *in_shape), None
    if isinstance(fn, nn.Linear):
        bias = (a * fn.bias).sum(2) if fn.bias is not None else None
        return a @ fn.weight, bias
    if isinstance(fn, nn.Conv2d) and not isinstance(fn.padding, str):
        return _conv_back(fn, a, in_shape)
    if isinstance(fn, Normalize) and len(in_shape) == 3:  # (x − mean)/std per channel
        std, mean = fn.std.view(-1, 1, 1), fn.mean.view(-1)
        return a / std, -(a.sum((3, 4)) * (mean / std.view(-1))).sum(2)
    zeros = torch.zeros((b * k, *in_shape), dtype=a.dtype, device=a.device)
    const, vjp = torch.func.vjp(fn, zeros)  # type: ignore[arg-type]
    flat = a.reshape(b * k, *const.shape[1:])
    (back,) = vjp(flat)
    bias = (flat * const).flatten(1).sum(1).view(b, k)
    return back.view(b, k, *in_shape), bias


def _conv_back(conv: nn.Conv2d, a: torch.Tensor, in_shape: torch.Size
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """a·W for a convolution, by the fastest CPU kernel for the case (measured at the
    benchmark's shapes, 900 rows): float64, the input-gradient kernel (im2col and a matrix
    product; transposed convolutions are 2-4x slower); float32, oneDNN's transposed convolution
    on channels-last rows, left channels-last (2-3x faster than on NCHW, whose result oneDNN
    copies back), and for one input channel a batched matrix product and ``fold`` (3x). All
    differentiable in W for certified training."""
    b, k = a.shape[:2]
    flat = a.flatten(0, 1)
    w = conv.weight
    if w.dtype != torch.float32 or w.device.type != "cpu":
        back = torch.nn.grad.conv2d_input((b * k, *in_shape), w, flat, conv.stride,
                                          conv.padding, conv.dilation, conv.groups)
    elif conv.in_channels == 1:  # the columns of the input positions, then summed in place
        cols = torch.bmm(w.flatten(1).t().expand(b * k, -1, -1), _spatial_rows(flat))
        back = F.fold(cols, in_shape[1:], w.shape[2:], conv.dilation, conv.padding,
                      conv.stride)
    else:  # output_padding: the input rows and columns that the strides skipped
        extra = [n - ((m - 1) * st - 2 * p + d * (kk - 1) + 1) for n, m, st, p, d, kk in
                 zip(in_shape[1:], a.shape[3:], conv.stride, conv.padding, conv.dilation,
                     w.shape[2:], strict=True)]
        if max(conv.stride) > 1:
            flat = flat.contiguous(memory_format=torch.channels_last)
        back = F.conv_transpose2d(flat, w, None, conv.stride, conv.padding, extra, conv.groups,
                                  conv.dilation)
    bias = (a.sum((3, 4)) * conv.bias).sum(2) if conv.bias is not None else None
    return back.view(b, k, *in_shape), bias


def _spatial_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H·W) of a 4-d tensor, a view whether it is NCHW or channels-last."""
    n, c = t.shape[:2]
    if t.is_contiguous():
        return t.view(n, c, -1)
    return t.permute(0, 2, 3, 1).reshape(n, -1, c).transpose(1, 2)


def _channels_last(a: torch.Tensor) -> bool:
    """Whether the (B, K, C, H, W) coefficients lie channels-last (a float32 convolution's)."""
    return a.dim() == 5 and not a.is_contiguous() and \
        a.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


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

    ``relax=True`` (CROWN-IBP): through every step, each ReLU or jump relaxed on its IBP
    interval (``bounds`` of its input); other activations (monotone, SPLASH) are relaxed by
    constants, their output interval, so the bound stops there as at max pooling.
    ``relax=False`` (IBP with elision): through the affine steps and additions that end the
    network only, then the IBP interval of the step reached.
    """
    last = len(steps) - 1
    # per step: the coefficients waiting to cross it, and whether this pass alone holds them
    # (then they are overwritten in place when grad is off: no fresh sample × margin × unit
    # tensor, whose first touch costs the CPU as much as the arithmetic)
    pending: dict[int, tuple[torch.Tensor, bool]] = {last: (spec, False)}
    total = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
    inplace = not torch.is_grad_enabled()
    for i in range(last, -1, -1):
        if i not in pending:
            continue
        a, own = pending.pop(i)
        s = steps[i]
        if s.kind == "input":
            total = total + _at_input(a, x, bounds[0], eps, norm)
        elif s.kind == "affine":
            back, bias = _affine_back(s, a, bounds[s.inputs[0]][0].shape[1:])
            if bias is not None:
                total = total + bias
            _add(pending, s.inputs[0], back, own or not s.reshape)
        elif s.kind == "add":
            _add(pending, s.inputs[0], a, False)
            _add(pending, s.inputs[1], a, False)
        elif s.kind == "act" and relax and s.act in ("relu", "jump"):
            back, bias = _relaxed_back(s, a, *bounds[s.inputs[0]], own and inplace)
            total = total + bias
            _add(pending, s.inputs[0], back, True)
        else:  # max pooling, monotone, SPLASH, or an activation when not relaxing: its interval
            total = total + _concretize(a, *bounds[i])
    return total


#: Bytes of coefficients relaxed at a time without grad: a few samples' (sample, margin, unit)
#: block, so that its several passes run in the CPU's cache, not in memory (3-4x).
CHUNK_BYTES = 1 << 18


def _relaxed_back(s: Step, a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(a⁺·slope_lo + a⁻·slope_up, a⁺·b_lo + a⁻·b_up) through ReLU or the jump relaxed on
    [lo, hi], written as a·slope_up + a⁺·(slope_lo − slope_up) and a·b_up + a⁺·(b_lo − b_up) so
    that the (sample, margin, unit) tensor is read a few times only and one is written (a⁺):
    the backward pass's element-wise cost on the CPU.

    ``inplace`` (``a`` is ours to overwrite, grad is off): a few samples at a time, so that
    each block's passes run in the cache. Channels-last coefficients are taken in their memory
    order, the bounds reordered to match: no copy of the large tensor."""
    b, k = a.shape[:2]
    cl = _channels_last(a)
    if cl:
        a, lo, hi = a.permute(0, 1, 3, 4, 2), lo.permute(0, 2, 3, 1), hi.permute(0, 2, 3, 1)
    flat = a.reshape(b, k, -1)
    up, diff, neg_b_up, diff_b = (t.reshape(b, 1, -1) for t in
                                  _relu_relax(s, lo.reshape(b, -1), hi.reshape(b, -1)))
    if not inplace:
        pos = flat.clamp_min(0)
        bias = _relax_bias(flat, pos, neg_b_up, diff_b)
        back = (flat * up).addcmul_(pos, diff)
    else:
        step = max(1, CHUNK_BYTES // (flat[0].numel() * flat.element_size()))
        bias, buf = flat.new_empty(b, k), flat.new_empty(min(step, b), *flat.shape[1:])
        for i in range(0, b, step):  # a⁺ in one buffer: fresh memory per block is page faults
            rows, sl = flat[i:i + step], slice(i, i + step)
            pos = torch.clamp_min(rows, 0, out=buf[:rows.shape[0]])
            bias[sl] = _relax_bias(rows, pos, neg_b_up[sl], diff_b[sl])
            rows.mul_(up[sl]).addcmul_(pos, diff[sl])
        back = flat
    back = back.view(a.shape)
    return (back.permute(0, 1, 4, 2, 3) if cl else back), bias


def _relax_bias(a: torch.Tensor, pos: torch.Tensor, neg_b_up: torch.Tensor,
                diff_b: torch.Tensor) -> torch.Tensor:
    """a·b_up + a⁺·(b_lo − b_up) per (sample, margin), as two batched matrix-vector products."""
    return torch.baddbmm(torch.bmm(pos, diff_b.transpose(1, 2)), a, neg_b_up.transpose(1, 2),
                         alpha=-1).squeeze(2)


def _add(pending: dict[int, tuple[torch.Tensor, bool]], i: int, a: torch.Tensor,
         own: bool) -> None:
    """Queue ``a`` for step ``i``, summed with what waits there (a residual's two branches);
    ``own``: no other reference to ``a`` is kept."""
    if i in pending:
        pending[i] = (pending[i][0] + a, True)
    else:
        pending[i] = (a, own)
