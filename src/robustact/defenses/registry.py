"""Post-hoc defenses as data: describe them on a model, re-apply them to a fresh one.

Why: a checkpoint stores the undefended architecture (``create_model`` config) and its weights;
the inference-time defenses wrapped around it (JumpReLU κ, output activation f and T) are
recorded as a list of small dicts, in the order they were applied, and re-applied on load::

    [{"type": "jumprelu", "kappa": 1.0},
     {"type": "output_activation", "f": "sigmoid", "temperature": 100.0}]

``apply_defenses(model, describe_defenses(defended))`` rebuilds the same wrapper nesting, so the
state-dict keys match.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from robustact.defenses.jumprelu_retrofit import JumpReLURetrofit, retrofit_jumprelu
from robustact.defenses.output_activation import OutputActivationModel, add_output_activation

__all__ = ["apply_defenses", "describe_defenses", "strip_defenses", "DEFENSE_TYPES"]

#: type -> (required keys, optional keys with defaults)
DEFENSE_TYPES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "jumprelu": (("kappa",), {}),
    "output_activation": (("f", "temperature"), {}),
}

_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _check_spec(spec: Any, i: int) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"defense spec #{i} must be a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in DEFENSE_TYPES:
        raise ValueError(
            f"defense spec #{i} has type {kind!r}; known types: {', '.join(DEFENSE_TYPES)}"
        )
    required, optional = DEFENSE_TYPES[kind]
    args = {k: v for k, v in spec.items() if k != "type"}
    missing = [k for k in required if k not in args]
    unknown = [k for k in args if k not in required and k not in optional]
    if missing or unknown:
        raise ValueError(
            f"defense spec #{i} ({kind}): missing keys {missing}, unknown keys {unknown}; "
            f"expected {list(required) + list(optional)}"
        )
    return kind, {**optional, **args}


def apply_defenses(model: nn.Module, specs: Sequence[Mapping[str, Any]],
                   inplace: bool = False) -> nn.Module:
    """Apply ``specs`` in order; returns the defended model (``model`` untouched unless
    ``inplace``; the output-activation wrapper shares the modules it wraps either way)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise TypeError("specs must be a list of dicts like {'type': 'jumprelu', 'kappa': 1.0}")
    checked = [_check_spec(s, i) for i, s in enumerate(specs)]  # all checked before any change
    out = model if inplace or not checked else copy.deepcopy(model)
    for kind, args in checked:
        if kind == "jumprelu":
            out = retrofit_jumprelu(out, args["kappa"], inplace=True)
        else:
            out = add_output_activation(out, args["f"], args["temperature"])
    return out


def describe_defenses(model: nn.Module) -> list[dict[str, Any]]:
    """The post-hoc defenses wrapped around ``model``, innermost (first applied) first."""
    found: list[dict[str, Any]] = []
    m = model
    while True:
        if isinstance(m, _PARALLEL):
            m = m.module
        elif isinstance(m, OutputActivationModel):
            found.append({"type": "output_activation", "f": m.f, "temperature": m.temperature})
            m = m.base
        elif isinstance(m, JumpReLURetrofit):
            found.append({"type": "jumprelu", "kappa": m.kappa})
            m = m.base
        else:
            return found[::-1]


def strip_defenses(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The undefended model under the wrappers (ReLU modules restored).

    Works on a deep copy unless ``inplace`` (which spends the retrofit wrappers).
    """
    m = model if inplace else copy.deepcopy(model)
    while True:
        if isinstance(m, _PARALLEL):
            m = m.module
        elif isinstance(m, OutputActivationModel):
            m = m.base
        elif isinstance(m, JumpReLURetrofit):
            m = m.undo()
        else:
            return m
