"""The report's statistics (``entrolab._stats``): Student's t from the incomplete beta function, the paired t-test
over seeds and Pearson's r, checked against closed forms worked by hand and, where installed, scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entrolab._stats import (
    incomplete_beta,
    mean_interval,
    paired_difference,
    pearson,
    t_quantile_95,
    t_two_sided_p,
)


def test_t_p_values_match_closed_forms():
    # df = 1 is Cauchy: P(|T| >= t) = 1 - 2 atan(t) / pi
    for t in (0.3, 1.0, 7.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-13)
    # df = 2: P(|T| >= t) = 1 - t / sqrt(t^2 + 2)
    for t in (0.5, 2.0, 30.0):
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-11)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert t_two_sided_p(-2.0, 5) == t_two_sided_p(2.0, 5)
    assert t_two_sided_p(math.inf, 3) == 0.0


def test_t_quantiles_match_the_table_and_scipy():
    # the classic table: 12.706 (df 1), 4.303 (2), 2.571 (5), 2.228 (10), 1.960 (infinite df)
    for df, q in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (10_000, 1.9602)):
        assert t_quantile_95(df) == pytest.approx(q, abs=2e-4)
    stats = pytest.importorskip("scipy.stats")
    for df in (3, 4, 7, 11, 29, 120):
        assert t_quantile_95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)
        for t in (0.2, 1.7, 3.1, 12.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-10, abs=1e-300)


def test_incomplete_beta_edges_and_symmetry():
    assert incomplete_beta(2.0, 3.0, 0.0) == 0.0 and incomplete_beta(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a)
    assert incomplete_beta(1.0, 1.0, 0.37) == pytest.approx(0.37, abs=1e-14)
    assert incomplete_beta(2.5, 0.5, 0.8) == pytest.approx(1 - incomplete_beta(0.5, 2.5, 0.2), abs=1e-13)
    with pytest.raises(ValueError, match="x="):
        incomplete_beta(1.0, 1.0, 1.5)


def test_paired_difference_worked_example():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) = 3.4641 on 2 df
    d = paired_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    t = 2 * math.sqrt(3)
    assert d.mean == 2.0 and d.n == 3
    assert d.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert d.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-11)  # the df = 2 closed form: 0.0742
    # pairing matters: the same values unpaired would differ by seed noise; paired, a constant shift is certain
    shifted = paired_difference([0.1, 0.9, 0.5, 0.3, 0.7], [0.0, 0.8, 0.4, 0.2, 0.6])
    assert shifted.mean == pytest.approx(0.1) and shifted.p_value < 1e-6
    assert paired_difference([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert math.isnan(paired_difference([1.0], [0.0]).p_value)
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])


def test_paired_difference_p_value_is_calibrated_under_the_null():
    """Under no difference, p < 0.05 happens about 5% of the time (a test that could not fail would not be)."""
    rng = np.random.default_rng(0)
    hits = sum(
        paired_difference(list(rng.normal(size=5)), list(rng.normal(size=5))).p_value < 0.05 for _ in range(4000)
    )
    assert 0.035 < hits / 4000 < 0.065


def test_mean_interval_beyond_the_table_and_pearson():
    m, h = mean_interval([float(i) for i in range(20)])
    assert m == 9.5 and h == pytest.approx(2.0930 * np.std(range(20), ddof=1) / math.sqrt(20), abs=1e-3)
    assert pearson([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
