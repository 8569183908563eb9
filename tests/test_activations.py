"""Custom activations (JumpReLU, SPLASH, APL, Maxout), their factory specs, and model surgery.

Definitions are pinned with hand-computed values; gradients with gradcheck / finite differences
in float64; the fused SPLASH path against its literal definition. Tiny tensors, CPU, seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import gen
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from robustact.nn import activation_factory, available_activations, create_activation
from robustact.nn.apl import APL
from robustact.nn.jumprelu import JumpReLU, jump_relu
from robustact.nn.maxout import Maxout
from robustact.nn.splash import SPLASH, calibrate_splash, splash_reference
from robustact.nn.surgery import JumpReLUMode, find_activations, replace_modules, set_module


def _away_from(x: torch.Tensor, points: list[float], gap: float = 1e-3) -> torch.Tensor:
    """Push values that are within ``gap`` of a kink away from it (finite differences need it)."""
    for p in points:
        near = (x - p).abs() < gap
        x = torch.where(near, x + 2 * gap, x)
    return x


# --- JumpReLU -----------------------------------------------------------------------------------

def test_jumprelu_hand_values_and_gradient() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0], requires_grad=True)
    act = JumpReLU(kappa=1.0).eval()
    y = act(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 1.5, 2.0]  # x = κ is zeroed: strict x > κ
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_jumprelu_kappa0_is_relu_bit_for_bit() -> None:
    x = torch.tensor([-0.0, 0.0, -2.0, 3.0, float("nan"), float("-inf"), float("inf"), 1e-30])
    y, r = JumpReLU(0.0)(x), F.relu(x)
    assert torch.equal(y.isnan(), r.isnan())
    finite = ~r.isnan()
    assert torch.equal(y[finite], r[finite])
    assert torch.equal(torch.signbit(y), torch.signbit(r))  # -0.0 stays -0.0, like relu
    z = torch.randn(50, generator=gen(), dtype=torch.float64).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    JumpReLU(0.0)(z).pow(2).sum().backward()
    F.relu(z2).pow(2).sum().backward()
    assert torch.equal(z.grad, z2.grad)


def test_jumprelu_train_mode_is_relu_unless_train_kappa() -> None:
    x = torch.tensor([0.5, 1.5])
    act = JumpReLU(1.0)
    assert act.training
    assert act(x).tolist() == [0.5, 1.5]
    assert JumpReLU(1.0, train_kappa=True)(x).tolist() == [0.0, 1.5]
    assert act.eval()(x).tolist() == [0.0, 1.5]


def test_jumprelu_inplace_and_functional() -> None:
    x = torch.tensor([0.25, 0.75, -1.0])
    out = jump_relu(x, 0.5, inplace=True)
    assert out.data_ptr() == x.data_ptr() and x.tolist() == [0.0, 0.75, 0.0]
    assert jump_relu(torch.tensor([0.25, 0.75]), 0.5).tolist() == [0.0, 0.75]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_jumprelu_bad_kappa_value(bad: float) -> None:
    with pytest.raises(ValueError, match="kappa"):
        JumpReLU(bad)


@pytest.mark.parametrize("bad", ["1", True, None])
def test_jumprelu_bad_kappa_type(bad: object) -> None:
    with pytest.raises(TypeError, match="kappa"):
        JumpReLU(bad)  # type: ignore[arg-type]


# --- SPLASH -------------------------------------------------------------------------------------

def _splash3(per_channel: bool = False) -> SPLASH:
    """S = 3: offsets (0, 2.5); h = relu(x) + 0.5·relu(x−2.5) + 0.25·relu(−x) + 2·relu(−x−2.5)."""
    m = SPLASH(2, S=3, per_channel=per_channel).double()
    with torch.no_grad():
        m.a_pos.copy_(torch.tensor([1.0, 0.5]))
        m.a_neg.copy_(torch.tensor([0.25, 2.0]))
    return m


@pytest.mark.parametrize("fused", [True, False])
def test_splash_hand_values(fused: bool) -> None:
    m = _splash3()
    m.fused = fused
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5, 3.0], dtype=torch.float64)
    # -3: 0.25·3 + 2·0.5 = 1.75; -1: 0.25; 0: 0; 1: 1; 2.5: 2.5; 3: 3 + 0.5·0.5 = 3.25
    expected = [1.75, 0.25, 0.0, 1.0, 2.5, 3.25]
    assert m(x).tolist() == pytest.approx(expected, abs=1e-12)


def test_splash_per_channel_hand_values() -> None:
    m = SPLASH(2, S=3, per_channel=True).double()
    with torch.no_grad():
        m.a_pos.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        m.a_neg.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    x = torch.tensor([[[3.0], [-1.0]], [[-1.0], [3.0]]], dtype=torch.float64)  # (N=2, C=2, 1)
    # channel 0: relu(x); channel 1: 2·relu(x) + relu(x−2.5) + relu(−x)
    expected = torch.tensor([[[3.0], [1.0]], [[0.0], [6.5]]], dtype=torch.float64)
    assert torch.allclose(m(x), expected, atol=1e-12)


def test_splash_offsets_and_init() -> None:
    m = SPLASH(4)
    assert m.S == 7 and m.K == 4
    assert torch.allclose(m.offsets, torch.tensor([0.0, 2.5 / 3, 5.0 / 3, 2.5]))
    assert m.a_pos.tolist() == [1.0, 0.0, 0.0, 0.0] and m.a_neg.tolist() == [0.0] * 4
    assert tuple(SPLASH(4, S=5, per_channel=True).a_pos.shape) == (4, 3)


# kernel="auto" runs the compiled C++ kernel where it builds (see test_splash_kernel.py), so the
# SPLASH definition tests below cover both implementations.
@pytest.mark.parametrize("kernel", ["eager", "auto"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_splash_relu_init_is_relu_exactly(per_channel: bool, kernel: str) -> None:
    m = SPLASH(3, per_channel=per_channel, kernel=kernel)
    x = torch.randn(4, 3, 5, 5, generator=gen(1)) * 3
    x[0, 0, 0, :3] = torch.tensor([0.0, 2.5 / 3, -2.5])  # exact zero and exact hinges
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = m(x1), F.relu(x2)
    assert torch.equal(y1, y2)
    g = torch.randn(y1.shape, generator=gen(2))
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), S=st.sampled_from([3, 5, 7]), pc=st.booleans(),
       scale=st.floats(0.1, 5.0), kernel=st.sampled_from(["eager", "auto"]))
def test_splash_grounded_and_matches_reference(seed: int, S: int, pc: bool, scale: float,
                                               kernel: str) -> None:
    g = gen(seed)
    m = SPLASH(3, S=S, per_channel=pc, kernel=kernel).double().calibrate_(scale)
    with torch.no_grad():
        m.a_pos.copy_(torch.randn(m.a_pos.shape, generator=g, dtype=torch.float64))
        m.a_neg.copy_(torch.randn(m.a_neg.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 3 * scale
    x[0, :, 0] = 0.0
    y = m(x)
    assert torch.all(y[0, :, 0] == 0)  # h(0) = 0 for any slopes
    ref = splash_reference(x, m.a_pos, m.a_neg, m.offsets)
    assert torch.allclose(y, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["eager", "auto"])
@pytest.mark.parametrize("S,per_channel", [(3, False), (5, True), (7, False), (7, True)])
def test_splash_gradcheck_fused(S: int, per_channel: bool, kernel: str) -> None:
    m = SPLASH(3, S=S, per_channel=per_channel, kernel=kernel).double().calibrate_(0.8)
    g = gen(S)
    with torch.no_grad():
        m.a_pos.copy_(torch.randn(m.a_pos.shape, generator=g, dtype=torch.float64))
        m.a_neg.copy_(torch.randn(m.a_neg.shape, generator=g, dtype=torch.float64))
    kinks = [s * float(o) for o in m.offsets for s in (1, -1)]
    x = _away_from(torch.randn(2, 3, 3, generator=g, dtype=torch.float64) * 2.5, kinks)
    x.requires_grad_()
    ap = m.a_pos.detach().clone().requires_grad_()
    an = m.a_neg.detach().clone().requires_grad_()

    def f(x: torch.Tensor, ap: torch.Tensor, an: torch.Tensor) -> torch.Tensor:
        # the module's own (fused) forward, with its slopes as differentiable inputs
        return functional_call(m, {"a_pos": ap, "a_neg": an}, (x,))

    assert torch.autograd.gradcheck(f, (x, ap, an))


@pytest.mark.parametrize("kernel", ["eager", "auto"])
def test_splash_fused_gradients_match_reference_float32(kernel: str) -> None:
    g = gen(3)
    m = SPLASH(8, per_channel=True, kernel=kernel)
    with torch.no_grad():
        m.a_pos.normal_(generator=g)
        m.a_neg.normal_(generator=g)
    x = torch.randn(16, 8, 6, 6, generator=g).requires_grad_()
    w = torch.randn(16, 8, 6, 6, generator=g)
    (m(x) * w).sum().backward()
    fused = [x.grad.clone(), m.a_pos.grad.clone(), m.a_neg.grad.clone()]
    x.grad = m.a_pos.grad = m.a_neg.grad = None
    (splash_reference(x, m.a_pos, m.a_neg, m.offsets) * w).sum().backward()
    for a, b in zip(fused, [x.grad, m.a_pos.grad, m.a_neg.grad], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_splash_fused_saves_only_the_input() -> None:
    """The memory-lean claim: one activation-sized tensor kept for backward, not S of them."""
    x = torch.randn(8, 4, 10, 10, generator=gen(4)).requires_grad_()
    big: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() >= x.numel():
            big.append(t.numel())
        return t

    counts = {}
    for fused, kernel in ((True, "eager"), (True, "auto"), (False, "auto")):
        big.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            SPLASH(4, S=7, fused=fused, kernel=kernel)(x)
        counts[fused, kernel] = len(big)
    assert counts[True, "eager"] == counts[True, "auto"] == 1  # x itself
    assert counts[False, "auto"] >= 8  # the literal sum keeps intermediates of all 8 hinge terms


def test_splash_nan_propagates_and_bad_inputs() -> None:
    m = SPLASH(2)
    y = m(torch.tensor([float("nan"), 1.0])).detach()
    assert math.isnan(y[0]) and y[1] == 1.0
    with pytest.raises(ValueError, match="channels"):
        SPLASH(3, per_channel=True)(torch.zeros(2, 4, 5))


@pytest.mark.parametrize("S", [1, 2, 4, 8, -3])
def test_splash_bad_S(S: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        SPLASH(4, S=S)
    with pytest.raises(ValueError, match="odd"):
        activation_factory(f"splash:S={S}")(4)


def test_splash_calibration() -> None:
    x = torch.randn(1000, generator=gen(5)) * 3.0
    m = SPLASH(1).calibrate(x)
    std = float(x.double().std())
    assert torch.allclose(m.offsets, torch.linspace(0, 2.5, 4) * std)
    # the value follows the new offsets (hinges at ±b·std)
    with torch.no_grad():
        m.a_pos.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    b2 = float(m.offsets[1])
    assert m(torch.tensor([b2 + 1.0, b2 - 0.1])).tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match="std"):
        m.calibrate_(0.0)
    # a state-dict round trip carries the calibration (and the cached spacing follows it)
    fresh = SPLASH(1)
    fresh.load_state_dict(m.state_dict())
    z = torch.randn(50, generator=gen(6)) * 5
    assert torch.equal(fresh(z), m(z))
    with torch.no_grad():
        fresh.scale.fill_(1.0)  # in-place edit of the buffer is picked up too
    assert torch.allclose(fresh(z), splash_reference(z, fresh.a_pos, fresh.a_neg, fresh.offsets))


def test_calibrate_splash_on_a_model() -> None:
    net = nn.Sequential(nn.Linear(5, 6), SPLASH(6), nn.Linear(6, 3), SPLASH(3, per_channel=True))
    x = torch.randn(64, 5, generator=gen(7)) * 4
    names = calibrate_splash(net, x)
    assert names == ["1", "3"]
    with torch.no_grad():
        pre1 = net[0](x)
        pre3 = net[2](net[1](pre1))
    assert float(net[1].scale) == pytest.approx(float(pre1.double().std()), rel=1e-6)
    assert float(net[3].scale) == pytest.approx(float(pre3.double().std()), rel=1e-6)
    assert net.training  # mode restored


# --- APL and Maxout ----------------------------------------------------------------------------

def test_apl_hand_values_and_relu_init() -> None:
    m = APL(1, S=2, per_channel=False).double()
    assert torch.equal(m(torch.tensor([-2.0, 0.5], dtype=torch.float64)),
                       torch.tensor([0.0, 0.5], dtype=torch.float64))  # a = 0: ReLU
    assert m.b.tolist() == [-1.0, 1.0]
    with torch.no_grad():
        m.a.copy_(torch.tensor([0.5, 2.0]))
        m.b.copy_(torch.tensor([1.0, -1.0]))
    # h = relu(x) + 0.5·relu(1 − x) + 2·relu(−1 − x)
    x = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    assert m(x).tolist() == pytest.approx([3.5, 0.5, 2.0])


def test_apl_per_channel_gradcheck() -> None:
    m = APL(3, S=2).double()
    g = gen(8)
    a = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    x = _away_from(x, [0.0]).requires_grad_()
    for c in range(3):  # keep away from each channel's hinges
        for s in range(2):
            near = (x[:, c] - b[c, s]).abs() < 1e-3
            x.data[:, c][near] += 2e-3

    def f(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        view = (1, 3, 1)
        out = F.relu(x)
        for s in range(2):
            out = out + a[:, s].view(view) * F.relu(b[:, s].view(view) - x)
        return out

    with torch.no_grad():
        m.a.copy_(a)
        m.b.copy_(b)
    assert torch.allclose(m(x), f(x, a, b))
    assert torch.autograd.gradcheck(f, (x, a, b))
    # the module's parameter gradients are the reference's (gradcheck-verified) ones
    ga, gb = torch.autograd.grad(f(x, a, b).sum(), (a, b))
    m(x).sum().backward()
    torch.testing.assert_close(m.a.grad, ga)
    torch.testing.assert_close(m.b.grad, gb)


def test_maxout_hand_values_and_relu_init() -> None:
    for k in (2, 3, 4):
        m = Maxout(2, k=k)
        x = torch.randn(3, 2, 4, generator=gen(k)) * 2
        assert torch.equal(m(x), F.relu(x)), k
    m = Maxout(1, k=2, per_channel=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, -0.5]))
        m.bias.copy_(torch.tensor([0.0, 1.0]))
    # h = max(x, 1 − 0.5x)
    x = torch.tensor([-2.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    assert m(x).tolist() == [2.0, 1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="k"):
        Maxout(2, k=1)


def test_maxout_finite_differences() -> None:
    m = Maxout(3, k=3).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(3, 3, generator=gen(9), dtype=torch.float64))
        m.bias.copy_(torch.randn(3, 3, generator=gen(10), dtype=torch.float64))
    x = torch.randn(2, 3, 5, generator=gen(11), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))


# --- the factory ------------------------------------------------------------------------------

def test_factory_specs_build_the_right_modules() -> None:
    assert {"jumprelu", "splash", "apl", "maxout"} <= set(available_activations())
    s = activation_factory("splash:S=5,per_channel=true")(8)
    assert isinstance(s, SPLASH) and s.S == 5 and s.per_channel and s.a_pos.shape == (8, 3)
    j = create_activation("jumprelu:kappa=1.0", 4)
    assert isinstance(j, JumpReLU) and j.kappa == 1.0
    a = create_activation("apl:S=3,per_channel=false", 4)
    assert isinstance(a, APL) and a.a.shape == (3,)
    mx = create_activation("maxout:k=3", 5)
    assert isinstance(mx, Maxout) and mx.weight.shape == (5, 3)
    f = activation_factory("splash")
    assert f(4) is not f(4)  # every site gets its own module
    with pytest.raises(ValueError, match="does not take alpha"):
        activation_factory("jumprelu:alpha=1")(3)


# --- surgery -----------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = shared


def _surgery_net() -> nn.Module:
    shared = nn.ReLU()
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _Block(shared), _Block(shared), nn.Tanh())


def test_find_activations() -> None:
    net = _surgery_net()
    names = [n for n, _ in find_activations(net)]
    assert names == ["1", "2.act", "4"]  # the shared ReLU once, under its first name
    assert [n for n, _ in find_activations(net, nn.Tanh)] == ["4"]
    with pytest.raises(TypeError):
        find_activations(net, "relu")  # type: ignore[arg-type]


def test_replace_modules_replaces_every_site() -> None:
    net = _surgery_net()
    old: dict[str, nn.Module] = {}

    def make(name: str, module: nn.Module) -> nn.Module:
        old[name] = module
        return JumpReLU(0.5)

    replaced = replace_modules(net, nn.ReLU, make)
    assert replaced == ["1", "2.act", "3.act"]  # shared module: replaced at each name
    assert net[2].act is not net[3].act
    assert all(isinstance(m, JumpReLU) for _, m in find_activations(net, JumpReLU))
    assert old["2.act"] is old["3.act"]
    for name, module in old.items():  # undo
        set_module(net, name, module)
    assert net[2].act is net[3].act and isinstance(net[1], nn.ReLU)
    # predicate form, by name
    assert replace_modules(net, lambda n, m: n == "4", lambda n, m: nn.Sigmoid()) == ["4"]
    with pytest.raises(TypeError, match="nn.Module"):
        replace_modules(net, nn.Sigmoid, lambda n, m: "not a module")  # type: ignore[arg-type]
    assert replace_modules(net, lambda n, m: n == "", lambda n, m: nn.Identity()) == []


def test_replace_does_not_reprocess_new_modules() -> None:
    net = nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU()))
    replaced = replace_modules(net, (nn.ReLU, JumpReLU), lambda n, m: JumpReLU(1.0))
    assert replaced == ["0", "1.0"]


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(x)
        b = torch.relu(x)
        c = x.relu()
        d = F.relu(self.lin(x), inplace=True)
        e = torch.relu_(x.clone())
        f = x.clone().relu_()
        g = nn.ReLU()(x)
        return torch.stack([a, b, c, d - d.detach() + d.detach(), e, f, g])


def test_jumprelu_mode_reroutes_every_functional_relu() -> None:
    net = _FunctionalNet()
    x = torch.tensor([[0.2, 0.8, -1.0]])
    with torch.no_grad():
        net.lin.weight.copy_(torch.eye(3))
        net.lin.bias.zero_()
    plain = net(x)
    assert torch.equal(plain, F.relu(x).expand(7, 1, 3))
    mode = JumpReLUMode(0.5)
    with mode:
        jumped = net(x)
    assert mode.calls == 7
    assert torch.equal(jumped, torch.tensor([[0.0, 0.8, 0.0]]).expand(7, 1, 3))
    with mode, mode.suspended():
        assert torch.equal(net(x), plain)
    with mode:  # other functions are untouched
        assert torch.equal(torch.tanh(x), x.tanh()) and torch.equal(F.gelu(x), F.gelu(x))


@pytest.mark.parametrize("cls", [APL, Maxout])
def test_piecewise_activations_share_their_channel_checks(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__} num_features must be a positive int"):
        cls(0)
    m = cls(3)
    with pytest.raises(ValueError, match=f"per-channel {cls.__name__} was built for 3 channels"):
        m(torch.zeros(2, 4))
    # the registered builder is the class itself: a wrong keyword is refused when the spec is
    # read, with the class's own parameter names
    with pytest.raises(ValueError, match="does not take nope; it accepts: .*per_channel"):
        activation_factory(f"{cls.__name__.lower()}:nope=1")
    # per layer: the same pieces for every channel, any input shape
    assert cls(3, per_channel=False)(torch.zeros(2, 5, 4)).shape == (2, 5, 4)
