"""A name -> builder table with a ``register`` decorator: the one mechanism behind the model zoo
(``create_model``) and the activation factory (``activation_factory``).

Why one class: both look names up case-insensitively, refuse to register a second, different
object under a taken name (two plugins silently shadowing each other would change what a
checkpoint card rebuilds), and answer an unknown name with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Builders of one ``kind`` ("model", "activation"), keyed by lower-cased name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: file the decorated builder under ``name`` and return it unchanged."""

        def deco(entry: T) -> T:
            key = name.lower()
            if key in self._entries and self._entries[key] is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = entry
            return entry

        return deco

    def get(self, name: str) -> T:
        """The builder registered under ``name``; a ValueError listing the known names if none."""
        key = name.lower()
        if key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)
