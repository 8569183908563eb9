"""Per-sample bookkeeping of a results table, shared by the audit's checks.

Why a module of its own: the table-level checks (:mod:`robustact.evaluate.audit`) and the
model-level checks that spend their draws only on what the evaluation reports robust
(:mod:`robustact.evaluate.attack_checks`) ask the same questions of a table: which samples,
which of them clean-correct, which broken or attacked by a set of attacks at an ε.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from robustact.evaluate.summary import worst_case
from robustact.evaluate.table import ResultsTable

__all__ = ["Samples", "main_eps", "per_row", "robust_mask", "rows_at", "standard_robust"]


def main_eps(table: ResultsTable, eps: float | None) -> float:
    """The budget the checks compare at: ``eps``, or the standard attacks' only finite ε."""
    if eps is not None:
        return float(eps)
    std = table.attacks("standard")
    mask = np.isin(table["attack"], std) & np.isfinite(table["eps"])
    grid = np.unique(table["eps"][mask])
    if len(grid) == 1:
        return float(grid[0])
    if len(grid) == 0:
        raise ValueError("the results table has no fixed-budget standard attack; pass eps")
    raise ValueError(f"the results table has several ε for its standard attacks "
                     f"({', '.join(f'{e:g}' for e in grid)}); pass eps to choose one")


def rows_at(table: ResultsTable, keys: Sequence[str], eps: float | None) -> ResultsTable:
    """The rows of the attacks ``keys`` at ``eps`` (all their rows when None; ∞ matches ∞)."""
    mask = np.isin(table["attack"], list(keys))
    if eps is not None:
        e = table["eps"]
        mask &= (np.isinf(e) & math.isinf(eps)) | np.isclose(e, eps, rtol=0, atol=1e-12)
    return table.where(mask)


@dataclass
class Samples:
    """The evaluated points of a table: sorted sample ids and their clean correctness."""

    ids: np.ndarray
    clean_correct: np.ndarray

    @classmethod
    def of(cls, table: ResultsTable) -> Samples:
        ids, first = np.unique(table["sample"], return_index=True)
        return cls(ids, table["clean_correct"][first])

    def broken(self, rows: ResultsTable) -> tuple[np.ndarray, np.ndarray]:
        """Per sample of ``ids``: broken by any row (success), and attacked (a non-skipped row)."""
        pos = np.searchsorted(self.ids, rows["sample"])
        broken = np.zeros(len(self.ids), dtype=bool)
        attacked = np.zeros(len(self.ids), dtype=bool)
        np.logical_or.at(broken, pos, rows["success"])
        np.logical_or.at(attacked, pos, ~rows["skipped"])
        return broken, attacked

    def present(self, rows: ResultsTable) -> np.ndarray:
        out = np.zeros(len(self.ids), dtype=bool)
        out[np.searchsorted(self.ids, rows["sample"])] = True
        return out


def standard_robust(table: ResultsTable, s: Samples, eps: float) -> np.ndarray | None:
    """Clean-correct samples no standard attack broke at ε (None: no standard rows at ε)."""
    rows = rows_at(table, table.attacks("standard"), eps)
    if len(rows) == 0:
        return None
    broken, _ = s.broken(rows)
    return s.clean_correct & ~broken & s.present(rows)


def per_row(ids: np.ndarray, flags: np.ndarray, samples: torch.Tensor) -> torch.Tensor:
    """``flags`` (one per sorted sample id in ``ids``) looked up for each of ``samples``; False
    for a sample the table does not hold."""
    want = samples.cpu().numpy()
    pos = np.searchsorted(ids, want).clip(0, max(0, len(ids) - 1))
    found = (len(ids) > 0) & (ids[pos] == want)
    return torch.from_numpy(found & flags[pos])


def robust_mask(table: ResultsTable, eps: float, samples: torch.Tensor) -> torch.Tensor | None:
    """Per row of ``samples``: does the evaluation report the sample robust at ``eps`` (every
    attack of the table failed on it, :func:`~.summary.worst_case`)? Why the worst case and not
    the standard attacks alone: random search (C17) then spends its draws only on what the
    reported figure still counts, e.g. nothing on a masked model the adaptive attacks took to 0 %
    (measured: a 90 s audit for an 18.5 s evaluation of sigmoid T = 100 on 500 MNIST images)."""
    s = Samples.of(table)
    if standard_robust(table, s, eps) is None:
        return None
    return per_row(*worst_case(table, eps), samples)
