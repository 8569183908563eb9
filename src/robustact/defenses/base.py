"""The public base of every defense wrapper: a module around ``base`` that stands in for it.

Why a base class: a defended model must still look like the model it defends to code that
reads its attributes (``num_classes``, ``robustact_config``, ``features``, ``head``), so the
checkpoint card, attacks and the evaluation can treat it like any classifier. Every wrapper
keeps the wrapped model as the submodule ``base``, which is also what adaptive attacks target
(``logits_from="base"``) and what :func:`robustact.defenses.strip_defenses` peels off.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["DefenseWrapper"]


class DefenseWrapper(nn.Module):
    """Unknown public attributes resolve on ``base``; private ones (``_x``) never do."""

    base: nn.Module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None or name.startswith("_"):
                raise
            return getattr(base, name)
