"""The 95 % Wilson score interval every report shows (robustact issue 20, item 7).

Known values are Newcombe's (1998, "Two-sided confidence intervals for the single proportion",
Table I, method 3: the Wilson score interval without continuity correction); the edge cases are
the ones a report meets (nothing attacked: n = 0; nothing or everything broken: k = 0, k = n).
"""

from __future__ import annotations

import math

import pytest

from robustact.core.stats import binomial_interval, normal_quantile
from robustact.report.intervals import add_intervals, check_intervals, interval_of, pct_ci


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe 1998, Table I
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (5, 10, 0.2366, 0.7634),  # the textbook symmetric case
])
def test_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = binomial_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_normal_quantile() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    assert normal_quantile(0.995) == pytest.approx(2.5758293035489, abs=1e-10)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def test_edges_and_errors() -> None:
    assert binomial_interval(0, 0) == (0.0, 1.0)  # nothing counted: anything is possible
    lo, hi = binomial_interval(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.0370, abs=1e-4)  # never the point [0, 0]
    lo, hi = binomial_interval(100, 100)
    assert hi == 1.0 and lo == pytest.approx(0.9630, abs=1e-4)
    for k, n in ((-1, 5), (6, 5), (0, -1)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            binomial_interval(k, n)
    with pytest.raises(ValueError, match="level"):
        binomial_interval(1, 2, level=1.0)


def test_symmetric_monotone_inside_and_narrowing() -> None:
    for n in (1, 7, 50, 1000):
        prev = (-1.0, -1.0)
        for k in range(n + 1):
            lo, hi = binomial_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            assert lo > prev[0] and hi >= prev[1]  # both ends rise with k
            prev = (lo, hi)
            mlo, mhi = binomial_interval(n - k, n)
            assert mlo == pytest.approx(1 - hi, abs=1e-12) and mhi == pytest.approx(1 - lo,
                                                                                   abs=1e-12)
    widths = [binomial_interval(n // 2, n) for n in (10, 100, 1000)]
    assert widths[0][1] - widths[0][0] > widths[1][1] - widths[1][0] > widths[2][1] - widths[2][0]
    # a higher level is wider
    assert binomial_interval(30, 100, 0.99)[0] < binomial_interval(30, 100, 0.9)[0]


def test_interval_of_and_text() -> None:
    assert interval_of(None, 10) is None and interval_of(0.5, None) is None
    assert interval_of(0.3, 10) == list(binomial_interval(3, 10))
    assert interval_of(83 / 150, 150) == list(binomial_interval(83, 150))
    assert pct_ci(0.553, [0.473, 0.63]) == "55.3 % [47.3, 63.0]"
    assert pct_ci(0.5) == "50.0 %" and pct_ci(None, [0.1, 0.2]) == "—"


def test_check_intervals_read_counts_over_samples() -> None:
    got = check_intervals({"n": 100, "standard_robust": 40, "extra_broken": 3, "eps": 0.1,
                           "probed[clean]": 50, "zero_or_nonfinite[ce at clean]": 0.1,
                           "counts": {"tied": [2, 100]}, "flag": True})
    gap = got["broken beyond the standard attacks"]
    assert (gap["k"], gap["n"]) == (3, 40) and gap["ci"] == list(binomial_interval(3, 40))
    assert got["zero or non-finite gradient (ce at clean)"]["k"] == 5
    assert got["tied"]["ci"] == list(binomial_interval(2, 100))
    assert check_intervals({"passes": 3, "max_rel_output_diff": 0.0}) == {}


def test_add_intervals_is_idempotent_and_keeps_values() -> None:
    rec = {"summary": {"n": 10, "clean_accuracy": 0.9, "robust_accuracy": 0.4},
           "per_eps": [{"eps": 0.1, "worst_case": 0.4, "attacks": [
               {"attack": "pgd", "attacked": 9, "broken": 5, "success_rate": 5 / 9,
                "robust_accuracy_alone": 0.4, "robust_accuracy_after": 0.4}]}],
           "curves": {"worst_case": {"eps": [0.1], "robust_accuracy": [0.4]},
                      "per_attack": {"pgd": {"eps": [0.1], "robust_accuracy": [0.4]}}},
           "min_norm": {}, "audit": None}
    once = add_intervals(rec)
    assert "clean_accuracy_ci" not in rec["summary"]  # the input is left alone
    assert once["summary"]["clean_accuracy"] == 0.9
    assert once["summary"]["clean_accuracy_ci"] == list(binomial_interval(9, 10))
    a = once["per_eps"][0]["attacks"][0]
    assert a["success_rate_ci"] == list(binomial_interval(5, 9))
    assert once["curves"]["worst_case"]["ci"] == [list(binomial_interval(4, 10))]
    assert add_intervals(once) == once
    assert all(math.isfinite(v) for v in once["summary"]["robust_accuracy_ci"])
