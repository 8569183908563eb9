"""SPLASH units (Tavakoli, Agostinelli, Baldi 2021): simple piecewise-linear, learnable activations.

    h(x) = Σ_s a⁺_s · max(0, x − b_s) + Σ_s a⁻_s · max(0, −x − b_s),   s = 1 … (S+1)/2,

with fixed, mirrored hinge offsets b = linspace(0, b_max, (S+1)/2) (so S distinct hinges at
0, ±b_2, …) and learned slopes a⁺, a⁻. h is continuous and grounded (h(0) = 0); the ReLU
initialisation a⁺ = (1, 0, …), a⁻ = 0 makes a fresh SPLASH layer exactly a ReLU.

Why a custom autograd function: written naively, autograd keeps every hinge's intermediate
(S of them, each the size of the input) for the backward pass, several times ReLU's memory and
time. Because the offsets are equally spaced, h is one linear piece ``m_i·x + c_i`` on each of the
S + 1 intervals between hinges, and the interval of x follows from ``x / Δ`` (Δ the spacing):
a few cheap element-wise passes and two table look-ups instead of S hinge evaluations. The
function saves only x; the backward recomputes the interval index and gets

    ∂L/∂x = g · m_i,   ∂L/∂m_i = Σ_{x in interval i} g·x,   ∂L/∂c_i = Σ_{x in interval i} g

(one scatter-add each, summed over batch and spatial positions, per channel if the slopes
are). The small tables m, c are differentiable functions of a⁺, a⁻ (cumulative sums), so autograd
carries those gradients back to the slopes. ``splash_reference`` is the literal definition, used
by the tests and the benchmark to check the fused path.

Two implementations of that function: the eager PyTorch ops here (the reference, and the path
for CUDA and other dtypes) and, for CPU float32/float64, a C++ kernel (``_splash_kernel``,
compiled on first use) that does the forward and the backward in one loop each; the eager ops
take about ten passes and several activation-sized temporaries, which made a ResNet-20 CPU
training step ~1.35× ReLU's; with the kernel it is ~1.1×. Both compute the same interval
index and the same products (values and input gradients are bitwise equal; the slope
gradients agree to summation order). ``kernel="auto"`` (default) uses the kernel where it can
and runs eager otherwise (a failed build warns once); ``kernel="eager"``/``"cpp"`` (spec
``splash:kernel=eager``) force one. The choice is the layer's own option, fixed when it is built:
nothing is read from the environment on the forward pass.

At a hinge exactly (up to rounding of x/Δ), the derivative is the left-hand piece's. Any value
between the one-sided derivatives is a valid choice; the naive definition's autograd (relu'(0) =
0) differs only at the negative hinges ``x = −b_s``, including x = 0 where it gives 0 and the
fused path −a⁻_1; that is 0 at the ReLU initialisation, so a fresh SPLASH matches ReLU in value
and gradient everywhere. Cost and
memory are measured by ``benchmarks/bench_splash.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.nn import _splash_kernel
from robustact.nn.factory import register_activation

__all__ = ["SPLASH", "splash_reference", "calibrate_splash", "splash_implementation"]

_KERNEL_MODES = ("auto", "eager", "cpp")


def _check_kernel(kernel: Any, source: str) -> str:
    if not isinstance(kernel, str) or kernel.strip().lower() not in _KERNEL_MODES:
        raise ValueError(f"SPLASH {source} must be one of {', '.join(_KERNEL_MODES)}, "
                         f"got {kernel!r}")
    return kernel.strip().lower()


def _select_kernel(mode: str, x: torch.Tensor) -> Any:
    """The compiled kernel module to run for input ``x``, or None for the eager ops.

    ``auto`` uses the kernel when the input is one it supports (CPU float32/float64) and it
    builds (first call only, then cached); anything else, including a failed build, runs eager.
    ``cpp`` insists: an unsupported input or a failed build raises instead of falling back, so
    a benchmark or test that asks for the kernel cannot silently measure the eager path.
    """
    if mode == "eager":
        return None
    if not _splash_kernel.supports(x):
        if mode == "cpp":
            raise ValueError("SPLASH kernel='cpp' supports CPU float32/float64 inputs only, got "
                             f"{x.dtype} on {x.device}")
        return None
    ext = _splash_kernel.load()
    if ext is None and mode == "cpp":
        raise RuntimeError("SPLASH kernel='cpp': the C++ kernel could not be built "
                           f"({_splash_kernel.load_error()})") from _splash_kernel.load_error()
    return ext


def splash_implementation(x: torch.Tensor, kernel: str = "auto") -> str:
    """``"cpp"`` or ``"eager"``: what a fused SPLASH layer with option ``kernel`` runs for input
    ``x`` here (for logs and benchmarks; may build the kernel, as the layer would)."""
    return "eager" if _select_kernel(_check_kernel(kernel, "kernel"), x) is None else "cpp"


def _check_s(S: Any) -> int:
    if isinstance(S, bool) or not isinstance(S, int):
        raise TypeError(f"SPLASH S (number of hinges) must be an int, got {type(S).__name__}")
    if S < 3 or S % 2 == 0:
        raise ValueError(f"SPLASH S (number of hinges) must be odd and >= 3, got {S}")
    return S


def splash_reference(x: torch.Tensor, a_pos: torch.Tensor, a_neg: torch.Tensor,
                     offsets: torch.Tensor) -> torch.Tensor:
    """The literal SPLASH sum (plain autograd, memory-hungry); the definition the fused path meets.

    ``a_pos``/``a_neg`` have shape (K,) (one set per layer) or (C, K) (per channel, broadcast over
    dim 1 of ``x``); ``offsets`` has shape (K,) and holds b_1 = 0 < b_2 < … < b_K.
    """
    k = offsets.shape[-1]
    if a_pos.ndim == 2:
        shape = (1, a_pos.shape[0]) + (1,) * (x.ndim - 2)
        ap = [a_pos[:, s].reshape(shape) for s in range(k)]
        an = [a_neg[:, s].reshape(shape) for s in range(k)]
    else:
        ap = [a_pos[s] for s in range(k)]
        an = [a_neg[s] for s in range(k)]
    out = torch.zeros_like(x)
    for s in range(k):
        b = offsets[s]
        out = out + ap[s] * torch.clamp_min(x - b, 0) + an[s] * torch.clamp_min(-x - b, 0)
    return out


def _interval_index(x: torch.Tensor, neg_inv_delta: float, k: int, channels: int | None,
                    dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Flat integer index into the reversed (groups, 2K) tables, one entry per element of x.

    The intervals are (p_{i−1}, p_i], i = 0 … 2K−1, with breakpoints p = (−b_K, …, −b_2, 0, b_2,
    …, b_K) spaced Δ apart, so i = ceil(x/Δ) + K − 1. Tables are stored right to left, j =
    2K − 1 − i = floor(K − x/Δ): a scaled copy, an add, a clamp and a truncating cast (no ceil
    pass). The product and the sum are rounded separately (``mul`` then ``add_``, never a fused
    multiply-add) so that the compiled kernel (``_splash_kernel``) reproduces the index bit for
    bit; NaN maps to 0 before the clamp. Per channel, the integer offset 2K·channel is added
    after the cast, so the rounding at a hinge does not depend on the channel number. For
    int32 the float buffer is reused in place.
    """
    u = torch.mul(x, neg_inv_delta)
    u.add_(k)
    u.nan_to_num_(0.0)  # NaN inputs still give NaN outputs (through m·x); keep the index valid
    u.clamp_(0, 2 * k - 1)
    if dtype == torch.int32 and u.dtype == torch.float32:
        idx = u.view(torch.int32)
        idx.copy_(u)  # in-place truncation (u >= 0, so this is floor)
    else:
        idx = u.to(dtype)
    if channels is not None:
        shape = (1, channels) + (1,) * (x.ndim - 2)
        idx.add_((torch.arange(channels, device=x.device, dtype=dtype) * (2 * k)).view(shape))
    return idx.view(-1)


def _kernel_layout(x: torch.Tensor, channels: int | None) -> tuple[int, int]:
    """(groups, inner) for the compiled kernel: table groups, and elements per channel run."""
    if channels is None:
        return 1, 1
    return channels, math.prod(x.shape[2:])


class _SplashFunction(torch.autograd.Function):
    """Piecewise-linear map with equally spaced breakpoints; saves x only (see module doc).

    ``ext`` is the compiled kernel module (``_splash_kernel.load()``) or None for the eager
    ops; both compute the same index and the same products (see ``_splash_kernel``).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slopes: torch.Tensor, intercepts: torch.Tensor,
                neg_inv_delta: float, k: int, channels: int | None,
                ext: Any = None) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, slopes)
        ctx.k, ctx.channels, ctx.neg_inv_delta, ctx.ext = k, channels, neg_inv_delta, ext
        if ext is not None:
            groups, inner = _kernel_layout(x, channels)
            return ext.splash_forward(x, slopes.contiguous(), intercepts.contiguous(),
                                      neg_inv_delta, k, groups, inner)
        idx = _interval_index(x, neg_inv_delta, k, channels)
        # m·x rounded, then + c rounded: not addcmul_, which may fuse the multiply-add
        # depending on the build and CPU, so the kernel could not reproduce it bit for bit.
        out = slopes.reshape(-1).index_select(0, idx).mul_(x.view(-1))
        out.add_(intercepts.reshape(-1).index_select(0, idx))
        return out.view(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, slopes = ctx.saved_tensors
        need_x, need_m, need_c = ctx.needs_input_grad[:3]
        # The kernel's backward is not itself differentiable: under create_graph (double
        # backward) the eager ops below, which autograd can trace, take over.
        if ctx.ext is not None and not torch.is_grad_enabled():
            groups, inner = _kernel_layout(x, ctx.channels)
            dx, sums = ctx.ext.splash_backward(
                x, grad.contiguous(), slopes.contiguous(), ctx.neg_inv_delta, ctx.k, groups,
                inner, need_x, need_m or need_c)
            return (dx if need_x else None,
                    sums[0].view(slopes.shape) if need_m else None,
                    sums[1].view(slopes.shape) if need_c else None,
                    None, None, None, None)
        # int64 because scatter_add_ (faster than index_add_ on CPU) needs it.
        idx = _interval_index(x, ctx.neg_inv_delta, ctx.k, ctx.channels,
                              torch.int64 if (need_m or need_c) else torch.int32)
        g = grad.contiguous().view(-1)
        grad_x = grad_m = grad_c = None
        buf = None
        # Per-interval sums as one scatter per row (rows = samples), then a sum over rows:
        # rows can run in parallel, and float32 partial sums are more accurate than one long
        # sequential accumulation.
        rows = x.shape[0] if x.ndim >= 2 and x.numel() > 0 else 1
        idx2 = idx.view(rows, -1)

        def per_interval_sum(src: torch.Tensor) -> torch.Tensor:
            acc = torch.zeros(rows, slopes.numel(), dtype=g.dtype, device=g.device)
            return acc.scatter_add_(1, idx2, src.view(rows, -1)).sum(0).view(slopes.shape)

        if need_c:
            grad_c = per_interval_sum(g)
        if need_m:
            buf = g * x.view(-1)
            grad_m = per_interval_sum(buf)
        if need_x:
            # Reuse the g·x buffer for the input gradient g·m_i (one allocation fewer), except
            # under create_graph, where out= ops cannot be differentiated.
            if buf is None or torch.is_grad_enabled():
                buf = slopes.reshape(-1).index_select(0, idx)
            else:
                torch.index_select(slopes.reshape(-1), 0, idx, out=buf)
            grad_x = buf.mul_(g).view(x.shape)
        return grad_x, grad_m, grad_c, None, None, None, None


class SPLASH(nn.Module):
    """SPLASH activation with S hinges (odd, ≥ 3), initialised as ReLU.

    Args:
        num_features: channels at this site (only used when ``per_channel``).
        S: number of distinct hinges; (S+1)/2 offsets per side including 0. Default 7.
        b_max: largest offset; offsets are linspace(0, b_max, (S+1)/2) × ``scale`` (scale 1
            until :meth:`calibrate`). Chosen for inputs of unit spread (after BatchNorm).
        per_channel: one set of slopes per channel (shape (C, (S+1)/2), broadcast over dim 1)
            instead of one per layer.
        fused: use the memory-lean autograd function (default); False runs the literal sum
            (:func:`splash_reference`), for checking and benchmarking.
        norm: standardize the input per channel (a BatchNorm without affine parameters, batch
            statistics in training and running ones in eval) before the hinges. The paper puts
            SPLASH after BatchNorm (papers.md §2) and its offsets and shared slopes assume that:
            in a network without normalization (LeNet-5, MLPs) a per-layer slope scales every unit
            of its layer at once, the layer gains and the pre-activation spread grow together,
            and SGD at ReLU's learning rate diverges within a few dozen steps (so does PReLU).
            :func:`robustact.models.create_model` turns this on for models that have no
            BatchNorm of their own unless the spec sets it; default off.
        kernel: how the fused function runs. ``"auto"`` (default): the C++ CPU kernel
            (``_splash_kernel``, built on first use and cached by PyTorch) for CPU
            float32/float64 inputs, else (CUDA, other dtypes, no compiler) the eager PyTorch
            ops. ``"eager"``: always the PyTorch ops (the reference). ``"cpp"``: always the kernel,
            raising if it cannot run.

    Buffers: ``b`` (the unit offsets, shape ((S+1)/2,)) and ``scale`` (0-d, set by calibration).
    Parameters: ``a_pos`` and ``a_neg``.
    """

    def __init__(self, num_features: int = 1, S: int = 7, b_max: float = 2.5,
                 per_channel: bool = False, fused: bool = True, kernel: str = "auto",
                 norm: bool = False) -> None:
        super().__init__()
        self.kernel = _check_kernel(kernel, "kernel")
        self.S = _check_s(S)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"SPLASH num_features must be a positive int, got {num_features!r}")
        if not isinstance(b_max, (int, float)) or not math.isfinite(b_max) or b_max <= 0:
            raise ValueError(f"SPLASH b_max must be finite and > 0, got {b_max!r}")
        self.num_features = num_features
        self.per_channel = bool(per_channel)
        self.fused = bool(fused)
        self.b_max = float(b_max)
        k = (S + 1) // 2
        self.K = k
        shape = (num_features, k) if self.per_channel else (k,)
        a_pos = torch.zeros(shape)
        a_pos[..., 0] = 1.0
        self.a_pos = nn.Parameter(a_pos)
        self.a_neg = nn.Parameter(torch.zeros(shape))
        self.register_buffer("b", torch.linspace(0.0, self.b_max, k))
        self.register_buffer("scale", torch.tensor(1.0))
        if not isinstance(norm, bool):
            raise ValueError(f"SPLASH norm must be true or false, got {norm!r}")
        self.norm = norm
        if norm:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
        self._delta_cache: tuple[tuple[int, ...], float] | None = None
        # L[s, j] = 1 where hinge s (0..K−1 positive, K..2K−1 negative) is on in interval j
        # (intervals right to left); see _tables. Not saved: it is a function of S.
        on = torch.zeros(2 * k, 2 * k)
        for j in range(2 * k):
            if j < k:
                on[: k - j, j] = 1.0  # right of b_1..b_{K−j}
            else:
                on[k: j + 1, j] = 1.0  # left of −b_1..−b_{j−K+1}
        self.register_buffer("_cumsum_matrix", on, persistent=False)

    def _delta(self) -> float:
        """The hinge spacing b_2·scale as a Python float, re-read only when a buffer changed.

        Why cached: reading a GPU buffer back costs a device sync on every forward pass. The
        key (version counters and storage addresses) changes with any in-place write
        (``calibrate_``, ``load_state_dict``, ``fill_``) or device move.
        """
        b, scale = self.b, self.scale
        key = (b._version, b.data_ptr(), scale._version, scale.data_ptr())
        if self._delta_cache is None or self._delta_cache[0] != key:
            self._delta_cache = (key, float(b[1]) * float(scale))
        return self._delta_cache[1]

    @property
    def offsets(self) -> torch.Tensor:
        """The hinge offsets in input units: b × scale (b_1 = 0)."""
        return self.b * self.scale

    def calibrate_(self, std: float) -> SPLASH:
        """Scale the offsets by ``std`` (the spread of this layer's pre-activations)."""
        std = float(std)
        if not math.isfinite(std) or std <= 0:
            raise ValueError(f"SPLASH calibration needs a finite std > 0, got {std}")
        self.scale.fill_(std)
        return self

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> SPLASH:
        """Set the offsets from a batch of this layer's pre-activations: b ← linspace · std(x).

        For layers without BatchNorm, whose inputs are not on the unit scale the default offsets
        assume. One std per layer (papers.md §2).
        """
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.numel() < 2:
            raise ValueError("SPLASH.calibrate needs a floating tensor with at least 2 values")
        return self.calibrate_(float(x.detach().double().std()))

    def _tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Slope m and intercept c of each of the 2K intervals, *right to left* (the order the
        fused path indexes): shape (groups, 2K) each.

        Interval j (right to left) lies right of positive hinges 1..K−j for j < K, and left of
        negative hinges 1..j−K+1 for j ≥ K, so m and c are (flipped) cumulative sums of the
        slopes: m = [a⁺, −a⁻]·L and c = −[a⁺·b, a⁻·b]·L with the constant 0/1 matrix L.
        """
        a_pos = self.a_pos.to(dtype)
        a_neg = self.a_neg.to(dtype)
        if not self.per_channel:
            a_pos, a_neg = a_pos[None], a_neg[None]
        b = self.offsets.to(dtype)
        top = torch.cat([a_pos, -a_neg], dim=-1)
        bottom = torch.cat([a_pos * b, a_neg * b], dim=-1).neg_()
        tables = torch.stack([top, bottom]) @ self._cumsum_matrix.to(dtype)
        return tables[0], tables[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = None
        if self.per_channel:
            if x.ndim < 2 or x.shape[1] != self.num_features:
                raise ValueError(
                    f"per-channel SPLASH was built for {self.num_features} channels (dim 1) but "
                    f"got input of shape {tuple(x.shape)}"
                )
            channels = self.num_features
        if self.norm:
            x = self._standardize(x)
        if not self.fused:
            return splash_reference(x, self.a_pos.to(x.dtype), self.a_neg.to(x.dtype),
                                    self.offsets.to(x.dtype))
        ext = _select_kernel(self.kernel, x)
        m, c = self._tables(x.dtype)
        return _SplashFunction.apply(x, m, c, -1.0 / self._delta(), self.K, channels, ext)

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel (dim 1) standardization, as a BatchNorm without affine parameters."""
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"SPLASH with norm=true was built for {self.num_features} channels (dim 1) but "
                f"got input of shape {tuple(x.shape)}"
            )
        return nn.functional.batch_norm(x, self.running_mean, self.running_var,
                                        training=self.training, momentum=0.1, eps=1e-5)

    def extra_repr(self) -> str:
        s = f"num_features={self.num_features}, S={self.S}, b_max={self.b_max:g}"
        if self.norm:
            s += ", norm=True"
        if self.per_channel:
            s += ", per_channel=True"
        if not self.fused:
            s += ", fused=False"
        if self.kernel != "auto":
            s += f", kernel={self.kernel!r}"
        return s


@torch.no_grad()
def calibrate_splash(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Calibrate every SPLASH layer of ``model`` from one forward pass on the batch ``x``.

    Each layer's offsets are scaled by the std of its own input in that pass. One pass suffices
    for a freshly initialised model: with the ReLU initialisation the offsets do not change the
    output, so calibrating one layer cannot shift the inputs of the next. The model is run in
    eval mode (BatchNorm running statistics are not updated) and put back as it was.
    Returns the names of the calibrated layers.
    """
    # Layers with norm=True standardize their input already: their offsets stay unit-scale.
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SPLASH) and not m.norm]
    stds: dict[str, float] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            stds.setdefault(name, float(args[0].double().std()))  # first call of the layer

        return hook

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in layers]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for n, m in layers:
        if n in stds:
            m.calibrate_(stds[n])
    return [n for n, _ in layers if n in stds]


@register_activation("splash")
def _build_splash(num_features: int, S: int = 7, b_max: float = 2.5, per_channel: bool = False,
                  fused: bool = True, kernel: str = "auto", norm: bool = False) -> nn.Module:
    """Factory builder: ``"splash"``, ``"splash:S=5,per_channel=true"``,
    ``"splash:kernel=eager"``, ``"splash:norm=true"``."""
    return SPLASH(num_features, S=S, b_max=b_max, per_channel=per_channel, fused=fused,
                  kernel=kernel, norm=norm)
