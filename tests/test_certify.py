"""Certified bounds (issue 24): sound (sampled and attacked points never leave them), below the
exact answer of a mixed-integer program (SciPy's HiGHS, test-only), CROWN-IBP never looser than
IBP, every supported layer crossed, an unsupported one refused in one line naming it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from robustact.certify import UnsupportedModel, bound_graph, certify
from robustact.certify.bounds import ibp_bounds, input_box
from robustact.defenses.jumprelu_retrofit import retrofit_jumprelu
from robustact.defenses.output_activation import add_output_activation
from robustact.models import create_model
from robustact.nn import Normalize
from robustact.nn.splash import SPLASH

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


class Residual(nn.Module):
    """Conv, batch norm (eval, with non-trivial statistics), a residual add, both poolings,
    a functional relu and flatten: the layers of typical user models."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5], [0.25])
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(self.norm(x))))
        h = F.relu(h + self.conv2(h))
        return self.fc(torch.flatten(self.avg(self.pool(h)), 1))


def _residual() -> nn.Module:
    m = Residual()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m


def _mlp(act: nn.Module | None = None) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), act or nn.ReLU(), nn.Linear(12, 12),
                         nn.ReLU(), nn.Linear(12, 3))


def _splash() -> nn.Module:
    s = SPLASH(12, S=5, per_channel=True)
    with torch.no_grad():
        s.a_pos.uniform_(-1, 1.5)
        s.a_neg.uniform_(-1, 1.5)
    return _mlp(s)


MODELS = {
    "mlp": lambda: _seeded(_mlp),
    "residual": lambda: _seeded(_residual),
    "jump-retrofit": lambda: retrofit_jumprelu(_seeded(_mlp), 0.05),
    "sigmoid-output": lambda: add_output_activation(_seeded(_mlp), "sigmoid", 5.0),
    "tanh-mid": lambda: _seeded(lambda: _mlp(nn.Tanh())),
    "splash": lambda: _seeded(_splash),
}


def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = model(x).double()
    m = z.gather(1, y[:, None]) - z
    m[torch.arange(len(y)), y] = float("inf")
    return m.amin(1)


def _attacked_min(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                  steps: int = 30) -> torch.Tensor:
    """The smallest margin found by random points and a PGD on the margin inside the ball."""
    g = _gen(1)
    worst = _margins(model, x, y)
    for _ in range(100):
        d = torch.rand(x.shape, generator=g) * 2 - 1
        if norm == "l2":
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * torch.rand(len(x), 1, 1, 1,
                                                                              generator=g)
        worst = torch.minimum(worst, _margins(model, (x + eps * d).clamp(0, 1), y))
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        m = _margins(model, xa, y)
        (grad,) = torch.autograd.grad(m.sum(), xa)
        with torch.no_grad():
            if norm == "linf":
                xa = xa - eps / 8 * grad.sign()
                xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
            else:
                gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                xa = xa - eps / 4 * grad / gn
                d = xa - x
                dn = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                xa = (x + d * torch.clamp(eps / dn, max=1.0)).clamp(0, 1)
        worst = torch.minimum(worst, _margins(model, xa.detach(), y))
    return worst


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_no_sampled_or_attacked_point_leaves_the_bounds(name: str, norm: str) -> None:
    model = MODELS[name]()
    x = torch.rand(24, 1, 4, 4, generator=_gen(2))
    y = model(x).argmax(1)
    eps = 0.04 if norm == "linf" else 0.2
    cert = certify(model, x, y, eps=eps, norm=norm)
    found = _attacked_min(model, x, y, eps, norm)
    assert cert.crown_ibp is not None
    assert (cert.crown_ibp >= cert.ibp).all()  # never looser, by construction
    assert (found >= cert.crown_ibp - 1e-6).all(), (found - cert.crown_ibp).min()
    assert (found >= cert.ibp - 1e-6).all()
    # not vacuous: the bounds sit within reach of what the attack found on most samples
    assert (cert.crown_ibp > found - 10 * found.abs().max().clamp_min(1)).all()


def test_every_intermediate_interval_holds_the_layer_outputs() -> None:
    """IBP's interval of every step contains that step's value on sampled inputs."""
    model = MODELS["residual"]()
    steps = bound_graph(model)
    x = torch.rand(8, 1, 4, 4, generator=_gen(3))
    eps = 0.05
    bounds = ibp_bounds(steps, input_box(x, eps))
    g = _gen(4)
    for _ in range(20):
        xs = (x + eps * (torch.rand(x.shape, generator=g) * 2 - 1)).clamp(0, 1)
        values: list[torch.Tensor] = []
        for s in steps:
            if s.kind == "input":
                values.append(xs)
            elif s.kind == "add":
                values.append(values[s.inputs[0]] + values[s.inputs[1]])
            else:
                values.append(s.fn(values[s.inputs[0]]))
        for s, v, (lo, hi) in zip(steps, values, bounds, strict=True):
            assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all(), s.name


# ---------------------------------------------------------------- the exact reference

def _exact_min_margin(net: nn.Sequential, x: np.ndarray, y: int, j: int, eps: float) -> float:
    """min over the L∞ ball ∩ [0,1] of z_y − z_j for a Linear-ReLU network: a mixed-integer
    program (big-M with the IBP interval of each unit), solved by HiGHS."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    xl, xu = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    # variables: inputs, then per hidden layer (pre z, post a, binary d)
    names = [("x", len(x))]
    for w in layers[:-1]:
        n = w.out_features
        names += [("z", n), ("a", n), ("d", n)]
    offsets, total = {}, 0
    for i, (_, n) in enumerate(names):
        offsets[i] = total
        total += n
    rows, lb, ub = [], [], []
    var_lo, var_hi = np.full(total, -np.inf), np.full(total, np.inf)
    integrality = np.zeros(total)
    var_lo[: len(x)], var_hi[: len(x)] = xl, xu
    prev, prev_lo, prev_hi = 0, xl, xu
    for li, lin in enumerate(layers[:-1]):
        w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
        zo, ao, do = offsets[1 + 3 * li], offsets[2 + 3 * li], offsets[3 + 3 * li]
        n = w.shape[0]
        mid, rad = (prev_hi + prev_lo) / 2, (prev_hi - prev_lo) / 2
        zl, zu = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        for u in range(n):
            r = np.zeros(total)  # z = W a_prev + b
            r[zo + u] = 1
            r[prev: prev + w.shape[1]] = -w[u]
            rows.append(r), lb.append(b[u]), ub.append(b[u])
            for coef, bound in (((1, -1), 0.0),):  # a − z ≥ 0
                r = np.zeros(total)
                r[ao + u], r[zo + u] = coef
                rows.append(r), lb.append(bound), ub.append(np.inf)
            r = np.zeros(total)  # a ≤ z − zl (1 − d)  ⇔  a − z − zl d ≤ −zl
            r[ao + u], r[zo + u], r[do + u] = 1, -1, -zl[u]
            rows.append(r), lb.append(-np.inf), ub.append(-zl[u])
            r = np.zeros(total)  # a ≤ zu d
            r[ao + u], r[do + u] = 1, -zu[u]
            rows.append(r), lb.append(-np.inf), ub.append(0.0)
        var_lo[zo: zo + n], var_hi[zo: zo + n] = zl, zu
        var_lo[ao: ao + n], var_hi[ao: ao + n] = 0, np.maximum(zu, 0)
        var_lo[do: do + n], var_hi[do: do + n] = 0, 1
        integrality[do: do + n] = 1
        prev, prev_lo, prev_hi = ao, np.maximum(zl, 0), np.maximum(zu, 0)
    last = layers[-1]
    w, b = last.weight.detach().double().numpy(), last.bias.detach().double().numpy()
    c = np.zeros(total)
    c[prev: prev + w.shape[1]] = w[y] - w[j]
    res = milp(c, integrality=integrality, bounds=Bounds(var_lo, var_hi),
               constraints=LinearConstraint(np.array(rows), lb, ub))
    assert res.status == 0, res.message
    return float(res.fun + b[y] - b[j])


def test_bounds_never_exceed_the_exact_minimum() -> None:
    net = _seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                        nn.Linear(8, 3)), seed=5)
    model = nn.Sequential(nn.Flatten(), net).eval()
    x = torch.rand(12, 1, 2, 2, generator=_gen(6))
    y = model(x).argmax(1)
    for eps in (0.02, 0.1):
        cert = certify(model, x, y, eps=eps)
        exact = torch.tensor([min(_exact_min_margin(net, x[i].flatten().double().numpy(),
                                                     int(y[i]), j, eps)
                                  for j in range(3) if j != int(y[i])) for i in range(12)],
                             dtype=torch.float64)
        assert cert.crown_ibp is not None
        assert (cert.ibp <= exact + 1e-6).all() and (cert.crown_ibp <= exact + 1e-6).all()
        assert (cert.crown_ibp >= cert.ibp).all()
        # and the exact minimum is attained: the attack cannot go below it either
        assert (_attacked_min(model, x, y, eps, "linf") >= exact - 1e-6).all()
    # CROWN-IBP's backward bound is strictly tighter than IBP on a naturally trained net here
    cert = certify(model, x, y, eps=0.1)
    assert (cert.crown_ibp > cert.ibp + 1e-9).any()


# ---------------------------------------------------------------- coverage and refusals

@pytest.mark.parametrize("arch", ["mlp", "lenet5", "smallcnn", "resnet20", "madry_mnist"])
def test_zoo_models_are_bounded_soundly(arch: str) -> None:
    model = _seeded(lambda: create_model(arch, dataset="mnist"), seed=7)
    x = torch.rand(3, 1, 28, 28, generator=_gen(8))
    y = model(x).argmax(1)
    cert = certify(model, x, y, eps=0.002)
    assert cert.crown_ibp is not None
    found = _attacked_min(model, x, y, 0.002, "linf", steps=5)
    assert (found >= cert.crown_ibp - 1e-6).all()


class Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.flatten(1)))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


@pytest.mark.parametrize(("model", "needle"), [
    (Gelu(), "cannot cross act (GELU)"),
    (Branchy(), "cannot be traced"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1)), "(Softmax)"),
])
def test_unsupported_layers_are_refused_naming_them(model: nn.Module, needle: str) -> None:
    with pytest.raises(UnsupportedModel, match=None) as err:
        certify(model.eval(), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), eps=0.1)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_arguments_are_one_line() -> None:
    model = MODELS["mlp"]()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="method must be"):
        certify(model, x, y, eps=0.1, method="exact")
    with pytest.raises(ValueError, match="norm must be"):
        certify(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="train mode"):
        certify(model.train(), x, y, eps=0.1)


def test_certified_schedule_warms_up_ramps_and_holds() -> None:
    from robustact.train.certified import certified_spec, schedule_at

    spec = certified_spec("crown-ibp", 0.3, eps_train=0.4, warmup=1, ramp=2, kappa_end=0.0)
    assert schedule_at(spec, 0, 10) == (0.0, 1.0, 1.0)  # warm-up: natural training
    eps, kappa, beta = schedule_at(spec, 20, 10)  # half-way through the ramp
    assert eps == pytest.approx(0.2) and kappa == pytest.approx(0.5) and beta == 0.5
    assert schedule_at(spec, 1000, 10) == (pytest.approx(0.4), 0.0, 0.0)
    ibp = certified_spec("ibp", 0.1)
    assert ibp["eps_train"] == 0.1 and schedule_at(ibp, 10_000, 10)[2] == 0.0  # no CROWN
    for bad, needle in (({"kappa_end": 2}, "kappa_end"), ({"ramp": -1}, "ramp"),
                        ({"eps_train": 8}, "eps_train")):
        with pytest.raises(ValueError, match=needle):
            certified_spec("ibp", 0.1, **bad)
    with pytest.raises(ValueError, match="unknown certified recipe"):
        certified_spec("exact", 0.1)
