"""Two attribute descriptors for settings that may change after construction.

Why: a defense's knobs (JumpReLU's κ, an output activation's f and temperature) are set on a
live model, e.g. while sweeping κ. :class:`Checked` runs the same check on every assignment as
the constructor does, so ``m.kappa = -1`` fails at once with a clear message instead of producing
silently wrong outputs later. :class:`Forwarded` lets a wrapper expose a setting of a module it
wraps without keeping a second copy that could drift out of sync.

Both are data descriptors, so they also take precedence on ``nn.Module`` subclasses (whose
``__setattr__`` hands plain values to ``object.__setattr__``), exactly like ``property``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Checked", "Forwarded"]


class Checked:
    """``kappa = Checked(check_kappa)``: ``obj.kappa = v`` stores ``check_kappa(v)`` (as
    ``obj._kappa``) and ``obj.kappa`` reads it back."""

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self.check = check
        self.__doc__ = check.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.check(value))


class Forwarded:
    """``f = Forwarded("activation")``: ``obj.f`` reads and writes ``obj.activation.f``, so the
    inner object's own checks apply."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(getattr(obj, self.target), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.target), self.name, value)
