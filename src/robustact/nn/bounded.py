"""Bounded output-layer activations with a temperature: f(T·z) on the logits (Tuna et al. 2022).

The logits z are multiplied by a temperature T and squashed by a strictly increasing, bounded f
(sigmoid, tanh, softsign, arctan) before the softmax: p = softmax(f(T·z)). Because f is strictly
increasing, argmax f(T·z) = argmax z: the decisions are the undefended model's. What changes is
the gradient: at high T, f saturates, its derivative underflows to exactly 0 in float32 for
sigmoid and tanh, and every gradient-based attack sees a zero gradient -- gradient masking
(papers.md §3). softsign and arctan saturate only polynomially, so their gradients become tiny but
rarely exactly zero.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.core.attributes import Checked

__all__ = ["OutputActivation", "OUTPUT_FUNCTIONS", "check_temperature"]

#: The bounded, strictly increasing functions f, by name.
OUTPUT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softsign": F.softsign,
    "arctan": torch.atan,
}


def check_temperature(temperature: Any) -> float:
    """T must be a finite real number > 0 (T ≤ 0 would flip or erase the ranking of logits)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return t


def _check_f(f: Any) -> str:
    """f must name one of OUTPUT_FUNCTIONS (any case); returns the lower-cased name."""
    if not isinstance(f, str):
        raise TypeError(f"output activation f must be a name (str), got {type(f).__name__}")
    key = f.lower()
    if key not in OUTPUT_FUNCTIONS:
        raise ValueError(
            f"unknown output activation {f!r}; choose from {', '.join(OUTPUT_FUNCTIONS)}"
        )
    return key


class OutputActivation(nn.Module):
    """``f(temperature · z)``, element-wise; ``f`` and ``temperature`` can be changed later.

    Kept a module of its own (class name ``OutputActivation``) so adaptive attacks can find it:
    BPDA replaces its backward pass by the identity, and ``logits_from`` can name its input's
    producer.
    """

    f = Checked(_check_f)
    temperature = Checked(check_temperature)

    def __init__(self, f: str = "sigmoid", temperature: float = 1.0) -> None:
        super().__init__()
        self.f = f
        self.temperature = temperature

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return OUTPUT_FUNCTIONS[self._f](z * self._temperature)

    def extra_repr(self) -> str:
        return f"f={self._f}, temperature={self._temperature:g}"
