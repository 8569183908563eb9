"""Definitions of the fixed-budget gradient attacks, BPDA, verification and transfer.

Every expected value here is derived by hand (closed forms on linear / one-pixel models, finite
differences, the APGD paper's schedule), never copied from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import fit_full_batch, predict
from torch import nn

from robustact.attacks import (
    APGD,
    BIM,
    BPDA,
    FGSM,
    IFGSM,
    MIM,
    PGD,
    AttackResult,
    TransferAttack,
    clip_to_box,
    normalize_direction,
    project,
    random_start,
    robust_accuracy,
    verify,
    with_bpda,
)
from robustact.attacks._utils import loss_and_grad, objective
from robustact.attacks.apgd import apgd_checkpoints
from robustact.attacks.base import LogitsView
from robustact.losses.attack import ce_loss, dlr_loss, margin_loss

# ---------------------------------------------------------------------------------------------
# tiny models


def linear_model(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    """logits = W · flatten(x) + b, float64, eval mode."""
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


def one_pixel_model(threshold: float = 0.5) -> nn.Module:
    """Two classes on a single pixel: z = (0, x − threshold), so class 1 iff x > threshold."""
    return linear_model(torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                        torch.tensor([0.0, -threshold], dtype=torch.float64))


def pixels(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)


def small_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, classes)).double().eval()


# ---------------------------------------------------------------------------------------------
# _utils: projection, box, directions, random starts


def test_project_linf_clamps_each_coordinate() -> None:
    d = torch.tensor([[0.5, -0.2, 0.05]])
    assert torch.equal(project(d, 0.1, "linf"), torch.tensor([[0.1, -0.1, 0.05]]))


def test_project_l2_rescales_only_rows_outside() -> None:
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    p = project(d, 1.0, "l2")
    assert torch.allclose(p[0], torch.tensor([0.6, 0.8], dtype=torch.float64), atol=1e-15)
    assert torch.equal(p[1:], d[1:])  # inside rows and the zero row untouched, no NaN
    assert torch.equal(project(p, 1.0, "l2")[1:], p[1:])


def test_project_per_sample_radius() -> None:
    d = torch.tensor([[0.5, -0.5], [0.5, -0.5]])
    p = project(d, torch.tensor([0.1, 0.3]), "linf")
    assert torch.equal(p, torch.tensor([[0.1, -0.1], [0.3, -0.3]]))
    with pytest.raises(ValueError, match="per-sample"):
        project(d, torch.tensor([0.1, 0.2, 0.3]), "linf")


def test_clip_to_box_ball_then_box() -> None:
    x = torch.tensor([[0.95, 0.0]])
    assert torch.allclose(clip_to_box(torch.tensor([[1.2, -0.3]]), x, 0.1, "linf"),
                          torch.tensor([[1.0, 0.0]]))
    x2 = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    out = clip_to_box(x2 + torch.tensor([[3.0, 4.0]], dtype=torch.float64), x2, 0.5, "l2")
    assert torch.allclose(out, torch.tensor([[0.8, 0.9]], dtype=torch.float64), atol=1e-15)
    assert torch.equal(clip_to_box(torch.tensor([[1.7, -2.0]]), x, None, "linf"),
                       torch.tensor([[1.0, 0.0]]))


def test_normalize_direction_values_and_zero_rows() -> None:
    g = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert torch.equal(normalize_direction(g, "linf"), torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    assert torch.allclose(normalize_direction(g, "l2"), torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    assert torch.allclose(normalize_direction(g, "l1"),
                          torch.tensor([[3 / 7, -4 / 7], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown norm"):
        normalize_direction(g, "l3")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_in_ball_reproducible_and_private_rng(norm: str) -> None:
    x = torch.full((200, 1, 2, 2), 0.5)
    state = torch.get_rng_state()
    a = random_start(x, 0.2, norm, torch.Generator().manual_seed(3))
    b = random_start(x, 0.2, norm, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    assert torch.equal(a, b)
    d = (a - x).flatten(1)
    n = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(n.max()) <= 0.2 + 1e-6
    if norm == "l2":
        # uniform in a 4-ball: E[r/ε] = d/(d+1) = 0.8 (std of the mean ≈ 0.011 here)
        assert abs(float((n / 0.2).mean()) - 0.8) < 0.05
    else:
        assert abs(float(d.mean())) < 0.02 and float(n.max()) > 0.15


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("loss_fn", [ce_loss, margin_loss, dlr_loss])
def test_loss_and_grad_matches_finite_differences(loss_fn) -> None:
    model = small_cnn(1)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    loss, grad, logits = loss_and_grad(LogitsView(model), x, loss_fn, y, None)
    assert torch.allclose(logits, model(x))
    h = 1e-6
    for flat_index in [0, 7, 20, 35]:
        e = torch.zeros_like(x).flatten(1)
        e[:, flat_index] = h
        e = e.view_as(x)
        with torch.no_grad():
            fd = (loss_fn(model(x + e), y, False) - loss_fn(model(x - e), y, False)) / (2 * h)
        assert torch.allclose(grad.flatten(1)[:, flat_index], fd, atol=1e-6)


def test_loss_and_grad_cut_graph_gives_zero_gradient() -> None:
    class Step(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x > 0.5).to(x.dtype)

    model = nn.Sequential(Step(), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 1, 2, 2)
    _, grad, _ = loss_and_grad(LogitsView(model), x, ce_loss, torch.tensor([0, 1]), None)
    assert torch.equal(grad, torch.zeros_like(x))


def test_objective_targeted_dlr_uses_true_and_target_labels() -> None:
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    # −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2) = −(4 − 1) / (4 − 0.5)
    assert torch.allclose(objective(dlr_loss, z, y, t), torch.tensor([-3.0 / 3.5]))
    assert torch.allclose(objective(ce_loss, z, y, t), -F.cross_entropy(z, t, reduction="none"))


# ---------------------------------------------------------------------------------------------
# FGSM


def test_fgsm_matches_closed_form_on_linear_model() -> None:
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    model = linear_model(w, b)
    x = torch.rand(5, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    # d CE / d x = Wᵀ (softmax(z) − onehot(y))
    p = torch.softmax(x.flatten(1) @ w.T + b, 1)
    grad = (p - F.one_hot(y, 3).double()) @ w
    expected = (x.flatten(1) + 0.1 * grad.sign()).clamp(0, 1).view_as(x)
    r = FGSM(0.1)(model, x, y)
    assert torch.allclose(r.x_adv, expected, atol=1e-12)
    assert r.info["eps"] == 0.1 and r.norm == "linf"
    # FGM (L2): one step of length ε along g/‖g‖ (x chosen so the box is not active)
    xc = torch.full_like(x, 0.5)
    pc = torch.softmax(xc.flatten(1) @ w.T + b, 1)
    gc = (pc - F.one_hot(y, 3).double()) @ w
    exp_l2 = (xc.flatten(1) + 0.1 * gc / gc.norm(dim=1, keepdim=True)).view_as(x)
    r2 = FGSM(0.1, norm="l2")(model, xc, y)
    assert torch.allclose(r2.x_adv, exp_l2, atol=1e-12)
    assert torch.allclose(r2.norms, torch.full((5,), 0.1, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# PGD / BIM / I-FGSM / MIM


def _two_class_linear(w: torch.Tensor) -> nn.Module:
    """z = (0, w·x): the margin loss for y = 0 is w·x, with constant gradient w."""
    wz = torch.stack([torch.zeros_like(w), w])
    return linear_model(wz, torch.tensor([0.0, -100.0], dtype=torch.float64))


def test_pgd_linf_reaches_the_ball_corner_on_a_linear_margin() -> None:
    w = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    model = _two_class_linear(w)
    x = torch.full((3, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    # steps·alpha ≥ 2ε: from any start each coordinate with w_i ≠ 0 ends at x + ε·sign(w_i);
    # the coordinate with zero gradient keeps its random start (inside the ball, not at 0.5).
    r = PGD(0.1, alpha=0.05, steps=5, loss="margin", seed=4)(model, x, y)
    expected = x.flatten(1) + 0.1 * w.sign()
    out = r.x_adv.flatten(1)
    assert torch.allclose(out[:, :3], expected[:, :3], atol=1e-12)
    assert bool(((out[:, 3] - 0.5).abs() <= 0.1).all()) and bool((out[:, 3] != 0.5).all())


def test_pgd_l2_reaches_eps_times_unit_gradient() -> None:
    w = torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    model = _two_class_linear(w)
    x = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    r = PGD(0.2, alpha=0.05, steps=6, norm="l2", random_start=False, loss="margin")(model, x, y)
    expected = (x.flatten(1) + 0.2 * w / w.norm()).view_as(x)
    assert torch.allclose(r.x_adv, expected, atol=1e-12)


def test_pgd_early_stop_freezes_at_first_adversarial_iterate() -> None:
    model = one_pixel_model(0.5)
    x, y = pixels(0.205), torch.tensor([0])
    late = PGD(0.5, alpha=0.01, steps=100, random_start=False, early_stop=False)(
        model, x, y)
    early = PGD(0.5, alpha=0.01, steps=100, random_start=False, early_stop=True)(model, x, y)
    assert abs(float(late.x_adv) - 0.705) < 1e-9  # kept iterating up to the ε-ball edge
    assert abs(float(early.x_adv) - 0.505) < 1e-9  # 30 steps of 0.01: first point past 0.5
    assert bool(early.success) and bool(late.success)


def test_pgd_restarts_only_improve_on_the_first_run() -> None:
    model = small_cnn(2)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    one = PGD(0.02, steps=3, seed=7)(model, x, y)
    many = PGD(0.02, steps=3, restarts=4, seed=7)(model, x, y)  # run 0 is the same draw
    assert bool((many.success | ~one.success).all())
    with torch.no_grad():
        l1 = ce_loss(model(one.x_adv), y)
        l4 = ce_loss(model(many.x_adv), y)
    keep = ~many.success
    assert bool((l4[keep] >= l1[keep] - 1e-12).all())


def test_bim_defaults_follow_kurakin() -> None:
    a = BIM(8 / 255)
    assert a.steps == 10 and math.isclose(a.alpha, 1 / 255)  # min(8 + 4, 1.25·8) = 10
    assert BIM(0.3).steps == 80  # ⌊min(76.5 + 4, 95.6)⌋
    assert BIM(0.0).steps == 1


def test_ifgsm_is_unprojected_and_stops_per_sample() -> None:
    model = one_pixel_model(0.5)
    x, y = pixels(0.205, 0.0, 0.7), torch.tensor([0, 0, 0])
    r = IFGSM(alpha=0.01, steps=40)(model, x, y)
    out = r.x_adv.flatten()
    assert abs(float(out[0]) - 0.505) < 1e-9  # stopped at the first misclassified iterate
    assert abs(float(out[1]) - 0.40) < 1e-9  # 40 steps, no ε-ball: ‖δ‖∞ = 0.4
    assert float(out[2]) == 0.7  # misclassified from the start: never moved
    assert r.success.tolist() == [True, False, True]
    assert IFGSM().eps is None and IFGSM().norm == "linf"


def test_mim_without_momentum_is_bim() -> None:
    model = small_cnn(3)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(8, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=g)
    a = MIM(0.05, alpha=0.01, steps=6, decay=0.0)(model, x, y)
    b = BIM(0.05, alpha=0.01, steps=6)(model, x, y)
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-12)


def test_mim_momentum_matches_a_hand_written_recursion() -> None:
    model = small_cnn(4)
    g = torch.Generator().manual_seed(8)
    x = torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (4,), generator=g)
    eps, alpha, mu = 0.05, 0.01, 0.8
    xa, acc = x.clone(), torch.zeros_like(x)
    for _ in range(5):
        xa.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
        acc = mu * acc + grad / grad.abs().sum(dim=(1, 2, 3), keepdim=True)
        xa = torch.min(torch.max(xa.detach() + alpha * acc.sign(), x - eps), x + eps).clamp(0, 1)
    r = MIM(eps, alpha=alpha, steps=5, decay=mu, early_stop=False)(model, x, y)
    assert torch.allclose(r.x_adv, xa, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# APGD


def test_apgd_checkpoints_follow_the_paper_schedule() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (next would be 1.05 > 1)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    assert all(0 < w <= 7 for w in apgd_checkpoints(7))


def test_apgd_step_halving_converges_to_an_interior_maximum() -> None:
    # one pixel, loss −(x − c)² with c inside the ball: a fixed large step keeps bouncing
    # between the ball's edges, APGD's halved steps home in on c.
    model = linear_model(torch.tensor([[1.0], [0.0]], dtype=torch.float64),
                         torch.tensor([0.0, 10.0], dtype=torch.float64))  # always class 1
    c = 0.63

    def loss(z: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        return -(z[:, 0] - c) ** 2

    x, y = pixels(0.5, 0.5, 0.5), torch.ones(3, dtype=torch.long)
    r = APGD(0.3, steps=100, loss=loss, seed=1)(model, x, y)
    assert float((r.x_adv.flatten() - c).abs().max()) < 5e-3
    fixed = PGD(0.3, alpha=0.6, steps=100, loss=loss, seed=1)(model, x, y)
    assert float((fixed.x_adv.flatten() - c).abs().min()) > 0.1


def test_apgd_linear_margin_reaches_corner_and_l2_boundary() -> None:
    w = torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    model = _two_class_linear(w)
    x = torch.full((3, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    r = APGD(0.1, steps=10, loss="margin")(model, x, y)
    assert torch.allclose(r.x_adv, (x.flatten(1) + 0.1 * w.sign()).view_as(x), atol=1e-12)
    r2 = APGD(0.2, norm="l2", steps=50, loss="margin")(model, x, y)
    assert torch.allclose(r2.norms, torch.full((3,), 0.2, dtype=torch.float64), atol=1e-6)
    cos = F.cosine_similarity((r2.x_adv - x).flatten(1), w[None], dim=1)
    assert bool((cos > 0.999).all())


def test_apgd_targeted_dlr_reaches_target() -> None:
    model = linear_model(torch.eye(4, dtype=torch.float64),
                         torch.tensor([0.3, 0.0, 0.0, 0.0], dtype=torch.float64))
    x = torch.full((4, 1, 2, 2), 0.5, dtype=torch.float64)
    y, t = torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 1])
    r = APGD(0.25, steps=20, loss="dlr")(model, x, y, target=t)
    assert bool(r.success.all()) and bool((r.logits.argmax(1) == t).all())


# ---------------------------------------------------------------------------------------------
# a tiny trained classifier


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    k, n = 3, 240
    means = torch.rand(k, 16, generator=g)
    y = torch.arange(n) % k
    x = (means[y] + 0.12 * torch.randn(n, 16, generator=g)).clamp(0, 1).view(n, 1, 4, 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, k))
    fit_full_batch(model, x, y, steps=60, lr=0.02)
    ok = predict(model, x) == y
    assert float(ok.float().mean()) > 0.9
    return model, x[ok][:96], y[ok][:96]


def test_pgd_beats_fgsm_and_targeted_pgd_hits_targets(trained) -> None:
    model, x, y = trained
    for eps in (0.05, 0.1):
        f = FGSM(eps)(model, x, y).success_rate
        p = PGD(eps, steps=20, seed=0)(model, x, y).success_rate
        assert p >= f
    t = (y + 1) % 3
    r = PGD(0.5, steps=40, loss="margin")(model, x, y, target=t)
    assert r.success_rate > 0.9
    assert bool((r.logits.argmax(1)[r.success] == t[r.success]).all())


def test_success_grows_with_eps(trained) -> None:
    model, x, y = trained
    rates = [APGD(e, steps=20)(model, x, y).success_rate for e in (0.0, 0.05, 0.15, 0.4)]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] > 0.9


# ---------------------------------------------------------------------------------------------
# BPDA


class JumpReLU(nn.Module):
    """Stand-in with the real class's name: x if x > κ else 0 (gradient 0 below κ)."""

    def __init__(self, kappa: float) -> None:
        super().__init__()
        self.kappa = kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x > self.kappa).to(x.dtype)


class HardStep(nn.Module):
    """A threshold with no gradient path at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).to(x.dtype)


def masked_model() -> nn.Module:
    """flatten → linear → hard threshold at 0.5 → linear: gradient zero everywhere."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), HardStep(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(0.5 * torch.randn(8, 16, generator=g))
        model[1].bias.zero_()
        model[3].weight.copy_(2.0 * torch.randn(3, 8, generator=g))
        model[3].bias.zero_()
    return model


def test_bpda_forward_bit_identical_and_gradient_restored() -> None:
    model = masked_model()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(6, dtype=torch.long)
    wrapped = with_bpda(model, {HardStep: torch.sigmoid}, use_defaults=False)
    assert wrapped.matched_layers() == ["2"]
    with torch.enable_grad():
        z_plain, z_bpda = model(x), wrapped(x)
    assert torch.equal(z_plain.view(torch.int32), z_bpda.view(torch.int32))  # bits, not values
    _, g_plain, _ = loss_and_grad(LogitsView(model), x, ce_loss, y, None)
    _, g_bpda, _ = loss_and_grad(LogitsView(wrapped), x, ce_loss, y, None)
    assert torch.equal(g_plain, torch.zeros_like(x))
    # Chain rule by hand: downstream factors at the *true* forward values, the threshold's
    # derivative replaced by sigmoid'(a) = s(1 − s) at its input a.
    w1, w3 = model[1].weight.detach(), model[3].weight.detach()
    a = x.flatten(1) @ w1.T
    dz = torch.softmax(z_plain.detach(), 1) - F.one_hot(y, 3).float()
    s = torch.sigmoid(a)
    expected = ((dz @ w3) * s * (1 - s)) @ w1
    assert torch.allclose(g_bpda.flatten(1), expected, atol=1e-6)
    assert float(g_bpda.abs().sum()) > 0


def test_bpda_default_rule_jumprelu_to_relu() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), JumpReLU(0.3), nn.Linear(8, 3))
    model = model.double().eval()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(5, dtype=torch.long)
    wrapped = with_bpda(model)
    assert wrapped.matched_layers() == ["2"]
    _, g, _ = loss_and_grad(LogitsView(wrapped), x, ce_loss, y, None)
    _, g_plain, _ = loss_and_grad(LogitsView(model), x, ce_loss, y, None)
    w1, b1, w3 = model[1].weight.detach(), model[1].bias.detach(), model[3].weight.detach()
    a = x.flatten(1) @ w1.T + b1
    dz = torch.softmax(model(x).detach(), 1) - F.one_hot(y, 3).double()
    relu_mask, jump_mask = (a > 0).double(), (a > 0.3).double()
    assert torch.allclose(g.flatten(1), ((dz @ w3) * relu_mask) @ w1, atol=1e-12)
    assert torch.allclose(g_plain.flatten(1), ((dz @ w3) * jump_mask) @ w1, atol=1e-12)
    assert bool(((a > 0) & (a <= 0.3)).any())  # the two differ on this input
    with pytest.raises(ValueError, match="no layer"):
        with_bpda(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))


def test_bpda_on_library_layers_inplace_jumprelu_and_output_activation() -> None:
    from robustact.nn.bounded import OutputActivation
    from robustact.nn.jumprelu import JumpReLU as LibJumpReLU

    g = torch.Generator().manual_seed(4)
    lin1, lin2 = nn.Linear(16, 8), nn.Linear(8, 3)
    with torch.no_grad():
        for p in (*lin1.parameters(), *lin2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    # in place: the jump overwrites its input, so the substitute must see it before
    model = nn.Sequential(nn.Flatten(), lin1, LibJumpReLU(0.5, inplace=True), lin2,
                          OutputActivation("sigmoid", temperature=1e4)).eval()
    x = torch.rand(8, 1, 4, 4, generator=g)
    y = torch.zeros(8, dtype=torch.long)
    wrapped = with_bpda(model)
    assert wrapped.matched_layers() == ["2", "4"]
    with torch.enable_grad():
        out, out_w = model(x), wrapped(x)
    assert torch.equal(out.view(torch.int32), out_w.view(torch.int32))
    _, g_plain, _ = loss_and_grad(LogitsView(model), x, ce_loss, y, None)
    assert torch.equal(g_plain, torch.zeros_like(x))  # saturated sigmoid: masked exactly
    _, g_bpda, _ = loss_and_grad(LogitsView(wrapped), x, ce_loss, y, None)
    a = lin1(x.flatten(1)).detach()
    d_out = torch.softmax(out.detach(), 1) - F.one_hot(y, 3).float()  # f → identity
    expected = ((d_out @ lin2.weight.detach()) * (a > 0).float()) @ lin1.weight.detach()
    assert bool(((a > 0) & (a <= 0.5)).any())  # ReLU and jump derivatives differ here
    assert torch.allclose(g_bpda.flatten(1), expected, atol=1e-5)


def test_bpda_wrapper_shares_mode_and_breaks_a_masked_model() -> None:
    model = masked_model()
    wrapped = BPDA(model, {HardStep: torch.sigmoid}, use_defaults=False)
    assert not wrapped.training
    wrapped.train()
    assert model.training and wrapped.training
    model.eval()
    assert not wrapped.training
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own predictions
    plain = PGD(0.1, steps=20, seed=0)(model, x, y)  # zero gradient: only the random start
    bpda = PGD(0.1, steps=20, seed=0)(wrapped, x, y)
    assert bpda.success_rate > plain.success_rate + 0.2
    v = verify(model, x, y, bpda)  # judged on the real model: no disagreement
    assert v.mismatch == 0 and torch.equal(v.success, bpda.success)


def test_bpda_rejects_shape_changing_substitute() -> None:
    model = nn.Sequential(nn.Flatten(), HardStep(), nn.Linear(16, 3)).eval()
    wrapped = with_bpda(model, {HardStep: lambda t: t[:, :2]}, use_defaults=False)
    with pytest.raises(ValueError, match="shape"):
        wrapped(torch.rand(2, 1, 4, 4))


# ---------------------------------------------------------------------------------------------
# verify, worst case, transfer


def test_verify_flags_out_of_budget_out_of_box_and_nan() -> None:
    model = one_pixel_model(0.5)
    x, y = pixels(0.45, 0.45, 0.45, 0.45, 0.9), torch.tensor([0, 0, 0, 0, 0])
    x_adv = pixels(0.55, 0.75, 1.2, float("nan"), 0.9)
    claimed = torch.ones(5, dtype=torch.bool)
    res = AttackResult(x_adv=x_adv, success=claimed, norms=torch.zeros(5), norm="linf",
                       logits=torch.zeros(5, 2))
    v = verify(model, x, y, res, eps=0.2)
    assert v.adversarial.tolist() == [True, True, True, False, True]
    assert v.in_budget.tolist() == [True, False, False, False, True]
    assert v.in_box.tolist() == [True, True, False, False, True]
    assert v.success.tolist() == [True, False, False, False, True]
    assert v.mismatch == 3
    assert v.clean_correct.tolist() == [True, True, True, True, False]
    assert v.robust_accuracy == pytest.approx(3 / 5)
    targeted = verify(model, x, y, x_adv.nan_to_num(0.0), target=torch.ones(5, dtype=torch.long))
    assert targeted.adversarial.tolist() == [True, True, True, False, True]


def test_verify_takes_eps_and_norm_from_the_result_and_refuses_train_mode() -> None:
    model = small_cnn(5)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    r = PGD(0.5, norm="l2", steps=3)(model, x, y)
    v = verify(model, x, y, r)
    assert v.eps == 0.5 and v.norm == "l2" and v.mismatch == 0
    model.train()
    with pytest.raises(ValueError, match="train mode"):
        verify(model, x, y, r)


def test_robust_accuracy_is_the_per_sample_worst_case(trained) -> None:
    model, x, y = trained
    attacks = [FGSM(0.08), PGD(0.08, steps=10), APGD(0.08, steps=10, loss="dlr")]
    w = robust_accuracy(model, x, y, attacks, only_unbroken=False)
    robust = torch.ones_like(y, dtype=torch.bool)
    for a in attacks:
        robust &= ~verify(model, x, y, a(model, x, y)).success
    assert torch.equal(w.robust, robust)
    assert w.robust_accuracy <= min(1 - v for v in w.success_rate.values()) + 1e-6
    assert all(m == 0 for m in w.mismatches.values())
    fast = robust_accuracy(model, x, y, attacks)  # attacks only on still-robust samples
    assert torch.equal(fast.robust, w.robust)
    assert {b for b in fast.broken_by if b} <= set(fast.success_rate)


def test_transfer_attack_is_judged_on_the_target() -> None:
    surrogate, target_model = small_cnn(6), small_cnn(7)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    inner = PGD(0.1, steps=5)
    ta = TransferAttack(surrogate, inner)
    r = ta(target_model, x, y)
    crafted = inner(surrogate, x, y)
    assert torch.equal(r.x_adv, crafted.x_adv)
    with torch.no_grad():
        assert torch.equal(r.success, target_model(crafted.x_adv).argmax(1) != y)
    assert r.info["surrogate_success_rate"] == crafted.success_rate
    assert r.queries is not None and bool((r.queries == 1).all())
    with pytest.raises(TypeError):
        TransferAttack(surrogate, "pgd")  # type: ignore[arg-type]
