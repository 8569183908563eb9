"""The JumpReLU retrofit defense, its κ tuner, and the defense registry (JumpReLU side).

Tiny models defined here (ReLU modules; functional relu calls), plus one zoo model (LeNet-5).
Checks: κ = 0 is bit-identical to the original, κ > 0 computes the jump, undo restores, train mode
is ReLU, BPDA's gradient is the straight-through one, the tuner picks the known answer.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import gen
from torch import nn

from robustact.attacks.bpda import with_bpda
from robustact.defenses import (
    ALEXLIKE_KAPPA_GRID,
    MNIST_KAPPA_GRID,
    RESNET_KAPPA_GRID,
    JumpReLURetrofit,
    apply_defenses,
    describe_defenses,
    paper_kappa_grid,
    remove_jumprelu,
    retrofit_jumprelu,
    strip_defenses,
    tune_jumprelu,
)
from robustact.models import create_model
from robustact.nn.jumprelu import JumpReLU


class ModuleNet(nn.Module):
    """Classifier-shaped: ``features`` (with ReLU modules, one in place) and ``head``."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
                                  nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 4 - 2)  # "normalisation": pre-activations of both signs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FunctionalNet(nn.Module):
    """ReLUs called functionally in every spelling; no activation modules at all."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x * 4 - 2))
        h = torch.relu(self.c2(h)).flatten(1)
        h = F.relu(self.fc(h), inplace=True)
        return self.head(h.relu())


def _models() -> list[nn.Module]:
    torch.manual_seed(0)  # test-local weights; the library itself never seeds globally
    return [ModuleNet().eval(), FunctionalNet().eval()]


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=gen(seed))


def _jump_reference(net: nn.Module, x: torch.Tensor, kappa: float,
                    straight_through: bool = False) -> torch.Tensor:
    """The retrofit written out by hand: every ReLU of the tiny nets replaced by x·1[x > κ].

    ``straight_through``: the same values, with ReLU's derivative in the backward pass (what
    BPDA promises for JumpReLU).
    """

    def j(t: torch.Tensor) -> torch.Tensor:
        jump = t * (t > kappa)
        if straight_through:
            return F.relu(t) + (jump - F.relu(t)).detach()
        return jump

    if isinstance(net, ModuleNet):
        b = net.body
        h = j(b[2](j(b[0](x * 4 - 2)))).flatten(1)
        return net.head(j(b[5](h)))
    h = j(net.c2(j(net.c1(x * 4 - 2)))).flatten(1)
    return net.head(j(j(net.fc(h))))


@pytest.mark.parametrize("which", [0, 1], ids=["modules", "functional"])
def test_kappa0_is_bit_identical(which: int) -> None:
    net = _models()[which]
    x = _x()
    r = retrofit_jumprelu(net, 0.0)
    assert torch.equal(r(x), net(x))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    r(xa).logsumexp(1).sum().backward()
    net(xb).logsumexp(1).sum().backward()
    assert torch.equal(xa.grad, xb.grad)


@pytest.mark.parametrize("which", [0, 1], ids=["modules", "functional"])
@pytest.mark.parametrize("kappa", [0.05, 0.3])
def test_kappa_positive_computes_the_jump(which: int, kappa: float) -> None:
    net = _models()[which]
    x = _x()
    r = retrofit_jumprelu(net, kappa)
    with torch.no_grad():
        out, ref, plain = r(x), _jump_reference(net, x, kappa), net(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert not torch.allclose(out, plain, atol=1e-4)  # the jump does change the outputs


def test_functional_model_reroutes_and_modules_are_swapped() -> None:
    mod_net, fun_net = _models()
    r = retrofit_jumprelu(mod_net, 0.2)
    assert r.sites == ["body.1", "body.3", "body.6"]
    assert all(isinstance(r.base.body[i], JumpReLU) for i in (1, 3, 6))
    assert r.base.body[3].inplace
    rf = retrofit_jumprelu(fun_net, 0.2)
    assert rf.sites == []
    rf(_x())
    assert rf.functional_calls == 4  # F.relu, torch.relu, F.relu(inplace), Tensor.relu


@pytest.mark.parametrize("which", [0, 1], ids=["modules", "functional"])
def test_original_untouched_undo_and_remove(which: int) -> None:
    net = _models()[which]
    x = _x()
    before = net(x)
    modules_before = [type(m) for m in net.modules()]
    r = retrofit_jumprelu(net, 0.5)
    assert [type(m) for m in net.modules()] == modules_before  # a copy was retrofitted
    assert torch.equal(net(x), before)
    back = r.undo()
    assert torch.equal(back(x), before)
    assert not any(isinstance(m, JumpReLU) for m in back.modules())
    with pytest.raises(RuntimeError, match="undone"):
        r(x)
    r2 = retrofit_jumprelu(net, 0.5)
    assert torch.equal(remove_jumprelu(r2)(x), before)
    with pytest.raises(ValueError, match="not a JumpReLU retrofit"):
        remove_jumprelu(net)


def test_inplace_retrofit_and_undo_restores_the_same_modules() -> None:
    net = _models()[0]
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    r = retrofit_jumprelu(net, 0.5, inplace=True)
    assert r.base is net and not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert r.undo() is net
    assert [m for m in net.modules() if isinstance(m, nn.ReLU)] == relus  # same objects back


def test_kappa_setter_train_mode_and_delegation() -> None:
    net = _models()[0]
    x = _x()
    r = retrofit_jumprelu(net, 0.0)
    assert not r.training  # starts in the wrapped model's mode
    r.kappa = 0.3
    assert all(m.kappa == 0.3 for m in r.modules() if isinstance(m, JumpReLU))
    with torch.no_grad():
        assert torch.allclose(r(x), _jump_reference(net, x, 0.3), atol=1e-6)
        r.train()
        assert torch.equal(r(x), net(x))  # training: plain ReLU (the paper: inference only)
        r.eval()
        # classifier contract through the wrapper: features with the jump, head delegated
        assert torch.allclose(r.head(r.features(x)), r(x))
    assert r.head is r.base.head and r.num_classes == 3
    with pytest.raises(ValueError, match="kappa"):
        r.kappa = -1.0
    assert retrofit_jumprelu(r, 0.7).kappa == 0.7 and r.kappa == 0.3  # copy by default
    with pytest.raises(ValueError, match="already"):
        JumpReLURetrofit(r)


def test_relu_called_inside_a_jumprelu_hook_stays_relu() -> None:
    """BPDA substitutes F.relu for JumpReLU in a forward hook; the retrofit must not jump it."""
    r = retrofit_jumprelu(_models()[0], 0.5)
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor], out: torch.Tensor) -> None:
        seen.append(F.relu(args[0]))

    handle = r.base.body[1].register_forward_hook(hook)
    r(_x())
    handle.remove()
    pre = seen[0]
    assert torch.equal(pre, pre.clamp_min(0))  # a ReLU ...
    assert bool(((pre > 0) & (pre <= 0.5)).any())  # ... that kept values a jump would zero


def test_bpda_wrapper_sees_jumprelu_modules() -> None:
    r = retrofit_jumprelu(_models()[0], 0.5)
    x = _x().requires_grad_()
    w = with_bpda(r)
    assert len(w.matched_layers()) == 3
    out = w(x)
    assert torch.equal(out, r(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    # the gradient is the straight-through one: jump values forward, ReLU derivative backward
    xr = x.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(_jump_reference(_models()[0], xr, 0.5, True).sum(), xr)
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    # ... which differs from the jump's own (masked) gradient, else the test would prove nothing
    (masked,) = torch.autograd.grad(r(xr).sum(), xr)
    assert not torch.allclose(grad, masked, atol=1e-4)


# --- the κ tuner ------------------------------------------------------------------------------

class Threshold(nn.Module):
    """Two classes; logit 0 is relu(pixel), logit 1 is 0.05. Every label is 0, so a sample is
    right iff relu survives: under JumpReLU_κ, accuracy(κ) = fraction of pixels > κ."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        h = F.relu(v) if self.functional else self.act(v)
        return torch.cat([h, torch.full_like(h, 0.05)], dim=1)


@pytest.mark.parametrize("functional", [False, True])
def test_tuner_picks_the_largest_kappa_within_budget(functional: bool) -> None:
    x = torch.arange(1, 11, dtype=torch.float32).div(10).view(10, 1, 1, 1)  # 0.1 … 1.0
    y = torch.zeros(10, dtype=torch.long)
    model = Threshold(functional).eval()
    grid = [0.55, 0.0, 0.15, 0.25, 0.35]
    # accuracy: κ=0 → 100 %, 0.15 → 90, 0.25 → 80, 0.35 → 70, 0.55 → 50 (drops 0/10/20/30/50)
    res = tune_jumprelu(model, x, y, grid, max_drop=20.0, batch_size=3, progress=False)
    assert res.kappa == 0.25
    assert res.baseline_acc == 1.0
    assert [k for k, _ in res.curve] == [0.0, 0.15, 0.25, 0.35, 0.55]
    assert [a for _, a in res.curve] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.5])
    assert tune_jumprelu(model, x, y, grid, max_drop=25.0, progress=False).kappa == 0.25
    assert tune_jumprelu(model, x, y, grid, max_drop=50.0, progress=False).kappa == 0.55
    assert tune_jumprelu(model, x, y, grid, max_drop=5.0, progress=False).kappa == 0.0
    assert isinstance(model.act, nn.ReLU)  # the model itself is not modified
    assert res.to_dict()["kappa"] == 0.25


def test_tuner_validates() -> None:
    model = Threshold(False)
    x = torch.rand(4, 1, 1, 1, generator=gen(2))
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="train mode"):
        tune_jumprelu(model, x, y, [0.0], progress=False)
    model.eval()
    with pytest.raises(ValueError, match="grid"):
        tune_jumprelu(model, x, y, [], progress=False)
    with pytest.raises(ValueError, match="kappa|grid"):
        tune_jumprelu(model, x, y, [0.0, -1.0], progress=False)
    with pytest.raises(ValueError, match="max_drop"):
        tune_jumprelu(model, x, y, [0.0], max_drop=-1, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tune_jumprelu(model, x * 3, y, [0.0], progress=False)


def test_paper_grids() -> None:
    assert MNIST_KAPPA_GRID == (0.0, 0.5, 1.0, 1.5)
    assert ALEXLIKE_KAPPA_GRID == pytest.approx([0.1 * i for i in range(9)])
    assert len(RESNET_KAPPA_GRID) == 10 and RESNET_KAPPA_GRID[-1] == pytest.approx(0.09)
    assert paper_kappa_grid("lenetlike", "mnist") is MNIST_KAPPA_GRID
    assert paper_kappa_grid("alexlike", "cifar10") is ALEXLIKE_KAPPA_GRID
    assert paper_kappa_grid("resnet20", "cifar10") is RESNET_KAPPA_GRID


# --- registry (JumpReLU side) and a zoo model ---------------------------------------------------

def test_registry_round_trip_with_jumprelu() -> None:
    net = _models()[0]
    x = _x()
    defended = apply_defenses(net, [{"type": "jumprelu", "kappa": 0.3}])
    assert isinstance(defended, JumpReLURetrofit) and isinstance(net.body[1], nn.ReLU)
    specs = describe_defenses(defended)
    assert specs == [{"type": "jumprelu", "kappa": 0.3}]
    fresh = copy.deepcopy(net)
    rebuilt = apply_defenses(fresh, specs)
    rebuilt.load_state_dict(defended.state_dict())  # same keys: base.<original names>
    assert torch.equal(rebuilt(x), defended(x))
    stripped = strip_defenses(defended)
    assert torch.equal(stripped(x), net(x)) and isinstance(defended.base.body[1], JumpReLU)
    assert describe_defenses(net) == []
    for bad, err in (([{"type": "jump"}], ValueError), ([{"type": "jumprelu"}], ValueError),
                     ([{"type": "jumprelu", "kappa": 1, "x": 2}], ValueError),
                     (["jumprelu"], TypeError), ({"type": "jumprelu"}, TypeError)):
        with pytest.raises(err):
            apply_defenses(net, bad)  # type: ignore[arg-type]


def test_zoo_model_retrofit() -> None:
    net = create_model("lenet5", dataset="mnist").eval()
    x = torch.rand(4, 1, 28, 28, generator=gen(3))
    relus = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
    r = retrofit_jumprelu(net, 0.0)
    assert r.sites == relus and len(relus) > 0
    assert torch.equal(r(x), net(x))
    assert torch.equal(r.features(x), net.features(x))
    r.kappa = 1.0
    assert not torch.equal(r(x), net(x))
    assert torch.equal(r.undo()(x), net(x))
