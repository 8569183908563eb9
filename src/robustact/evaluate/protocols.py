"""Evaluation protocols as data: which attacks, in which order, with which role and budgets.

Why data: a results table must say exactly what ran, and a later run must be able to refuse to
resume a folder made by a different protocol. A protocol is a name, a version and a list of
plain-dict entries (AutoAttack-style); changing an entry means a new version. Each entry::

    {"key": "apgd-ce",                       # the attack's key in the results table
     "attack": {"name": "apgd", "steps": 100},  # a create_attack spec, without eps/norm/seed
     "role": "standard",                     # one of robustact.evaluate.table.ROLES
     "eps": "grid",                          # grid: every ε of the grid; main: ε only;
                                             # none: minimum-norm (no budget); max: unbounded
     "on": "all",                            # all: every clean-correct sample; survivors:
                                             # only those no earlier entry broke at that ε
     "min_classes": 3, "max_classes": 2,     # optional: AUDIT C23 (no DLR for < 3 classes)
     "norms": ["linf"],                      # optional: the norms the attack exists for
     "through": "bpda"}                      # optional, adaptive only: bpda | bpda_smooth |
                                             # twin (transfer from the undefended twin)

The engine (:mod:`robustact.evaluate.runner`) adds ``eps``, ``norm`` and ``seed`` to each spec
when the attack takes them. Entries run in list order within each ε: cheap attacks first, so the
expensive ones only see the survivors (the per-sample worst case is the same either way).
Attacks looked up at run time (``rays``, ``hsj``) that are not registered are skipped with a note
in the table's meta, never silently.

:func:`adaptive_attacks` inspects a model and returns the defense-specific entries (AUDIT C18,
C20): BPDA with ReLU backward and with a smooth surrogate of the jump for JumpReLU, transfer from
the undefended twin, the loss on the pre-activation logits and BPDA-identity for an output
activation.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from robustact.attacks.registry import ATTACKS, attack_parameters
from robustact.defenses.registry import describe_defenses
from robustact.evaluate.table import ROLES

__all__ = ["PROTOCOLS", "EPS_MODES", "adaptive_attacks", "get_protocol", "protocol_names",
           "protocol_fingerprint", "with_adaptive"]

EPS_MODES = ("grid", "main", "none", "max")
THROUGH = ("bpda", "bpda_smooth", "twin")

_FGSM = {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "grid",
         "on": "all"}
_SQUARE = {"key": "square", "attack": {"name": "square", "n_queries": 5000},
           "role": "black_box", "eps": "main", "on": "survivors", "norms": ["linf"]}
_APGD_CE = {"key": "apgd-ce", "attack": {"name": "apgd", "steps": 100, "loss": "ce"},
            "role": "standard", "eps": "grid", "on": "all"}
_APGD_DLR = {"key": "apgd-dlr", "attack": {"name": "apgd", "steps": 100, "loss": "dlr"},
             "role": "loss_variant", "eps": "grid", "on": "survivors", "min_classes": 3}
_APGD_MARGIN = {"key": "apgd-margin", "attack": {"name": "apgd", "steps": 100, "loss": "margin"},
                "role": "loss_variant", "eps": "grid", "on": "survivors", "max_classes": 2}
_DEEPFOOL = {"key": "deepfool", "attack": {"name": "deepfool"}, "role": "min_norm",
             "eps": "none", "on": "all"}

#: name → {"version", "description", "entries"}. Bump ``version`` whenever entries change.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {
        "version": 2,
        "description": "FGSM, PGD-20 (CE) on every ε of the grid, Square (500 queries) at ε",
        "entries": [
            _FGSM,
            {"key": "pgd-20", "attack": {"name": "pgd", "steps": 20}, "role": "standard",
             "eps": "grid", "on": "all"},
            {**_SQUARE, "attack": {"name": "square", "n_queries": 500}},
        ],
    },
    # Version 2: DeepFool moved to thorough (in standard it cost up to 17x the bounded attacks
    # on LeNet-5/MNIST, for norms the robust accuracy does not need), and the adaptive attacks
    # run before the black-box ones (see with_adaptive).
    "standard": {
        "version": 2,
        "description": "FGSM, APGD-CE, APGD-DLR (margin for 2 classes), Square 5000",
        "entries": [_FGSM, _APGD_CE, _APGD_DLR, _APGD_MARGIN, _SQUARE],
    },
    "thorough": {
        "version": 2,
        "description": "standard + APGD-CE with 2x steps and 5 restarts, random search, "
                       "label-only RayS/HopSkipJump, unbounded PGD, C&W-L2",
        "entries": [
            _FGSM, _APGD_CE, _APGD_DLR, _APGD_MARGIN, _SQUARE,
            {"key": "apgd-ce-5x", "attack": {"name": "apgd", "steps": 200, "restarts": 5},
             "role": "convergence", "eps": "main", "on": "survivors"},
            {"key": "random-search", "attack": {"name": "random_search", "n_samples": 10000},
             "role": "random_search", "eps": "main", "on": "survivors"},
            {"key": "rays", "attack": {"name": "rays"}, "role": "label_only", "eps": "main",
             "on": "survivors", "norms": ["linf"]},
            {"key": "hsj", "attack": {"name": "hsj"}, "role": "label_only", "eps": "main",
             "on": "survivors", "norms": ["l2"]},
            {"key": "pgd-unbounded", "attack": {"name": "pgd", "steps": 100},
             "role": "unbounded", "eps": "max", "on": "all"},
            _DEEPFOOL,
            {"key": "cw-l2", "attack": {"name": "cw"}, "role": "min_norm", "eps": "none",
             "on": "all", "norms": ["l2"]},
        ],
    },
}


#: Roles that run after the model-specific adaptive attacks: black-box, label-only and other
#: costly attacks should only see the points that cheap white-box and adaptive ones left robust.
_AFTER_ADAPTIVE = ("black_box", "random_search", "label_only", "convergence", "unbounded",
                   "min_norm")


def with_adaptive(entries: list[dict[str, Any]], adaptive: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """The cascade order: the protocol's white-box entries, then ``adaptive``, then the rest.

    Why: on a masked model the adaptive attack breaks in a few gradient steps what Square needs
    thousands of queries for (measured on a sigmoid T = 100 LeNet-5: Square 50 s of 79 s, before
    an adaptive attack that broke everything left in one pass).
    """
    cut = next((i for i, e in enumerate(entries) if e.get("role") in _AFTER_ADAPTIVE),
               len(entries))
    return [*entries[:cut], *adaptive, *entries[cut:]]


def protocol_names() -> list[str]:
    return sorted(PROTOCOLS)


def _check_entry(e: Any, where: str) -> dict[str, Any]:
    if not isinstance(e, Mapping):
        raise ValueError(f"{where}: a protocol entry must be a dict, got {type(e).__name__}")
    e = dict(e)
    for k in ("key", "attack", "role"):
        if k not in e:
            raise ValueError(f"{where}: protocol entry lacks {k!r}: {e}")
    if not isinstance(e["attack"], Mapping) or "name" not in e["attack"]:
        raise ValueError(f"{where}: entry {e['key']!r} needs 'attack': {{'name': ..., ...}}")
    if e["role"] not in ROLES:
        raise ValueError(f"{where}: entry {e['key']!r} has role {e['role']!r}; "
                         f"choose from {', '.join(ROLES)}")
    e.setdefault("eps", "grid")
    e.setdefault("on", "survivors")
    if e["eps"] not in EPS_MODES:
        raise ValueError(f"{where}: entry {e['key']!r} has eps {e['eps']!r}; "
                         f"choose from {', '.join(EPS_MODES)}")
    if e["on"] not in ("all", "survivors"):
        raise ValueError(f"{where}: entry {e['key']!r} has on {e['on']!r}; use all or survivors")
    if e.get("through") not in (None, *THROUGH):
        raise ValueError(f"{where}: entry {e['key']!r} has through {e['through']!r}; "
                         f"choose from {', '.join(THROUGH)}")
    unknown = set(e) - {"key", "attack", "role", "eps", "on", "min_classes", "max_classes",
                        "norms", "through"}
    if unknown:
        raise ValueError(f"{where}: entry {e['key']!r} has unknown fields {sorted(unknown)}")
    e["attack"] = dict(e["attack"])
    return e


def get_protocol(protocol: str | Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checked copy of a named protocol (``"standard"`` or ``"standard@1"``) or a custom one.

    A custom protocol is ``{"name": ..., "version": ..., "entries": [...]}``. ``overrides``
    (e.g. ``{"steps": 5, "n_queries": 100}``) set a parameter in every entry whose attack
    takes it (tests and smoke runs use them; they change the fingerprint, so a run made with
    overrides never resumes one made without). Returns ``{"name", "version", "id", "entries"}``.
    """
    if isinstance(protocol, str):
        name, _, version = protocol.partition("@")
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
        spec = PROTOCOLS[name]
        if version and version != str(spec["version"]):
            raise ValueError(f"protocol {name!r} is at version {spec['version']}, not {version}")
        proto = {"name": name, "version": spec["version"], "entries": spec["entries"]}
    elif isinstance(protocol, Mapping):
        proto = {"name": str(protocol.get("name", "custom")),
                 "version": protocol.get("version", 1),
                 "entries": protocol.get("entries")}
        if not isinstance(proto["entries"], Sequence) or not proto["entries"]:
            raise ValueError("a custom protocol needs a non-empty list 'entries'")
    else:
        raise TypeError(f"protocol must be a name or a dict, got {type(protocol).__name__}")
    where = f"protocol {proto['name']!r}"
    entries = [_check_entry(copy.deepcopy(e), where) for e in proto["entries"]]
    keys = [e["key"] for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: attack keys must be unique, got {keys}")
    for e in entries:
        for k, v in (overrides or {}).items():
            name = e["attack"]["name"]
            if name in ATTACKS and k in attack_parameters(name):
                e["attack"][k] = v
    proto["entries"] = entries
    proto["id"] = f"{proto['name']}@{proto['version']}"
    proto["overrides"] = dict(overrides or {})
    return proto


def protocol_fingerprint(entries: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the entries' canonical JSON: what a resumed run must match."""
    text = json.dumps(list(entries), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adaptive_attacks(model: nn.Module, *, steps: int = 100) -> list[dict[str, Any]]:
    """Defense-specific entries for ``model`` (AUDIT C18, C20), in the protocol entry format.

    - JumpReLU retrofit: APGD-CE through BPDA with the ReLU backward (``bpda``), through BPDA
      with a smooth surrogate of the jump, x·σ((x − κ)/(κ/10)) (``bpda_smooth``), and transfer
      from the κ = 0 twin; Square (in every protocol but quick) and random search (thorough)
      are the gradient-free checks.
    - output activation f(T·z): APGD-CE and APGD-margin on the pre-activation logits
      (``logits_from="base"``) and APGD-CE through BPDA with the identity.
    - any defended model: transfer from the undefended twin (``strip_defenses``: ReLU, no
      output activation); for a model with no recorded defense there is no twin to derive.
    All run on the survivors at the main ε only.
    """
    kinds = [d["type"] for d in describe_defenses(model)]
    apgd = {"name": "apgd", "steps": steps, "loss": "ce"}
    base = {"role": "adaptive", "eps": "main", "on": "survivors"}
    out: list[dict[str, Any]] = []
    if "output_activation" in kinds:
        out.append({**base, "key": "apgd-ce-logits", "attack": {**apgd, "logits_from": "base"}})
        out.append({**base, "key": "apgd-margin-logits",
                    "attack": {**apgd, "loss": "margin", "logits_from": "base"}})
    if kinds:
        out.append({**base, "key": "bpda-apgd", "attack": dict(apgd), "through": "bpda"})
    if "jumprelu" in kinds:
        out.append({**base, "key": "bpda-smooth-apgd", "attack": dict(apgd),
                    "through": "bpda_smooth"})
    if kinds:
        out.append({**base, "role": "transfer", "key": "transfer-twin-apgd",
                    "attack": dict(apgd), "through": "twin"})
    return [_check_entry(e, "adaptive_attacks") for e in out]
