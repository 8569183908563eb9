"""The sandwich: certified accuracy (a lower bound) under every attack figure (an upper bound).

For each finite ε of an evaluation's grid, :func:`certify_table` bounds every sample's margins
over the ε-ball (:mod:`robustact.certify`: IBP and CROWN-IBP) and reports the certified
accuracy next to the worst case over attacks. The true robust accuracy lies between them; the
gap is what neither side could settle. Why it belongs in every evaluation: a certificate is the
one check masking cannot fool, and a sample that is certified *and* broken means a bug in the
bounds or in the attack's re-check, so the evaluation stops rather than report either number.

Models whose layers the bounds cannot cross get no certified figure; the record says which
layer, in one line. Randomized models get none either (a certificate is about one function).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from robustact.certify import UnsupportedModel, certify
from robustact.evaluate.table import ResultsTable

__all__ = ["SandwichViolation", "certify_table"]


class SandwichViolation(RuntimeError):
    """A sample certified robust at ε was broken by an attack at ε: a bug in one of them."""


def _broken_by(table: ResultsTable, eps: float) -> dict[int, str]:
    """Sample id → the first attack (cascade order) that broke it at a budget ≤ ε."""
    finite = np.isfinite(table["eps"]) & (table["eps"] <= eps + 1e-12)
    rows = table.where(finite & table["success"] & table["clean_correct"])
    out: dict[int, str] = {}
    for s, a in zip(rows["sample"].tolist(), rows["attack"].tolist(), strict=True):
        out.setdefault(int(s), str(a))
    return out


#: Broken samples CROWN-IBP also bounds at each ε, as a check on the bounds and the attacks
#: (a certified one among them is a bug); the others cannot be certified by a sound bound.
CHECKED_BROKEN = 32


def certify_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, table: ResultsTable, *,
                  norm: str, method: str = "crown-ibp", batch_size: int = 128,
                  grid: Sequence[float] | None = None, check_at: float | None = None
                  ) -> dict[str, Any]:
    """The record's ``certified`` section: per finite ε > 0 of ``grid`` (default: the table's),
    the certified accuracy under IBP and CROWN-IBP; or why there is none.

    Cost: IBP (a few forward passes) bounds every sample; CROWN-IBP (about ten) only those it
    could still certify, the clean-correct samples no attack broke and IBP left, plus, at
    ``check_at`` (the main ε; None: every ε), the first :data:`CHECKED_BROKEN` broken ones as
    a check. Raises :class:`SandwichViolation` (one line:
    the sample, ε and the attack) when a certified sample was broken. ``x``/``y``: the
    evaluated images in the table's sample order.
    """
    if (table.meta.get("randomness") or {}).get("randomized"):
        return {"available": False, "reason": "the model is randomized: a certificate is about "
                                              "one deterministic function"}
    eps_list = sorted({float(e) for e in (grid if grid is not None else
                                          table.meta.get("eps_grid") or [])
                       if math.isfinite(float(e)) and float(e) > 0})
    ids = table.meta.get("clean", {}).get("sample")
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    t0, rows = time.perf_counter(), []
    for eps in eps_list:
        try:
            checked = CHECKED_BROKEN if check_at is None or math.isclose(eps, check_at) else 0
            row = _at_eps(model, x, y, table, ids, eps, norm, method, batch_size, checked)
        except UnsupportedModel as e:
            return {"available": False, "reason": str(e)}
        rows.append(row)
    return {"available": True, "method": method, "norm": norm, "per_eps": rows,
            "seconds": time.perf_counter() - t0}


def _at_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, table: ResultsTable,
            ids: np.ndarray, eps: float, norm: str, method: str, batch_size: int,
            checked: int) -> dict[str, Any]:
    broken = _broken_by(table, eps)
    ibp = certify(model, x, y, eps=eps, norm=norm, method="ibp", batch_size=batch_size)
    sure_ibp = ibp.certified_ibp.numpy()
    sure = sure_ibp.copy()
    crowned = 0
    if method == "crown-ibp":
        hit = np.array([int(s) in broken for s in ids], dtype=bool)
        correct = np.asarray(table.meta.get("clean", {}).get("clean_correct",
                                                             np.ones(len(ids), dtype=bool)))
        todo = (correct & ~hit & ~sure_ibp) | (hit & (np.cumsum(hit) <= checked))
        idx = torch.from_numpy(np.nonzero(todo)[0])
        if len(idx):
            crown = certify(model, x[idx], y[idx], eps=eps, norm=norm, method=method,
                            batch_size=batch_size)
            sure[idx.numpy()] |= crown.certified.numpy()
        crowned = int(len(idx))
    bad = [(int(s), broken[int(s)]) for s in ids[sure] if int(s) in broken]
    if bad:
        s, attack = bad[0]
        raise SandwichViolation(
            f"sample {s} is certified robust at eps={eps:g} ({method}) but {attack} broke it: "
            f"a bug in the bounds or in the attack's re-check ({len(bad)} such samples); the "
            "evaluation stops rather than report either figure")
    return {"eps": eps, "n": len(sure), "ibp": float(sure_ibp.mean()),
            "crown_ibp": float(sure.mean()) if method == "crown-ibp" else None,
            "certified": int(sure.sum()), "crown_ibp_bounded": crowned}
