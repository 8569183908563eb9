"""``robustact audit calibrate``: evaluate and audit the calibration zoo, tabulate the verdicts.

Why: the audit's verdict is only as good as its false-positive rate on healthy models and its
detection rate on broken ones, and neither can be read off a single evaluation. This runs
:func:`robustact.runs.evaluate.evaluate_model` (the library call behind ``robustact evaluate``,
standard protocol, audit on) for every (model, ε) cell of the zoo (:mod:`robustact.runs.zoo`)
and keeps, per cell, the verdict and every check's numbers, so thresholds can be re-derived
later from ``calibration.json`` without re-running a single attack.

Layout of ``OUT``: ``models/<name>`` (checkpoints of the healthy models, trained once),
``cells/<model>-eps<ε>`` (each cell's evaluation folder), ``rows/<model>-eps<ε>.json`` (the
row of each finished cell, written atomically), ``calibration.json`` and ``calibration.md``
(rewritten after every cell). A rerun resumes: a model is trained once, a cell whose row exists
with the same settings is read back, not re-evaluated; error rows (e.g. a model the engine
refused) are retried, since the engine may have learnt to take them since.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from robustact import __version__
from robustact.core.storage import (
    atomic_write_bytes,
    atomic_write_json,
    environment_info,
    read_json,
)
from robustact.core.validate import resolve_device
from robustact.evaluate.audit import AUDIT_VERSION
from robustact.evaluate.check_base import (
    ADAPTIVE_GAP_RATE,
    GAP_ALPHA,
    HEALTHY_GAP_RATE,
    HEALTHY_MECHANISM_RATE,
    SATURATION_FRACTION,
    VANISHING_RATIO,
    VANISHING_SHARE,
    ZERO_GRADIENT_FRACTION,
    binomial_tail,
)
from robustact.evaluate.protocols import get_protocol
from robustact.evaluate.selftest import EXPECTED
from robustact.evaluate.verdict import GAP, VERDICTS, verdict_from_dicts
from robustact.runs.evaluate import evaluate_model
from robustact.runs.zoo import (
    SPLITS,
    BrokenSpec,
    HealthySpec,
    Zoo,
    build_broken,
    full_zoo,
    load_or_train,
    quick_zoo,
    test_data,
)

__all__ = ["CALIBRATION_FORMAT", "calibrate_audit", "format_rates", "rates"]

CALIBRATION_FORMAT = "robustact-calibration"
CALIBRATION_FORMAT_VERSION = 1
PROTOCOL = "standard"
CONFIRMED, SUSPECTED, CLEAR = VERDICTS

Row = dict[str, Any]
Spec = HealthySpec | BrokenSpec


def _cell_name(model: str, eps: float) -> str:
    return f"{model}-eps{eps:.4g}"


def _key(zoo: Zoo, spec: Spec, eps: float, n: int) -> dict[str, Any]:
    """What makes a cell's row valid: a rerun with another key evaluates the cell again. As
    JSON gives it back (tuples become lists), so a stored key compares equal to a fresh one."""
    model = {k: v for k, v in spec.describe().items() if k not in ("note", "expected_checks")}
    # The resolved id (standard@2), not the name: a new default version re-evaluates the zoo.
    key = {"protocol": get_protocol(PROTOCOL)["id"], "overrides": dict(zoo.overrides),
           "eps": eps, "n": n, "dataset": zoo.dataset_of(spec), "model": model,
           "audit": AUDIT_VERSION}
    return json.loads(json.dumps(key))


def _attacks_same(old: Row | None, key: dict[str, Any]) -> bool:
    """Whether a stored row's attacks are this key's: a valid row whose key differs at most in
    the audit's version (absent before versions were keyed: 1). Its cell then re-runs the audit
    on its stored results instead of attacking again."""
    if old is None or old.get("error") or not isinstance(old.get("key"), dict):
        return False
    return ({f: v for f, v in old["key"].items() if f != "audit"}
            == {f: v for f, v in key.items() if f != "audit"})


def _checks(record: dict[str, Any]) -> dict[str, Any]:
    """Every check's outcome and numbers from a report.json record (the thresholds' inputs)."""
    audit = record.get("audit") or {}
    return {c["id"]: {"name": c.get("name"), "fired": c.get("fired"), "kind": c.get("kind"),
                      "breaks_points": c.get("breaks_points"), "numbers": c.get("numbers")}
            for c in audit.get("checks", [])}


def _evaluate_cell(model: nn.Module, data: Any, zoo: Zoo, spec: Spec, eps: float,
                   out: Path, *, force: bool, command: str | None) -> dict[str, Any]:
    """One cell, exactly as ``robustact evaluate`` runs it (overrides only in quick mode)."""
    kwargs: dict[str, Any] = {}
    if isinstance(spec, BrokenSpec) and "allow_chance" in inspect.signature(
            evaluate_model).parameters:
        # A broken model may end near chance (thresholding): the sanity gate would stop it.
        kwargs["allow_chance"] = True
    t0 = time.perf_counter()
    summary = evaluate_model(model, data, dataset=zoo.dataset_of(spec), name=spec.name,
                             protocol=PROTOCOL, eps=eps, audit=True, out=out, progress=False,
                             force=force, overrides=dict(zoo.overrides) or None,
                             info={"calibration_zoo": spec.name}, command=command, **kwargs)
    wall = time.perf_counter() - t0
    record = read_json(out / "report.json")
    verdict = summary["verdict"]
    return {"clean": summary["clean_accuracy"], "robust": summary["robust_accuracy"],
            "verdict": verdict["label"], "fired": list(verdict.get("fired", [])),
            "notes": list(verdict.get("notes", [])), "evidence": list(verdict["evidence"]),
            "checks": _checks(record), "allow_chance": bool(kwargs),
            "seconds": {"wall": wall, **{k: v for k, v in summary["seconds"].items()
                                         if isinstance(v, (int, float))}}}


def _row_base(zoo: Zoo, spec: Spec, eps: float, n: int, key: dict[str, Any]) -> Row:
    broken = isinstance(spec, BrokenSpec)
    return {"model": spec.name, "kind": "broken" if broken else "healthy",
            "defect": spec.kind if broken else None, "base": spec.base if broken else None,
            "split": spec.split, "dataset": zoo.dataset_of(spec), "eps": eps, "n": n,
            "cell": _cell_name(spec.name, eps), "key": key}


def _error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"


class _Run:
    """One calibration run: the zoo, its folders, the rows so far, and where they go."""

    def __init__(self, out: Path, zoo: Zoo, *, n: int | None, data_root: str | Path | None,
                 download: bool, device: str, command: str | None,
                 on_row: Callable[[Row], None] | None) -> None:
        self.out, self.zoo, self.n_given = out, zoo, n
        self.data_root, self.download, self.device = data_root, download, device
        self.command, self.on_row = command, on_row
        self.rows: dict[str, Row] = {}
        self.missing: list[str] = []  # cells not evaluated yet (stored_only)
        self.models: dict[str, tuple[nn.Module | None, dict[str, Any]]] = {}
        self._data: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def n_for(self, dataset: str) -> int:
        return self.n_given if self.n_given is not None else self.zoo.n[dataset]

    def data(self, dataset: str) -> Any:
        if dataset not in self._data:
            self._data[dataset] = test_data(dataset, self.n_for(dataset),
                                            data_root=self.data_root, download=self.download)
        return self._data[dataset]

    def healthy(self, spec: HealthySpec) -> tuple[nn.Module | None, dict[str, Any]]:
        """The trained model (None and the error when it could not be had)."""
        if spec.name not in self.models:
            try:
                self.models[spec.name] = load_or_train(
                    spec, self.out / "models", data_root=self.data_root,
                    download=self.download, device=self.device)
            except Exception as e:  # noqa: BLE001 - recorded in each of its rows, run goes on
                self.models[spec.name] = (None, {"error": _error(e)})
        return self.models[spec.name]

    def model(self, spec: Spec) -> tuple[nn.Module | None, dict[str, Any]]:
        if isinstance(spec, HealthySpec):
            return self.healthy(spec)
        base, info = self.healthy(self.zoo.base(spec.base))
        if base is None:
            return None, {"error": f"base {spec.base}: {info.get('error')}"}
        if spec.name not in self.models:
            try:
                dataset = self.zoo.dataset_of(spec)
                model, chosen = build_broken(spec, base, self.data(dataset), dataset)
                self.models[spec.name] = (model, {"base_test_accuracy":
                                                  info.get("test_accuracy"), **chosen})
            except Exception as e:  # noqa: BLE001 - recorded in the row
                self.models[spec.name] = (None, {"error": _error(e)})
        return self.models[spec.name]

    def cell(self, spec: Spec, eps: float) -> Row:
        """The row of one cell: read back when it exists with the same key, else evaluated."""
        dataset = self.zoo.dataset_of(spec)
        n = self.n_for(dataset)
        key = _key(self.zoo, spec, eps, n)
        name = _cell_name(spec.name, eps)
        path = self.out / "rows" / f"{name}.json"
        old = read_json(path) if path.exists() else None
        if old is not None and old.get("key") == key and not old.get("error"):
            return {**old, "reused": True}
        row = _row_base(self.zoo, spec, eps, n, key)
        model, info = self.model(spec)
        row["model_info"] = info
        if model is None:
            row["error"] = info["error"]
        else:
            try:
                data = self.data(dataset)
                row["n"] = len(data)
                # a cell whose settings changed, or that failed before (its folder may hold a
                # partial evaluation of another model), starts over; one whose audit changed
                # resumes: its attacks are read back, the audit runs again
                reaudit = _attacks_same(old, key)
                redo = old is not None and not reaudit
                row.update(_evaluate_cell(model, data, self.zoo, spec, eps, self.out / "cells" /
                                          name, force=redo, command=self.command))
                if reaudit and old is not None:  # the wall time is the attacks', kept
                    row["seconds"] = {**old["seconds"], "audit": row["seconds"].get("audit"),
                                      "reaudit_wall": row["seconds"]["wall"]}
                row["error"] = None
            except Exception as e:  # noqa: BLE001 - an error row, so the lead can rerun it
                row["error"] = _error(e)
        row["finished"] = _now()
        atomic_write_json(path, row)
        return {**row, "reused": False}


    def stored(self, spec: Spec, eps: float) -> Row | None:
        """The cell's stored row if it is valid (same key, no error), without running it."""
        dataset = self.zoo.dataset_of(spec)
        path = self.out / "rows" / f"{_cell_name(spec.name, eps)}.json"
        old = read_json(path) if path.exists() else None
        key = _key(self.zoo, spec, eps, self.n_for(dataset))
        return {**old, "reused": True} if old and old.get("key") == key and not old.get(
            "error") else None

    def run(self, only: Sequence[str] | None, *, quick: bool,
            stored_only: bool = False) -> dict[str, Any]:
        # Every cell of the zoo is tabulated; only the chosen ones are evaluated (the others
        # are read back when stored), so a run with ``only`` never shrinks calibration.md.
        for spec in (*self.zoo.healthy, *self.zoo.broken):
            chosen = not stored_only and (not only or any(o in spec.name for o in only))
            for eps in self.zoo.eps[self.zoo.dataset_of(spec)]:
                row = self.cell(spec, eps) if chosen else self.stored(spec, eps)
                if row is None:
                    self.missing.append(_cell_name(spec.name, eps))
                    continue
                row = rejudge(row)
                self.rows[row["cell"]] = row
                if self.on_row is not None and (chosen or stored_only):
                    self.on_row(row)
                if chosen:
                    self.write(quick=quick)
        return self.write(quick=quick)

    def write(self, *, quick: bool) -> dict[str, Any]:
        """calibration.json and calibration.md from the rows so far (atomically), every row
        judged by the current rules (:func:`rejudge`)."""
        rows = [rejudge(r) for r in self.rows.values()]
        result = {"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_FORMAT_VERSION,
                  "generated": _now(), "robustact_version": __version__,
                  "command": self.command, "settings": self.settings(quick),
                  "rates": rates(rows), "check_firing": check_firing(rows),
                  "thresholds": threshold_evidence(rows),
                  "seconds": {"this_run_wall": time.perf_counter() - self.t0,
                              "cells_wall_sum": sum((r.get("seconds") or {}).get("wall", 0.0)
                                                    for r in rows)},
                  "environment": environment_info(), "not_run": list(self.missing),
                  "rows": rows}
        atomic_write_json(self.out / "calibration.json", result)
        atomic_write_bytes(self.out / "calibration.md", markdown(result).encode())
        return result

    def settings(self, quick: bool) -> dict[str, Any]:
        zoo = self.zoo
        return {"quick": quick, "protocol": get_protocol(PROTOCOL)["id"],
                "overrides": dict(zoo.overrides),
                "eps": {k: list(v) for k, v in zoo.eps.items()},
                "n": {k: self.n_for(k) for k in zoo.eps}, "data_root": str(self.data_root),
                "device": self.device, "audit_options": "evaluate_model's defaults (as the CLI)",
                "split_rule": "healthy: every other model in zoo order; broken: each kind on "
                              "two bases, one per split, alternating between kinds",
                "models": {s.name: {"kind": "broken" if isinstance(s, BrokenSpec) else
                                    "healthy", "split": s.split, "dataset": zoo.dataset_of(s),
                                    **s.describe()} for s in (*zoo.healthy, *zoo.broken)},
                "bases": {b.name: {"dataset": b.dataset, **b.describe()} for b in zoo.bases}}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def calibrate_audit(out: str | Path, *, quick: bool = False, n: int | None = None,
              data_root: str | Path | None = None, download: bool = False,
              device: str = "auto", only: Sequence[str] | None = None, command: str | None = None,
              on_row: Callable[[Row], None] | None = None,
              stored_only: bool = False) -> dict[str, Any]:
    """Evaluate and audit every (model, ε) cell of the zoo into ``out``; returns what
    ``out/calibration.json`` holds (settings, rows, rates, check firing counts).

    ``quick``: the small digits-only zoo (:func:`robustact.runs.zoo.quick_zoo`, reduced attack
    budgets) for tests and CI. ``n`` overrides the test images per cell of every dataset;
    ``only`` evaluates just the models whose name contains one of these strings (the others'
    stored cells are tabulated, the rest listed under ``not_run``); ``on_row`` is called
    with each cell's row as it is finished or read back (the CLI prints a line).
    ``stored_only``: evaluate nothing; tabulate (and re-judge by the current rules) the cells
    already evaluated, listing the others under ``not_run``.
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zoo = quick_zoo() if quick else full_zoo()
    run = _Run(out, zoo, n=n, data_root=data_root, download=download,
               device=str(resolve_device(device)),
               command=command, on_row=on_row)
    return run.run(only, quick=quick, stored_only=stored_only)


# -- judging and rates --------------------------------------------------------------------------

def rejudge(row: Row) -> Row:
    """``row`` with its verdict recomputed from its stored check numbers by the *current*
    rules (:func:`robustact.evaluate.verdict.verdict_from_dicts`): a change of a threshold is
    measured on the whole zoo without re-running an attack."""
    if row.get("error") or not row.get("checks"):
        return row
    v = verdict_from_dicts([{"id": cid, **c} for cid, c in row["checks"].items()])
    return {**row, "verdict": v.label, "completeness": v.completeness,
            "fired": [c.id for c in v.checks if c.fired and c.kind != "info"]}


def threshold_evidence(rows: Sequence[Row]) -> dict[str, Any]:
    """What the thresholds must clear, from the healthy cells of the *calibration* split: per
    gap check the largest extra/candidates ratio and the smallest healthy rate at which none of
    its cells is significant (p < GAP_ALPHA); the largest C4 and C5 fractions."""
    healthy = [r for r in rows if r["kind"] == "healthy" and r["split"] == "calibration"
               and not r.get("error") and r.get("checks")]
    pairs: dict[str, list[tuple[int, int]]] = {}
    fractions: dict[str, list[float]] = {"C4": [], "C5": []}
    c7 = {"jumps": 0, "wrong gradient": 0, "samples": 0}
    vanishing = {"count": 0, "samples": 0}
    keys = {"C4": "max_fraction", "C5": "ce_grad_zero_margin_not_fraction"}
    for r in healthy:
        for cid, c in r["checks"].items():
            nb = c.get("numbers") or {}
            if cid in GAP and nb.get("standard_robust"):
                pairs.setdefault(cid, []).append((int(nb["extra_broken"]),
                                                  int(nb["standard_robust"])))
            if cid in keys and keys[cid] in nb:
                fractions[cid].append(float(nb[keys[cid]]))
            if cid == "C4" and "vanishing" in nb:
                vanishing["count"] += int(nb["vanishing"][0])
                vanishing["samples"] += int(nb["vanishing"][1])
            if cid == "C7" and "counts" in nb:
                c7["samples"] += int(nb["counts"]["jumps"][1])
                for k in ("jumps", "wrong gradient"):
                    c7[k] += int(nb["counts"][k][0])
    out: dict[str, Any] = {"healthy_calibration_cells": len(healthy)}
    for cid, ps in sorted(pairs.items(), key=lambda kv: _check_order(kv[0])):
        k, n = max(ps, key=lambda kn: kn[0] / kn[1])
        need = next((i / 1000 for i in range(5, 1001, 5)
                     if all(a < 2 or binomial_tail(a, b, i / 1000) >= GAP_ALPHA for a, b in ps)),
                    None)
        out[cid] = {"cells": len(ps), "max_extra": k, "of": n, "max_ratio": k / n,
                    "rate_needed": need}
    out.update({f"{cid}_max_fraction": max(v, default=None) for cid, v in fractions.items()})
    # The rule of three: with none in n samples, 3/n bounds the rate at 95 %.
    c7["rate_bound_95"] = (max(c7["jumps"], c7["wrong gradient"]) + 3) / c7["samples"] \
        if c7["samples"] else None
    out["C7"] = c7
    out["C4_vanishing"] = vanishing
    out["rules"] = {"healthy_gap_rate": HEALTHY_GAP_RATE, "adaptive_gap_rate": ADAPTIVE_GAP_RATE,
                    "gap_alpha": GAP_ALPHA, "C19": "completeness only",
                    "C4_fraction": ZERO_GRADIENT_FRACTION, "C5_fraction": SATURATION_FRACTION,
                    "C4_C7_healthy_sample_rate": HEALTHY_MECHANISM_RATE,
                    "C4_vanishing": {"ratio": VANISHING_RATIO, "share": VANISHING_SHARE}}
    return out


def _count(rows: list[Row], labels: Sequence[str]) -> dict[str, Any]:
    k = sum(r["verdict"] in labels for r in rows)
    return {"k": k, "n": len(rows), "rate": k / len(rows) if rows else None}


def rates(rows: Sequence[Row]) -> dict[str, Any]:
    """False positives on healthy cells (confirmed, suspected, either) and detections on broken
    cells, overall and per split, each as k of n; error rows are counted apart."""
    out: dict[str, Any] = {}
    for split in ("all", *SPLITS):
        part = [r for r in rows if split == "all" or r["split"] == split]
        ok = [r for r in part if not r.get("error")]
        h = [r for r in ok if r["kind"] == "healthy"]
        b = [r for r in ok if r["kind"] == "broken"]
        out[split] = {
            "healthy": {"confirmed": _count(h, (CONFIRMED,)),
                        "suspected": _count(h, (SUSPECTED,)),
                        "flagged": _count(h, (CONFIRMED, SUSPECTED))},
            "broken": {"confirmed": _count(b, (CONFIRMED,)),
                       "suspected": _count(b, (SUSPECTED,)),
                       "detected": _count(b, (CONFIRMED, SUSPECTED))},
            "errors": sum(bool(r.get("error")) for r in part)}
    kinds = sorted({r["defect"] for r in rows if r["kind"] == "broken"})
    out["per_defect"] = {k: _count([r for r in rows if r["defect"] == k and not r.get("error")],
                                   (CONFIRMED, SUSPECTED)) for k in kinds}
    # flagged by a check whose mechanism matches the defect (EXPECTED), not only by a win
    out["per_defect_matching_check"] = {
        k: _count([{**r, "verdict": CONFIRMED if set(r.get("fired") or []) & set(
            EXPECTED.get(k, ())) and r["verdict"] != VERDICTS[2] else "no"}
                   for r in rows if r["defect"] == k and not r.get("error")], (CONFIRMED,))
        for k in kinds}
    return out


def check_firing(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Per check: on how many healthy and broken cells it fired (which check cries wolf)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        for cid, c in (r.get("checks") or {}).items():
            d = out.setdefault(cid, {"healthy_fired": 0, "healthy_n": 0, "broken_fired": 0,
                                     "broken_n": 0})
            d[f"{r['kind']}_n"] += 1
            d[f"{r['kind']}_fired"] += bool(c.get("fired"))
    return dict(sorted(out.items(), key=lambda kv: _check_order(kv[0])))


def _check_order(cid: str) -> tuple[int, str]:
    m = re.fullmatch(r"C(\d+)", cid)
    return (int(m.group(1)) if m else 999, cid)


def _ratio(c: dict[str, Any]) -> str:
    return "—" if not c["n"] else f"{c['k']}/{c['n']} ({100 * c['rate']:.1f} %)"


def _per_split(result: dict[str, Any]) -> Iterator[tuple[str, dict[str, str], int]]:
    """(split, each rate as "k/n (x %)", errors) for all cells and each split."""
    for split in ("all", *SPLITS):
        r = result["rates"][split]
        yield split, {f"{kind} {label}": _ratio(c) for kind in ("healthy", "broken")
                      for label, c in r[kind].items()}, r["errors"]


def format_rates(result: dict[str, Any]) -> list[str]:
    """The rates as lines (what the command prints)."""
    return [f"{split:<12} healthy: confirmed {q['healthy confirmed']}, suspected "
            f"{q['healthy suspected']}; broken: detected {q['broken detected']} (confirmed "
            f"{q['broken confirmed']}); errors {errors}" for split, q, errors in
            _per_split(result)]


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}" if pct else f"{v:.4g}"


def markdown(result: dict[str, Any]) -> str:
    """calibration.md: the settings, the table model × ε × verdict × checks fired, the rates."""
    s = result["settings"]
    lines = ["# Audit calibration", "",
             f"robustact {result['robustact_version']}, generated {result['generated']}; "
             f"command: `{result['command'] or 'library call'}`.", "",
             f"Protocol `{s['protocol']}` with the audit (evaluate_model's defaults, as "
             "`robustact evaluate`)" + (f"; QUICK MODE, overrides {s['overrides']}: not the "
                                        "shipped protocol's budgets" if s["overrides"] else "")
             + f". ε per dataset: {s['eps']}; test images per cell: {s['n']}.",
             f"Split: {s['split_rule']}.", "", "## Rates", "",
             "| split | healthy: confirmed | healthy: suspected | healthy: flagged | "
             "broken: detected | broken: confirmed | errors |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {split} | {q['healthy confirmed']} | {q['healthy suspected']} | "
              f"{q['healthy flagged']} | {q['broken detected']} | {q['broken confirmed']} | "
              f"{errors} |" for split, q, errors in _per_split(result)]
    t = result.get("thresholds") or {}
    lines += ["", "## How the thresholds were chosen (healthy cells of the calibration split)",
              "", f"Rules now: {t.get('rules')}.", "",
              "| check | cells | largest gap (extra of survivors) | healthy rate needed |",
              "|---|---|---|---|"]
    for cid, v in t.items():
        if isinstance(v, dict) and "max_ratio" in v:
            lines.append(f"| {cid} | {v['cells']} | {v['max_extra']} of {v['of']} "
                         f"({100 * v['max_ratio']:.1f} %) | {_fmt(v['rate_needed'])} % |")
    lines += ["", f"Largest C4 fraction (margin/DLR gradient exactly zero): "
              f"{_fmt(t.get('C4_max_fraction'))} %; largest C5 fraction (CE saturated next to "
              f"the margin): {_fmt(t.get('C5_max_fraction'))} %."]
    c7 = t.get("C7") or {}
    if c7.get("samples"):
        lines += ["", f"C7 on healthy samples: {c7['jumps']} with a jump of the loss and "
                  f"{c7['wrong gradient']} with a gradient wrong where the loss is smooth, of "
                  f"{c7['samples']}; 95 % bound on the healthy rate "
                  f"{100 * c7['rate_bound_95']:.2f} % (C7 tests its counts against "
                  f"{100 * HEALTHY_MECHANISM_RATE:g} %)."]
    van = t.get("C4_vanishing") or {}
    if van.get("samples"):
        lines += ["", f"C4 on healthy samples: {van['count']} of {van['samples']} with a margin "
                  "gradient vanishing on most coordinates (C4 tests its count against "
                  f"{100 * HEALTHY_MECHANISM_RATE:g} %)."]
    lines += ["", "Flagged by a check whose mechanism matches the defect (expected checks: "
              + "; ".join(f"{k} {'/'.join(EXPECTED.get(k, ())) or '—'}"
                          for k in result["rates"]["per_defect_matching_check"]) + "): "
              + ", ".join(f"{k} {_ratio(c)}" for k, c in
                          result["rates"]["per_defect_matching_check"].items())]
    lines += ["", "Detection per defect (all ε, both splits): " + ", ".join(
        f"{k} {_ratio(c)}" for k, c in result["rates"]["per_defect"].items()), "",
              "## Checks fired (cells)", "", "| check | healthy | broken |", "|---|---|---|"]
    for cid, c in result["check_firing"].items():
        lines.append(f"| {cid} | {c['healthy_fired']}/{c['healthy_n']} | "
                     f"{c['broken_fired']}/{c['broken_n']} |")
    if result.get("not_run"):
        lines += ["", f"**Not evaluated yet ({len(result['not_run'])} cells; the same command "
                  f"resumes them):** {', '.join(result['not_run'])}."]
    lines += ["", "## Cells", "", "| model | kind | split | dataset | ε | n | clean % | "
              "robust % | verdict | checks fired | wall s |", "|---|---|---|---|---|---|---|---|"
              "---|---|---|"]
    for r in result["rows"]:
        verdict = f"ERROR: {r['error']}" if r.get("error") else r["verdict"]
        lines.append(f"| {r['model']} | {r['defect'] or 'healthy'} | {r['split']} | "
                     f"{r['dataset']} | {_fmt(r['eps'], False)} | {r['n']} | "
                     f"{_fmt(r.get('clean'))} | {_fmt(r.get('robust'))} | {verdict} | "
                     f"{', '.join(r.get('fired') or []) or '—'} | "
                     f"{_fmt((r.get('seconds') or {}).get('wall'), False)} |")
    return "\n".join(lines) + "\n"
