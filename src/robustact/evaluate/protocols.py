"""Evaluation protocols as data files: which attacks, in which order, with which role and budgets.

Why data: a results table must say exactly what ran, and a later run must be able to refuse to
resume a folder made by a different protocol. A protocol is a JSON file in the
:mod:`robustact.protocols` package, one per ``name@version`` (AutoAttack-style plain-dict
entries); changing an entry means a new file with the next version, and the old one stays so an
old result can be rerun (``get_protocol("standard@1")``). This module is the one reader of those
files. A file holds::

    {"name": "standard", "version": 2,
     "description": "...",                  # one line: what runs
     "changes": "...",                      # what changed from the previous version, and why
     "eps_grid": [0, 0.25, 0.5, 1, 2],      # the ε grid as multiples of the main ε
     "adaptive": "before_costly",           # where adaptive_attacks(model) go: before_costly
                                            # (after the white-box entries, before black-box,
                                            # label-only and other costly ones),
                                            # before_loss_variant (before the first loss
                                            # variant, e.g. APGD-T), last, or none
     "adaptive_plan": {"order": [...],      # optional: these adaptive keys run first, in
                       "steps": {...}},     # this order; steps per adaptive key
     "entries": [...]}

and each entry::

    {"key": "apgd-ce",                       # the attack's key in the results table
     "attack": {"name": "apgd", "steps": 100},  # a create_attack spec, without eps/norm/seed
     "role": "standard",                     # one of robustact.evaluate.table.ROLES
     "eps": "grid",                          # grid: every ε of the grid; main: ε only;
                                             # lower: the grid's ε below the main one (a
                                             # screen for the curve); upper: the main ε and
                                             # the grid's ε above it;
                                             # none: minimum-norm (no budget); max: unbounded
     "on": "all",                            # all: every clean-correct sample; survivors:
                                             # only those no earlier entry broke at that ε
     "max_points": 100,                      # optional: attack at most this many of the
                                             # points it would attack, chosen by a hash of
                                             # the sample id (a screen: see below)
     "min_classes": 3, "max_classes": 2,     # optional: AUDIT C23 (no DLR for < 3 classes)
     "norms": ["linf"],                      # optional: the norms the attack exists for
     "through": "bpda",                      # optional, adaptive only: bpda | bpda_smooth |
                                             # twin (transfer from the undefended twin)
     "target": "next"}                       # optional: a targeted attack, aimed at the
                                             # class after the label (next) or at one drawn
                                             # per sample id (random): see
                                             # robustact.attacks.target_classes

``get_protocol`` also takes a user's file (a path: a shipped file copied and edited) or a dict
of the same fields. The engine (:mod:`robustact.evaluate.runner`) adds ``eps``, ``norm`` and
``seed`` to each spec when the attack takes them. Entries run in list order within each ε:
cheap attacks first, so the expensive ones only see the survivors (the per-sample worst case is
the same either way). ``max_points`` makes an entry a screen: a costly attack (Square) runs on a
fixed-size sample of the points it would attack, the same sample whatever the batch size or the
order, and the audit's gap checks count only the points it attacked. Attacks looked up at run
time that are not registered are skipped with a note in the table's meta, never silently.

:func:`adaptive_attacks` inspects a model and returns the defense-specific entries (AUDIT C18,
C20): BPDA with ReLU backward and with a smooth surrogate of the jump for JumpReLU, transfer from
the undefended twin, the loss on the pre-activation logits and BPDA-identity for an output
activation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

import robustact.protocols as shipped_protocols
from robustact.attacks import TARGET_RULES
from robustact.attacks.registry import ATTACKS, attack_parameters, resolve_attack
from robustact.core.spec import SpecError, format_spec
from robustact.defenses.registry import describe_defenses
from robustact.evaluate.table import ROLES

__all__ = ["ADAPTIVE_PLACES", "DEFAULT_EPS_GRID", "EPS_MODES", "FIELDS", "PROTOCOLS",
           "adaptive_attacks", "available_protocols", "cascade_order", "format_protocols",
           "get_protocol", "one_attack_protocol", "protocol_entries", "protocol_fingerprint",
           "protocol_names", "with_adaptive"]

EPS_MODES = ("grid", "lower", "upper", "main", "none", "max")
THROUGH = ("bpda", "bpda_smooth", "twin")
#: Where :func:`adaptive_attacks`' entries go: before the costly entries (version 2), after
#: every entry (version 1), or nowhere (a one-attack protocol runs that attack only).
ADAPTIVE_PLACES = ("before_costly", "before_loss_variant", "last", "none")
#: The keys of a protocol's optional ``adaptive_plan``.
PLAN_FIELDS = ("order", "steps")
#: The ε grid, as multiples of the main ε, of a protocol that gives none: 0, ε/4, ε/2, ε, 2ε.
DEFAULT_EPS_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
#: The fields of a protocol file or dict; only ``entries`` is required of a user's protocol.
FIELDS = ("name", "version", "description", "changes", "eps_grid", "adaptive", "adaptive_plan",
          "entries")
_ENTRY_FIELDS = ("key", "attack", "role", "eps", "on", "max_points", "min_classes",
                 "max_classes", "norms", "through", "target")


#: Roles that run after the model-specific adaptive attacks: black-box, label-only and other
#: costly attacks should only see the points that cheap white-box and adaptive ones left robust.
_AFTER_ADAPTIVE = ("black_box", "random_search", "label_only", "convergence", "unbounded",
                   "min_norm")


def with_adaptive(entries: list[dict[str, Any]], adaptive: list[dict[str, Any]],
                  before: tuple[str, ...] = _AFTER_ADAPTIVE) -> list[dict[str, Any]]:
    """The cascade order: the protocol's white-box entries, then ``adaptive``, then the rest.

    Why: on a masked model the adaptive attack breaks in a few gradient steps what Square needs
    thousands of queries for (measured on a sigmoid T = 100 LeNet-5: Square 50 s of 79 s, before
    an adaptive attack that broke everything left in one pass).
    """
    cut = next((i for i, e in enumerate(entries) if e.get("role") in before), len(entries))
    return [*entries[:cut], *adaptive, *entries[cut:]]


def cascade_order(entries: list[dict[str, Any]], adaptive: list[dict[str, Any]],
                  place: str) -> list[dict[str, Any]]:
    """The entries with ``adaptive`` placed as the protocol's ``"adaptive"`` field says.

    Why a field: version 1 appended them after every entry, version 2 runs them before the
    costly ones (:func:`with_adaptive`); rerunning ``standard@1`` must reproduce its order.
    """
    if place == "before_costly":
        return with_adaptive(entries, adaptive)
    if place == "before_loss_variant":  # version 5: see standard@5's "changes"
        return with_adaptive(entries, adaptive, ("loss_variant", *_AFTER_ADAPTIVE))
    if place == "last":
        return [*entries, *adaptive]
    if place == "none":
        return list(entries)
    raise ValueError(f"unknown adaptive placement {place!r}; choose from "
                     f"{', '.join(ADAPTIVE_PLACES)}")


def protocol_entries(proto: Mapping[str, Any], model: nn.Module, *, adaptive: bool = True
                     ) -> list[dict[str, Any]]:
    """``proto``'s cascade for ``model`` (a :func:`get_protocol` result): its entries, with
    :func:`adaptive_attacks` placed where its ``adaptive`` field says (if ``adaptive``)."""
    extra = adaptive_attacks(model) if adaptive and proto["adaptive"] != "none" else []
    extra = planned(extra, proto.get("adaptive_plan") or {})
    return cascade_order(list(proto["entries"]), extra, proto["adaptive"])


def planned(adaptive: list[dict[str, Any]], plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``adaptive`` as a protocol's ``adaptive_plan`` says: the keys in ``order`` first, in
    that order (the rest after them, as they came), and ``steps`` set per key.

    Why data and not a change to :func:`adaptive_attacks`: what an old protocol ran must stay
    what it runs, so a new order or budget is a new protocol version.
    """
    rank = {k: i for i, k in enumerate(plan.get("order", ()))}
    out = sorted(adaptive, key=lambda e: rank.get(e["key"], len(rank)))  # stable
    steps = plan.get("steps", {})
    return [{**e, "attack": {**e["attack"], "steps": steps[e["key"]]}} if e["key"] in steps
            else e for e in out]


def _check_plan(plan: Any, where: str) -> dict[str, Any]:
    """A checked ``adaptive_plan``: known fields, key lists and positive step counts."""
    if not isinstance(plan, Mapping) or set(plan) - set(PLAN_FIELDS):
        raise ValueError(f"{where}: 'adaptive_plan' must be an object with 'order' and/or "
                         f"'steps', got {plan!r}")
    order, steps = plan.get("order", []), plan.get("steps", {})
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
        raise ValueError(f"{where}: adaptive_plan 'order' must be a list of attack keys, "
                         f"got {order!r}")
    if not isinstance(steps, Mapping) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in steps.values()):
        raise ValueError(f"{where}: adaptive_plan 'steps' must map attack keys to positive "
                         f"integers, got {steps!r}")
    return {k: v for k, v in (("order", list(order)), ("steps", dict(steps))) if v}


def _check_entry(e: Any, where: str) -> dict[str, Any]:
    if not isinstance(e, Mapping):
        raise ValueError(f"{where}: a protocol entry must be a dict, got {type(e).__name__}")
    e = dict(e)
    for k in ("key", "attack", "role"):
        if k not in e:
            raise ValueError(f"{where}: protocol entry lacks {k!r}: {e}")
    if not isinstance(e["key"], str) or not e["key"]:
        raise ValueError(f"{where}: an entry's 'key' must be a non-empty string, got {e['key']!r}")
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
    if e.get("target") not in (None, *TARGET_RULES):
        raise ValueError(f"{where}: entry {e['key']!r} has target {e['target']!r}; "
                         f"choose from {', '.join(TARGET_RULES)}")
    cls = ATTACKS.get(e["attack"]["name"])
    if e.get("target") and cls is not None and not cls.takes_target:
        raise ValueError(f"{where}: entry {e['key']!r} is targeted, but {cls.name} has no "
                         "targeted form; remove 'target'")
    mp = e.get("max_points")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 1):
        raise ValueError(f"{where}: entry {e['key']!r} has max_points {mp!r}; give a positive "
                         "integer (the most points it attacks) or leave it out")
    unknown = set(e) - set(_ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"{where}: entry {e['key']!r} has unknown fields {sorted(unknown)}; "
                         f"an entry has {', '.join(_ENTRY_FIELDS)}")
    e["attack"] = dict(e["attack"])
    return e


def _check_grid(grid: Any, where: str) -> list[float]:
    """The ε multiples as floats: a non-empty list of finite numbers >= 0."""
    ok = (isinstance(grid, Sequence) and not isinstance(grid, str) and len(grid) > 0
          and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in grid))
    if not ok or not all(math.isfinite(m) and m >= 0 for m in grid):
        raise ValueError(f"{where}: 'eps_grid' must be a non-empty list of multiples of the main "
                         f"eps (finite numbers >= 0, e.g. [0, 0.25, 0.5, 1, 2]), got {grid!r}")
    return [float(m) for m in grid]


def _check_protocol(raw: Any, where: str, default_name: str) -> dict[str, Any]:
    """A checked copy of a protocol's fields, defaults filled (no overrides, no id yet)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a protocol must be a JSON object (a dict), "
                         f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a protocol has "
                         f"{', '.join(FIELDS)}")
    entries = raw.get("entries")
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise ValueError(f"{where}: needs a non-empty list 'entries' (the attacks to run), "
                         f"got {entries!r}")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "@/\\"):
        raise ValueError(f"{where}: 'name' must be a non-empty string without '@', '/' or "
                         f"'\\' (it names run folders), got {name!r}")
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: 'version' must be a positive integer, got {version!r}")
    texts = {k: raw.get(k, "") for k in ("description", "changes")}
    for k, v in texts.items():
        if not isinstance(v, str):
            raise ValueError(f"{where}: {k!r} must be a string, got {v!r}")
    adaptive = raw.get("adaptive", "before_costly")
    if adaptive not in ADAPTIVE_PLACES:
        raise ValueError(f"{where}: 'adaptive' is {adaptive!r}; choose from "
                         f"{', '.join(ADAPTIVE_PLACES)}")
    plan = _check_plan(raw.get("adaptive_plan", {}), where)
    checked = [_check_entry(copy.deepcopy(e), where) for e in entries]
    keys = [e["key"] for e in checked]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: attack keys must be unique, got {keys}")
    return {"name": name, "version": version, **texts,
            "eps_grid": _check_grid(raw.get("eps_grid", DEFAULT_EPS_GRID), where),
            "adaptive": adaptive, "adaptive_plan": plan, "entries": checked}


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not JSON ({err.msg} at line {err.lineno}, column "
                         f"{err.colno})") from None


@cache
def _shipped() -> dict[tuple[str, int], dict[str, Any]]:
    """(name, version) → the checked shipped protocol (cached: the files do not change)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for f in sorted(resources.files(shipped_protocols).iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".json"):
            continue
        where = f"protocol file {f.name}"
        p = _check_protocol(_parse_json(f.read_text(encoding="utf-8"), where), where, "")
        if f.name != f"{p['name']}@{p['version']}.json":
            raise ValueError(f"{where}: holds {p['name']}@{p['version']}; a shipped protocol "
                             "file must be named <name>@<version>.json")
        out[(p["name"], p["version"])] = {**p, "source": f.name}
    return out


def _versions(name: str) -> list[int]:
    return sorted(v for n, v in _shipped() if n == name)


def protocol_names() -> list[str]:
    """The shipped protocols' names (each has one or more versions)."""
    return sorted({n for n, _ in _shipped()})


def _named(protocol: str) -> dict[str, Any]:
    """A shipped protocol by ``"name"`` (its highest version) or ``"name@version"``."""
    name, at, version = protocol.strip().partition("@")
    versions = _versions(name)
    if not versions:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(protocol_names())} "
                         "(or the path to a protocol .json file)")
    if not at:
        return _shipped()[(name, versions[-1])]
    if version.isdigit() and int(version) in versions:
        return _shipped()[(name, int(version))]
    raise ValueError(f"unknown version {version!r} of protocol {name!r}; available: "
                     f"{', '.join(f'{name}@{v}' for v in versions)}")


def _from_file(path: Path) -> dict[str, Any]:
    """A user's protocol file (a shipped one copied and edited), checked."""
    where = f"protocol file '{path}'"
    if not path.is_file():
        name, _, version = path.stem.partition("@")
        hint = (f"; to run the shipped one, say {path.stem!r}" if version.isdigit()
                and (name, int(version)) in _shipped() else "")
        raise ValueError(f"{where} not found; give the path of a JSON protocol file (copy a "
                         f"shipped one: `robustact protocols` lists them){hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not JSON (not UTF-8 text)") from None
    return {**_check_protocol(_parse_json(text, where), where, path.stem.partition("@")[0]),
            "source": str(path)}


def _refuse_impostor(proto: Mapping[str, Any], where: str) -> None:
    """A user protocol may not take a shipped name unless it *is* that shipped protocol.

    Why: the table says ``standard@2``; an edited copy that kept the name would publish other
    attacks under it (and a version not shipped would claim a future one).
    """
    name, version = proto["name"], proto["version"]
    if not _versions(name):
        return
    same = _shipped().get((name, version))
    if same is None or any(proto[k] != same[k] for k in ("entries", "eps_grid", "adaptive",
                                                             "adaptive_plan")):
        raise ValueError(f"{where}: calls itself {name}@{version} but is not the shipped "
                         f"{name}@{version}; give an edited protocol its own 'name' (shipped: "
                         f"{', '.join(f'{name}@{v}' for v in _versions(name))})")


def _resolve(protocol: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(protocol, os.PathLike) or (isinstance(protocol, str) and (
            protocol.endswith(".json") or "/" in protocol or os.sep in protocol)):
        proto = _from_file(Path(protocol))
        _refuse_impostor(proto, f"protocol file '{proto['source']}'")
        return proto
    if isinstance(protocol, str):
        return _named(protocol)
    if isinstance(protocol, Mapping):
        name = protocol.get("name", "custom")
        proto = {**_check_protocol(protocol, f"protocol {name!r}", "custom"), "source": None}
        _refuse_impostor(proto, f"protocol {name!r}")
        return proto
    raise TypeError(f"protocol must be a name, a path or a dict, got {type(protocol).__name__}")


def get_protocol(protocol: str | os.PathLike[str] | Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checked copy of a shipped, a user's file or a dict protocol.

    ``protocol``: ``"standard"`` (the highest shipped version), ``"standard@1"``, the path of a
    user's JSON file (``str`` ending in ``.json`` or holding a ``/``, or a ``Path``) or a dict
    of the file's fields (only ``entries`` required). ``overrides`` (e.g. ``{"steps": 5,
    "n_queries": 100}``) set a parameter in every entry whose attack takes it (tests and smoke
    runs use them; they change the fingerprint, so a run made with overrides never resumes one
    made without). Returns ``{"name", "version", "id", "entries", "overrides", "eps_grid",
    "adaptive", "description", "changes", "source"}``; ``source`` is the shipped file's name,
    the user's path, or None for a dict. Bad input: one ValueError line naming the file.
    """
    proto = copy.deepcopy(_resolve(protocol))
    for e in proto["entries"]:
        for k, v in (overrides or {}).items():
            name = e["attack"]["name"]
            if name in ATTACKS and k in attack_parameters(name):
                e["attack"][k] = v
    proto["id"] = f"{proto['name']}@{proto['version']}"
    proto["overrides"] = dict(overrides or {})
    return proto


def available_protocols() -> list[dict[str, Any]]:
    """Every shipped ``name@version``, oldest first within a name: what ``robustact protocols``
    prints. Each: id, name, version, latest, description, changes, eps_grid, adaptive,
    entries, source."""
    out = []
    for (name, version), p in sorted(_shipped().items()):
        out.append({"id": f"{name}@{version}", "name": name, "version": version,
                    "latest": version == _versions(name)[-1],
                    **{k: copy.deepcopy(p[k]) for k in FIELDS[2:]}, "source": p["source"]})
    return out


def _attack_text(spec: Mapping[str, Any]) -> str:
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        return format_spec(str(spec["name"]), params)
    except SpecError:  # a value the spec grammar cannot write: show it as JSON
        return f"{spec['name']} {json.dumps(params, default=str)}"


def _entry_line(e: Mapping[str, Any], widths: tuple[int, int]) -> str:
    notes = [f"norms {'/'.join(e['norms'])}" if "norms" in e else "",
             f"at most {e['max_points']} points" if "max_points" in e else "",
             f">= {e['min_classes']} classes" if "min_classes" in e else "",
             f"<= {e['max_classes']} classes" if "max_classes" in e else "",
             f"through {e['through']}" if e.get("through") else ""]
    note = "; ".join(n for n in notes if n)
    return (f"    {e['key']:<{widths[0]}}  {_attack_text(e['attack']):<{widths[1]}}  "
            f"{e['role']:<13}  {e['eps']:<5}  {e['on']:<9}  {note}").rstrip()


def _plan_text(plan: Mapping[str, Any]) -> str:
    first = f"; first: {', '.join(plan['order'])}" if plan.get("order") else ""
    steps = "".join(f"; {k}: {n} steps" for k, n in plan.get("steps", {}).items())
    return first + steps


def format_protocols(protocols: Sequence[Mapping[str, Any]]) -> str:
    """``available_protocols()`` as plain text: one block per protocol (id, marked latest;
    description; changes; ε grid; adaptive placement), then one line per attack: key, attack
    spec, role, ε mode, cascade rule and any restriction."""
    where = {"before_costly": "after the white-box entries, before the costly ones",
             "before_loss_variant": "after the untargeted white-box entries, before the loss "
                                    "variants",
             "last": "after every entry", "none": "none added"}
    blocks = []
    for p in protocols:
        mark = f"  (latest: the default for {p['name']!r})" if p.get("latest") else ""
        wrap = {"width": 96, "initial_indent": "  ", "subsequent_indent": "    "}
        widths = (max(len(e["key"]) for e in p["entries"]),
                  max(len(_attack_text(e["attack"])) for e in p["entries"]))
        lines = [f"{p['id']}{mark}",
                 *textwrap.wrap(p.get("description") or "-", **wrap),
                 *textwrap.wrap(f"changes: {p.get('changes') or '-'}", **wrap),
                 f"  eps grid: {', '.join(f'{m:g}' for m in p['eps_grid'])} (x the main eps)",
                 f"  adaptive attacks: {where.get(p['adaptive'], p['adaptive'])}"
                 + _plan_text(p.get("adaptive_plan") or {}),
                 f"    {'key':<{widths[0]}}  {'attack':<{widths[1]}}  {'role':<13}  eps    on",
                 *(_entry_line(e, widths) for e in p["entries"])]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def one_attack_protocol(attack_spec: Mapping[str, Any], *, through: str | None = None
                        ) -> dict[str, Any]:
    """A one-entry protocol for the ``robustact attack`` command: that attack, nothing added.

    ``attack_spec`` is a create_attack spec without ``eps`` (``{"name": "pgd", "steps": 20}``;
    the name may be a spec string, ``"pgd:steps=20"``); ``through`` attacks through BPDA
    (``bpda``, ``bpda_smooth``) or from the undefended twin (``twin``). A fixed-budget attack
    runs at the main ε only (role ``standard``); a minimum-norm one, which takes no ε, once
    with no budget (role ``min_norm``, so the summary reports its norms). No adaptive entries.
    """
    if not isinstance(attack_spec, Mapping) or "name" not in attack_spec:
        raise ValueError(f"attack_spec must be a dict with a 'name', got {attack_spec!r}")
    spec, _ = resolve_attack(str(attack_spec["name"]),
                             {k: v for k, v in attack_spec.items() if k != "name"})
    params = attack_parameters(spec["name"])
    unknown = sorted(set(spec) - {"name"} - set(params))
    if unknown:
        raise ValueError(f"attack {spec['name']!r} does not take {', '.join(unknown)}; it "
                         f"accepts: {', '.join(sorted(params))}")  # create_attack's wording
    if "eps" in spec:
        raise ValueError(f"the attack spec gives eps={spec['eps']!r}; give the budget as the "
                         "evaluation's eps instead (the protocol runs at the main eps)")
    if through not in (None, *THROUGH):
        raise ValueError(f"through is {through!r}; choose from {', '.join(THROUGH)}")
    bounded = "eps" in params
    key = spec["name"] if through is None else f"{through.replace('_', '-')}-{spec['name']}"
    entry = {"key": key, "attack": spec, "role": "standard" if bounded else "min_norm",
             "eps": "main" if bounded else "none", "on": "all",
             **({"through": through} if through else {})}
    return {"name": f"attack:{key}", "version": 1,
            "description": f"one attack: {_attack_text(spec)}"
                           + (" at the main eps" if bounded else " (minimum norm, no budget)"),
            "changes": "", "eps_grid": [1.0], "adaptive": "none", "entries": [entry]}


def protocol_fingerprint(entries: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the entries' canonical JSON: what a resumed run must match."""
    text = json.dumps(list(entries), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _latest() -> dict[str, dict[str, Any]]:
    """name → the fields of its highest shipped version (the pre-file ``PROTOCOLS`` shape)."""
    return {n: {k: copy.deepcopy(v) for k, v in _named(n).items() if k != "name"}
            for n in protocol_names()}


#: name → {"version", "description", "changes", "eps_grid", "adaptive", "entries", "source"}
#: of its highest shipped version, read from the files (kept for code that read the dict).
PROTOCOLS: dict[str, dict[str, Any]] = _latest()


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
