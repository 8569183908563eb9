"""95 % confidence intervals on every proportion of an evaluation record, and their text.

Why a separate pass over the finished record (and not inside each number's computation): the
intervals follow from counts the record already holds (n, attacked, broken, accuracies that are
counts / n), so one function adds them all, the same way, to a fresh record, to one that took
an earlier run's audit, and to an older ``report.json`` a leaderboard reads. Existing keys and
values are never changed; each interval sits beside its value as ``<key>_ci: [lo, hi]``.

The interval is the Wilson score interval (:func:`robustact.core.stats.binomial_interval`,
which says why Wilson). Accuracies are fractions of the ``n`` evaluated points; an attack's
success rate is a fraction of the points it attacked; a check's fraction of the samples it
counted over.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from robustact.core.stats import binomial_interval

__all__ = ["LEVEL", "add_intervals", "check_intervals", "ci_text", "interval_of", "pct_ci"]

#: Confidence level of every interval in the reports.
LEVEL = 0.95

#: Counts a check reports over samples: (count key, total key, label). Why explicit pairs: a
#: check's numbers are free-form, and only these are a count of samples out of a total.
_CHECK_COUNTS = (
    ("extra_broken", "standard_robust", "broken beyond the standard attacks"),
    ("extra_broken", "reported_robust", "broken among those reported robust"),
    ("broken", "clean_correct", "broken among the clean-correct"),
    ("attack_success", "readout_fits", "attack success on the binarized task"),
    ("standard_robust", "n", "robust under the standard attacks"),
)
_C4 = re.compile(r"zero_or_nonfinite\[(?P<layer>.*) at (?P<where>.*)\]")


def interval_of(fraction: float | None, n: int | None, level: float = LEVEL
                ) -> list[float] | None:
    """The interval of a proportion given as ``fraction`` of ``n`` (the count is
    ``round(fraction * n)``: every fraction in a record is a count divided by its total)."""
    if fraction is None or n is None:
        return None
    k = min(max(round(float(fraction) * int(n)), 0), int(n))
    return list(binomial_interval(k, int(n), level))


def _count_interval(k: int, n: int) -> dict[str, Any]:
    return {"k": int(k), "n": int(n), "fraction": k / n if n else None,
            "ci": list(binomial_interval(int(k), int(n), LEVEL))}


def check_intervals(numbers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Label → ``{k, n, fraction, ci}`` for each count over samples in a check's numbers.

    Reads the pairs of ``_CHECK_COUNTS``, C4's ``zero_or_nonfinite[... at W]`` fractions of
    ``probed[W]`` points, and a check's own ``counts: {label: [k, n]}`` when it gives one.
    """
    out: dict[str, dict[str, Any]] = {}
    ints = {k: v for k, v in numbers.items() if isinstance(v, int) and not isinstance(v, bool)}
    for count, total, label in _CHECK_COUNTS:
        if count in ints and total in ints and 0 <= ints[count] <= ints[total]:
            out.setdefault(label, _count_interval(ints[count], ints[total]))
    for key, v in numbers.items():
        m = _C4.fullmatch(str(key))
        probed = numbers.get(f"probed[{m['where']}]") if m else None
        if m and isinstance(v, float) and isinstance(probed, int) and probed > 0:
            out[f"zero or non-finite gradient ({m['layer']} at {m['where']})"] = \
                _count_interval(min(round(v * probed), probed), probed)
    for label, pair in (numbers.get("counts") or {}).items():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and 0 <= pair[0] <= pair[1]:
            out[str(label)] = _count_interval(int(pair[0]), int(pair[1]))
    return out


def _attack_cell(a: Mapping[str, Any], n: int) -> dict[str, Any]:
    return {**a,
            "success_rate_ci": list(binomial_interval(a["broken"], a["attacked"], LEVEL)),
            "robust_accuracy_alone_ci": interval_of(a.get("robust_accuracy_alone"), n),
            "robust_accuracy_after_ci": interval_of(a.get("robust_accuracy_after"), n)}


def add_intervals(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with a ``..._ci`` ``[lo, hi]`` beside every accuracy and success
    rate, ``ci`` lists beside the plotted curves and ``intervals`` on each audit check.
    Idempotent (recomputed from the same counts), so any record can go through it again."""
    rec = copy.deepcopy(dict(record))
    n = rec["summary"]["n"]
    if rec["summary"].get("certified_accuracy") is not None:
        rec["summary"]["certified_accuracy_ci"] = interval_of(
            rec["summary"]["certified_accuracy"], n)
    s = rec["summary"]
    s["clean_accuracy_ci"] = interval_of(s.get("clean_accuracy"), n)
    s["robust_accuracy_ci"] = interval_of(s.get("robust_accuracy"), n)
    for cell in rec.get("per_eps", []):
        cell["worst_case_ci"] = interval_of(cell.get("worst_case"), n)
        cell["attacks"] = [_attack_cell(a, n) for a in cell["attacks"]]
    curves = rec.get("curves") or {}
    for key in ("worst_case", "certified"):
        if key in curves:
            wc = curves[key]
            wc["ci"] = [interval_of(v, n) for v in wc["robust_accuracy"]]
    for c in (curves.get("per_attack") or {}).values():
        c["ci"] = [interval_of(v, n) for v in c["robust_accuracy"]]
    for m in (rec.get("min_norm") or {}).values():
        m["success_rate_ci"] = list(binomial_interval(m["broken"], m["attacked"], LEVEL))
    audit = rec.get("audit")
    if isinstance(audit, dict):
        for c in audit.get("checks", []):
            c["intervals"] = check_intervals(c.get("numbers") or {})
    return rec


def ci_text(ci: list[float] | tuple[float, float] | None) -> str:
    """``[47.3, 63.0]``: an interval of a proportion in per cent (empty when there is none)."""
    if ci is None or ci[0] is None or ci[1] is None:
        return ""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def pct_ci(v: float | None, ci: list[float] | tuple[float, float] | None = None) -> str:
    """``55.3 % [47.3, 63.0]``: a proportion in per cent with its interval in points."""
    if v is None:
        return "—"
    return " ".join(filter(None, (f"{100 * v:.1f} %", ci_text(ci))))
