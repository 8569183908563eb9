"""The small shared mechanisms in ``robustact.core`` and ``models/_utils``: one registry for
models and activations, validated and forwarded attributes, the zoo's constructor preamble."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from robustact.core.attributes import Checked, Forwarded
from robustact.core.registry import Registry
from robustact.defenses.output_activation import OutputActivationModel
from robustact.models import register_model
from robustact.models._utils import ZooClassifier, conv
from robustact.nn import register_activation
from robustact.nn.bounded import OutputActivation
from robustact.nn.jumprelu import JumpReLU


def test_registry_is_case_insensitive_and_refuses_a_second_entry_under_a_taken_name() -> None:
    reg: Registry[Any] = Registry("gadget")

    def a() -> None: ...

    def b() -> None: ...

    assert reg.register("Foo")(a) is a
    assert reg.register("FOO")(a) is a  # the same object again: harmless (re-imports)
    assert reg.get("fOo") is a and reg.names() == ["foo"]
    with pytest.raises(ValueError, match="gadget 'foo' is already registered"):
        reg.register("foo")(b)
    with pytest.raises(ValueError, match=r"unknown gadget 'bar'; available: foo"):
        reg.get("bar")


def test_model_and_activation_registries_share_the_clash_rule() -> None:
    with pytest.raises(ValueError, match="model 'LeNet5' is already registered"):
        register_model("LeNet5")(lambda **kw: nn.Identity())
    with pytest.raises(ValueError, match="activation 'ReLU' is already registered"):
        register_activation("ReLU")(lambda n: nn.ReLU())


class _Inner:
    level = Checked(lambda v: max(0, int(v)))


class _Outer:
    level = Forwarded("inner")

    def __init__(self) -> None:
        self.inner = _Inner()


def test_checked_stores_the_checked_value_and_forwarded_writes_through() -> None:
    outer = _Outer()
    outer.level = "-3"  # forwarded to outer.inner.level, whose check turns it into 0
    assert outer.inner.level == 0 == outer.level and vars(outer.inner) == {"_level": 0}
    outer.inner.level = 7.9
    assert outer.level == 7 and "level" not in vars(outer)
    assert isinstance(_Inner.level, Checked) and isinstance(_Outer.level, Forwarded)


def test_defense_knobs_are_checked_on_assignment_and_keep_their_old_value() -> None:
    j = JumpReLU(0.5)
    with pytest.raises(ValueError, match="kappa"):
        j.kappa = -1.0
    assert j.kappa == 0.5
    wrapped = OutputActivationModel(nn.Linear(3, 2), "tanh", 2.0)
    wrapped.f = "ARCTAN"  # stored once, on the inner OutputActivation, lower-cased by its check
    assert wrapped.activation.f == "arctan" == wrapped.f
    with pytest.raises(ValueError, match="temperature"):
        wrapped.temperature = 0
    assert wrapped.temperature == wrapped.activation.temperature == 2.0
    assert "_f" not in vars(wrapped) and isinstance(wrapped.activation, OutputActivation)


class _Flat(ZooClassifier):
    arch = "flat"
    fixed_size = True

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        side = self.side_after([conv(3, label="conv1")])
        self.body = nn.Sequential(nn.Conv2d(self.in_channels, 2, 3), nn.Flatten())
        self.head = nn.Linear(2 * side * side, self.num_classes)


class _Pooled(ZooClassifier):
    arch = "pooled"

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self.side_after([conv(3, label="conv1")])
        self.pool_into_head([nn.Conv2d(self.in_channels, 4, 3)], 4)


DATA = dict(num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,))


def test_zoo_preamble_checks_the_dataset_keywords_and_builds_normalize() -> None:
    m = _Flat(input_size=6, **DATA)
    assert (m.num_classes, m.in_channels, m.input_size) == (3, 1, 6)
    assert list(m.state_dict())[:2] == ["normalize.mean", "normalize.std"]
    assert m(torch.rand(2, 1, 6, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="flat flattens its feature map, so it needs input_size"):
        _Flat(input_size=None, **DATA)
    with pytest.raises(ValueError, match="flat needs input_size >= 3, got 2"):
        _Flat(input_size=2, **DATA)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        _Flat(input_size=6, **{**DATA, "num_classes": 1})
    with pytest.raises(TypeError, match="std"):
        _Flat(input_size=6, num_classes=3, in_channels=1, mean=(0.5,))


def test_pooled_models_take_any_size_and_end_in_a_linear_head() -> None:
    m = _Pooled(input_size=None, **DATA)
    assert isinstance(m.head, nn.Linear) and m.feature_dim == 4
    for side in (5, 9):
        assert m(torch.rand(2, 1, side, side)).shape == (2, 3)
    with pytest.raises(ValueError, match="pooled needs input_size >= 3"):
        _Pooled(input_size=2, **DATA)
