"""``create_attack(name, **params)``: attacks by name, for the CLI and protocol files.

Why: an evaluation protocol is data (AutoAttack-style) — a list of ``{"attack": name, ...}``
entries — so results files can record exactly what ran and re-run it. Unknown parameters are an
error naming the attack's accepted ones, never silently ignored.
"""

from __future__ import annotations

import inspect
from typing import Any

from robustact.attacks.base import Attack

__all__ = ["create_attack", "available_attacks", "attack_parameters"]


def _classes() -> dict[str, type[Attack]]:
    from robustact import attacks as A

    return {
        "fgsm": A.FGSM,
        "bim": A.BIM,
        "ifgsm": A.IFGSM,
        "pgd": A.PGD,
        "mim": A.MIM,
        "apgd": A.APGD,
        "deepfool": A.DeepFool,
        "cw": A.CarliniWagnerL2,
        "trust_region": A.TrustRegion,
        "square": A.Square,
    }


def available_attacks() -> list[str]:
    return sorted(_classes())


def attack_parameters(name: str) -> list[str]:
    """Keyword parameters the named attack accepts."""
    cls = _lookup(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _lookup(name: str) -> type[Attack]:
    classes = _classes()
    key = name.lower().replace("-", "_")
    key = {"tr": "trust_region", "cw_l2": "cw", "i_fgsm": "ifgsm"}.get(key, key)
    if key not in classes:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(sorted(classes))}")
    return classes[key]


def create_attack(name: str, **params: Any) -> Attack:
    """Build an attack; ``None`` values are dropped so callers can pass optional CLI flags."""
    cls = _lookup(name)
    accepted = set(attack_parameters(name))
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ValueError(
            f"attack {name!r} does not take {', '.join(unknown)}; it accepts: "
            f"{', '.join(sorted(accepted))}"
        )
    return cls(**given)
