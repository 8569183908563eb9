"""A comparison page across evaluated models: one row per run, read from each ``report.json``.

Why only ``report.json``: it holds every number of a run (:func:`~robustact.report.evaluation.
evaluation_record`), so the leaderboard needs neither the results tables nor the models, and a
row shows exactly what that run's own report shows.

Comparability: robust accuracies are comparable only under the same protocol (and version and
overrides), norm, ε and evaluation data. By default runs that differ in any of these are refused
with one line naming the field and the runs; ``allow_mixed=True`` builds the page anyway, with a
warning at the top and the differing cells marked in the table (a reader must not mistake a
weaker protocol's higher number for a stronger model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustact.core.storage import atomic_write_bytes, read_json
from robustact.report.evaluation import REPORT_FORMAT, template_environment
from robustact.report.intervals import interval_of

__all__ = ["COMPARED_FIELDS", "leaderboard_rows", "load_report", "write_leaderboard"]

#: What must agree for two runs' robust accuracies to be comparable: label → how to read it.
COMPARED_FIELDS: dict[str, tuple[str, ...]] = {
    "protocol": ("protocol", "id"),
    "overrides": ("protocol", "overrides"),
    "norm": ("protocol", "norm"),
    "ε": ("protocol", "eps"),
    "data": ("data", "fingerprint"),
}


def load_report(run: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(path of report.json, its record) for a run folder or a report.json path."""
    p = Path(run)
    file = p if p.is_file() else p / "report.json"
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    if not file.is_file():
        raise ValueError(f"{p} has no report.json: write its reports first (robustact.report."
                         "write_reports, or `robustact evaluate`)")
    try:
        rec = read_json(file)
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != REPORT_FORMAT:
        raise ValueError(f"{file} is not a robustact evaluation report")
    return file, rec


def _get(rec: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = rec
    for k in path:
        v = v.get(k) if isinstance(v, Mapping) else None
    return v


def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def leaderboard_rows(reports: Sequence[tuple[Path, Mapping[str, Any]]], *,
                     allow_mixed: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per report, best worst-case robust accuracy first, and the fields that differ.

    Raises ``ValueError`` when runs are not comparable and ``allow_mixed`` is false.
    """
    if not reports:
        raise ValueError("no runs given: pass one or more evaluated run folders")
    first = reports[0]
    mixed = []
    for label, path in COMPARED_FIELDS.items():
        ref = _get(first[1], path)
        for file, rec in reports[1:]:
            if _get(rec, path) != ref:
                if not allow_mixed:
                    raise ValueError(
                        f"runs are not comparable: {label} is {_fmt(ref)} in {first[0].parent} "
                        f"but {_fmt(_get(rec, path))} in {file.parent} (pass --allow-mixed to "
                        "build the page anyway, with the differences marked)")
                mixed.append(label)
                break
    rows = []
    for file, rec in reports:
        s, p = rec["summary"], rec["protocol"]
        rows.append({
            "name": rec["info"].get("name") or file.parent.name,
            "run": str(file.parent), "report": file.with_name("report.html"),
            "clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"],
            # An older report.json has no intervals: the same ones from its counts.
            "clean_accuracy_ci": s.get("clean_accuracy_ci")
            or interval_of(s["clean_accuracy"], s["n"]),
            "robust_accuracy_ci": s.get("robust_accuracy_ci")
            or interval_of(s["robust_accuracy"], s["n"]),
            "verdict": rec["verdict"]["label"], "protocol": p["id"], "eps": p["eps"],
            "norm": p["norm"], "n": s["n"], "date": rec["generated"],
            "mixed": {label: _fmt(_get(rec, COMPARED_FIELDS[label])) for label in mixed},
        })
    rows.sort(key=lambda r: -1.0 if r["robust_accuracy"] is None else r["robust_accuracy"],
              reverse=True)
    return rows, mixed


def write_leaderboard(out: str | os.PathLike[str], run_dirs: Sequence[str | os.PathLike[str]],
                      *, allow_mixed: bool = False, title: str = "robustact leaderboard"
                      ) -> Path:
    """Write the self-contained comparison page ``out`` (an ``.html`` file, or a folder to hold
    ``leaderboard.html``) from each run's ``report.json``; returns its path.

    Columns sort on a click (inline script; the page loads nothing from the network). Each
    name links to that run's ``report.html`` by a relative path when the file exists. Each
    accuracy shows its 95 % Wilson interval (two models whose intervals overlap widely are not
    ranked by their order). The table scrolls inside its box with the header kept in view and
    long names wrapped, so a page of many models stays readable.
    """
    reports = [load_report(r) for r in run_dirs]
    rows, mixed = leaderboard_rows(reports, allow_mixed=allow_mixed)
    path = Path(out)
    if path.is_dir():
        path = path / "leaderboard.html"
    for r in rows:
        rep = r.pop("report")
        r["link"] = (os.path.relpath(rep.resolve(), path.parent.resolve())
                     if rep.is_file() else None)
    html = template_environment().get_template("leaderboard.html.j2").render(
        title=title, rows=rows, mixed=mixed)
    return atomic_write_bytes(path, html.encode())
