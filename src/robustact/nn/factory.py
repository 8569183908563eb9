"""The activation factory: an activation is a parameter of a model, not a fork of it.

A *spec* names an activation and its keyword arguments in one string, for the CLI and configs:
``"relu"``, ``"leaky_relu:negative_slope=0.1"``, ``"splash:S=7,per_channel=true"``,
``"jumprelu:kappa=1.0"``. Models receive an :data:`ActivationFactory` (a callable
``num_features -> nn.Module``) and call it once per activation site, so every site owns a fresh
module: learnable activations (PReLU, SPLASH, APL, Maxout) get their own parameters per layer, and
surgery (``robustact.nn.surgery``) can find and swap each site.

The registry maps a name to a builder ``builder(num_features, **kwargs) -> nn.Module``. Modules
that define new activations register themselves with :func:`register_activation`; the built-ins
that PyTorch already provides are registered here.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any, Union

from torch import nn

from robustact.core.registry import Registry

__all__ = [
    "ActivationFactory",
    "ActivationSpec",
    "register_activation",
    "available_activations",
    "parse_activation_spec",
    "activation_factory",
    "create_activation",
]

#: ``num_features -> module``; ``num_features`` is the channel (or unit) count at that site.
ActivationFactory = Callable[[int], nn.Module]
ActivationSpec = Union[str, ActivationFactory]  # noqa: UP007 (a runtime alias on 3.10)

Builder = Callable[..., nn.Module]

_BUILDERS: Registry[Builder] = Registry("activation")


def register_activation(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(num_features, **kwargs) -> nn.Module`` under ``name``."""
    return _BUILDERS.register(name)


def available_activations() -> list[str]:
    return _BUILDERS.names()


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_activation_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"splash:S=7,per_channel=true"`` -> ``("splash", {"S": 7, "per_channel": True})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"activation spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    kwargs: dict[str, Any] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(
                    f"bad activation spec {spec!r}: expected name:key=value,key=value"
                )
            kwargs[key.strip()] = _parse_value(value)
    return name.strip().lower(), kwargs


def activation_factory(spec: ActivationSpec = "relu", **overrides: Any) -> ActivationFactory:
    """Turn a spec string (or an existing factory) into a factory ``num_features -> nn.Module``."""
    if callable(spec) and not isinstance(spec, str):
        if overrides:
            raise ValueError("keyword overrides only apply to string specs")
        return spec
    name, kwargs = parse_activation_spec(spec)
    kwargs.update(overrides)
    builder = _BUILDERS.get(name)

    def factory(num_features: int) -> nn.Module:
        try:
            return builder(num_features, **kwargs)
        except TypeError as e:  # unknown keyword -> name the spec
            raise ValueError(f"bad arguments for activation {spec!r}: {e}") from e

    factory.spec = spec  # type: ignore[attr-defined]  # recorded in checkpoint cards
    return factory


def create_activation(spec: ActivationSpec, num_features: int) -> nn.Module:
    """One activation module for a site with ``num_features`` channels."""
    return activation_factory(spec)(num_features)


# --- PyTorch built-ins (element-wise; ``num_features`` only matters for PReLU) -----------------

register_activation("relu")(lambda n, **kw: nn.ReLU(**kw))
register_activation("leaky_relu")(lambda n, negative_slope=0.01: nn.LeakyReLU(negative_slope))
register_activation("elu")(lambda n, alpha=1.0: nn.ELU(alpha))
register_activation("tanh")(lambda n: nn.Tanh())
register_activation("sigmoid")(lambda n: nn.Sigmoid())
register_activation("swish")(lambda n: nn.SiLU())
register_activation("silu")(lambda n: nn.SiLU())
register_activation("identity")(lambda n: nn.Identity())


@register_activation("prelu")
def _prelu(num_features: int, per_channel: bool = True, init: float = 0.25) -> nn.Module:
    """PReLU with one slope per channel by default (He et al. 2015), or one per layer."""
    return nn.PReLU(num_parameters=num_features if per_channel else 1, init=init)
