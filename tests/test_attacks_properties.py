"""Properties every fixed-budget gradient attack must have, checked on random tiny problems.

Budget and box respected, ε = 0 is a no-op, claimed success re-verifies, seeded runs repeat
exactly, the model is left exactly as it was, and bad input fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _helpers import gen, random_weights
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustact.attacks import (
    APGD,
    BIM,
    FGSM,
    IFGSM,
    MIM,
    PGD,
    Attack,
    TransferAttack,
    target_classes,
    verify,
    with_bpda,
)
from robustact.core.validate import check_logits

K = 4  # classes (targeted DLR needs at least 4)


class JumpReLU(nn.Module):
    """Name-matched by BPDA's default rule: x if x > κ else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x > 0.1).to(x.dtype)


def make_model(seed: int, jump: bool = False) -> nn.Module:
    act: nn.Module = JumpReLU() if jump else nn.ReLU()
    return random_weights(
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3), act, nn.Flatten(), nn.Linear(2 * 3 * 3, K)),
        gen(seed))


# name -> (factory(eps, seed), norm, bounded); small step counts keep each example cheap
ATTACKS: dict[str, tuple[Callable[[float, int], Attack], str]] = {
    "fgsm": (lambda e, s: FGSM(e), "linf"),
    "fgm-l2": (lambda e, s: FGSM(e, norm="l2", loss="margin"), "l2"),
    "bim": (lambda e, s: BIM(e, alpha=e / 3, steps=4), "linf"),
    "bim-early": (lambda e, s: BIM(e, alpha=e / 3, steps=4, early_stop=True), "linf"),
    "pgd": (lambda e, s: PGD(e, steps=4, restarts=2, seed=s), "linf"),
    "pgd-l2-dlr": (lambda e, s: PGD(e, steps=4, norm="l2", loss="dlr", seed=s), "l2"),
    "pgd-early": (lambda e, s: PGD(e, steps=4, early_stop=True, seed=s), "linf"),
    "mim": (lambda e, s: MIM(e, steps=4), "linf"),
    "mim-l2": (lambda e, s: MIM(e, steps=4, norm="l2", early_stop=True), "l2"),
    "apgd": (lambda e, s: APGD(e, steps=6, restarts=2, seed=s), "linf"),
    "apgd-l2-dlr": (lambda e, s: APGD(e, norm="l2", steps=6, loss="dlr", seed=s), "l2"),
    "transfer": (lambda e, s: TransferAttack(make_model(99), PGD(e, steps=3, seed=s)), "linf"),
}
NAMES = sorted(ATTACKS)

problems = st.fixed_dictionaries({
    "model_seed": st.integers(0, 2**16),
    "data_seed": st.integers(0, 2**16),
    "n": st.integers(1, 6),
    "eps": st.floats(0.0, 0.5),
    "attack_seed": st.integers(0, 100),
    "targeted": st.booleans(),
})


def make_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 5, 5, generator=g)
    x[x < 0.1] = 0.0  # pixels on the box's faces, where clipping matters
    x[x > 0.9] = 1.0
    y = torch.randint(0, K, (n,), generator=g)
    t = (y + torch.randint(1, K, (n,), generator=g)) % K
    return x, y, t


def for_every_attack_and_problem(examples: int) -> Callable[[Callable[..., None]], Any]:
    """Run the test for each registered attack on ``examples`` drawn problems."""
    def deco(test: Callable[..., None]) -> Any:
        return pytest.mark.parametrize("name", NAMES)(
            settings(max_examples=examples, deadline=None)(given(p=problems)(test)))
    return deco


def make_problem(p: dict) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model and data (x, y, targets) a drawn problem describes."""
    return (make_model(p["model_seed"]), *make_data(p["data_seed"], p["n"]))


def norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@for_every_attack_and_problem(15)
def test_budget_box_and_verified_success(name: str, p: dict) -> None:
    factory, norm = ATTACKS[name]
    model, x, y, t = make_problem(p)
    target = t if p["targeted"] else None
    attack = factory(p["eps"], p["attack_seed"])
    r = attack(model, x, y, target)
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert float(norms(r.x_adv - x, norm).max()) <= p["eps"] + 1e-6
    v = verify(model, x, y, r, eps=p["eps"], norm=norm, target=target)
    assert v.mismatch == 0
    assert torch.equal(v.success, r.success)


@for_every_attack_and_problem(10)
def test_eps_zero_is_a_no_op(name: str, p: dict) -> None:
    factory, _ = ATTACKS[name]
    model, x, y, _ = make_problem(p)
    r = factory(0.0, p["attack_seed"])(model, x, y)
    assert torch.equal(r.x_adv, x)
    with torch.no_grad():
        assert torch.equal(r.success, model(x).argmax(1) != y)


@for_every_attack_and_problem(5)
def test_seeded_runs_repeat_exactly(name: str, p: dict) -> None:
    factory, _ = ATTACKS[name]
    model, x, y, _ = make_problem(p)
    state = torch.get_rng_state()
    a = factory(p["eps"], p["attack_seed"])(model, x, y)
    b = factory(p["eps"], p["attack_seed"])(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from


@settings(max_examples=15, deadline=None)
@given(p=problems, steps=st.integers(1, 12), alpha=st.floats(0.001, 0.1))
def test_ifgsm_budget_is_steps_times_alpha(p: dict, steps: int, alpha: float) -> None:
    model, x, y, _ = make_problem(p)
    r = IFGSM(alpha=alpha, steps=steps)(model, x, y)
    assert float(norms(r.x_adv - x, "linf").max()) <= steps * alpha + 1e-6
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert verify(model, x, y, r).mismatch == 0
    with torch.no_grad():
        already = model(x).argmax(1) != y
    assert torch.equal(r.x_adv[already], x[already])  # stopped before the first step


@settings(max_examples=10, deadline=None)
@given(p=problems)
def test_bpda_wrapped_attack_is_judged_on_the_real_model(p: dict) -> None:
    model = make_model(p["model_seed"], jump=True)
    x, y, _ = make_data(p["data_seed"], p["n"])
    r = PGD(p["eps"], steps=4, seed=p["attack_seed"])(with_bpda(model), x, y)
    assert float(norms(r.x_adv - x, "linf").max()) <= p["eps"] + 1e-6
    v = verify(model, x, y, r)
    assert v.mismatch == 0
    with torch.no_grad():
        assert torch.equal(r.logits, model(r.x_adv))


# ---------------------------------------------------------------------------------------------
# the model is left exactly as it was; train mode and bad input are refused


@pytest.mark.parametrize("name", NAMES)
def test_model_state_untouched(name: str) -> None:
    factory, _ = ATTACKS[name]
    model = make_model(1)
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.full_like(params[1], 7.0)
    before = [p.detach().clone() for p in params]
    x, y, t = make_data(2, 4)
    factory(0.1, 0)(model, x, y, t)
    assert not model.training
    assert [p.requires_grad for p in params] == [False, True, True, True]
    assert params[0].grad is None and params[2].grad is None and params[3].grad is None
    assert torch.equal(params[1].grad, torch.full_like(params[1], 7.0))
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_refused_unless_forced(name: str) -> None:
    factory, _ = ATTACKS[name]
    model = make_model(1).train()
    x, y, _ = make_data(3, 3)
    with pytest.raises(ValueError, match="train mode"):
        factory(0.1, 0)(model, x, y)
    attack = factory(0.1, 0)
    attack.force_eval = True
    attack(model, x, y)
    assert model.training


def test_a_submodule_left_in_train_mode_counts_as_train_mode() -> None:
    # An eval model with one dropout switched back on would give random, irreproducible
    # results; force_eval must restore the exact mixed state afterwards.
    model = nn.Sequential(make_model(1), nn.Dropout(0.5)).eval()
    model[1].train()
    x, y, _ = make_data(3, 3)
    with pytest.raises(ValueError, match="1 of its submodules is in train mode"):
        PGD(0.1, steps=2)(model, x, y)
    PGD(0.1, steps=2, force_eval=True)(model, x, y)
    assert [m.training for m in model.modules()] == [
        False, False, False, False, False, False, True]
    wrapped = with_bpda(model, strict=False)
    wrapped.train()
    model[0].eval()
    before = [m.training for m in wrapped.modules()]
    PGD(0.1, steps=2, force_eval=True)(wrapped, x, y)
    assert [m.training for m in wrapped.modules()] == before


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_fail_clearly(name: str) -> None:
    factory, _ = ATTACKS[name]
    attack, model = factory(0.1, 0), make_model(1)
    x, y, _ = make_data(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2 + 0.5, y)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attack(model, nan, y)
    with pytest.raises(ValueError, match="classes"):
        attack(model, x, torch.tensor([0, 1, K]))
    with pytest.raises(TypeError, match="integer"):
        attack(model, x, y.float())
    with pytest.raises(ValueError, match="dimensions"):
        attack(model, x[0], y)
    with pytest.raises(ValueError, match="target equals"):
        attack(model, x, y, target=y)


@pytest.mark.parametrize("name", NAMES)
def test_probabilities_instead_of_logits_are_refused(name: str) -> None:
    # The output is validated on the attack's first forward pass (no separate probe pass),
    # so the error must still come before any loss has been computed on softmax outputs.
    factory, _ = ATTACKS[name]
    attack, model = factory(0.1, 0), make_model(1)
    x, y, _ = make_data(4, 3)
    with pytest.raises(ValueError, match="probabilities"):
        attack(nn.Sequential(model, nn.Softmax(dim=1)).eval(), x, y)


def test_saturated_sigmoid_outputs_are_not_taken_for_probabilities() -> None:
    # sigmoid(T·z) at T = 100 on confident rows: the top output is 1.0, the others tiny but not
    # exactly 0, so rows sum to 1 within float tolerance; they are still not a softmax.
    z = torch.tensor([[0.3, -0.2, -0.25], [-0.3, 0.4, -0.5], [-0.45, -0.5, 0.2]])
    check_logits(torch.sigmoid(100 * z), 3)
    with pytest.raises(ValueError, match="probabilities"):
        check_logits(torch.softmax(torch.tensor([[0.3, 0.1, -0.2], [2.0, 0.0, 0.0]]), 1), 2)


@pytest.mark.parametrize("make", [
    lambda: FGSM(-0.1), lambda: FGSM(float("nan")), lambda: PGD(0.1, norm="l3"),
    lambda: PGD(0.1, steps=0), lambda: PGD(0.1, restarts=2, random_start=False),
    lambda: PGD(None), lambda: PGD(None, alpha=0.1), lambda: APGD(0.1, rho=1.5),
    lambda: APGD(0.1, loss="nope"), lambda: BIM(0.1, alpha=-1.0), lambda: MIM(0.1, decay=-1.0),
    lambda: IFGSM(steps=0),
])
def test_bad_configuration_raises_value_error(make: Callable[[], Attack]) -> None:
    with pytest.raises(ValueError):
        make()


def test_bad_configuration_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        PGD("0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PGD(0.1, steps=2.5)  # type: ignore[arg-type]


def test_target_classes_never_the_label_keyed_per_sample_and_cover_every_wrong_class():
    """``next`` is (y + 1) mod K; ``random`` depends on (seed, key) only, so a sample keeps its
    target in any batch or shard, and over many keys reaches every wrong class."""
    y = torch.arange(2000) % 10
    keys = torch.arange(2000) * 7 + 3
    assert torch.equal(target_classes("next", y, keys, 10, 0), (y + 1) % 10)
    t = target_classes("random", y, keys, 10, 5)
    assert not (t == y).any() and ((t >= 0) & (t < 10)).all()
    counts = torch.bincount((t - y) % 10, minlength=10)
    assert counts[0] == 0 and (counts[1:] > 150).all()  # each offset about 2000 / 9
    perm = torch.randperm(2000)
    assert torch.equal(target_classes("random", y[perm], keys[perm], 10, 5), t[perm])
    assert not torch.equal(target_classes("random", y, keys, 10, 6), t)
    assert torch.equal(target_classes("random", y % 2, keys, 2, 5), 1 - y % 2)
    with pytest.raises(ValueError, match="target rule"):
        target_classes("least", y, keys, 10, 0)
