"""Decision-based attacks (RayS L∞, HopSkipJump L2/L∞): exact on linear models, genuine,
label-only, budget-exact and reproducible.

On an affine two-class model with margin f = |z_y − z_other| and weight difference w, the
closest boundary point is at L∞ distance f/‖w‖₁ and L2 distance f/‖w‖₂ (when that point stays
inside the [0, 1] box, which the data here guarantees): the minimum-norm results are compared
with these. "Label-only" is checked from outside: a model whose output is replaced by the
one-hot of its argmax must give bit-identical results to the plain model (and likewise a
sigmoid at T = 1e4, zero gradient almost everywhere, and its one-hot), and a model whose forward
detaches its logits (PGD sees a zero gradient and reports it robust) must be broken.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import RowCounter, predict
from torch import nn

from robustact.attacks import PGD, HopSkipJump, RayS, verify
from robustact.attacks.rays import block_schedule
from robustact.attacks.registry import create_attack

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_binary(d: int = 64, n: int = 16, seed: int = 0
                  ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, x, y, margin f (N,), w (d,)): an affine 2-class model, boundary through x = 0.5."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g))
        lin.bias.zero_()
        lin.bias[1] = -0.5 * (lin.weight[1] - lin.weight[0]).sum()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, d // 8, generator=g)
    with torch.no_grad():
        z = model(x)
        w = lin.weight[1] - lin.weight[0]
    return model, x, z.argmax(1), (z[:, 1] - z[:, 0]).abs(), w


class OneHot(nn.Module):
    """Outputs the one-hot of the inner model's argmax: labels only, no gradient at all."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return F.one_hot(z.argmax(1), z.shape[1]).to(z.dtype)


class Saturated(nn.Module):
    """A sigmoid at T = 1e4 on the logits: monotone, saturated, gradient ≈ 0 almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(1e4 * self.inner(x))


class Detached(nn.Module):
    """The logits with their gradient cut: the masked model PGD cannot see into."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).detach() + 0 * x.sum()


def test_rays_finds_the_exact_linf_distance_on_a_linear_model() -> None:
    model, x, y, f, w = linear_binary()
    exact = f / w.abs().sum()
    assert float(exact.max()) < 0.3  # the closest point x ± exact·sign(w) stays in the box
    res = RayS(n_queries=1000, tol=1e-5)(model, x, y)
    assert bool(res.success.all())
    assert bool((res.norms >= exact - 1e-6).all()), "closer than the exact boundary"
    # the binary-search tolerance, twice: flips that change the radius by less than tol can
    # no longer be told apart (measured: at most 5.3e-6 here, 0.1 % of the exact distance)
    assert float((res.norms - exact).max()) <= 2e-5
    assert bool((res.queries <= 1000).all())
    assert torch.allclose(res.info["radius"], res.norms, atol=1e-6)


def test_hsj_finds_the_exact_l2_distance_on_a_linear_model() -> None:
    model, x, y, f, w = linear_binary()
    exact = f / w.norm()
    closest = x.flatten(1) - torch.where(y == 1, 1.0, -1.0)[:, None] * (exact / w.norm())[:,
                                                                                        None] * w
    assert float(closest.min()) > 0 and float(closest.max()) < 1  # inside the box
    res = HopSkipJump(n_queries=10000, seed=0)(model, x, y)
    assert bool(res.success.all())
    rel = (res.norms - exact) / exact
    assert float(rel.min()) >= -1e-5, "closer than the exact boundary"
    assert float(rel.max()) <= 0.03
    assert bool((res.queries <= 10000).all())


def test_hsj_linf_variant_approaches_the_exact_distance() -> None:
    model, x, y, f, w = linear_binary()
    exact = f / w.abs().sum()
    res = HopSkipJump(norm="linf", n_queries=5000, seed=0)(model, x, y)
    assert bool(res.success.all())
    rel = (res.norms - exact) / exact
    assert float(rel.min()) >= -1e-5 and float(rel.max()) <= 0.25


@pytest.mark.parametrize("attack, rate", [
    (RayS(eps=0.3, n_queries=500), (0.8, 1.0)),
    (HopSkipJump(eps=2.0, n_queries=1500, seed=1), (0.8, 1.0)),
    (HopSkipJump(eps=0.3, norm="linf", n_queries=1500, seed=1), (0.8, 1.0)),
    # ε splits the samples: the boundary of the rest is farther than ε, and the adversarial
    # point found there must not be returned (it is not within the budget the result claims)
    (RayS(eps=0.1, n_queries=500), (0.2, 0.8)),
    (HopSkipJump(eps=0.5, n_queries=1500, seed=1), (0.2, 0.8)),
    (HopSkipJump(eps=0.1, norm="linf", n_queries=1500, seed=1), (0.2, 0.8)),
], ids=["rays", "hsj-l2", "hsj-linf", "rays-small", "hsj-l2-small", "hsj-linf-small"])
def test_success_is_genuine_and_within_budget(tiny, attack, rate) -> None:
    model, x, y = tiny
    counter = RowCounter(model).eval()
    res = attack(counter, x, y)
    assert rate[0] <= res.success_rate <= rate[1]
    checked = verify(model, x, y, res)  # eps from the result: the attack's own budget
    assert checked.eps == attack.eps and checked.mismatch == 0
    assert bool(checked.in_budget.all() and checked.in_box.all())
    assert torch.equal(res.x_adv[~res.success], x[~res.success])  # failures return x
    assert int(res.queries.max()) <= attack.n_queries
    assert int(res.queries.sum()) == counter.rows - x.shape[0]  # + the base's final judgement


@pytest.mark.parametrize("make", [lambda: RayS(n_queries=300),
                                  lambda: HopSkipJump(n_queries=800, seed=2)],
                         ids=["rays", "hsj"])
def test_label_only_results_do_not_depend_on_the_scores(tiny, make) -> None:
    # Pairs of models with the same predicted labels everywhere and different outputs. The
    # saturated sigmoid is paired with its own one-hot, not with the plain model: in float32
    # sigmoid(1e4·z) rounds every clearly positive logit to 1.0, and the ties change the argmax.
    model, x, y = tiny
    saturated = Saturated(model).eval()
    for scores, labels in ((model, OneHot(model)), (saturated, OneHot(saturated))):
        a = make()(scores, x, y)
        b = make()(labels.eval(), x, y)
        assert torch.equal(a.x_adv, b.x_adv)
        assert torch.equal(a.queries, b.queries)


def test_a_detached_model_fools_pgd_but_not_the_label_only_attacks(tiny) -> None:
    model, x, y = tiny
    masked = Detached(model).eval()
    pgd = PGD(eps=0.3, steps=20, random_start=False)(masked, x, y)
    assert pgd.success_rate == 0.0  # zero gradient: PGD never moves
    rays = RayS(eps=0.3, n_queries=500)(masked, x, y)
    hsj = HopSkipJump(eps=2.0, n_queries=1500)(masked, x, y)
    assert rays.success_rate >= 0.8 and hsj.success_rate >= 0.8
    assert bool(verify(model, x, y, rays).success.equal(rays.success))


def test_seeded_runs_repeat_and_seeds_matter(tiny) -> None:
    model, x, y = tiny
    a = HopSkipJump(n_queries=500, seed=3)(model, x, y)
    b = HopSkipJump(n_queries=500, seed=3)(model, x, y)
    c = HopSkipJump(n_queries=500, seed=4)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)
    r1, r2 = RayS(n_queries=200)(model, x, y), RayS(n_queries=200)(model, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv)  # RayS is deterministic


@pytest.mark.parametrize("budget", [1, 2, 7, 60])
@pytest.mark.parametrize("name", ["rays", "hsj"])
def test_queries_never_exceed_the_budget(tiny, name: str, budget: int) -> None:
    model, x, y = tiny
    counter = RowCounter(model).eval()
    res = create_attack(name, n_queries=budget)(counter, x, y)
    assert int(res.queries.max()) <= budget and int(res.queries.min()) >= 1
    assert int(res.queries.sum()) == counter.rows - x.shape[0]
    assert torch.equal(res.success, predict(model, res.x_adv) != y)


@pytest.mark.parametrize("attack", [RayS(eps=0.0), HopSkipJump(eps=0.0)], ids=["rays", "hsj"])
def test_eps_zero_never_succeeds_on_correct_points(tiny, attack) -> None:
    model, x, y = tiny
    res = attack(model, x, y)
    assert not bool(res.success.any()) and torch.equal(res.x_adv, x)
    assert int(res.queries.sum()) == 0
    wrong = attack(model, x, (y + 1) % 4)  # already misclassified: success at distance 0
    assert bool(wrong.success.all())


def test_already_misclassified_samples_cost_one_query(tiny) -> None:
    model, x, y = tiny
    for attack in (RayS(n_queries=50), HopSkipJump(n_queries=50)):
        res = attack(model, x, (y + 1) % 4)
        assert bool((res.queries == 1).all()) and bool((res.norms == 0).all())


def test_targeted_rays_hits_the_target(tiny) -> None:
    model, x, y = tiny
    target = (y + 1) % 4
    res = RayS(n_queries=500)(model, x, y, target=target)
    assert torch.equal(res.success, predict(model, res.x_adv) == target)
    assert res.success_rate >= 0.8


def test_block_schedule_refines_to_single_coordinates() -> None:
    blocks = block_schedule(5)
    first = [next(blocks) for _ in range(1 + 2 + 3 + 5)]
    assert first[0] == (0, 5) and first[1:3] == [(0, 3), (3, 5)]
    assert first[-5:] == [(i, i + 1) for i in range(5)]
    assert next(blocks) == (0, 1)  # single coordinates repeat


@pytest.mark.parametrize("name, params, needle", [
    ("rays", {"eps": 1.5}, "eps must be in"),
    ("rays", {"n_queries": 0}, "n_queries"),
    ("rays", {"tol": 0.0}, "tol"),
    ("hsj", {"norm": "l1"}, "unknown norm"),
    ("hsj", {"gamma": -1.0}, "gamma"),
    ("hsj", {"init_evals": 0}, "init_evals"),
    ("hsj", {"max_iter": 1.5}, "max_iter"),
])
def test_bad_settings_are_one_line_errors(name: str, params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as e:
        create_attack(name, **params)
    assert "\n" not in str(e.value)
