"""Activations, the activation factory, the normalization layer and model surgery."""

from robustact.nn.factory import (
    ActivationFactory,
    ActivationSpec,
    activation_factory,
    available_activations,
    create_activation,
    parse_activation_spec,
    register_activation,
)
from robustact.nn.normalize import DATASET_STATS, Normalize

__all__ = [
    "ActivationFactory",
    "ActivationSpec",
    "activation_factory",
    "available_activations",
    "create_activation",
    "parse_activation_spec",
    "register_activation",
    "DATASET_STATS",
    "Normalize",
]
