"""Small statistics shared by the lab's report and the gallery: the mean with its 95% Student-t interval."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["format_interval", "mean_interval"]

# two-sided 95% Student t quantiles for n - 1 degrees of freedom (n seeds)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of the mean (0 half-width for one value; NaNs for none)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0
    t = _T95.get(arr.size - 1, 1.96)
    return float(arr.mean()), float(t * arr.std(ddof=1) / math.sqrt(arr.size))


def format_interval(mean: float, half: float, digits: int = 3) -> str:
    """``"mean ± half"`` (just the mean for a zero half-width, ``-`` for NaN)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if half > 0 else f"{mean:.{digits}f}"
