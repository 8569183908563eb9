"""The evaluation report's plots, drawn from the report's own record (plain JSON numbers).

Why from the record and not from the table: the page, the Markdown and ``report.json`` then show
the same numbers by construction (a plot cannot disagree with the JSON beside it). Why the
object API (:class:`matplotlib.figure.Figure`) and never pyplot: pyplot keeps a global figure
registry and backend, which a library must not touch (and which leaks memory in long runs).

Each function returns a ``Figure``; :func:`figure_data_uri` turns one into a ``data:`` URI for the
self-contained HTML page, :func:`save_png` writes it atomically for the Markdown report.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from robustact.core.storage import atomic_write_bytes

__all__ = [
    "Curve",
    "curve_figure",
    "figure_data_uri",
    "figure_png",
    "min_norm_figure",
    "robust_accuracy_figure",
    "save_png",
]

#: PNG metadata left out so the same figure gives the same bytes on every run.
_PNG_META = {"Software": None}
_DPI = 110


@dataclass
class Curve:
    """A sweep to show beside the evaluation: κ of JumpReLU, T of an output activation, ...

    ``series`` maps a label (e.g. ``"clean accuracy"``) to one y value per ``x``; ``chosen``
    marks the value the defense uses (a vertical line). Plain data so ``report.json`` holds it.
    """

    x: list[float]
    series: dict[str, list[float]]
    xlabel: str
    ylabel: str = "accuracy (%)"
    title: str = ""
    chosen: float | None = None
    log_x: bool = False
    percent: bool = True  # y values are fractions shown in %
    note: str = ""

    def __post_init__(self) -> None:
        self.x = [float(v) for v in self.x]
        if not self.x:
            raise ValueError("a curve needs at least one x value")
        if not self.series:
            raise ValueError("a curve needs at least one series")
        for name, ys in self.series.items():
            if len(ys) != len(self.x):
                raise ValueError(f"curve series {name!r} has {len(ys)} values for "
                                 f"{len(self.x)} x values")
        self.series = {str(k): [float(v) for v in ys] for k, ys in self.series.items()}
        if self.log_x and min(self.x) <= 0:
            raise ValueError("a curve with log_x needs x > 0")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Curve) -> Curve:
        """A ``Curve`` from itself or from its :meth:`as_dict` (or a hand-written dict)."""
        if isinstance(m, Curve):
            return m
        if not isinstance(m, Mapping):
            raise ValueError(f"a curve must be a Curve or a mapping, got {type(m).__name__}")
        unknown = set(m) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown curve fields {sorted(unknown)}; expected some of "
                             f"{sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**m)
        except TypeError as e:
            raise ValueError(f"bad curve: {e}") from None

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[float, float]], *, xlabel: str,
                   label: str = "accuracy", **kw: Any) -> Curve:
        """From ``[(x, y), ...]``, e.g. :class:`~robustact.defenses.KappaTuning`'s ``curve``."""
        return cls(x=[p[0] for p in pairs], series={label: [p[1] for p in pairs]},
                   xlabel=xlabel, **kw)

    def as_dict(self) -> dict[str, Any]:
        return {"x": list(self.x), "series": {k: list(v) for k, v in self.series.items()},
                "xlabel": self.xlabel, "ylabel": self.ylabel, "title": self.title,
                "chosen": self.chosen, "log_x": self.log_x, "percent": self.percent,
                "note": self.note}


def _pct(v: float | None) -> float:
    return math.nan if v is None else 100.0 * v


def _bounds(ys: Sequence[float], ci: Sequence[Sequence[float] | None] | None
            ) -> tuple[list[float], list[float]] | None:
    """Lower and upper band in per cent from a curve's ``ci`` list (``None`` where absent)."""
    if not ci or len(ci) != len(ys):
        return None
    lo = [_pct(b[0]) if b else math.nan for b in ci]
    hi = [_pct(b[1]) if b else math.nan for b in ci]
    return lo, hi


def _attack_series(ax: Any, name: str, c: Mapping[str, Any]) -> None:
    """One attack: a line with its 95 % band, or, for an attack at one ε only (the main ε), a
    marker with an error bar: a one-point "curve" would suggest a trend that is not there."""
    xs, ys = c["eps"], [_pct(v) for v in c["robust_accuracy"]]
    label = name if c["alone"] else f"{name} (cascade, after it)"
    band = _bounds(ys, c.get("ci"))
    if len(xs) == 1:
        (pt,) = ax.plot(xs, ys, linestyle="none", marker="D", markersize=7, alpha=0.9,
                        label=f"{label}, main ε only")
        if band is not None and not math.isnan(ys[0]):
            ax.errorbar(xs, ys, yerr=[[ys[0] - band[0][0]], [band[1][0] - ys[0]]], fmt="none",
                        ecolor=pt.get_color(), capsize=4, linewidth=1.2)
        return
    (line,) = ax.plot(xs, ys, "-" if c["alone"] else "--", marker="o", markersize=4,
                      linewidth=1.4, label=label, alpha=0.85)
    if band is not None:
        ax.fill_between(xs, band[0], band[1], color=line.get_color(), alpha=0.10, linewidth=0)


def robust_accuracy_figure(record: Mapping[str, Any]) -> Figure:
    """Robust accuracy vs ε: one line per attack and the per-sample worst case (bold), each
    with its 95 % Wilson band; the legend sits right of the axes, so it never hides a curve.

    An attack that ran on every clean-correct point is drawn alone (its own accuracy); one that
    ran only on the survivors of earlier attacks is drawn dashed as the cascade's accuracy after
    it (alone it would only be an upper bound). An attack at the main ε only is one marker with
    an error bar, no line.
    """
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.subplots()
    curves = record["curves"]
    for name, c in curves["per_attack"].items():
        _attack_series(ax, name, c)
    wc = curves["worst_case"]
    ys = [_pct(v) for v in wc["robust_accuracy"]]
    ax.plot(wc["eps"], ys, "-", color="black", linewidth=2.6, marker="s", markersize=5,
            label="worst case (per sample)", zorder=5)
    band = _bounds(ys, wc.get("ci"))
    if band is not None:
        # Edged, lightly filled: it stays readable where the attacks' bands overlap it.
        ax.fill_between(wc["eps"], band[0], band[1], facecolor="0.55", alpha=0.18,
                        edgecolor="black", linewidth=0.6, linestyle="--", zorder=4,
                        label="worst case: 95 % interval (Wilson)")
    cert = curves.get("certified")
    if cert:  # the lower bound under the attack figures: the true accuracy is in between
        ax.plot(cert["eps"], [_pct(v) for v in cert["robust_accuracy"]], "--", color="tab:green",
                linewidth=2.2, marker="D", markersize=5, zorder=5,
                label="certified (CROWN-IBP): lower bound")
    eps = record["protocol"]["eps"]
    if eps is not None:
        ax.axvline(eps, color="0.6", linestyle=":", linewidth=1)
        ax.annotate(f"ε = {eps:g}", (eps, 0.02), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", color="0.4", fontsize=8)
    ax.set_xlabel(f"ε ({record['protocol']['norm']}, pixel units in [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    ax.set_title(f"robust accuracy vs ε (n = {record['summary']['n']}; bands: 95 % intervals)")
    return fig


def _legend_outside(ax: Any) -> None:
    """The legend right of the axes (constrained layout makes room): never over a curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              frameon=False)


def min_norm_figure(record: Mapping[str, Any]) -> Figure:
    """Histograms of the minimum-norm attacks' ‖δ‖ over the points they broke, with the median
    and the main ε marked (a point left of ε is broken within the budget)."""
    mn = record["min_norm"]
    names = list(mn)
    if not names:
        raise ValueError("the record has no minimum-norm attack to plot")
    fig = Figure(figsize=(8.5, 2.9 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    eps = record["protocol"]["eps"]
    norm = record["protocol"]["norm"]
    for ax, name in zip(axes, names, strict=True):
        d = [v for v in mn[name]["norms"] if v is not None]
        if d:
            ax.hist(d, bins=min(30, max(5, len(d) // 3)), color="#4c72b0", alpha=0.8)
            med = mn[name]["median_norm"]
            if med is not None:
                ax.axvline(med, color="#dd8452", linewidth=1.5, label=f"median {med:.4g}")
        else:
            ax.text(0.5, 0.5, "no successful point", ha="center", va="center",
                    transform=ax.transAxes)
        if eps is not None:
            ax.axvline(eps, color="black", linestyle=":", linewidth=1.2, label=f"ε = {eps:g}")
        ax.set_xlabel(f"‖δ‖ ({norm})")
        ax.set_ylabel("points")
        ax.set_title(f"{name}: {len(d)} of {mn[name]['attacked']} attacked points broken")
        _legend_outside(ax)
        ax.grid(True, alpha=0.3)
    return fig


def curve_figure(curve: Curve | Mapping[str, Any]) -> Figure:
    """One sweep (κ, T, ...): a line per series, the chosen value marked."""
    c = Curve.from_mapping(curve)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, ys in c.series.items():
        ax.plot(c.x, [100 * v if c.percent else v for v in ys], marker="o", markersize=4,
                label=name)
    if c.chosen is not None:
        ax.axvline(c.chosen, color="black", linestyle=":", label=f"chosen {c.chosen:g}")
    if c.log_x:
        ax.set_xscale("log")
    ax.set_xlabel(c.xlabel)
    ax.set_ylabel(c.ylabel)
    if c.title:
        ax.set_title(c.title)
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp or software metadata: same figure, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata=_PNG_META)
    return buf.getvalue()


def figure_data_uri(fig: Figure) -> str:
    """``data:image/png;base64,...``: the figure inside the HTML, so the page needs no files."""
    return "data:image/png;base64," + base64.b64encode(figure_png(fig)).decode("ascii")


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the figure as a PNG, atomically."""
    return atomic_write_bytes(path, figure_png(fig))

