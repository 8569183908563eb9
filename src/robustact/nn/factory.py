"""The activation factory: an activation is a parameter of a model, not a fork of it.

A *spec* names an activation and its keyword arguments in one string, for the CLI and configs
(read by the one spec grammar, :func:`robustact.core.spec.parse_spec`):
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

from collections.abc import Callable
from typing import Any, Union

from torch import nn

from robustact.core.registry import Registry
from robustact.core.spec import bind_params, parse_spec

__all__ = [
    "ActivationFactory",
    "ActivationSpec",
    "register_activation",
    "available_activations",
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


def activation_factory(spec: ActivationSpec = "relu", **overrides: Any) -> ActivationFactory:
    """Turn a spec string (or an existing factory) into a factory ``num_features -> nn.Module``."""
    if callable(spec) and not isinstance(spec, str):
        if overrides:
            raise ValueError("keyword overrides only apply to string specs")
        return spec
    name, kwargs = parse_spec(spec)  # the one spec grammar (robustact.core.spec)
    name = name.lower()
    kwargs.update(overrides)
    builder = _BUILDERS.get(name)
    # Names and types checked now, once, against the builder's signature (num_features left
    # out), so "splash:per_channel=maybe" fails here in one line, not at the first layer built.
    bind_params(builder, (), kwargs, owner=f"activation spec {spec!r}", skip=1)

    def factory(num_features: int) -> nn.Module:
        return builder(num_features, **kwargs)

    factory.spec = spec  # type: ignore[attr-defined]  # recorded in checkpoint cards
    return factory


def create_activation(spec: ActivationSpec, num_features: int) -> nn.Module:
    """One activation module for a site with ``num_features`` channels."""
    return activation_factory(spec)(num_features)


# --- PyTorch built-ins (element-wise; ``num_features`` only matters for PReLU) -----------------

register_activation("relu")(lambda n, inplace=False: nn.ReLU(inplace))
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
