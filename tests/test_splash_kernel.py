"""SPLASH's compiled C++ kernel (``robustact.nn._splash_kernel``) against the eager path.

The eager ops are the reference (pinned against the literal definition in test_activations.py);
the kernel must give bitwise-equal values and input gradients (same interval index, same
products) and slope gradients equal up to summation order, for float32/float64, per-layer and
per-channel slopes, S with and without a vectorised specialisation (3, 5, 7 / 9), inputs exactly
at the hinges, negative slopes, NaN/inf, and sizes that leave vector tails and span several
parallel chunks. Selection (auto/eager/cpp, the environment variable, the fallbacks) is tested
without compiling.

Compilation: the ``ext`` fixture builds the kernel at most once per session (then PyTorch's
on-disk cache makes later sessions load it in about a second). Tests that need it skip only
when no C++ compiler or ninja is on PATH; a build that fails with a toolchain present fails.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import pytest
import torch
from _helpers import gen

from robustact.nn import _splash_kernel, activation_factory
from robustact.nn.splash import (
    SPLASH,
    _select_kernel,
    splash_implementation,
    splash_reference,
)


@pytest.fixture(scope="module")
def ext() -> ModuleType:
    """The compiled kernel (built once per session), or a skip when no toolchain exists."""
    module = _splash_kernel.load()
    if module is None:
        if not _splash_kernel.toolchain_available():
            pytest.skip("no C++ compiler or ninja on PATH: the SPLASH kernel cannot be built "
                        "here (SPLASH falls back to the eager path, tested elsewhere)")
        pytest.fail(f"SPLASH kernel build failed with a toolchain present: "
                    f"{_splash_kernel.load_error()!r}")
    return module


# --- selection (no compilation) -----------------------------------------------------------------

def test_kernel_option_is_validated() -> None:
    with pytest.raises(ValueError, match="kernel"):
        SPLASH(4, kernel="fast")
    with pytest.raises(ValueError, match="kernel"):
        activation_factory("splash:kernel=gpu")(4)
    m = activation_factory("splash:kernel=eager")(4)
    assert isinstance(m, SPLASH) and m.kernel == "eager" and "kernel='eager'" in repr(m)
    assert SPLASH(4, kernel="CPP").kernel == "cpp"


def test_selection_never_builds_for_unsupported_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build() -> None:
        raise AssertionError("load() must not be called")

    monkeypatch.setattr(_splash_kernel, "load", no_build)
    for x in (torch.zeros(3, dtype=torch.float16), torch.zeros(3, dtype=torch.bfloat16),
              torch.zeros(3, device="meta")):
        assert _select_kernel("auto", x) is None
        with pytest.raises(ValueError, match="float32/float64"):
            _select_kernel("cpp", x)
    assert _select_kernel("eager", torch.zeros(3)) is None


def test_kernel_choice_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer's ``kernel`` option is the whole choice: the old per-call variable is inert
    (an invalid value used to raise on every forward pass)."""
    monkeypatch.setenv("ROBUSTACT_SPLASH_KERNEL", "sometimes")
    m = SPLASH(3, kernel="eager")
    x = torch.randn(2, 3, generator=gen(0))
    assert torch.equal(m(x), torch.relu(x))
    assert _select_kernel("eager", torch.zeros(3)) is None
    assert SPLASH(3)(torch.zeros(2, 3, dtype=torch.float16)).dtype == torch.float16  # auto


def test_failed_build_falls_back_to_eager_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build failure is tried once, warned about once, and leaves SPLASH working (eager)."""
    calls = []

    def broken_build() -> Any:
        calls.append(1)
        raise OSError("no compiler here")

    monkeypatch.setattr(_splash_kernel, "_cache", {})  # a fresh process, as far as load() knows
    monkeypatch.setattr(_splash_kernel, "_build", broken_build)
    m = SPLASH(3, S=5)
    with torch.no_grad():
        m.a_pos.normal_(generator=gen(0))
        m.a_neg.normal_(generator=gen(1))
    x = torch.randn(4, 3, 5, generator=gen(2))
    with pytest.warns(RuntimeWarning, match="could not build the SPLASH C"):
        y = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = m(x)  # no second attempt, no second warning
    assert calls == [1] and torch.equal(y, y2)
    assert isinstance(_splash_kernel.load_error(), OSError)
    assert torch.allclose(y, splash_reference(x, m.a_pos, m.a_neg, m.offsets), atol=1e-5)
    m.kernel = "cpp"
    with pytest.raises(RuntimeError, match="could not be built"):
        m(x)


# --- the compiled kernel against the eager path -------------------------------------------------

def _pair(S: int, per_channel: bool, channels: int, dtype: torch.dtype,
          seed: int) -> tuple[SPLASH, SPLASH]:
    """Two identical SPLASH layers (random slopes of both signs, calibrated offsets), one forced
    eager and one forced cpp."""
    g = gen(seed)
    eager = SPLASH(channels, S=S, per_channel=per_channel, kernel="eager").to(dtype)
    eager.calibrate_(0.7)
    with torch.no_grad():
        eager.a_pos.copy_(torch.randn(eager.a_pos.shape, generator=g, dtype=dtype))
        eager.a_neg.copy_(torch.randn(eager.a_neg.shape, generator=g, dtype=dtype))
    cpp = SPLASH(channels, S=S, per_channel=per_channel, kernel="cpp").to(dtype)
    cpp.load_state_dict(eager.state_dict())
    return eager, cpp


def _input(shape: tuple[int, ...], m: SPLASH, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random values over all intervals, plus every hinge exactly, 0, −0 and ±inf."""
    x = torch.randn(shape, generator=gen(seed), dtype=dtype) * 2.5 * float(m.scale)
    delta = float(m.offsets[1])
    special = [s * delta for s in range(-m.K - 1, m.K + 2)] + [0.0, -0.0]
    special += [float(o) for o in m.offsets] + [-float(o) for o in m.offsets]
    flat = x.view(-1)
    for i, v in enumerate(special * 3):  # spread over positions (vector body and tail)
        flat[(7 * i) % flat.numel()] = v
    return x


def _run(m: SPLASH, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    m.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    y = m(xr)
    (y * w).sum().backward()
    return [y.detach(), xr.grad, m.a_pos.grad, m.a_neg.grad]


SHAPES = [(2, 3, 5, 7), (4, 3, 9, 9), (5, 3), (2, 3, 130, 131), (3, 3, 2, 1, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("S,per_channel", [(7, False), (7, True), (3, False), (5, True),
                                           (9, False), (9, True)])
def test_kernel_matches_eager(ext: ModuleType, dtype: torch.dtype, S: int,
                              per_channel: bool) -> None:
    eager, cpp = _pair(S, per_channel, 3, dtype, seed=S)
    # float64 eager on the same numbers: the yardstick for the float32 slope gradients, whose
    # eager sums (float32 scatter-adds over a whole sample) carry ~1e-5 relative error while
    # the kernel's (float32 over <= 128 terms, then float64) is far smaller.
    exact, _ = _pair(S, per_channel, 3, torch.float64, seed=S)
    exact.load_state_dict({k: v.double() for k, v in eager.state_dict().items()})
    for i, shape in enumerate(SHAPES):
        x = _input(shape, eager, dtype, seed=10 * S + i)
        w = torch.randn(shape, generator=gen(i), dtype=dtype)
        x_fin = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=dtype))
        ye, dxe, ape, ane = _run(eager, x_fin, w)
        yc, dxc, apc, anc = _run(cpp, x_fin, w)
        assert torch.equal(ye, yc), shape  # same interval index, same rounding
        assert torch.equal(dxe, dxc), shape
        _, _, apr, anr = _run(exact, x_fin.double(), w.double())
        for e, c, r in ((ape, apc, apr), (ane, anc, anr)):
            scale = float(r.abs().max())
            if dtype == torch.float64:
                assert torch.allclose(e, c, rtol=1e-11, atol=1e-11 * scale), shape
            else:
                assert torch.allclose(c.double(), r, rtol=1e-6, atol=1e-6 * scale), shape
                assert torch.allclose(e.double(), r, rtol=1e-5, atol=2e-5 * scale), shape
        # ±inf inputs: values (inf or nan alike) still agree bitwise in the forward
        with torch.no_grad():
            assert torch.equal(eager(x).isnan(), cpp(x).isnan())
            assert torch.equal(torch.nan_to_num(eager(x)), torch.nan_to_num(cpp(x)))


def test_kernel_nan_and_inference_and_partial_grads(ext: ModuleType) -> None:
    eager, cpp = _pair(7, True, 4, torch.float32, seed=3)
    x = torch.randn(6, 4, 5, generator=gen(4))
    x[0, 1, 2] = float("nan")
    with torch.no_grad():
        ye, yc = eager(x), cpp(x)
    assert torch.equal(ye.isnan(), yc.isnan()) and int(yc.isnan().sum()) == 1
    assert torch.equal(torch.nan_to_num(ye), torch.nan_to_num(yc))
    # only the input needs a gradient (frozen slopes), and only the slopes (fixed input)
    for m in (eager, cpp):
        m.requires_grad_(False)
    xr = [x.clone().requires_grad_() for _ in range(2)]
    g = torch.randn(x.shape, generator=gen(5))
    eager(xr[0]).backward(g)
    cpp(xr[1]).backward(g)
    assert torch.equal(torch.nan_to_num(xr[0].grad), torch.nan_to_num(xr[1].grad))
    x = torch.nan_to_num(x)
    grads = []
    for m in (eager, cpp):
        m.requires_grad_(True)
        m.zero_grad(set_to_none=True)
        m(x).backward(g)
        grads.append((m.a_pos.grad, m.a_neg.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


def test_kernel_gradcheck_and_double_backward(ext: ModuleType) -> None:
    """Finite differences through the kernel; create_graph falls back to the eager backward."""
    for pc in (False, True):
        _, cpp = _pair(7, pc, 3, torch.float64, seed=7)
        kinks = [s * float(o) for o in cpp.offsets for s in (1, -1)]
        x = torch.randn(2, 3, 4, generator=gen(8), dtype=torch.float64) * 1.5
        for p in kinks:
            x = torch.where((x - p).abs() < 1e-3, x + 2e-3, x)
        x.requires_grad_()
        assert torch.autograd.gradcheck(cpp, (x,))
    eager, cpp = _pair(5, False, 3, torch.float64, seed=9)
    x = torch.randn(3, 3, 4, generator=gen(10), dtype=torch.float64)
    out = []
    for m in (eager, cpp):
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad((m(xr) ** 2).sum(), xr, create_graph=True)
        (ga,) = torch.autograd.grad(gx.sum(), m.a_pos)
        out.append(ga)
    assert torch.allclose(out[0], out[1], rtol=1e-12, atol=1e-12)


def test_kernel_sums_do_not_depend_on_threads(ext: ModuleType) -> None:
    """Per-chunk partial sums in a fixed order: the result is the same for any thread count."""
    _, cpp = _pair(7, False, 3, torch.float32, seed=11)
    x = torch.randn(4, 3, 100, 100, generator=gen(12))
    g = torch.randn(x.shape, generator=gen(13))
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cpp.zero_grad(set_to_none=True)
            cpp(x).backward(g)
            grads.append(cpp.a_pos.grad.clone())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0], grads[1])


def test_auto_uses_the_kernel_when_built(ext: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTACT_SPLASH_KERNEL", "eager")  # no longer consulted
    assert _select_kernel("auto", torch.zeros(2)) is ext
    assert _select_kernel("auto", torch.zeros(2, dtype=torch.float64)) is ext
    assert splash_implementation(torch.zeros(2)) == "cpp"
    assert splash_implementation(torch.zeros(2), "eager") == "eager"
    assert splash_implementation(torch.zeros(2, dtype=torch.float16)) == "eager"
    assert _select_kernel("cpp", torch.zeros(2)) is ext
