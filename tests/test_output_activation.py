"""High-temperature output activations f(T·z): definitions, decisions, the gradient masking
they cause, the wrapper API, and the registry round trip. Tiny models, CPU, seconds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import gen
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustact.attacks.base import LogitsView
from robustact.defenses import (
    JumpReLURetrofit,
    OutputActivationModel,
    add_output_activation,
    apply_defenses,
    describe_defenses,
    remove_output_activation,
    retrofit_jumprelu,
    strip_defenses,
)
from robustact.nn.bounded import OUTPUT_FUNCTIONS, OutputActivation

FUNCS = ["sigmoid", "tanh", "softsign", "arctan"]


class Net(nn.Module):
    """Classifier-shaped tiny MLP on 1×4×4 images."""

    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU())
        self.head = nn.Linear(12, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _net() -> Net:
    torch.manual_seed(0)  # test-local weights
    return Net().eval()


def _x(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=gen(seed))


def test_output_activation_hand_values() -> None:
    z = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    t = 2.0
    expected = {
        "sigmoid": [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-1.0))],
        "tanh": [math.tanh(-2.0), 0.0, math.tanh(1.0)],
        "softsign": [-2.0 / 3.0, 0.0, 0.5],
        "arctan": [math.atan(-2.0), 0.0, math.atan(1.0)],
    }
    for f, values in expected.items():
        assert OutputActivation(f, t)(z).tolist() == pytest.approx(values, abs=1e-12), f


@pytest.mark.parametrize("f,t,err", [("relu", 1.0, ValueError), ("sigmoid", 0.0, ValueError),
                                     ("sigmoid", -5.0, ValueError),
                                     ("sigmoid", float("inf"), ValueError),
                                     (3, 1.0, TypeError), ("tanh", "hot", TypeError)])
def test_output_activation_validation(f: object, t: object, err: type) -> None:
    with pytest.raises(err):
        OutputActivation(f, t)  # type: ignore[arg-type]


@pytest.mark.parametrize("f", FUNCS)
@pytest.mark.parametrize("t", [0.01, 1.0, 3.0])
def test_argmax_preserved_on_random_logits(f: str, t: float) -> None:
    # T small enough that float64 does not saturate f (tanh rounds to 1.0 beyond ~19)
    z = torch.randn(2000, 10, generator=gen(2), dtype=torch.float64)
    assert torch.equal(OutputActivation(f, t)(z).argmax(1), z.argmax(1))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), f=st.sampled_from(FUNCS),
       log_t=st.floats(-2, 5), scale=st.floats(0.01, 10))
def test_unique_top_value_is_the_logits_argmax(seed: int, f: str, log_t: float,
                                               scale: float) -> None:
    """f is non-decreasing in floating point too: where f(T·z) has a unique maximum it sits at
    argmax z. (At high T several logits can round to the same saturated value -- a tie.)"""
    z = torch.randn(200, 6, generator=gen(seed)) * scale
    out = OutputActivation(f, 10.0 ** log_t)(z)
    top = out.max(1, keepdim=True).values
    unique = (out == top).sum(1) == 1
    assert torch.equal(out.argmax(1)[unique], z.argmax(1)[unique])


def test_saturation_ties_at_high_temperature_in_float32() -> None:
    """Documented limitation: sigmoid(T·z) rounds to exactly 1.0 for every clearly positive
    logit, so decisions from f(T·z) in float32 tie and argmax then picks the first index."""
    z = torch.tensor([[0.5, 2.0, -1.0]])
    out = OutputActivation("sigmoid", 1000.0)(z)
    assert out[0, 0] == out[0, 1] == 1.0 and out[0, 2] == 0.0


@pytest.mark.parametrize("f", ["sigmoid", "tanh"])
def test_high_temperature_masks_the_input_gradient(f: str) -> None:
    base = _net()
    # T = 1e5: |T·z| exceeds the float32 saturation points (~17 for 1 − s, ~104 for s) for
    # every logit farther than 1e-3 from 0
    model = add_output_activation(base, f, 1e5)
    x = _x(64).requires_grad_()
    y = torch.randint(0, 5, (64,), generator=gen(3))
    loss = F.cross_entropy(model(x), y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    zero = (grad.flatten(1).abs().sum(1) == 0).float().mean()
    assert zero >= 0.9  # exactly zero for (almost) every input: the masking the paper relies on
    # ... while the loss on the raw logits (what an adaptive attack uses) has a real gradient
    (grad_z,) = torch.autograd.grad(F.cross_entropy(model.logits(x), y), x)
    assert bool((grad_z.flatten(1).abs().sum(1) > 0).all())
    # at T = 1 nothing is masked
    model.temperature = 1.0
    (grad1,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    assert bool((grad1.flatten(1).abs().sum(1) > 0).all())


def test_logits_from_base_sees_the_raw_logits() -> None:
    model = add_output_activation(_net(), "tanh", 50.0)
    x = _x(8)
    inner, out = LogitsView(model, "base")(x)
    assert torch.equal(inner, model.base(x)) and torch.equal(out, model(x))


def test_wrapper_api_and_delegation() -> None:
    base = _net()
    x = _x(8)
    model = add_output_activation(base, "softsign", 3.0)
    assert isinstance(model, OutputActivationModel) and model.base is base and not model.training
    assert torch.allclose(model(x), F.softsign(3.0 * base(x)))
    assert torch.equal(model.logits(x), base(x))
    assert torch.equal(model.features(x), base.features(x)) and model.head is base.head
    assert model.num_classes == 5  # other attributes come from base
    assert [type(m).__name__ for m in model.modules()].count("OutputActivation") == 1  # for BPDA
    model.f, model.temperature = "arctan", 0.5
    assert torch.allclose(model(x), torch.atan(0.5 * base(x)))
    assert list(model.state_dict()) == [f"base.{k}" for k in base.state_dict()]
    assert remove_output_activation(model) is base
    with pytest.raises(ValueError, match="already has an output activation"):
        add_output_activation(model, "tanh", 2.0)
    with pytest.raises(ValueError, match="no output activation"):
        remove_output_activation(base)
    with pytest.raises(ValueError, match="temperature"):
        model.temperature = 0


def test_usable_during_training() -> None:
    model = add_output_activation(_net(), "sigmoid", 1.0).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = _x(32)
    y = torch.randint(0, 5, (32,), generator=gen(4))
    before = model.base.head.weight.detach().clone()
    loss0 = F.cross_entropy(model(x), y)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(model.base.head.weight, before)
    assert F.cross_entropy(model(x), y) < loss0


def test_registry_round_trip_with_both_defenses() -> None:
    net = _net()
    x = _x(8)
    specs = [{"type": "output_activation", "f": "sigmoid", "temperature": 100.0},
             {"type": "jumprelu", "kappa": 0.2}]
    defended = apply_defenses(net, specs)
    # the output activation stays outermost, so logits_from="base" still names the logits
    assert isinstance(defended, OutputActivationModel)
    assert isinstance(defended.base, JumpReLURetrofit)
    described = describe_defenses(defended)
    assert described == [{"type": "jumprelu", "kappa": 0.2},
                         {"type": "output_activation", "f": "sigmoid", "temperature": 100.0}]
    rebuilt = apply_defenses(copy.deepcopy(net), described)
    rebuilt.load_state_dict(defended.state_dict())
    assert torch.equal(rebuilt(x), defended(x))
    manual = add_output_activation(retrofit_jumprelu(net, 0.2), "sigmoid", 100.0)
    assert torch.equal(manual(x), defended(x))
    assert torch.equal(strip_defenses(defended)(x), net(x))
    with pytest.raises(ValueError, match="missing"):
        apply_defenses(net, [{"type": "output_activation", "f": "tanh"}])
    assert set(OUTPUT_FUNCTIONS) == set(FUNCS)
