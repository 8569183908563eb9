"""The numbers reports show, computed from a results table and nothing else.

- clean accuracy (a tied top output counts as wrong);
- per ε of the grid: each attack's cell (samples attacked, broken, success rate on them) and the
  robust accuracy left after it in protocol order (the cascade's running worst case);
- per ε: the per-sample worst case (AUDIT C22): a sample is robust only if it is clean-correct
  and *no* row at that ε or at a smaller one succeeded (an adversarial example found within a
  smaller ball lies within every larger one, so the worst-case curve never rises with ε, even
  when an adaptive attack ran only at the main ε); minimum-norm rows also break a sample at
  every ε at least their norm (a minimum-norm adversarial with ‖δ‖ ≤ ε is an ε-bounded one);
- minimum-norm attacks: median and mean ‖δ‖ over the successful samples, and the relative norm
  ρ = mean ‖δ‖ / mean ‖x‖ over the same samples (JumpReLU paper), with ‖x‖ from the table's
  ``meta["clean"]`` (``x_linf``/``x_l2``, written by the engine);
- cost: forward and backward passes per evaluated image, per attack and in total.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robustact.evaluate.table import ResultsTable

__all__ = ["summarize", "worst_case", "robust_accuracy_curve"]

_TOL = 1e-6


def _n(table: ResultsTable) -> int:
    return int(table.meta.get("n", len(table.samples())))


def worst_case(table: ResultsTable, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, robust flags) at ``eps``: clean-correct and broken by no row at ``eps`` or
    at a smaller ε (AND over attacks, and over the nested balls)."""
    ids = table.samples()
    finite = np.isfinite(table["eps"])
    at = table.where(np.isclose(table["eps"], eps, rtol=0, atol=1e-12) & finite)
    within = table.where(finite & (table["eps"] <= eps + 1e-12))
    mn = table.where(np.isinf(table["eps"]))
    roles = table.meta.get("attacks", {})
    mn_rows = np.array([roles.get(a, {}).get("role") == "min_norm" for a in mn["attack"]],
                       dtype=bool)
    mn = mn.where(mn_rows) if len(mn) else mn
    norm = table.meta.get("norm", "linf")
    broken = np.zeros(len(ids), dtype=bool)
    correct = np.zeros(len(ids), dtype=bool)
    pos = {int(s): i for i, s in enumerate(ids)}
    src = table if len(at) == 0 else at
    for s, c in zip(src["sample"], src["clean_correct"], strict=True):
        correct[pos[int(s)]] = c
    for s in within["sample"][within["success"]]:
        broken[pos[int(s)]] = True
    if len(mn):
        hit = mn["success"] & (mn[norm] <= eps + _TOL)
        for s in mn["sample"][hit]:
            broken[pos[int(s)]] = True
    return ids, correct & ~broken


def robust_accuracy_curve(table: ResultsTable) -> list[tuple[float, float]]:
    """(ε, worst-case robust accuracy) over the grid."""
    grid = table.meta.get("eps_grid") or sorted(set(table["eps"][np.isfinite(table["eps"])]))
    n = _n(table)
    return [(float(e), float(worst_case(table, e)[1].sum()) / n) for e in grid]


def summarize(table: ResultsTable) -> dict[str, Any]:
    """Every reported figure as plain Python values (JSON-ready)."""
    n = _n(table)
    # One full cell: every sample once (each cell has one row per evaluated sample).
    first = table.cell(table["attack"][0], float(table["eps"][0])) if len(table) else table
    clean = float(first["clean_correct"].sum()) / n if len(first) else math.nan
    out: dict[str, Any] = {"n": n, "clean_accuracy": clean, "protocol": table.meta.get("protocol"),
                           "norm": table.meta.get("norm"), "eps": table.meta.get("eps"),
                           "unavailable": table.meta.get("unavailable", {})}
    per_eps: dict[str, Any] = {}
    finite = np.isfinite(table["eps"])
    for e in sorted(set(table["eps"][finite].tolist())):
        cells = []
        robust = first["clean_correct"].copy() if len(first) else np.zeros(0, bool)
        order = {int(s): i for i, s in enumerate(first["sample"])}
        for a in table.attacks():
            c = table.cell(a, e)
            if not len(c):
                continue
            attacked = ~c["skipped"]
            hits = c["success"] & attacked
            for s in c["sample"][hits]:
                robust[order[int(s)]] = False
            cells.append({"attack": a, "attacked": int(attacked.sum()),
                          "broken": int(hits.sum()),
                          "success_rate": float(hits.sum() / attacked.sum())
                          if attacked.any() else 0.0,
                          "robust_accuracy_after": float(robust.sum()) / n})
        per_eps[repr(float(e))] = {"attacks": cells,
                                   "worst_case": float(worst_case(table, e)[1].sum()) / n}
    out["per_eps"] = per_eps
    out["curve"] = robust_accuracy_curve(table)
    out["min_norm"] = _min_norm(table)
    out["cost"] = _cost(table, n)
    return out


def _min_norm(table: ResultsTable) -> dict[str, Any]:
    norm = table.meta.get("norm", "linf")
    clean = table.meta.get("clean")
    res: dict[str, Any] = {}
    for a in table.attacks("min_norm"):
        c = table.cell(a)
        ok = c["success"] & ~c["skipped"]
        d = c[norm][ok].astype(np.float64)
        entry: dict[str, Any] = {"attacked": int((~c["skipped"]).sum()),
                                 "success_rate": float(ok.sum() / max((~c["skipped"]).sum(), 1)),
                                 "median_norm": float(np.median(d)) if d.size else math.nan,
                                 "mean_norm": float(d.mean()) if d.size else math.nan}
        if clean is not None and d.size:
            pos = {int(s): i for i, s in enumerate(clean["sample"])}
            xn = np.array([clean[f"x_{norm}"][pos[int(s)]] for s in c["sample"][ok]],
                          dtype=np.float64)
            entry["rho"] = float(d.mean() / xn.mean()) if xn.mean() > 0 else math.nan
        else:
            entry["rho"] = math.nan
        res[a] = entry
    return res


def _cost(table: ResultsTable, n: int) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for a in table.attacks():
        c = table.cell(a)
        per[a] = {"forward_per_image": float(c["forward"].sum()) / n,
                  "backward_per_image": float(c["backward"].sum()) / n,
                  "seconds": float(c["seconds"].sum())}
    return {"per_attack": per,
            "forward_per_image": float(table["forward"].sum()) / n if n else 0.0,
            "backward_per_image": float(table["backward"].sum()) / n if n else 0.0}
