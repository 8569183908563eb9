"""A reproduction's record (:func:`robustact.runs.reproduce.reproduce`) as Markdown, HTML and a
figure: what the paper reported, what robustact measured under the paper's protocol, and what
survives robustact's own evaluation, side by side.

Why one summary row per (model, setting, split) with three columns: a reader should see at a
glance whether the claim reproduces (claimed vs paper protocol) and whether it survives
(paper protocol vs strongest evaluation, with the audit's verdict), without reading the cells.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from robustact.core.storage import atomic_write_bytes
from robustact.report.evaluation import template_environment
from robustact.report.figures import figure_data_uri, figure_png
from robustact.report.intervals import pct_ci
from robustact.report.markdown import format_table

__all__ = ["headline_for", "headline_rows", "model_groups", "same_eps", "summary_table",
           "write_reproduction_views", "write_summary"]


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _headline(cell: Mapping[str, Any], headline: Mapping[str, Any] | None
              ) -> dict[str, Any] | None:
    """The cell's row of the paper's headline attack and ε (the first attack when none)."""
    rows = cell["paper"]
    if headline:
        rows = [r for r in rows if r["attack"] == headline.get("attack")
                and same_eps(r["eps"], headline.get("eps"))]
    return rows[0] if rows else None


def headline_for(headline: Mapping[str, Any] | None, dataset: str | None) -> dict[str, Any]:
    """The headline of a cell's dataset: a paper names one (``{"attack": ...}``) or one per
    dataset (``{"mnist": {...}, "cifar10": {...}}``), since its budgets differ by dataset."""
    if not headline:
        return {}
    if "attack" in headline or "metric" in headline:
        return dict(headline)
    return dict(headline.get(dataset or "", {}))


def same_eps(a: float | None, b: float | None) -> bool:
    """Whether two budgets are the same: None (unbudgeted) or equal up to rounding (a grid's
    0.3 · 1/3 is not 0.1 in floating point)."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def headline_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per cell: clean, claimed, the paper protocol's figure, the strongest evaluation's
    robust accuracy with its interval, and the verdict."""
    dataset = {m["key"]: m.get("dataset") for m in record.get("models", [])}
    out = []
    for cell in record["cells"]:
        head = headline_for(record.get("headline"), dataset.get(cell["model"]))
        metric = head.get("metric", "accuracy")
        row = _headline(cell, head)
        claim = next((c for c in record["claims"]
                      if c["model"] in (cell["model"], cell["group"])
                      and c["setting"] == cell["setting"] and c.get("attack") == head.get(
                          "attack") and c["metric"] == metric), None)
        s = cell["strongest"]
        tuned = cell.get("tuning") and cell["defenses"]
        setting = cell["setting"] + (f" (κ = {tuned[0]['kappa']:g})" if tuned else "")
        out.append({
            "model": cell["model"], "setting": setting, "split": cell["split"],
            "n": cell["n"], "clean": cell["clean_accuracy"],
            "claimed": None if claim is None else claim["value"] / 100,
            "attack": None if row is None else row["attack"],
            "paper": None if row is None else row.get(metric),
            "strongest": s["robust_accuracy"], "strongest_ci": s.get("robust_accuracy_ci"),
            "eps": s["eps"], "verdict": s["verdict"], "report": s["report"]})
    return out


def model_groups(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Test accuracy per group of models that differ only by seed: mean, std and count."""
    groups: dict[str, list[float]] = {}
    for m in record["models"]:
        if m.get("test_accuracy") is not None:
            groups.setdefault(m["group"], []).append(m["test_accuracy"])
    return [{"group": g, "n": len(v), "mean": statistics.fmean(v),
             "std": statistics.stdev(v) if len(v) > 1 else 0.0} for g, v in groups.items()]


def _markdown(record: Mapping[str, Any], rows: list[dict[str, Any]]) -> str:
    p = record["paper"]
    scope = _scope(record)
    label = {"quick": " (quick: reduced settings, not the paper's)",
             "reduced": f" (reduced settings: {_reduced_text(record['reduced'])})",
             "part": f" (part of the file, full settings: {_reduced_text(record['reduced'])})",
             "": ""}[scope]
    lines = [f"# Reproduction: {p['title'] or p['name']}{label}", "",
             f"{p['source']}. {p['description']}", "",
             f"Command: `{record.get('command') or '-'}`; device {record['device']}; "
             f"{_work_text(record)}; robustact {record['environment'].get('robustact')}.",
             ""]
    lines += [f"- {n}" for n in p["notes"]] + [""]
    lines += ["## Claimed, measured under the paper's protocol, and what survives", "",
              format_table(
                  ["model", "setting", "split", "n", "clean %", "claimed %", "paper's attack",
                   "paper protocol %", "robustact %", "ε", "verdict"],
                  [[r["model"], r["setting"], r["split"], r["n"], _pct(r["clean"]),
                    _pct(r["claimed"], 2), r["attack"] or "–", _pct(r["paper"]),
                    pct_ci(r["strongest"], r["strongest_ci"]), f"{r['eps']:.4g}", r["verdict"]]
                   for r in rows]), ""]
    if record["claims"]:
        lines += ["## The paper's numbers", "", format_table(
            ["model", "setting", "attack", "metric", "where", "claimed", "measured", "diff"],
            [[c["model"], c["setting"], c.get("attack") or "–", c["metric"], c.get("where", ""),
              f"{c['value']:.2f}", "–" if c["measured"] is None else f"{c['measured']:.2f}",
              "–" if c["difference"] is None else f"{c['difference']:+.2f}"]
             for c in record["claims"]]), ""]
    groups = model_groups(record)
    lines += ["## Models", "", format_table(
        ["model", "test acc %", "train acc %", "epochs", "train s"],
        [[m["key"], _pct(m["test_accuracy"], 2), _pct(m["train_accuracy"], 2), m["epochs"],
          "–" if m["train_seconds"] is None else f"{m['train_seconds']:.0f}"]
         for m in record["models"]]), ""]
    if any(g["n"] > 1 for g in groups):
        lines += ["Test accuracy over seeds:", "", format_table(
            ["group", "seeds", "mean %", "std"],
            [[g["group"], g["n"], _pct(g["mean"], 2), _pct(g["std"], 2)] for g in groups]), ""]
    lines += ["## Every attack cell (the paper's protocol)", "", format_table(
        ["model", "setting", "split", "attack", "norm", "ε", "accuracy %", "success %",
         "ρ %", "ρ normalized %", "zero grad %", "tie %"],
        [[c["model"], c["setting"], c["split"], r["attack"], r["norm"],
          "none" if r["eps"] is None else f"{r['eps']:.4g}", _pct(r["accuracy"]),
          _pct(r["success_rate"]), _pct(r.get("rho"), 2), _pct(r.get("rho_normalized"), 2),
          _pct(r["grad_zero"]),
          _pct(c["tie_rate"])] for c in record["cells"] for r in c["paper"]]), ""]
    return "\n".join(lines)


def _work_text(record: Mapping[str, Any]) -> str:
    w = record.get("work_seconds") or {}
    return (f"training {w.get('training', 0):.0f} s and cells {w.get('cells', 0):.0f} s of "
            f"work, this invocation {record['seconds']:.0f} s wall")


def _scope(record: Mapping[str, Any]) -> str:
    """quick, reduced (fewer epochs or images), part (some models, each in full settings) or
    '' (the whole file): a run of the paper's MNIST models is not a reduced one."""
    reduced = record.get("reduced") or {}
    if record["quick"]:
        return "quick"
    return "reduced" if {"epochs", "n"} & set(reduced) else "part" if reduced else ""


def _reduced_text(reduced: Mapping[str, Any]) -> str:
    parts = [f"the {reduced['dataset']} models" if "dataset" in reduced else "",
             f"models {', '.join(reduced['models'])}" if "models" in reduced else "",
             f"at most {reduced['epochs']} epochs" if "epochs" in reduced else "",
             f"{reduced['n']} images" if "n" in reduced else ""]
    return "; ".join(p for p in parts if p)


def _figure(record: Mapping[str, Any]) -> Figure:
    """Accuracy under each of the paper's attacks (at its largest ε, or unbudgeted) and under
    robustact's evaluation, per cell: grouped bars."""
    cells = record["cells"]
    attacks = list(dict.fromkeys(r["attack"] for c in cells for r in c["paper"]))
    fig = Figure(figsize=(max(6.0, 0.9 * len(cells) * (len(attacks) + 1) / 2), 4.2),
                 layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / (len(attacks) + 1)
    for j, name in enumerate([*attacks, "robustact"]):
        ys = []
        for c in cells:
            if name == "robustact":
                ys.append(100 * c["strongest"]["robust_accuracy"])
                continue
            rows = [r for r in c["paper"] if r["attack"] == name]
            last = max(rows, key=lambda r: -1 if r["eps"] is None else r["eps"], default=None)
            ys.append(float("nan") if last is None else 100 * last["accuracy"])
        ax.bar([i + j * width for i in range(len(cells))], ys, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
    ax.set_xticklabels([f"{c['model']}\n{c['setting']}" + (f"\n{c['split']}" if c["split"] !=
                                                            "test" else "") for c in cells],
                       fontsize=7, rotation=30 if len(cells) > 6 else 0)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def write_reproduction_views(out: str | os.PathLike[str], record: Mapping[str, Any]
                             ) -> dict[str, Path]:
    """``report.md``, ``report.html`` (self-contained) and ``accuracy.png`` into ``out``."""
    out = Path(out)
    rows = headline_rows(record)
    fig = _figure(record)
    paths = {"markdown": out / "report.md", "html": out / "report.html",
             "figure": out / "accuracy.png"}
    atomic_write_bytes(paths["figure"], figure_png(fig))
    atomic_write_bytes(paths["markdown"], _markdown(record, rows).encode())
    tpl = template_environment().get_template("reproduction.html.j2")
    html = tpl.render(r=record, rows=rows, groups=model_groups(record),
                      reduced=_reduced_text(record.get("reduced") or {}),
                      scope=_scope(record),
                      work=_work_text(record),
                      image=figure_data_uri(fig),
                      rel=lambda p: os.path.relpath(p, out) if p else "")
    atomic_write_bytes(paths["html"], html.encode())
    return paths


def summary_table(records: Mapping[str, Mapping[str, Any]], base: str | os.PathLike[str]
                  ) -> str:
    """One Markdown table of several reproductions: per cell the claim, the paper protocol's
    figure, robustact's with its interval and the verdict; each paper links to its report
    (relative to ``base``)."""
    rows = []
    for name, rec in records.items():
        link = os.path.relpath(rec["views"]["html"], base) if rec.get("views") else ""
        scope, reduced = _scope(rec), rec.get("reduced") or {}
        if scope == "part" and set(reduced) == {"dataset"}:
            scope = f"{reduced['dataset']} part"
        label = f" ({scope})" if scope else ""
        for r in headline_rows(rec):
            rows.append([f"[{name}]({link}){label}", r["model"], r["setting"], r["split"],
                         _pct(r["clean"]), _pct(r["claimed"], 2),
                         f"{r['attack'] or '–'} {_pct(r['paper'])}", pct_ci(r["strongest"],
                                                                           r["strongest_ci"]),
                         f"{r['eps']:.4g}", r["verdict"]])
    return format_table(["paper", "model", "setting", "split", "clean %", "claimed %",
                         "paper protocol %", "robustact %", "ε", "verdict"], rows)


def write_summary(out: str | os.PathLike[str], records: Mapping[str, Mapping[str, Any]],
                  run: Mapping[str, Any] | None = None, nested: Sequence[str] = ()) -> Path:
    """``summary.md`` in ``out``: :func:`summary_table` with the wall times, ``run``'s (the one
    command that made them all: its ``command``, ``seconds`` and ``jobs``) and a link to each
    ``nested`` subfolder's own summary."""
    out = Path(out)
    times = "; ".join(f"{n}: {_work_text(r)}" for n, r in records.items())
    whole = [] if not run else [  # a rerun that only re-renders says so by its seconds
        f"This invocation, all of them: `{run.get('command') or 'reproduce_all'}`, "
        f"{run['seconds'] / 60:.1f} min wall with {run['jobs']} worker "
        f"process{'es' if run['jobs'] > 1 else ''}.", ""]
    links = [f"Also here, with a table of its own: "
             f"{', '.join(f'[{n}]({n}/summary.md)' for n in nested)}.", ""] if nested else []
    text = "\n".join(["# Reproductions", "", summary_table(records, out), "",
                      f"Wall time: {times}.", "", *whole, *links])
    return atomic_write_bytes(out / "summary.md", text.encode())
