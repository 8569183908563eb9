"""Confidence intervals for the proportions every report shows (accuracies, success rates).

Why an interval at all: a robust accuracy of 55 % on n = 150 points says little without its
uncertainty (roughly ±8 points); two models 3 points apart on 200 points are not ranked by it.

Why the Wilson score interval (and not Clopper–Pearson or Wald): it is closed-form (no beta
quantile, so no scipy), it stays inside [0, 1] and is never empty or zero-width at k = 0 or
k = n (where Wald collapses to a point), and its coverage is close to the nominal level on
average, while Clopper–Pearson's is guaranteed at least nominal and therefore wider than needed
(Brown, Cai & DasGupta 2001, "Interval estimation for a binomial proportion", recommend Wilson
for exactly this use). One implementation, used by every report, summary and leaderboard.
"""

from __future__ import annotations

import functools
import math

__all__ = ["binomial_interval", "normal_quantile"]


@functools.lru_cache(maxsize=16)
def normal_quantile(p: float) -> float:
    """The standard normal quantile Φ⁻¹(p), by bisection on ``math.erfc`` (to ~1e-15).

    Why bisection: it needs nothing beyond the standard library, and it runs once per level
    (cached), so speed does not matter.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval of a proportion ``k / n`` at confidence ``level``.

    ``n = 0`` (nothing was counted, e.g. an attack with no point left to attack) gives
    ``(0.0, 1.0)``: no information, so every proportion is possible. ``k`` outside ``[0, n]``
    or a ``level`` outside (0, 1) is a caller's bug and raises ``ValueError``.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"a binomial interval needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must be in (0, 1), got {level}")
    if n == 0:
        return 0.0, 1.0
    z = normal_quantile(0.5 + level / 2.0)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    # The closed form is exact at the ends (k = 0 → lo = 0, k = n → hi = 1); clamp only the
    # rounding there.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi
