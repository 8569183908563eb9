"""The one budget rule (robustact.core.budget): text, ranges per norm, zero only where allowed,
the per-dataset defaults, and one error sentence for a bad ε whichever entry point meets it
(attacks, the evaluation engine, adversarial training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robustact.attacks import APGD, BIM, FGSM, MIM, PGD, RandomSearch, RayS, Square, registry
from robustact.core.budget import (
    DEFAULT_BUDGETS,
    NORMS,
    budget_ceiling,
    check_budget,
    check_norm,
    default_budget,
    parse_budget,
)
from robustact.core.spec import ParameterError, SpecError
from robustact.evaluate import evaluate
from robustact.evaluate.runner import _budgets
from robustact.train.adversarial import adversarial_spec

LINF_MESSAGE = ("eps must be in (0, 1] for linf on [0, 1] images (pixel units: write 8/255, "
                "not 8), got 8.0")

#: Input values per sample of each dataset with a default budget (d of the L2 bound √d).
DIMS = {"mnist": 784, "cifar10": 3072, "cifar100": 3072, "digits": 64}


def _message(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The one-line ValueError text of ``call(*args, **kwargs)``."""
    with pytest.raises(ValueError) as e:
        call(*args, **kwargs)
    text = str(e.value)
    assert "\n" not in text
    return text


# -- text -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("8/255", 8 / 255), (" 8/255 ", 8 / 255), ("0.3", 0.3), ("2e-2", 0.02), ("1", 1.0),
    ("1/1", 1.0), (".5", 0.5),
])
def test_parse_budget_reads_fractions_decimals_and_scientific(text: str, value: float) -> None:
    got = parse_budget(text, "linf")
    assert got == value and type(got) is float


@pytest.mark.parametrize("text", ["eight", "", "0.1x", "1/0", "true", "none", "8/", "/255"])
def test_parse_budget_refuses_junk_in_one_line(text: str) -> None:
    with pytest.raises(SpecError, match=r"^--eps expects a number such as 0.3 or 8/255, got "):
        parse_budget(text, "linf", name="--eps")


@pytest.mark.parametrize(("text", "shown"), [
    ("-0.1", "-0.1"), ("-8/255", repr(-8 / 255)), ("nan", "nan"), ("inf", "inf"),
    ("-inf", "-inf"), ("0", "0.0"), ("1.5", "1.5"),
])
def test_parse_budget_refuses_out_of_range_numbers(text: str, shown: str) -> None:
    msg = _message(lambda: parse_budget(text, "linf", name="--adv-eps"))
    assert msg == ("--adv-eps must be in (0, 1] for linf on [0, 1] images (pixel units: write "
                   f"8/255, not 8), got {shown}")


def test_eight_for_linf_is_refused_with_the_pixel_units_hint() -> None:
    assert _message(lambda: parse_budget("8", "linf")) == LINF_MESSAGE
    assert _message(lambda: parse_budget("8", "linf", name="--eps")) == "--" + LINF_MESSAGE
    assert parse_budget("8", "l2") == 8.0  # a real L2 budget on CIFAR (√3072 ≈ 55)


def test_parse_budget_without_a_norm_only_reads_the_text() -> None:
    # The attack command's norm may come from the attack itself: the attack checks the range.
    assert parse_budget("8") == 8.0 and parse_budget("8/255") == 8 / 255
    assert parse_budget(0.25) == 0.25
    with pytest.raises(SpecError, match="expects a number"):
        parse_budget("eight")
    with pytest.raises(ParameterError, match="must be a number"):
        parse_budget(True)  # type: ignore[arg-type]


# -- ranges ---------------------------------------------------------------------------------------

def test_the_message_for_an_out_of_range_linf_budget() -> None:
    assert _message(lambda: check_budget(8, "linf")) == LINF_MESSAGE
    assert _message(lambda: check_budget(8.0, "linf", name="--eps")) == "--" + LINF_MESSAGE


@pytest.mark.parametrize("eps", [1e-12, 8 / 255, 0.3, 1, 1.0])
def test_linf_accepts_zero_to_one(eps: float) -> None:
    assert check_budget(eps, "linf") == float(eps)


@pytest.mark.parametrize("eps", [1.0000001, 2, -1e-9, math.nan, math.inf, -math.inf])
def test_linf_refuses_outside_zero_one(eps: float) -> None:
    assert "must be in (0, 1] for linf" in _message(lambda: check_budget(eps, "linf"))


def test_l2_is_bounded_by_the_box_diameter_when_d_is_known() -> None:
    assert check_budget(28, "l2", 784) == 28.0  # √784: the whole box
    assert check_budget(30, "l2") == 30.0  # d unknown (an attack before it sees data)
    assert _message(lambda: check_budget(9, "l2", 64)) == (
        "eps must be in (0, 8] for l2 on [0, 1] images (√d for d = 64 input values), got 9.0")
    assert _message(lambda: check_budget(-1, "l2")) == (
        "eps must be in (0, √d] for l2 on [0, 1] images (d: the number of input values), "
        "got -1.0")
    for bad in (math.nan, math.inf, 0.0):
        assert "must be in (0, " in _message(check_budget, bad, "l2", 64)


def test_budget_ceiling_per_norm() -> None:
    assert budget_ceiling("linf") == budget_ceiling("linf", 3072) == 1.0
    assert budget_ceiling("l2", 784) == 28.0 and budget_ceiling("l2", 3072) == math.sqrt(3072)
    assert budget_ceiling("l2") == math.inf
    for bad_dim in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            budget_ceiling("l2", bad_dim)  # type: ignore[arg-type]


def test_zero_only_where_the_caller_allows_it() -> None:
    for norm in NORMS:
        assert "got 0.0" in _message(check_budget, 0, norm)
        assert check_budget(0, norm, allow_zero=True) == 0.0
        z = check_budget(-0.0, norm, allow_zero=True)
        assert z == 0.0 and math.copysign(1.0, z) == 1.0  # one spelling of zero
        assert "got -0.1" in _message(check_budget, -0.1, norm, allow_zero=True)


def test_non_numbers_are_refused_as_value_and_type_errors() -> None:
    for bad in ("0.3", None, True, [0.3], torch.tensor(0.3)):
        with pytest.raises(ParameterError, match=r"^eps must be a number such as 0.3 or 8/255"):
            check_budget(bad, "linf")
    assert check_budget(np.float32(0.5), "linf") == 0.5  # any real number type
    assert check_budget(np.int64(1), "l2", 4) == 1.0


def test_one_error_for_an_unknown_norm() -> None:
    expected = "unknown norm 'l1'; choose from ('linf', 'l2')"
    for call in (lambda: check_norm("l1"), lambda: check_budget(0.1, "l1"),
                 lambda: budget_ceiling("l1"), lambda: default_budget("mnist", "l1"),
                 lambda: PGD(0.1, norm="l1")):
        assert _message(call) == expected
    assert check_norm("l0", ("l0", "linf")) == "l0"


# -- default budgets ------------------------------------------------------------------------------

def test_default_budgets_per_dataset() -> None:
    assert default_budget("mnist", "linf") == 0.3 and default_budget("mnist", "l2") == 2.0
    assert default_budget("cifar10", "linf") == 8 / 255 == default_budget("cifar100", "linf")
    assert default_budget("cifar10", "l2") == 0.5 and default_budget("digits", "linf") == 0.1
    assert default_budget("digits", "l2") == 0.5
    with pytest.raises(ValueError, match=r"no default eps for dataset 'svhn' and norm 'linf'"):
        default_budget("svhn", "linf")


def test_every_default_budget_obeys_the_rule() -> None:
    for dataset, budgets in DEFAULT_BUDGETS.items():
        assert set(budgets) == set(NORMS)
        for norm, eps in budgets.items():
            assert check_budget(eps, norm, DIMS[dataset]) == eps


def test_the_registry_reexports_the_one_table() -> None:
    assert registry.DEFAULT_BUDGETS is DEFAULT_BUDGETS
    assert registry.default_budget is default_budget


# -- one message at every entry point -------------------------------------------------------------

def _engine(eps: Any, norm: str = "linf", eps_grid: list[float] | None = None) -> Any:
    """The engine on a tiny model: a bad budget is refused before any attack runs."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    return evaluate(model, x, y, "quick", eps=eps, norm=norm, eps_grid=eps_grid, progress=False,
                    overrides={"steps": 1, "n_queries": 2})


ENTRY_POINTS: dict[str, Callable[[Any], Any]] = {
    "create_attack": lambda e: registry.create_attack("pgd", eps=e),
    "spec string": lambda e: registry.create_attack(f"pgd:eps={e}"),
    "PGD": lambda e: PGD(e),
    "FGSM": lambda e: FGSM(e),
    "APGD": lambda e: APGD(e),
    "BIM": lambda e: BIM(e),
    "MIM": lambda e: MIM(e),
    "Square": lambda e: Square(e),
    "RayS": lambda e: RayS(eps=e),
    "RandomSearch": lambda e: RandomSearch(e),
    "evaluate": _engine,
    "adversarial_spec": lambda e: adversarial_spec("pgd", e),
    "adversarial_spec fast": lambda e: adversarial_spec("fast", e),
    "check_budget": lambda e: check_budget(e, "linf"),
    "parse_budget": lambda e: parse_budget(str(e), "linf"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(("eps", "shown"), [
    (8, "8.0"), (1.5, "1.5"), (-0.1, "-0.1"), (math.nan, "nan"), (math.inf, "inf"),
])
def test_every_entry_point_gives_the_same_message(entry: str, eps: float, shown: str) -> None:
    assert _message(lambda: ENTRY_POINTS[entry](eps)) == (
        "eps must be in (0, 1] for linf on [0, 1] images (pixel units: write 8/255, not 8), "
        f"got {shown}")


def test_attacks_keep_zero_as_a_no_op_while_engine_and_training_refuse_it() -> None:
    for build in (PGD, FGSM, APGD, BIM, MIM, Square, RandomSearch):
        assert build(0.0).eps == 0.0
    assert RayS(eps=0.0).eps == 0.0
    expected = ("eps must be in (0, 1] for linf on [0, 1] images (pixel units: write 8/255, "
                "not 8), got 0.0")
    assert _message(lambda: _engine(0.0)) == expected
    assert _message(lambda: adversarial_spec("trades", 0.0)) == expected


def test_attacks_accept_l2_budgets_above_one() -> None:
    assert PGD(3.0, norm="l2").eps == 3.0 and MIM(3.0, norm="l2").eps == 3.0


def test_engine_bounds_l2_by_the_inputs_diameter() -> None:
    # 16 input values: √16 = 4.
    assert _message(lambda: _engine(4.5, "l2")) == (
        "eps must be in (0, 4] for l2 on [0, 1] images (√d for d = 16 input values), got 4.5")


def test_engine_grid_holds_zero_refuses_out_of_range_and_caps_the_default() -> None:
    assert _budgets(0.1, [0.0, 0.05], "linf", 16) == (0.1, [0.0, 0.05, 0.1])
    assert _budgets(0.8, None, "linf", 16) == (0.8, [0.0, 0.2, 0.4, 0.8, 1.0])  # 2ε capped
    assert _budgets(3.0, None, "l2", 16) == (3.0, [0.0, 0.75, 1.5, 3.0, 4.0])  # at √16
    assert _message(lambda: _budgets(0.1, [0.0, 8], "linf", 16)) == (
        "eps_grid must be in (0, 1] for linf on [0, 1] images (pixel units: write 8/255, "
        "not 8), got 8.0")
    assert "eps_grid must be in" in _message(lambda: _budgets(0.1, [-0.1], "linf"))
