"""One grammar for ``name:key=value,...`` specs, and one check of parameters against a signature.

Why one module: activations (``"splash:S=7,per_channel=true"``), attacks
(``"pgd:eps=8/255,steps=40"``) and the CLI's ``--param KEY=VALUE`` used to have a parser each,
and they disagreed (one read ``none`` and Python literals, another did not; neither refused a key
given twice). Here a spec is read one way everywhere, and :func:`format_spec` writes it back so
that :func:`parse_spec` returns exactly what was written.

Grammar::

    spec   := name [":" [params]]
    params := key "=" value ("," key "=" value)*
    key    := a Python identifier ("-" is read as "_", so CLI spellings work)
    value  := "true" | "false"      -> bool   (any case)
            | "none" | "null"       -> None
            | integer               -> int    (7, -3)
            | real                  -> float  (0.3, 1e-3, inf)
            | real "/" real         -> float  (8/255: budgets are often written as fractions)
            | anything else         -> str    (no "," "=" or ":"; surrounding spaces dropped)

:func:`bind_params` checks keyword parameters against a callable's signature and type hints
(unknown name, missing required one, wrong type such as ``early_stop="maybe"`` for a ``bool``)
and raises :class:`ParameterError` with one line naming the problem. It is generic on purpose:
constructors declare their types once, in their signature, instead of re-checking each by hand.

This module imports nothing from robustact (it is the bottom layer).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

__all__ = [
    "SpecError",
    "ParameterError",
    "parse_value",
    "parse_number",
    "parse_spec",
    "parse_params",
    "format_value",
    "format_spec",
    "bind_params",
]

Value = Union[bool, int, float, str, None]  # noqa: UP007 (a runtime alias on 3.10)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_RESERVED = (",", "=", ":")


class SpecError(ValueError):
    """A spec or ``KEY=VALUE`` item that does not follow the grammar."""


class ParameterError(ValueError, TypeError):
    """A parameter that its callable does not take, lacks, or has the wrong type.

    Both a ``ValueError`` (bad input: the CLI reports it in one line) and a ``TypeError`` (what
    Python raises for a wrong argument, which callers may already catch).
    """


def _real(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_value(text: str) -> Value:
    """Type one value: bool, None, int, float (also ``a/b``), else the stripped string."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.match(s):
        return int(s)
    real = _real(s)
    if real is not None:
        return real
    num, slash, den = s.partition("/")
    if slash:
        a, b = _real(num), _real(den)
        if a is not None and b is not None:
            if b == 0:
                raise SpecError(f"{s!r} divides by zero")
            return a / b
    return s


def parse_number(text: str, what: str) -> float:
    """A number written as ``0.3``, ``1e-3`` or ``8/255``; ``what`` names it in the error."""
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{what} expects a number such as 0.3 or 8/255, got {text!r}")
    return float(value)


def _key(raw: str, where: str) -> str:
    key = raw.strip().replace("-", "_")
    if not _KEY.match(key):
        raise SpecError(f"{where}: {raw.strip()!r} is not a parameter name")
    return key


def _item(item: str, where: str) -> tuple[str, Value]:
    raw_key, eq, raw_value = item.partition("=")
    if not eq:
        raise SpecError(f"{where}: expected KEY=VALUE, got {item.strip()!r}")
    key = _key(raw_key, where)
    if not raw_value.strip():
        raise SpecError(f"{where}: {key} has no value")
    return key, parse_value(raw_value)


def _add(out: dict[str, Value], key: str, value: Value, where: str) -> None:
    if key in out:
        raise SpecError(f"{where}: {key} is given twice")
    out[key] = value


def parse_spec(text: str) -> tuple[str, dict[str, Value]]:
    """``"splash:S=7,per_channel=true"`` -> ``("splash", {"S": 7, "per_channel": True})``.

    The name is returned as written (stripped); registries decide about case.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"a spec must be a non-empty string like name:key=value, got {text!r}")
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"spec {text!r} has no name before ':'")
    where = f"spec {text.strip()!r}"
    params: dict[str, Value] = {}
    if rest.strip():
        for part in rest.split(","):
            _add(params, *_item(part, where), where)
    return name, params


def parse_params(items: Iterable[str], where: str = "--param") -> dict[str, Value]:
    """``["steps=40", "early_stop=false"]`` -> ``{"steps": 40, "early_stop": False}``."""
    out: dict[str, Value] = {}
    for item in items:
        _add(out, *_item(item, where), where)
    return out


def format_value(value: Value) -> str:
    """The text :func:`parse_value` reads back as ``value`` (floats via ``repr``: exact)."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        if value != value.strip() or any(c in value for c in _RESERVED) or parse_value(
                value) != value:
            raise SpecError(f"the string {value!r} cannot be written in a spec "
                            "(it would read back as something else)")
        return value
    raise SpecError(f"a {type(value).__name__} cannot be written in a spec: {value!r}")


def format_spec(name: str, params: Mapping[str, Value] | None = None) -> str:
    """``("pgd", {"eps": 0.3})`` -> ``"pgd:eps=0.3"``; the inverse of :func:`parse_spec`."""
    if not name or any(c in name for c in _RESERVED):
        raise SpecError(f"{name!r} cannot be the name of a spec")
    if not params:
        return name
    for key in params:
        _key(key, f"spec {name!r}")
    return name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in params.items())


# -- parameters against a signature ---------------------------------------------------------------

_DESCRIBE = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "none"}


@functools.cache
def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be evaluated: check names only
        return {}


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(kind: Any, value: Any) -> bool | None:
    """True/False when ``kind`` can be checked; None when it cannot (accept the value)."""
    if kind is Any:
        return None
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an int is a fine float (eps=1)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = typing.get_origin(kind)
    if kind is collections.abc.Callable or origin is collections.abc.Callable:
        return callable(value)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return None


def _describe(kind: Any) -> str:
    if kind in _DESCRIBE:
        return _DESCRIBE[kind]
    if kind is collections.abc.Callable or typing.get_origin(kind) is collections.abc.Callable:
        return "a function"
    return f"a {getattr(kind, '__name__', kind)}"


def _check_type(owner: str, name: str, hint: Any, value: Any) -> None:
    kinds = _members(hint)
    if any(_accepts(k, value) is not False for k in kinds):
        return
    raise ParameterError(f"{owner}: {name} must be {' or '.join(map(_describe, kinds))}, "
                         f"got {value!r}")


def bind_params(fn: Callable[..., Any], args: tuple[Any, ...] = (),
                kwargs: Mapping[str, Any] | None = None, *, owner: str,
                skip: int = 0) -> dict[str, Any]:
    """Check ``fn(*args, **kwargs)`` against ``fn``'s signature and hints; return every parameter.

    The result maps each parameter name (the first ``skip`` ones, e.g. ``self``, left out) to the
    value it gets, defaults included. Raises :class:`ParameterError` with one line for an unknown
    name, a missing required parameter, or a value of the wrong type.
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[skip:]
    sig = sig.replace(parameters=params)
    kwargs = dict(kwargs or {})
    accepted = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    unknown = [k for k in kwargs if k not in accepted] if not takes_any else []
    if unknown:
        raise ParameterError(f"{owner} does not take {', '.join(sorted(unknown))}; "
                             f"it accepts: {', '.join(sorted(accepted))}")
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        given = set(kwargs) | {p.name for p in params[:len(args)]}
        missing = [p.name for p in params
                   if p.default is p.empty and p.name not in given
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing:
            raise ParameterError(f"{owner} needs {', '.join(missing)}") from None
        raise ParameterError(f"{owner}: {e}") from None
    bound.apply_defaults()
    hints = _hints(fn)
    for name, value in bound.arguments.items():
        if name in hints and sig.parameters[name].kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            _check_type(owner, name, hints[name], value)
    return dict(bound.arguments)
