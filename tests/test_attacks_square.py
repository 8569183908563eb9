"""Square Attack (L∞): black-box by construction, budget-exact, seeded, and honest about queries.

The model is wrapped in a guard that raises if it is ever called with gradients enabled and
counts every row it sees, so "gradient-free" and "queries" are checked from outside the attack.
On an affine two-class model the best L∞ attack is known (δ = ε·sign(w₁ − w₀)), which tells
exactly which samples can and cannot be broken.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import RowCounter, gen, predict, random_weights
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustact.attacks.square import Square, p_schedule
from robustact.attacks.verify import verify

pytestmark = pytest.mark.usefixtures("one_thread")


class NoGradGuard(RowCounter):
    """Forwards to ``inner``; fails on any call with autograd on; counts the rows queried."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise AssertionError("Square called the model with gradients enabled")
        return super().forward(x)


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


def test_p_schedule_halves_at_the_papers_breakpoints() -> None:
    assert p_schedule(0.8, 0, 10_000) == 0.8
    assert p_schedule(0.8, 10, 10_000) == 0.8
    assert p_schedule(0.8, 11, 10_000) == 0.4
    assert p_schedule(0.8, 51, 10_000) == 0.2
    assert p_schedule(0.8, 201, 10_000) == 0.1
    assert p_schedule(0.8, 9_999, 10_000) == pytest.approx(0.8 / 512)
    # rescaled to the budget: iteration 2 of 1000 is iteration 20 of 10 000
    assert p_schedule(0.8, 1, 1_000) == 0.8
    assert p_schedule(0.8, 2, 1_000) == 0.4


def test_square_breaks_a_trained_model_without_gradients(tiny) -> None:
    model, x, y = tiny
    guard = NoGradGuard(model).eval()
    res = Square(eps=0.3, n_queries=300, seed=0)(guard, x, y)
    assert res.success_rate >= 0.9
    assert torch.equal(res.success, predict(model, res.x_adv) != y)  # re-verified
    assert float(linf(res.x_adv, x).max()) <= 0.3 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    q = res.queries
    assert q is not None and int(q.max()) <= 300 and int(q.min()) >= 2
    # every row the model saw is accounted for: the queries plus the base's final judgement
    assert int(q.sum()) == guard.rows - x.shape[0]
    checked = verify(model, x, y, res)
    assert checked.mismatch == 0 and bool(checked.in_budget.all())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_already_misclassified_samples_cost_one_query(tiny) -> None:
    model, x, y = tiny
    wrong = (y + 1) % 4
    res = Square(eps=0.3, n_queries=50)(model, x, wrong)
    assert bool(res.success.all())
    assert res.queries is not None and bool((res.queries == 1).all())
    assert torch.equal(res.x_adv, x)


def test_eps_zero_is_a_no_op_that_spends_no_queries(tiny) -> None:
    model, x, y = tiny
    guard = NoGradGuard(model).eval()
    res = Square(eps=0.0, n_queries=50)(guard, x, y)
    assert torch.equal(res.x_adv, x)
    assert res.queries is not None and int(res.queries.sum()) == 0
    assert guard.rows == x.shape[0]  # only the final judgement
    assert not bool(res.success.any())


def test_seeded_runs_repeat_and_seeds_matter(tiny) -> None:
    model, x, y = tiny
    a = Square(eps=0.1, n_queries=40, seed=3)(model, x, y)
    b = Square(eps=0.1, n_queries=40, seed=3)(model, x, y)
    c = Square(eps=0.1, n_queries=40, seed=4)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_targeted_and_cross_entropy_variants(tiny) -> None:
    model, x, y = tiny
    target = (y + 2) % 4
    res = Square(eps=0.4, n_queries=300, seed=1)(model, x, y, target=target)
    assert torch.equal(res.success, predict(model, res.x_adv) == target)
    assert res.success_rate >= 0.8
    ce = Square(eps=0.3, n_queries=300, loss="ce", seed=1)(model, x, y)
    assert ce.success_rate >= 0.8 and float(linf(ce.x_adv, x).max()) <= 0.3 + 1e-6


def test_affine_model_breaks_exactly_the_breakable_samples() -> None:
    # z1 − z0 = v·x + b; within ‖δ‖∞ ≤ ε the best reachable value is f + ε‖v‖₁ (no clipping:
    # x ∈ [0.3, 0.7], ε = 0.05), so a sample can be broken iff −f < ε‖v‖₁.
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16, generator=g))
        lin.bias.zero_()
        lin.bias[1] = -0.5 * (lin.weight[1] - lin.weight[0]).sum()  # boundary through x = 0.5
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(64, 1, 4, 4, generator=g)
    y = predict(model, x)
    eps = 0.05
    with torch.no_grad():
        z = model(x)
        v = lin.weight[1] - lin.weight[0]
    gap = (z.gather(1, y[:, None]).squeeze(1) - z.gather(1, 1 - y[:, None]).squeeze(1))
    reach = eps * v.abs().sum()
    res = Square(eps=eps, n_queries=400, seed=0)(model, x, y)
    assert not bool((res.success & (gap >= reach)).any()), "broke an unbreakable sample"
    easy = gap <= 0.5 * reach
    assert easy.sum() >= 5, "precondition: some samples are easy"
    assert bool(res.success[easy].all())


def test_square_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="eps"):
        Square(eps=-0.1)
    with pytest.raises(TypeError, match="eps"):
        Square(eps="0.3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        Square(eps=0.3, norm="l2")
    with pytest.raises(ValueError, match="n_queries"):
        Square(eps=0.3, n_queries=0)
    with pytest.raises(ValueError, match="p_init"):
        Square(eps=0.3, p_init=1.5)
    with pytest.raises(ValueError, match="p_init"):
        Square(eps=0.3, p_init=0.0)


def random_conv(seed: int) -> nn.Module:
    return random_weights(lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(),
                                                nn.Linear(2 * 4 * 5, 3)), gen(seed))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.5), n_queries=st.integers(1, 30))
def test_budget_box_queries_and_reproducibility(seed: int, eps: float, n_queries: int) -> None:
    model = NoGradGuard(random_conv(seed)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(5, 3, 6, 7, generator=g)  # non-square images, three channels
    y = torch.randint(0, 3, (5,), generator=g)
    attack = Square(eps=eps, n_queries=n_queries, seed=seed)
    res = attack(model, x, y)
    assert float(linf(res.x_adv, x).max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.queries is not None and int(res.queries.max()) <= n_queries
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    again = attack(model, x, y)
    assert torch.equal(again.x_adv, res.x_adv)


class Recorder(nn.Module):
    """Constant logits (class 0 wins; nothing ever improves) that remember every query."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        z = torch.zeros(x.shape[0], self.k, dtype=x.dtype)
        z[:, 0] = 1.0
        return z


@pytest.mark.parametrize("channels", [1, 3])
def test_no_query_is_wasted_on_a_candidate_equal_to_the_current_point(channels: int) -> None:
    # With nothing ever accepted, the current point stays the stripes start for the whole run
    # and the windows shrink to single pixels, where a random sign repeats the current vertex
    # with probability 2^-c: each such draw must be replaced, so every query differs from it.
    x = torch.rand(5, channels, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.zeros(5, dtype=torch.long)
    rec = Recorder().eval()
    res = Square(eps=0.1, n_queries=200, p_init=0.5, seed=3)(rec, x, y)
    assert res.success_rate == 0.0 and bool((res.queries == 200).all())
    clean, start, *queries, final = rec.seen
    assert torch.equal(clean, x) and torch.equal(final, start)  # nothing accepted
    assert (start - x).abs().flatten(1).amax(1).sub(0.1).abs().max() < 1e-6  # at the vertices
    assert len(queries) == 198
    for q in queries:
        assert bool(((q != start).flatten(1).any(1)).all())
        assert float((q - x).abs().max()) <= 0.1 + 1e-6


def test_results_are_ordinary_tensors_after_inference_mode_queries(tiny) -> None:
    # Queries run under torch.inference_mode(); nothing it creates may leak into the result,
    # where an in-place edit or an autograd use would then fail.
    model, x, y = tiny
    res = Square(eps=0.3, n_queries=50, seed=0)(model, x, y)
    for t in (res.x_adv, res.logits, res.norms, res.success, res.queries):
        assert t is not None and not t.is_inference()
    res.logits.add_(0.0)
    xa = res.x_adv.clone().requires_grad_(True)
    model(xa).sum().backward()
    assert xa.grad is not None
