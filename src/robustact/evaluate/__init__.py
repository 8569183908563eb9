"""Evaluation: the per-sample results table, protocols as data, the cascade engine, summaries.

``evaluate(model, x, y, "standard", eps=8/255, out="results/run")`` runs a protocol into a
:class:`ResultsTable` (written cell by cell to ``out``, resumable); ``load_table(out)`` reads it
back; ``summarize(table)`` gives the reported numbers. See ``docs/evaluation.md``.
"""

from robustact.evaluate.protocols import (
    PROTOCOLS,
    adaptive_attacks,
    get_protocol,
    protocol_names,
)
from robustact.evaluate.runner import clean_predictions, default_eps_grid, evaluate
from robustact.evaluate.storage import ResultsFolderMismatch, load_table
from robustact.evaluate.summary import robust_accuracy_curve, summarize, worst_case
from robustact.evaluate.table import COLUMNS, ROLES, ResultsTable

__all__ = [
    "COLUMNS",
    "PROTOCOLS",
    "ROLES",
    "ResultsFolderMismatch",
    "ResultsTable",
    "adaptive_attacks",
    "clean_predictions",
    "default_eps_grid",
    "evaluate",
    "get_protocol",
    "load_table",
    "protocol_names",
    "robust_accuracy_curve",
    "summarize",
    "worst_case",
]
