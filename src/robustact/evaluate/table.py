"""The per-sample results table: one row per (sample, attack, ε), the heart of evaluation.

Why one table: curves, the per-sample worst case, the masking audit, reports, the leaderboard
and (later) shards merged across processes all read these rows; nothing aggregates before them.
So every consumer agrees on what was measured, an interrupted run resumes cell by cell, and a
shard is just more rows.

Columns (``COLUMNS``; every column has one value per row):

============== ======= ==========================================================================
sample         int64   index of the sample in the evaluated dataset: the key of its randomness
label          int64   true label
attack         str     the attack's key in the protocol (its spec is ``meta["attacks"][key]``)
eps            float64 the budget in [0, 1] pixel units; ``inf`` for minimum-norm attacks
norm           str     ``linf`` or ``l2``
clean_correct  bool    the clean prediction is right (a tie for the top output counts as wrong)
success        bool    the returned point is adversarial, re-verified on the model itself
pred           int64   the model's prediction on the returned point
linf, l2       float32 ‖x_adv − x‖ in each norm (0 where the sample was not attacked)
forward        int64   forward passes spent on this sample
backward       int64   backward passes (input-gradient computations) spent on this sample
loss_first     float32 attack loss at the start point (NaN when the attack has no loss trace)
loss_best      float32 best attack loss reached (NaN without a trace)
stall          float32 AUDIT C10: range over the last 10 steps of the running minimum of the
                       min-max-normalized loss trace (NaN without a trace)
silent         bool    AUDIT C9: some iterate was adversarial but the returned point is not
grad_zero      bool    AUDIT C4: the input gradient at the start was all zero or not finite
skipped        bool    not attacked: already broken by an earlier attack of the cascade, or
                       misclassified clean (then ``success`` is True: not robust)
seconds        float32 wall time of this sample's share of the cell
============== ======= ==========================================================================

``meta`` carries what is per table, not per row: ``attacks`` (key → the attack's ``spec()`` plus
``role``, see ``ROLES``), the protocol name and version, the model's description, the dataset
and split, the seed, versions, device and threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "ROLES", "ResultsTable"]

#: Column name → numpy dtype (``object`` for strings).
COLUMNS: dict[str, Any] = {
    "sample": np.int64, "label": np.int64, "attack": object, "eps": np.float64, "norm": object,
    "clean_correct": np.bool_, "success": np.bool_, "pred": np.int64,
    "linf": np.float32, "l2": np.float32, "forward": np.int64, "backward": np.int64,
    "loss_first": np.float32, "loss_best": np.float32, "stall": np.float32,
    "silent": np.bool_, "grad_zero": np.bool_, "skipped": np.bool_, "seconds": np.float32,
}

#: What an attack is for in a protocol, so the audit can find the rows each check compares.
ROLES = (
    "standard",      # the protocol's main fixed-budget attacks (their AND is the reported figure)
    "single_step",   # FGSM (C15)
    "black_box",     # Square (C16)
    "random_search", # uniform samples in the ε-ball (C17)
    "transfer",      # from the undefended twin or a surrogate (C12, C18)
    "loss_variant",  # margin / DLR / targeted instead of CE (C19)
    "adaptive",      # defense-specific: BPDA, loss on pre-activation logits (C20)
    "convergence",   # the standard attack with more steps and restarts, on survivors (C11)
    "unbounded",     # ε = ∞ or very large (C13)
    "label_only",    # RayS / HopSkipJump on the predicted labels only (C25)
    "min_norm",      # minimum-norm attacks (DeepFool, C&W, TR): norms, ρ
)


@dataclass
class ResultsTable:
    """Columns as numpy arrays of equal length, plus table-level ``meta``.

    Build one with :meth:`from_rows` or :meth:`concat`; select with :meth:`where`. Numpy, not
    torch, because the table is data for analysis and storage, not for autograd.
    """

    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.columns]
        if missing:
            raise ValueError(f"results table lacks columns {missing}")
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"results table columns have different lengths {sorted(lengths)}")
        self.columns = {c: np.asarray(self.columns[c], dtype=COLUMNS[c]) for c in COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["sample"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @classmethod
    def empty(cls, meta: Mapping[str, Any] | None = None) -> ResultsTable:
        return cls({c: np.empty(0, dtype=t) for c, t in COLUMNS.items()}, dict(meta or {}))

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]],
                  meta: Mapping[str, Any] | None = None) -> ResultsTable:
        rows = list(rows)
        return cls({c: np.array([r[c] for r in rows], dtype=t) for c, t in COLUMNS.items()},
                   dict(meta or {}))

    @classmethod
    def concat(cls, tables: Iterable[ResultsTable],
               meta: Mapping[str, Any] | None = None) -> ResultsTable:
        tables = list(tables)
        if not tables:
            return cls.empty(meta)
        cols = {c: np.concatenate([t.columns[c] for t in tables]) for c in COLUMNS}
        return cls(cols, dict(meta if meta is not None else tables[0].meta))

    def where(self, mask: np.ndarray) -> ResultsTable:
        return ResultsTable({c: v[mask] for c, v in self.columns.items()}, self.meta)

    def cell(self, attack: str, eps: float | None = None) -> ResultsTable:
        """The rows of one attack (at one ε, if given; ``inf`` matches minimum-norm rows)."""
        mask = self.columns["attack"] == attack
        if eps is not None:
            e = self.columns["eps"]
            mask &= (np.isinf(e) & math.isinf(eps)) | np.isclose(e, eps, rtol=0, atol=1e-12)
        return self.where(mask)

    def attacks(self, role: str | None = None) -> list[str]:
        """Attack keys present (in first-seen order), optionally only those with ``role``."""
        seen = list(dict.fromkeys(self.columns["attack"].tolist()))
        if role is None:
            return seen
        specs = self.meta.get("attacks", {})
        return [a for a in seen if specs.get(a, {}).get("role") == role]

    def samples(self) -> np.ndarray:
        return np.unique(self.columns["sample"])
