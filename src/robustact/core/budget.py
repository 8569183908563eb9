"""The one rule for an attack budget ε: norms, range, text, per-dataset defaults.

Why one module: ε used to be checked by three rules in a dozen places (the attacks allowed an
L∞ ε of 0 but any L2 ε, the engine any positive ε, the evaluate workflow (0, √d], adversarial
training (0, 1]), each with its own error text, so the same typo (``8`` for ``8/255``) read
differently depending on the command that met it. Here the rule is stated once:

- norms: :data:`NORMS` (``"linf"``, ``"l2"``); any other is one error naming the choices;
- range, for images in [0, 1]: L∞ ε in (0, 1] (an L∞ ε above 1 constrains nothing: it is a
  budget in grey levels); L2 ε in (0, √d], d the number of input values, when d is known (√d
  is the L2 diameter of the box: a larger ball holds the whole box);
- ε = 0 only where the caller says so (``allow_zero``): an ε grid's first point, or an attack,
  for which ε = 0 is a no-op that returns x;
- text: ``"8/255"``, ``"0.3"``, ``"2e-2"`` (:func:`parse_budget`);
- the standard budget per dataset and norm (:data:`DEFAULT_BUDGETS`).

An out-of-range ε always gets the same sentence, parameterised only by the option's name::

    eps must be in (0, 1] for linf on [0, 1] images (pixel units: write 8/255, not 8), got 8.0

The sentence states the range of a meaningful budget, (0, ...], even for callers that also
accept 0: the zero is a no-op kept for ε grids, not a budget anyone should be told to choose,
and one sentence everywhere is the point of this module.

This module imports only :mod:`robustact.core.spec` (the bottom layer).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from robustact.core.spec import ParameterError, SpecError, parse_value

__all__ = [
    "NORMS",
    "DEFAULT_BUDGETS",
    "check_norm",
    "budget_ceiling",
    "check_budget",
    "parse_budget",
    "default_budget",
]

#: The threat models whose budgets this package defines (and whose balls the attacks project on).
NORMS: tuple[str, ...] = ("linf", "l2")

#: The budget ε a fixed-budget attack gets when none is given, by dataset and norm, in [0, 1]
#: pixel units. L∞: the standard threat models (MNIST 0.3, Madry et al.; CIFAR 8/255,
#: RobustBench); sklearn's 8×8 digits have 17 grey levels, and 0.1 (≈ 1.6 levels) is the ε the
#: demo reports. L2: MNIST 2.0 and CIFAR 0.5 as commonly reported; digits 0.5 (64 pixels: a bit
#: below 0.8, the L2 size of a full 0.1 L∞ corner).
DEFAULT_BUDGETS: dict[str, dict[str, float]] = {
    "mnist": {"linf": 0.3, "l2": 2.0},
    "cifar10": {"linf": 8 / 255, "l2": 0.5},
    "cifar100": {"linf": 8 / 255, "l2": 0.5},
    "digits": {"linf": 0.1, "l2": 0.5},
}


def check_norm(norm: str, allowed: tuple[str, ...] = NORMS) -> str:
    """Return ``norm`` if it is one of ``allowed``, else one ValueError naming the choices.

    ``allowed`` narrows (Square is L∞ only) or widens (``verify`` also measures L1 and L0) the
    default; the error text is the same either way.
    """
    if not isinstance(norm, str) or norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; choose from {allowed}")
    return norm


def _dim(dim: int | None) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim (the number of input values) must be an integer >= 1, got {dim!r}")
    return int(dim)


def budget_ceiling(norm: str, dim: int | None = None) -> float:
    """The largest meaningful ε for ``norm`` on [0, 1] images with ``dim`` input values.

    1 for L∞; √dim for L2 (the box's diameter), ``inf`` when ``dim`` is not known (an attack
    built before it sees data: the L2 bound is then checked by whoever knows the data).
    """
    norm = check_norm(norm)
    d = _dim(dim)
    if norm == "linf":
        return 1.0
    return math.inf if d is None else math.sqrt(d)


def _range_text(norm: str, dim: int | None) -> str:
    """``(0, 1] for linf on [0, 1] images (...)``: the range and the hint of the one message."""
    if norm == "linf":
        return "(0, 1] for linf on [0, 1] images (pixel units: write 8/255, not 8)"
    if dim is None:
        return "(0, √d] for l2 on [0, 1] images (d: the number of input values)"
    return f"(0, {math.sqrt(dim):.4g}] for l2 on [0, 1] images (√d for d = {dim} input values)"


def _shown(value: Any) -> str:
    """The offending value as the message shows it: numbers as floats (8 and "8" read 8.0)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


def _out_of_range(value: Any, norm: str, dim: int | None, name: str) -> ValueError:
    return ValueError(f"{name} must be in {_range_text(norm, dim)}, got {_shown(value)}")


def check_budget(eps: Any, norm: str, dim: int | None = None, *, name: str = "eps",
                 allow_zero: bool = False) -> float:
    """``eps`` as a float, checked against the one rule for ``norm`` (and ``dim`` if known).

    Args:
        eps: the budget, in [0, 1] pixel units (a real number; bool is refused).
        norm: one of :data:`NORMS`.
        dim: number of input values per sample (e.g. 784 for MNIST); bounds an L2 ε by √dim.
        name: how the message names the budget: ``"eps"``, ``"--eps"``, ``"--adv-eps"``.
        allow_zero: accept ε = 0 (an ε grid's no-attack point; an attack's no-op).

    Raises:
        ParameterError (a ValueError and a TypeError): ``eps`` is not a real number.
        ValueError: ``eps`` is NaN, infinite or outside the range (the one message).
    """
    norm = check_norm(norm)
    d = _dim(dim)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ParameterError(f"{name} must be a number such as 0.3 or 8/255, got "
                             f"{type(eps).__name__} {eps!r}")
    value = float(eps)
    top = budget_ceiling(norm, d)
    if not math.isfinite(value) or value > top or value < 0 or (value == 0 and not allow_zero):
        raise _out_of_range(eps, norm, d, name)
    return value + 0.0  # -0.0 -> 0.0: a zero budget has one spelling


def parse_budget(value: str | float, norm: str | None = None, dim: int | None = None, *,
                 name: str = "eps", allow_zero: bool = False) -> float:
    """A budget written as text (``"8/255"``, ``"0.3"``, ``"2e-2"``) or given as a number.

    With ``norm`` the value is also checked by :func:`check_budget` (so ``"8"`` for L∞ is
    refused with the hint "pixel units: write 8/255, not 8"); without it (an attack whose norm
    is still to be chosen) only the text is read, and the attack checks the range.

    Raises:
        SpecError (a ValueError): the text is not a number (``"eight"``, ``"1/0"``, ``"true"``).
        ValueError: the number is outside the range (:func:`check_budget`'s message).
    """
    if isinstance(value, str):
        try:
            number = parse_value(value)
        except SpecError:
            number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise SpecError(f"{name} expects a number such as 0.3 or 8/255, got {value!r}")
    else:
        number = value
    if norm is None:
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise ParameterError(f"{name} must be a number such as 0.3 or 8/255, got "
                                 f"{type(number).__name__} {number!r}")
        return float(number)
    return check_budget(number, norm, dim, name=name, allow_zero=allow_zero)


def default_budget(dataset: str, norm: str) -> float:
    """The ε of :data:`DEFAULT_BUDGETS` for ``dataset`` and ``norm``; one ValueError if none."""
    norm = check_norm(norm)
    budgets = DEFAULT_BUDGETS.get(dataset, {})
    if norm not in budgets:
        known = ", ".join(f"{d} ({'/'.join(b)})" for d, b in DEFAULT_BUDGETS.items())
        raise ValueError(f"no default eps for dataset {dataset!r} and norm {norm!r} (defaults "
                         f"exist for {known}); give eps explicitly")
    return budgets[norm]
