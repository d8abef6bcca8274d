"""Small statistics shared by the lab's report and the gallery: the mean with its 95% Student-t interval, the paired
t-test over seeds, Pearson's r.  numpy only (the core stays light): Student's t distribution through the regularized
incomplete beta function."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PairedDifference",
    "format_interval",
    "incomplete_beta",
    "mean_interval",
    "paired_difference",
    "pearson",
    "t_quantile_95",
    "t_two_sided_p",
]

# two-sided 95% Student t quantiles for n - 1 degrees of freedom (n seeds)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of the mean (0 half-width for one value; NaNs for none)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0
    t = _T95.get(arr.size - 1) or t_quantile_95(arr.size - 1)
    return float(arr.mean()), float(t * arr.std(ddof=1) / math.sqrt(arr.size))


def format_interval(mean: float, half: float, digits: int = 3) -> str:
    """``"mean ± half"`` (just the mean for a zero half-width, ``-`` for NaN)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if half > 0 else f"{mean:.{digits}f}"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz; Press et al., Numerical
    Recipes, 6.4), converging for ``x < (a + 1) / (a + b + 2)``."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a > 0, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom:
    ``P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)``."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile_95(df: float) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (bisection on the p-value)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > 0.05:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over pairs, its 95% half-width (Student t) and the paired t-test's two-sided p-value."""

    mean: float
    half_width: float
    p_value: float
    n: int


def paired_difference(a: list[float], b: list[float]) -> PairedDifference:
    """Paired comparison of ``a`` against ``b`` (``a[i]`` and ``b[i]`` share everything but the treatment, e.g. a
    seed's warm start and prompt order): the mean difference, its 95% interval and the paired t-test.

    With fewer than two pairs the interval and p-value are NaN; with identical differences (zero spread) the
    half-width is 0 and the p-value is 1 when the mean difference is 0, else 0.

    >>> d = paired_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    >>> d.mean, round(d.half_width, 3), round(d.p_value, 4)
    (2.0, 2.484, 0.0742)
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up, got {len(a)} and {len(b)} values")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(diff.size)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = float(diff.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1)
    sd = float(diff.std(ddof=1))
    if sd == 0.0:
        return PairedDifference(mean, 0.0, 1.0 if mean == 0.0 else 0.0, n)
    se = sd / math.sqrt(n)
    return PairedDifference(mean, t_quantile_95(n - 1) * se, t_two_sided_p(mean / se, n - 1), n)


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation of paired samples (NaN when either has no spread or there are fewer than 3 pairs)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.size != ya.size:
        raise ValueError(f"x and y must pair up, got {xa.size} and {ya.size} values")
    if xa.size < 3 or xa.std() == 0 or ya.std() == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])
