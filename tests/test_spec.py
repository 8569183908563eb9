"""The one spec grammar (robustact.core.spec) and what is built on it: activation specs, attack
specs (``create_attack(**attack.spec())`` rebuilds the attack), generic parameter checks, one
name per attack, default budgets, and the ``attack`` command's parameter handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from robustact.attacks import CarliniWagnerL2, TransferAttack
from robustact.attacks.registry import (
    DEFAULT_BUDGETS,
    attack_parameters,
    available_attacks,
    create_attack,
    resolve_attack,
)
from robustact.cli import app
from robustact.core.spec import (
    ParameterError,
    SpecError,
    format_spec,
    parse_number,
    parse_params,
    parse_spec,
    parse_value,
)
from robustact.nn import activation_factory

# -- the grammar ----------------------------------------------------------------------------------


def test_values_are_typed() -> None:
    assert parse_value("true") is True and parse_value("FALSE") is False
    assert parse_value("none") is None and parse_value("null") is None
    assert parse_value("7") == 7 and isinstance(parse_value("7"), int)
    assert parse_value("-3") == -3
    assert parse_value("0.3") == 0.3 and parse_value("1e-3") == 1e-3
    assert parse_value("8/255") == 8 / 255
    assert parse_value(" ce ") == "ce" and parse_value("base.fc") == "base.fc"
    assert parse_value("maybe") == "maybe"
    assert parse_number("8/255", "--eps") == 8 / 255
    with pytest.raises(SpecError, match="--eps expects a number"):
        parse_number("eight", "--eps")
    with pytest.raises(SpecError, match="divides by zero"):
        parse_value("1/0")


def test_parse_spec() -> None:
    assert parse_spec("relu") == ("relu", {})
    assert parse_spec("relu:") == ("relu", {})
    assert parse_spec(" splash:S=7, per_channel=true ") == ("splash", {"S": 7, "per_channel": True})
    assert parse_spec("pgd:eps=8/255,early-stop=false") == (
        "pgd", {"eps": 8 / 255, "early_stop": False})


@pytest.mark.parametrize("text, needle", [
    ("", "non-empty"),
    (":S=7", "no name"),
    ("splash:S", "KEY=VALUE"),
    ("splash:S=", "has no value"),
    ("splash:=7", "not a parameter name"),
    ("splash:S=7,S=5", "S is given twice"),
    ("splash:S=7,,b_max=2", "KEY=VALUE"),
])
def test_bad_specs_are_one_line_errors(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as e:
        parse_spec(text)
    assert "\n" not in str(e.value)


def test_parse_params_refuses_a_key_given_twice() -> None:
    assert parse_params(["steps=40", "early_stop=false"]) == {"steps": 40, "early_stop": False}
    with pytest.raises(SpecError, match="eps is given twice"):
        parse_params(["eps=0.1", "eps=0.2"])
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_params(["nonsense"])


_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_values = st.one_of(
    st.booleans(), st.none(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, width=64),
    st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True).filter(
        lambda s: s not in ("true", "false", "none", "null", "inf", "infinity", "nan")),
)


@settings(max_examples=200, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
       params=st.dictionaries(_keys, _values, max_size=5))
def test_format_then_parse_is_the_identity(name: str, params: dict) -> None:
    back_name, back = parse_spec(format_spec(name, params))
    assert back_name == name and back == params
    for k, v in params.items():  # types survive too (True is not 1, 1 is not 1.0)
        assert type(back[k]) is type(v)


def test_format_refuses_what_would_read_back_differently() -> None:
    for bad in ("true", "7", "a,b", "k=v", " x"):
        with pytest.raises(SpecError):
            format_spec("x", {"s": bad})
    with pytest.raises(SpecError):
        format_spec("x", {"t": (1, 2)})  # type: ignore[dict-item]


# -- activations use it ---------------------------------------------------------------------------

def test_activation_specs_are_checked_against_the_builder() -> None:
    # Before the one parser, "maybe" reached SPLASH as a (truthy) string and the second kappa
    # silently replaced the first.
    with pytest.raises(ValueError, match="per_channel must be true or false, got 'maybe'"):
        activation_factory("splash:per_channel=maybe")
    with pytest.raises(ValueError, match="kappa is given twice"):
        activation_factory("jumprelu:kappa=1,kappa=2")
    with pytest.raises(ValueError, match="does not take alpha"):
        activation_factory("jumprelu:alpha=1")
    assert activation_factory("JumpReLU:kappa=0.5")(3).kappa == 0.5


# -- attacks: one name, spec() round trip ---------------------------------------------------------

def _required(name: str) -> dict:
    """Parameters that make each registered attack cheap to run (eps where it takes one)."""
    cheap = {"eps": 0.1, "steps": 3, "n_queries": 20, "binary_search_steps": 2, "restarts": 2}
    accepted = attack_parameters(name)
    return {k: v for k, v in cheap.items() if k in accepted}


def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # 4 classes: the fewest every registered attack accepts (APGD-T's targeted DLR needs 4).
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.rand(6, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    return model.eval(), x, y


@pytest.mark.parametrize("name", available_attacks())
def test_spec_rebuilds_an_identical_attack(name: str) -> None:
    attack = create_attack(name, **_required(name))
    spec = attack.spec()
    assert spec["name"] == name == type(attack).name  # one name: registry, class and spec
    json.dumps(spec)  # plain values only
    again = create_attack(**spec)
    assert type(again) is type(attack) and again.spec() == spec
    # the spec string written by format_spec reads back to the same attack
    from_text = create_attack(format_spec(spec["name"], {k: v for k, v in spec.items()
                                                         if k != "name"}))
    assert from_text.spec() == spec
    model, x, y = _tiny()
    r1, r2 = attack(model, x, y), again(model, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(available_attacks()), seed=st.integers(0, 2**31 - 1),
       eps=st.floats(0.0, 1.0), early_stop=st.booleans())
def test_spec_round_trip_over_drawn_parameters(name: str, seed: int, eps: float,
                                               early_stop: bool) -> None:
    params = _required(name)
    accepted = attack_parameters(name)
    drawn = {"seed": seed, "eps": eps, "early_stop": early_stop}
    params.update({k: v for k, v in drawn.items() if k in accepted})
    spec = create_attack(name, **params).spec()
    assert create_attack(**spec).spec() == spec
    assert {k: spec[k] for k in params} == params


def test_one_name_per_attack() -> None:
    assert CarliniWagnerL2().spec()["name"] == "cw" and CarliniWagnerL2.name == "cw"
    for alias in ("cw_l2", "tr", "i_fgsm"):
        with pytest.raises(ValueError, match="unknown attack"):
            create_attack(alias)
    assert create_attack("Trust-Region").spec()["name"] == "trust_region"  # spelling, not alias


def test_attacks_without_randomness_take_no_seed() -> None:
    # config() used to carry seed and loss_name for every attack, so create_attack refused it.
    for name in ("cw", "deepfool", "trust_region"):
        spec = create_attack(name).spec()
        assert "seed" not in spec and "loss_name" not in spec


def test_transfer_spec_names_the_inner_attack() -> None:
    model, _, _ = _tiny()
    t = TransferAttack(model, create_attack("fgsm", eps=0.1))
    assert t.spec() == {"name": "transfer", "attack": create_attack("fgsm", eps=0.1).spec(),
                        "force_eval": False}


# -- parameter checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("params, needle", [
    ({"eps": 0.3, "early_stop": "maybe"}, "early_stop must be true or false, got 'maybe'"),
    ({"eps": 0.3, "steps": 2.5}, "steps must be an integer"),
    ({"eps": "0.3"}, "eps must be a number"),
    ({}, "attack 'pgd' needs eps"),
    ({"eps": 1.5}, r"eps must be in \(0, 1\] for linf"),
    ({"eps": 0.3, "stepz": 3}, "does not take stepz"),
])
def test_bad_attack_parameters_are_one_line(params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as e:
        create_attack("pgd", **params)
    assert "\n" not in str(e.value)


def test_parameter_error_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        create_attack("deepfool", box_aware="yes")
    assert issubclass(ParameterError, ValueError)


def test_l2_budgets_may_exceed_one() -> None:
    # The [0, 1] box has L2 diameter sqrt(d): an L2 eps above 1 is a real budget.
    assert create_attack("pgd", eps=1.5, norm="l2").spec()["eps"] == 1.5
    assert create_attack("fgsm", eps=3, norm="l2").spec()["eps"] == 3


def test_a_parameter_in_the_spec_string_and_as_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="eps given twice"):
        create_attack("pgd:eps=0.3", eps=0.1)
    assert create_attack("pgd:eps=8/255,steps=3").spec()["eps"] == 8 / 255


def test_default_budget_by_dataset_and_norm() -> None:
    assert resolve_attack("pgd", {}, dataset="mnist") == (
        {"name": "pgd", "eps": 0.3}, {"eps": 0.3})
    spec, used = resolve_attack("apgd", {"norm": "l2"}, dataset="cifar10")
    assert used == {"eps": DEFAULT_BUDGETS["cifar10"]["l2"]} and spec["eps"] == 0.5
    assert resolve_attack("pgd", {"eps": 0.1}, dataset="mnist")[1] == {}
    assert resolve_attack("deepfool", {}, dataset="mnist")[1] == {}  # takes no eps
    assert resolve_attack("ifgsm", {}, dataset="mnist")[1] == {}  # eps optional (unbounded)
    with pytest.raises(ValueError, match="no default eps for dataset 'svhn'"):
        resolve_attack("pgd", {}, dataset="svhn")
    for budgets in DEFAULT_BUDGETS.values():
        assert 0 < budgets["linf"] <= 1 and not math.isnan(budgets["l2"])


# -- the attack command ---------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained digits model saved as a checkpoint: the attack command needs no accuracy."""
    from robustact.models import create_model
    from robustact.train import save_checkpoint

    torch.manual_seed(0)  # test set-up, not library code
    model = create_model("smallcnn", dataset="digits").eval()
    return save_checkpoint(tmp_path_factory.mktemp("spec") / "m", model,
                           data={"dataset": "digits"})


def _attack(checkpoint: Path, out: Path, *args: str) -> Result:
    # the fixture's model is barely trained: these tests are about the attack's parameters,
    # so the chance gate is passed on purpose
    return runner.invoke(app, ["attack", "--model", str(checkpoint), "--n", "8", "--steps", "2",
                               "--no-progress", "--allow-chance", "--out", str(out), *args])


def test_attack_without_eps_uses_the_dataset_default(checkpoint: Path, tmp_path: Path) -> None:
    res = _attack(checkpoint, tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "no --eps given: using eps=0.1" in res.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["eps"] == 0.1 and summary["attacks"]["pgd"]["eps"] == 0.1


def test_attack_eps_as_a_fraction(checkpoint: Path, tmp_path: Path) -> None:
    res = _attack(checkpoint, tmp_path / "a", "--eps", "8/255", "--alpha", "2/255")
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "a" / "summary.json").read_text())["attacks"]["pgd"]
    assert spec["eps"] == 8 / 255 and spec["alpha"] == 2 / 255


@pytest.mark.parametrize("args, needle", [
    (["--eps", "1.5"], "eps must be in (0, 1] for linf"),
    (["--eps", "0.3", "--param", "early_stop=maybe"], "early_stop must be true or false"),
    (["--eps", "0.3", "--param", "eps=0.1"], "eps given twice"),
    (["--param", "steps=4"], "steps given twice"),
    (["--eps", "0.1", "--param", "seed=1", "--param", "seed=2"], "seed is given twice"),
    (["--eps", "abc"], "--eps expects a number"),
    (["--attack", "cw_l2"], "unknown attack 'cw_l2'"),
])
def test_attack_refuses_bad_parameters_in_one_line(checkpoint: Path, tmp_path: Path,
                                                   args: list[str], needle: str) -> None:
    res = _attack(checkpoint, tmp_path / "a", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
