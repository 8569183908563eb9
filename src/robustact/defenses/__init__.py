"""Defenses as functions on a model: JumpReLU retrofit (+ κ tuner), high-temperature output
activations, and the registry that records/re-applies them for checkpoints.

Differential training is a training recipe: :mod:`robustact.train.recipes`.
"""

from robustact.defenses.base import DefenseWrapper
from robustact.defenses.jumprelu_retrofit import (
    ALEXLIKE_KAPPA_GRID,
    KAPPA_GRIDS,
    MNIST_KAPPA_GRID,
    RESNET_KAPPA_GRID,
    JumpReLURetrofit,
    KappaTuning,
    paper_kappa_grid,
    remove_jumprelu,
    retrofit_jumprelu,
    tune_jumprelu,
)
from robustact.defenses.output_activation import (
    OutputActivationModel,
    add_output_activation,
    remove_output_activation,
    tie_rate,
)
from robustact.defenses.registry import apply_defenses, describe_defenses, strip_defenses

__all__ = [
    "DefenseWrapper",
    "ALEXLIKE_KAPPA_GRID",
    "KAPPA_GRIDS",
    "MNIST_KAPPA_GRID",
    "RESNET_KAPPA_GRID",
    "JumpReLURetrofit",
    "KappaTuning",
    "paper_kappa_grid",
    "remove_jumprelu",
    "retrofit_jumprelu",
    "tune_jumprelu",
    "OutputActivationModel",
    "add_output_activation",
    "remove_output_activation",
    "tie_rate",
    "apply_defenses",
    "describe_defenses",
    "strip_defenses",
]
