"""``create_attack(name, **params)``: attacks by name, for the CLI and protocol files.

Why: an evaluation protocol is data (AutoAttack-style) — a list of ``{"name": ..., ...}``
entries — so results files can record exactly what ran and re-run it: every attack's
:meth:`~robustact.attacks.base.Attack.spec` is such an entry, and ``create_attack(**spec)``
rebuilds the attack. ``name`` may also be a spec string in the one grammar of
:mod:`robustact.core.spec` (``"pgd:eps=8/255,steps=40"``). Each attack has one name, its class's
``name``; unknown parameters, missing ones and wrongly typed ones are one-line errors naming
the attack, never silently ignored. ``DEFAULT_BUDGETS`` and ``default_budget`` are the ones of
:mod:`robustact.core.budget` (the one budget rule), re-exported here where callers found them.
"""

from __future__ import annotations

import inspect
from typing import Any

from robustact.attacks.apgd import APGD
from robustact.attacks.apgd_t import APGDT
from robustact.attacks.base import Attack
from robustact.attacks.bim import BIM, IFGSM
from robustact.attacks.cw import CarliniWagnerL2
from robustact.attacks.deepfool import DeepFool
from robustact.attacks.fgsm import FGSM
from robustact.attacks.hopskipjump import HopSkipJump
from robustact.attacks.mim import MIM
from robustact.attacks.pgd import PGD
from robustact.attacks.random_search import RandomSearch
from robustact.attacks.rays import RayS
from robustact.attacks.square import Square
from robustact.attacks.trust_region import TrustRegion
from robustact.core.budget import DEFAULT_BUDGETS, default_budget
from robustact.core.spec import ParameterError, parse_spec

__all__ = [
    "ATTACKS",
    "DEFAULT_BUDGETS",
    "attack_parameters",
    "available_attacks",
    "create_attack",
    "default_budget",
    "resolve_attack",
]

#: Every registered attack by its one name (the class's ``name``). The transfer attack is not
#: here: its surrogate is a model, not a parameter a spec can carry.
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    FGSM, BIM, IFGSM, PGD, MIM, APGD, APGDT, DeepFool, CarliniWagnerL2, TrustRegion, Square,
    RayS, HopSkipJump, RandomSearch)}


def available_attacks() -> list[str]:
    return sorted(ATTACKS)


def attack_parameters(name: str) -> list[str]:
    """Keyword parameters the named attack accepts."""
    cls = _lookup(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _lookup(name: str) -> type[Attack]:
    classes = ATTACKS
    key = name.strip().lower().replace("-", "_")
    if key not in classes:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(sorted(classes))}")
    return classes[key]


def resolve_attack(name: str, params: dict[str, Any] | None = None, *,
                   dataset: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge a name or spec string with keyword ``params`` into ``{"name": ..., **params}``.

    A parameter both in the spec string and in ``params`` is refused (which one was meant?).
    With ``dataset``, a fixed-budget attack given no ``eps`` gets the dataset's default budget
    for its norm (:data:`DEFAULT_BUDGETS`). Returns ``(spec, defaults_used)``; the spec is not
    validated here: the attack's constructor does that.
    """
    base, given = parse_spec(name)
    params = dict(params or {})
    twice = sorted(set(given) & set(params))
    if twice:
        raise ParameterError(f"{', '.join(twice)} given twice: in {name!r} and as a parameter; "
                             "give it once")
    cls = _lookup(base)
    merged: dict[str, Any] = {**given, **params}
    signature = inspect.signature(cls.__init__).parameters
    eps = signature.get("eps")
    defaults: dict[str, Any] = {}
    if dataset is not None and eps is not None and eps.default is eps.empty and (
            "eps" not in merged):
        norm_param = signature.get("norm")
        norm = merged.get("norm", norm_param.default if norm_param is not None else cls.norm)
        defaults["eps"] = default_budget(dataset, norm)
    return {"name": cls.name, **merged, **defaults}, defaults


def create_attack(name: str, **params: Any) -> Attack:
    """Build an attack from its name (or a spec string) and parameters.

    ``create_attack(**attack.spec())`` rebuilds ``attack``. Parameters are passed as given
    (``None`` included: ``PGD(eps=None, alpha=...)`` is the unbounded variant).
    """
    spec, _ = resolve_attack(name, params)
    cls = ATTACKS[spec.pop("name")]
    return cls(**spec)
