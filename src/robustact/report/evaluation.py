"""One evaluation's reports: ``report.json`` (every number), ``report.md``, ``report.html``.

Why three files from one record: :func:`evaluation_record` turns the results table (and the
audit, if it ran) into plain JSON once; the Markdown, the HTML page and the plots are all drawn
from that record, so no page can show a number the JSON does not hold. The HTML page is
self-contained (CSS inline, plots as ``data:`` URIs, no script or font from the network), so it
can be mailed, archived or opened offline.

The verdict comes first, in words, with its evidence sentences: "masking confirmed", "masking
suspected", "no evidence of masking found" (AUDIT.md), or "not audited" when no audit ran. Never
"robust": passing every check is necessary, not sufficient.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from robustact.core.storage import atomic_write_bytes, atomic_write_json
from robustact.evaluate.audit import AuditReport
from robustact.evaluate.summary import summarize
from robustact.evaluate.table import ResultsTable
from robustact.report.figures import (
    Curve,
    curve_figure,
    figure_data_uri,
    min_norm_figure,
    robust_accuracy_figure,
)
from robustact.report.intervals import add_intervals, ci_text, pct_ci
from robustact.report.markdown import Report

__all__ = ["REPORT_FORMAT", "NOT_AUDITED", "evaluation_record", "write_reports",
           "write_views", "summary_view", "keep_earlier_audit",
           "render_html", "render_markdown", "template_environment"]

REPORT_FORMAT = "robustact-report"
REPORT_FORMAT_VERSION = 1
NOT_AUDITED = "not audited"

#: Table-meta keys the engine writes; any other key came from the caller (dataset, split, ...).
_ENGINE_META = {"protocol", "protocol_overrides", "eps", "eps_grid", "norm", "seed",
                "num_classes", "n", "model", "data_fingerprint", "attacks", "unavailable",
                "environment", "device", "clean"}


# -- the record ---------------------------------------------------------------------------------

def _plain(v: Any) -> Any:
    """Strict-JSON values: numpy scalars and arrays unwrapped, NaN/±inf as None."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _main_eps(table: ResultsTable) -> float | None:
    eps = table.meta.get("eps")
    if eps is not None:
        return float(eps)
    finite = table["eps"][np.isfinite(table["eps"])]
    return float(finite.max()) if finite.size else None


def _alone(table: ResultsTable, attack: str, eps: float, n: int) -> float:
    """Accuracy against one attack by itself: clean-correct and not broken by its rows."""
    c = table.cell(attack, eps)
    return float((c["clean_correct"] & ~c["success"]).sum()) / n


def _per_eps(table: ResultsTable, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    specs = table.meta.get("attacks", {})
    n = summary["n"]
    out = []
    for key, cell in summary["per_eps"].items():
        e = float(key)
        rows = []
        for a in cell["attacks"]:
            spec = specs.get(a["attack"], {})
            on = spec.get("on", "all")
            # An attack run on the survivors only has no accuracy of its own: alone it would
            # be an upper bound (it never saw the points earlier attacks broke).
            rows.append({**a, "role": spec.get("role"), "on": on,
                         "robust_accuracy_alone": _alone(table, a["attack"], e, n)
                         if on == "all" else None})
        out.append({"eps": e, "worst_case": cell["worst_case"], "attacks": rows})
    return sorted(out, key=lambda r: r["eps"])


def _curves(per_eps: list[dict[str, Any]]) -> dict[str, Any]:
    per_attack: dict[str, dict[str, Any]] = {}
    for cell in per_eps:
        for a in cell["attacks"]:
            alone = a["on"] == "all"
            c = per_attack.setdefault(a["attack"], {"eps": [], "robust_accuracy": [],
                                                    "alone": alone})
            c["eps"].append(cell["eps"])
            c["robust_accuracy"].append(a["robust_accuracy_alone"] if alone
                                        else a["robust_accuracy_after"])
    return {"worst_case": {"eps": [c["eps"] for c in per_eps],
                           "robust_accuracy": [c["worst_case"] for c in per_eps]},
            "per_attack": per_attack}


def _min_norm(table: ResultsTable, summary: Mapping[str, Any]) -> dict[str, Any]:
    norm = table.meta.get("norm", "linf")
    out = {}
    for a, stats in summary["min_norm"].items():
        c = table.cell(a)
        ok = c["success"] & ~c["skipped"]
        out[a] = {**stats, "broken": int(ok.sum()),
                  "norms": [float(v) for v in np.sort(c[norm][ok].astype(np.float64))]}
    return out


def _certified_at(cert: Mapping[str, Any], eps: float | None) -> float | None:
    """The certified accuracy at ``eps`` (CROWN-IBP, else IBP), None without one."""
    for row in cert.get("per_eps") or []:
        if eps is not None and math.isclose(row["eps"], eps):
            return row["crown_ibp"] if row.get("crown_ibp") is not None else row["ibp"]
    return None


def _certified_curve(cert: Mapping[str, Any]) -> dict[str, Any]:
    rows = cert.get("per_eps") or []
    if not rows:
        return {}
    return {"certified": {"eps": [r["eps"] for r in rows],
                          "robust_accuracy": [_certified_at(cert, r["eps"]) for r in rows]}}


def _with_sandwich(verdict: dict[str, Any], certified: float | None, robust: float | None
                   ) -> dict[str, Any]:
    """The verdict's evidence, led by the certified bound when there is one: whatever the
    audit suspects, no masking can hide robustness below a proven lower bound."""
    if certified is None or robust is None or certified <= 0:
        return verdict  # no certificate (or none of use): nothing proven to say
    line = (f"certified lower bound {certified:.1%} (CROWN-IBP) under the attacks' "
            f"{robust:.1%}: whatever the checks below suspect, the true robust accuracy is "
            f"proven to lie between the two ({(robust - certified) * 100:.1f} points apart)")
    gap = robust - certified
    return {**verdict, "evidence": [line, *verdict.get("evidence", [])],
            "sandwich": {"certified": certified, "robust": robust, "gap": gap,
                         "text": f"the robust accuracy is proven to within {gap * 100:.1f} "
                                 "points by a certified bound"}}


def _verdict(audit: AuditReport | None) -> dict[str, Any]:
    if audit is None:
        return {"label": NOT_AUDITED, "audited": False, "fired": [], "notes": [], "evidence": [
            "the gradient-masking audit did not run: the robust accuracies below are what the "
            "attacks that ran could not break, with no check that those attacks worked."]}
    return {"label": audit.verdict.label, "audited": True,
            "evidence": list(audit.verdict.evidence), "fired": audit.fired(),
            "notes": [c.id for c in audit.checks if c.fired and c.kind == "info"],
            "completeness": dict(audit.verdict.completeness)}


def evaluation_record(table: ResultsTable, audit: AuditReport | None = None, *,
                      info: Mapping[str, Any] | None = None,
                      extra_curves: Mapping[str, Curve | Mapping[str, Any]] | None = None,
                      run: Mapping[str, Any] | None = None,
                      certified: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the evaluation as plain JSON (NaN and ∞ as ``null``): THE record of a
    run, of which summary.json, report.md and report.html are views (:func:`write_views`).

    Keys: ``summary`` (n, clean and worst-case robust accuracy at the main ε), ``per_eps`` (per ε:
    each attack's cell — attacked, broken, success rate, accuracy against it alone and after it
    in the cascade — and the per-sample worst case), ``curves`` (what the plot draws),
    ``min_norm`` (stats and every successful ‖δ‖), ``cost``, ``audit`` (every check with its
    numbers and evidence, or ``None``), ``verdict``, ``protocol`` (id, overrides, ε, grid, norm,
    seed, attack specs with roles, unavailable attacks), ``model``, ``data``, ``environment``,
    ``info`` (the caller's: name, description, dataset, ...), ``extra_curves``, ``run``
    (the caller's: command line, seconds, the table's identity) and ``certified`` (the
    certified accuracies under the attack figures, :func:`robustact.evaluate.certified.
    certify_table`; ``summary.certified_accuracy`` is the one at the main ε).

    Beside every accuracy and success rate sits its 95 % Wilson interval as ``<key>_ci: [lo,
    hi]``, beside each plotted curve a ``ci`` list, on each audit check ``intervals`` for its
    counts over samples (:func:`robustact.report.intervals.add_intervals`).
    """
    if len(table) == 0:
        raise ValueError("the results table is empty: nothing to report (did the evaluation "
                         "finish any cell?)")
    meta = table.meta
    summary = summarize(table)
    eps = _main_eps(table)
    per_eps = _per_eps(table, summary)
    at_eps = next((c for c in per_eps if eps is not None and math.isclose(c["eps"], eps)), None)
    given = {k: v for k, v in meta.items() if k not in _ENGINE_META}
    info = {**given, **dict(info or {})}
    protocol_id = str(meta.get("protocol") or "custom")
    name, _, version = protocol_id.partition("@")
    curves = {str(k): Curve.from_mapping(c).as_dict() for k, c in (extra_curves or {}).items()}
    cert = dict(certified or {"available": False, "reason": "not computed"})
    record = {
        "format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "info": info,
        "verdict": _with_sandwich(_verdict(audit), _certified_at(cert, eps),
                                  at_eps["worst_case"] if at_eps else None),
        "summary": {"n": summary["n"], "clean_accuracy": summary["clean_accuracy"],
                    "eps": eps, "norm": meta.get("norm"),
                    "robust_accuracy": at_eps["worst_case"] if at_eps else None,
                    "certified_accuracy": _certified_at(cert, eps),
                    "attacks_at_eps": ([a["attack"] for a in at_eps["attacks"]] if at_eps
                                       else []) + list(summary["min_norm"])},
        "per_eps": per_eps,
        "curves": {**_curves(per_eps), **_certified_curve(cert)},
        "certified": cert,
        "min_norm": _min_norm(table, summary),
        "cost": summary["cost"],
        "audit": audit.as_dict() if audit is not None else None,
        "protocol": {"id": protocol_id, "name": name, "version": version or None,
                     "overrides": meta.get("protocol_overrides") or {}, "eps": eps,
                     "eps_grid": meta.get("eps_grid") or [c["eps"] for c in per_eps],
                     "norm": meta.get("norm"), "seed": meta.get("seed"),
                     "attacks": meta.get("attacks", {}),
                     "unavailable": meta.get("unavailable", {})},
        "model": meta.get("model", {}),
        "data": {"n": summary["n"], "num_classes": meta.get("num_classes"),
                 "fingerprint": meta.get("data_fingerprint")},
        "environment": {**meta.get("environment", {}), "device": meta.get("device")},
        "extra_curves": curves,
        "run": dict(run or {}),
    }
    return add_intervals(_plain(record))


# -- presentation helpers (shared by Markdown and HTML) -----------------------------------------

def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _state(fired: bool | None) -> str:
    return "n/a" if fired is None else ("FIRED" if fired else "pass")


def _headline(record: Mapping[str, Any]) -> str:
    s = record["summary"]
    eps = "—" if s["eps"] is None else f"{s['eps']:g}"
    return (f"clean accuracy {pct_ci(s['clean_accuracy'], s.get('clean_accuracy_ci'))}; robust "
            f"accuracy (per-sample worst case over {len(s['attacks_at_eps'])} attacks) "
            f"{pct_ci(s['robust_accuracy'], s.get('robust_accuracy_ci'))} at ε = {eps} "
            f"({s['norm']}), n = {s['n']}"
            + (f"; certified accuracy (CROWN-IBP, a lower bound) "
               f"{pct_ci(s['certified_accuracy'], s.get('certified_accuracy_ci'))}"
               if s.get("certified_accuracy") is not None else "")
            + "; [95 % Wilson intervals]")


def _title(record: Mapping[str, Any]) -> str:
    info = record["info"]
    name = info.get("name") or record["model"].get("class") or "model"
    return f"Evaluation of {name}"


def _spec_text(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("role", "eps_mode", "on"))


# -- Markdown -----------------------------------------------------------------------------------


def _costliest(spent: dict[str, float], k: int = 3) -> str:
    """", most in C17 12.1 s, C7 3.0 s, C8 1.2 s": where the audit's time went."""
    top = sorted(spent.items(), key=lambda kv: -kv[1])[:k]
    return ", most in " + ", ".join(f"{cid} {sec:.1f} s" for cid, sec in top) if top else ""


def render_markdown(record: Mapping[str, Any], out_dir: str | os.PathLike[str],
                    figures: Mapping[str, Any]) -> Report:
    """The Markdown report of ``record``; ``figures``: name → Figure, saved beside it."""
    rep = Report(out_dir, _title(record))
    v = record["verdict"]
    sw = f" ({v['sandwich']['text']})" if v.get("sandwich") else ""
    rep.text(f"**Verdict: {v['label']}.**{sw} (Is there gradient masking?)\n\n"
             + "\n".join(f"- {e}" for e in v["evidence"]))
    comp = v.get("completeness") or {}
    rep.text("**Is the reported number complete?** "
             + (comp.get("text") or "not checked: the audit did not run."))
    rep.text(_headline(record))
    rep.heading("Robust accuracy per attack and ε")
    rep.text("Every percentage comes with its 95 % Wilson score interval in brackets (accuracies "
             "over the n evaluated points, success rates over the points attacked).")
    rows = []
    for cell in record["per_eps"]:
        for a in cell["attacks"]:
            rows.append([f"{cell['eps']:g}", a["attack"], a["role"] or "", a["on"], a["attacked"],
                         a["broken"], *(pct_ci(a[k], a.get(f"{k}_ci")) for k in (
                             "success_rate", "robust_accuracy_alone", "robust_accuracy_after"))])
        rows.append([f"{cell['eps']:g}", "**worst case**", "", "", "", "", "", "",
                     f"**{pct_ci(cell['worst_case'], cell.get('worst_case_ci'))}**"])
    rep.table(["ε", "attack", "role", "on", "attacked", "broken", "success rate",
               "accuracy vs it alone", "accuracy after it (cascade)"], rows)
    if "robust_accuracy" in figures:
        rep.figure(figures["robust_accuracy"], "robust_accuracy",
                   "Robust accuracy vs ε per attack and per-sample worst case")
    if record["min_norm"]:
        rep.heading("Minimum-norm attacks")
        rep.table(["attack", "attacked", "broken", "success rate", "median ‖δ‖", "mean ‖δ‖",
                   "ρ"],
                  [[k, m["attacked"], m["broken"], pct_ci(m["success_rate"],
                                                           m.get("success_rate_ci")),
                    _num(m["median_norm"]), _num(m["mean_norm"]), _num(m["rho"])]
                   for k, m in record["min_norm"].items()])
        if "min_norm" in figures:
            rep.figure(figures["min_norm"], "min_norm", "Minimum-norm ‖δ‖ of the broken points")
    rep.heading("Gradient-masking audit")
    audit = record["audit"]
    if audit is None:
        rep.text("The audit did not run.")
    else:
        rep.table(["check", "name", "state", "answers", "evidence"],
                  [[c["id"], c["name"], _state(c["fired"]), c.get("question") or c["kind"],
                    (c["evidence"] + "".join(
                        f" [{label}: {iv['k']} of {iv['n']}, {pct_ci(iv['fraction'], iv['ci'])}]"
                        for label, iv in (c.get("intervals") or {}).items())).replace("|", "\\|")]
                   for c in audit["checks"]])
        rep.text(f"Audit cost: {audit['seconds']:.2f} s, {audit['model_forward_rows']} model "
                 f"forward rows{_costliest(audit.get('check_seconds') or {})}.")
    for key, c in record["extra_curves"].items():
        rep.heading(c["title"] or key)
        if c["note"]:
            rep.text(c["note"])
        rep.figure(figures[f"curve:{key}"], f"curve_{_slug(key)}", c["title"] or key)
    rep.heading("Cost")
    rep.table(["attack", "forward / image", "backward / image", "seconds"],
              [[k, _num(c["forward_per_image"]), _num(c["backward_per_image"]),
                _num(c["seconds"])] for k, c in record["cost"]["per_attack"].items()]
              + [["total", _num(record["cost"]["forward_per_image"]),
                  _num(record["cost"]["backward_per_image"]), ""]])
    p = record["protocol"]
    rep.heading("Protocol")
    rep.table(["field", "value"], [[k, _num(v) if not isinstance(v, (dict, list)) else
                                    json.dumps(v)] for k, v in p.items() if k != "attacks"])
    rep.table(["attack", "role", "ε", "on", "spec"],
              [[k, s.get("role", ""), s.get("eps_mode", ""), s.get("on", ""),
                _spec_text(s)] for k, s in p["attacks"].items()])
    rep.heading("Model, data and environment")
    rep.table(["field", "value"], _kv_rows(record))
    return rep


def _kv_rows(record: Mapping[str, Any]) -> list[list[str]]:
    rows = [[f"info.{k}", _num(v) if not isinstance(v, (dict, list)) else json.dumps(v)]
            for k, v in record["info"].items()]
    rows += [[f"model.{k}", _num(v) if not isinstance(v, (dict, list)) else json.dumps(v)]
             for k, v in record["model"].items()]
    rows += [[f"data.{k}", _num(v)] for k, v in record["data"].items()]
    rows += [[f"environment.{k}", _num(v)] for k, v in record["environment"].items()]
    rows.append(["generated", record["generated"]])
    return rows


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_") or "curve"


# -- HTML ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the package's templates (autoescape on: every string in a
    report — model names, evidence, specs — is text, never markup)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("robustact.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["pct_ci"] = pct_ci
    env.filters["ci"] = ci_text
    env.filters["num"] = _num
    env.filters["state"] = _state
    env.filters["tojson_compact"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def render_html(record: Mapping[str, Any], figures: Mapping[str, Any]) -> str:
    """The self-contained page of ``record``; ``figures``: name → Figure (embedded as PNG)."""
    images = {k: figure_data_uri(f) for k, f in figures.items()}
    tpl = template_environment().get_template("report.html.j2")
    return tpl.render(r=record, title=_title(record), headline=_headline(record),
                      images=images, kv_rows=_kv_rows(record), spec_text=_spec_text)


def _figures(record: Mapping[str, Any]) -> dict[str, Any]:
    figs: dict[str, Any] = {"robust_accuracy": robust_accuracy_figure(record)}
    if record["min_norm"]:
        figs["min_norm"] = min_norm_figure(record)
    for key, c in record["extra_curves"].items():
        figs[f"curve:{key}"] = curve_figure(c)
    return figs


def summary_view(record: Mapping[str, Any], paths: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The compact ``summary.json``: a view of ``record`` (clean and robust accuracy, each
    attack's cell at ε, the worst case per ε, each with its 95 % interval as ``..._ci``, the
    verdict, the cost), so it can never say something the reports do not."""
    s, p, run = record["summary"], record["protocol"], record.get("run") or {}
    at_eps = next((c for c in record["per_eps"]
                   if s["eps"] is not None and math.isclose(c["eps"], s["eps"])), None)
    verdict = record["verdict"]
    return {
        "model": record["info"], "protocol": p["id"], "norm": p["norm"], "eps": s["eps"],
        "eps_grid": p["eps_grid"], "n": s["n"], "seed": p["seed"],
        "clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"],
        "certified_accuracy": s.get("certified_accuracy"),
        "certified_accuracy_ci": s.get("certified_accuracy_ci"),
        "certified": record.get("certified") or {"available": False},
        "clean_accuracy_ci": s.get("clean_accuracy_ci"),
        "robust_accuracy_ci": s.get("robust_accuracy_ci"),
        "attacks_at_eps": list(at_eps["attacks"]) if at_eps else [],
        "worst_case": {repr(float(c["eps"])): c["worst_case"] for c in record["per_eps"]},
        "worst_case_ci": {repr(float(c["eps"])): c.get("worst_case_ci")
                          for c in record["per_eps"]},
        "min_norm": {k: {f: v for f, v in m.items() if f != "norms"}
                     for k, m in record["min_norm"].items()},
        "unavailable": p["unavailable"], "attacks": p["attacks"],
        "verdict": {k: verdict.get(k) for k in ("label", "evidence", "fired", "notes",
                                                 "completeness", "sandwich")}
        | ({"from_earlier_run": True} if verdict.get("from_earlier_run") else {}),
        "cost": {"forward_per_image": record["cost"]["forward_per_image"],
                 "backward_per_image": record["cost"]["backward_per_image"],
                 "per_attack": record["cost"]["per_attack"]},
        "seconds": run.get("seconds", {}), "command": run.get("command"),
        "environment": record["environment"], "device": record["environment"].get("device"),
        "table": run.get("table"),
        "reports": {k: str(v) for k, v in (paths or {}).items()},
    }


def keep_earlier_audit(record: dict[str, Any], earlier: str | os.PathLike[str]) -> dict[str, Any]:
    """``record`` (of a run without the audit) with the audit of an earlier record at
    ``earlier``, when that one audited the very same table; else ``record`` unchanged.

    Why: rerunning a finished, audited evaluation with ``--no-audit`` (to redraw the reports,
    say) must neither throw away the audit's verdict nor leave one file saying it and another
    not: the verdict moves into the new record, marked as from the earlier run, and every view
    shows it.
    """
    try:
        old = json.loads(Path(earlier).read_text())
    except (OSError, ValueError):
        return record
    same = (isinstance(old, dict) and (old.get("run") or {}).get("table") is not None
            and old["run"]["table"] == (record.get("run") or {}).get("table"))
    if not same or not (old.get("verdict") or {}).get("audited"):
        return record
    seconds = dict((record.get("run") or {}).get("seconds") or {})
    for k in ("audit", "audit_model_forward_rows"):
        seconds[k] = ((old.get("run") or {}).get("seconds") or {}).get(k)
    note = ("this verdict is the audit of an earlier run of this same results table (this run "
            "skipped the audit)")
    return {**record, "audit": old["audit"],
            "verdict": {**old["verdict"], "from_earlier_run": True,
                        "evidence": [*old["verdict"]["evidence"], note]},
            "run": {**record["run"], "seconds": seconds}}


def write_views(out_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> dict[str, Path]:
    """Write every view of ``record`` into ``out_dir``, each file atomically: ``report.json``
    (the record itself), ``report.md`` (PNG plots beside it), ``report.html`` and
    ``summary.json`` (last: a summary implies the reports it names are complete)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} is a file")
    record = add_intervals(record)  # also on a record that took an earlier run's audit
    figs = _figures(record)
    paths = {"json": atomic_write_json(out / "report.json", record)}
    paths["markdown"] = render_markdown(record, out, figs).write("report.md")
    paths["html"] = atomic_write_bytes(out / "report.html", render_html(record, figs).encode())
    paths["summary"] = atomic_write_json(out / "summary.json", summary_view(record, paths))
    return paths


def write_reports(out_dir: str | os.PathLike[str], table: ResultsTable,
                  audit: AuditReport | None = None, *, info: Mapping[str, Any] | None = None,
                  extra_curves: Mapping[str, Curve | Mapping[str, Any]] | None = None,
                  run: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Build the record of ``table`` (and ``audit``) and write all its views
    (:func:`write_views`); returns name → path.

    ``extra_curves``: sweeps to show with the evaluation, e.g. ``{"kappa": Curve.from_pairs(
    tuning.curve, xlabel="κ", label="validation accuracy", chosen=tuning.kappa)}``.
    """
    record = evaluation_record(table, audit, info=info, extra_curves=extra_curves, run=run)
    return write_views(out_dir, record)
