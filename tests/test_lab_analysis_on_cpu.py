"""The lab's analysis (``entrolab.lab.analysis``) on synthetic runs whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entrolab.lab.analysis import final_values, is_finished, law_fit, mechanism, paired_to_baseline


def _run(entropy, reward, *, evals=(), cov=None, observed=None):
    rows = []
    for i, (h, r) in enumerate(zip(entropy, reward)):
        row = {"kind": "train", "step": i + 1, "entropy": float(h), "reward": float(r)}
        if cov is not None:
            row.update(cov_mean=float(cov[i]), observed_entropy_change=float(observed[i]))
        rows.append(row)
    rows += [{"kind": "eval", "step": s, **v} for s, v in evals]
    return rows


def test_law_fit_recovers_an_exact_law_and_refuses_a_flat_one():
    h = np.linspace(1.0, 0.05, 40)
    # smoothing a trajectory that follows the law exactly keeps it on the law only approximately (exp is convex),
    # so R² is high but not 1; a, b come out close to the truth
    fit = law_fit(_run(h, 0.9 - 0.3 * np.exp(h)))
    assert fit is not None and fit.r2 > 0.99 and fit.meaningful
    assert fit.a == pytest.approx(0.3, rel=0.05) and fit.ceiling == pytest.approx(0.6, abs=0.02)
    flat = law_fit(_run(np.full(40, 0.5) + 1e-4 * np.arange(40) % 2, np.random.default_rng(0).random(40)))
    assert flat is None or not flat.meaningful
    assert law_fit(_run([0.1, 0.2], [0.0, 1.0])) is None


def test_mechanism_correlation_and_slope():
    cov = np.linspace(-0.2, 0.3, 30)
    rows = _run(np.ones(30), np.zeros(30), cov=cov, observed=-0.05 * cov)  # observed = 0.05 * (-cov)
    me = mechanism({0: rows})
    assert me is not None and me.r == pytest.approx(1.0) and me.slope == pytest.approx(0.05)
    assert me.sign_agreement == 1.0
    anti = mechanism({0: _run(np.ones(30), np.zeros(30), cov=cov, observed=0.05 * cov)})
    assert anti is not None and anti.r == pytest.approx(-1.0) and anti.sign_agreement == 0.0
    assert mechanism({0: _run([1.0], [0.0])}) is None


def test_paired_differences_to_the_baseline_over_finished_seeds_only():
    def run(h_end, p1, steps=10):
        return _run(
            np.full(steps, h_end), np.full(steps, 0.5), evals=[(10, {"pass@1": p1, "pass@4": min(1.0, p1 + 0.2)})]
        )

    base = {s: run(0.1 + 0.01 * s, 0.5 + 0.02 * s) for s in range(5)}
    method = {s: run(0.2 + 0.01 * s, 0.5 + 0.02 * s + 0.1) for s in range(5)}
    method[5] = run(0.9, 0.9, steps=4)  # unfinished: stopped at step 4; no partner either
    d = paired_to_baseline({"grpo": base, "m": method}, baseline="grpo", steps=10, k_max=4)["m"]
    assert d["entropy"].n == 5 and d["entropy"].mean == pytest.approx(0.1)
    assert d["entropy"].half_width == pytest.approx(0.0, abs=1e-12) and d["entropy"].p_value < 1e-10
    assert d["pass@1"].mean == pytest.approx(0.1)
    assert d["entropy_ratio"].mean == pytest.approx(np.mean([(0.2 + 0.01 * s) / (0.1 + 0.01 * s) for s in range(5)]))
    assert not is_finished(method[5], 10) and is_finished(method[0], 10)
    assert final_values(method[0], k_max=4)["pass@4"] == pytest.approx(0.8)
    assert math.isnan(final_values(_run([], []), k_max=4)["entropy"])


def test_trailing_mean_worked_example():
    from entrolab.lab.analysis import trailing_mean

    assert trailing_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert trailing_mean(np.array([4.0, 2.0, 0.0]), 5).tolist() == [4.0, 3.0, 2.0]  # fewer points at the start
    assert trailing_mean(np.array([]), 3).size == 0


def test_one_seed_reports_its_difference_without_an_interval_or_a_nan():
    from entrolab.lab.report import analyse, findings, tables

    ev = [(4, {"pass@1": 0.6, "pass@8": 0.9})]
    runs = {"grpo": {0: _run([0.4, 0.3, 0.2, 0.1], [0.2, 0.4, 0.6, 0.8], evals=ev)},
            "clip_cov": {0: _run([0.4, 0.35, 0.3, 0.3], [0.2, 0.3, 0.4, 0.5], evals=ev)}}  # fmt: skip
    data = {"config": {"methods": ["grpo", "clip_cov"], "steps": 4}, "sft": {"eval": {"pass@1": 0.3, "pass@8": 0.8}},
            "runs": runs}  # fmt: skip
    an = analyse(data)
    _header, rows = tables(an)["diffs"]
    text = " ".join(findings(an)) + " ".join(" ".join(r) for r in rows)
    assert "nan" not in text.lower()
    # final entropy = mean of the last 5 steps (all 4 here): 0.3375 - 0.25
    assert rows[0][2].startswith("+0.088") and "1 seed: no interval" in rows[0][2]
    assert "no interval or test with fewer than 2 seeds" in text


def test_change_from_the_warm_start_is_paired_per_seed_and_tested():
    from entrolab.lab.analysis import change_from_start

    def run(start, end):
        return _run(
            [0.3, 0.2], [0.5, 0.6], evals=[(0, {"pass@1": 0.3, "pass@8": start}), (2, {"pass@1": 0.8, "pass@8": end})]
        )

    # pass@8 falls by 0.10, 0.12, 0.08, 0.10 from seed-specific starts: mean -0.10, sd 0.0163, t = -12.2 on 3 df
    by_seed = {0: run(0.99, 0.89), 1: run(0.95, 0.83), 2: run(0.97, 0.89), 3: run(1.0, 0.9)}
    d = change_from_start(by_seed, k_max=8)
    assert d["pass@8"].n == 4 and d["pass@8"].mean == pytest.approx(-0.10)
    assert d["pass@8"].half_width == pytest.approx(3.182446 * 0.0163299 / 2, rel=1e-4)
    assert 0.001 < d["pass@8"].p_value < 0.002  # two-sided p of t = -12.25 on 3 df: 0.00117
    assert d["pass@1"].mean == pytest.approx(0.5) and d["pass@1"].p_value == 0.0  # identical changes: no spread
    no_start = {0: _run([0.3], [0.5], evals=[(2, {"pass@1": 0.8, "pass@8": 0.9})])}
    assert change_from_start(no_start, k_max=8)["pass@8"].n == 0
