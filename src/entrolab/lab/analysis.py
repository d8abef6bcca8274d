"""What a lab run shows, in numbers: per-run summaries, the entropy law per run, the covariance mechanism checked
against the observed entropy change, and every method's paired difference to the baseline over seeds.

Pure functions of the metric rows (:func:`entrolab.lab.report.load_run`), so the report, the README's table and the
tests read the same numbers.

- **Final values** are per seed: ``entropy`` is the mean token entropy over the last ``TAIL`` training steps (one
  step's batch is noisy), pass@k the last held-out evaluation.
- **The law** ``R = -a exp(H) + b`` (Cui et al., arXiv 2505.22617, eq. 1) is fitted per run over its training
  trajectory, each series smoothed by a trailing ``TAIL``-step mean first (the paper fits checkpoints, not single
  batches); R² is of the smoothed series.  The fit is called *meaningful* only with R² >= 0.5 and an entropy range
  of at least 0.05 nats; otherwise its ceiling is not reported.
- **The mechanism**: for softmax policy gradient, the first-order entropy change of a step is
  ``-eta Cov(log pi, A)`` (ibid., section 3).  The lab updates a network with Adam and PPO clipping, so ``eta`` is
  unknown and the relation need not hold; the report gives Pearson r between the predicted change ``-Cov`` and the
  observed one (the policy's entropy on the step's batch after minus before its updates) and the fitted slope (an
  effective step size), whatever they are.
- **Differences** to the baseline are paired by seed (a seed shares the warm start, prompt order and sampling
  stream across methods): mean difference, 95% interval and the paired t-test's p-value
  (:func:`entrolab._stats.paired_difference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrolab._stats import PairedDifference, mean_interval, paired_difference, pearson
from entrolab.dynamics import fit_entropy_law

__all__ = [
    "LAW_MIN_ENTROPY_RANGE",
    "LAW_MIN_R2",
    "TAIL",
    "LawFit",
    "Mechanism",
    "change_from_start",
    "final_values",
    "is_finished",
    "law_fit",
    "mechanism",
    "paired_to_baseline",
    "trailing_mean",
]

TAIL = 5
"""Training steps averaged for a run's final entropy, and the width of the law fit's smoothing."""
LAW_MIN_R2 = 0.5
"""Below this R² the law's fitted ceiling is not reported."""
LAW_MIN_ENTROPY_RANGE = 0.05
"""Below this entropy range (nats) over a run the law's fit is not reported."""

Rows = list[dict[str, Any]]


def _train(rows: Rows) -> Rows:
    return [r for r in rows if r.get("kind") == "train"]


def _evals(rows: Rows) -> Rows:
    return [r for r in rows if r.get("kind") == "eval"]


def is_finished(rows: Rows, steps: int) -> bool:
    """Whether a run's rows reach its configured last step (an interrupted run's do not)."""
    train, evals = _train(rows), _evals(rows)
    return bool(train and evals) and train[-1].get("step") == steps and evals[-1].get("step") == steps


def final_values(rows: Rows, *, k_max: int) -> dict[str, float]:
    """A finished run's final ``entropy`` (mean over the last :data:`TAIL` training steps), ``reward`` (likewise),
    ``pass@1`` and ``pass@{k_max}`` (the last held-out evaluation)."""
    train, evals = _train(rows), _evals(rows)
    tail = train[-TAIL:]
    out = {
        "entropy": float(np.mean([r["entropy"] for r in tail])) if tail else math.nan,
        "reward": float(np.mean([r["reward"] for r in tail])) if tail else math.nan,
    }
    last = evals[-1] if evals else {}
    for key in ("pass@1", f"pass@{k_max}"):
        out[key] = float(last.get(key, math.nan))
    return out


def trailing_mean(y: np.ndarray, width: int) -> np.ndarray:
    """Trailing moving average over ``width`` points (fewer at the start: the mean of what there is so far)."""
    y = np.asarray(y, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(y)])
    end = np.arange(1, y.size + 1)
    start = np.maximum(0, end - max(1, width))
    return (c[end] - c[start]) / (end - start)


@dataclass(frozen=True)
class LawFit:
    """``R = -a exp(H) + b`` over one run's smoothed training trajectory."""

    a: float
    b: float
    r2: float
    ceiling: float
    """``b - a``: the reward the law predicts at zero entropy."""
    reached: float
    """The reward the run actually reached (mean of its last :data:`TAIL` steps)."""
    entropy_range: float
    meaningful: bool
    """R² >= :data:`LAW_MIN_R2` and entropy range >= :data:`LAW_MIN_ENTROPY_RANGE`."""


def law_fit(rows: Rows) -> LawFit | None:
    """The law fitted to one run (``None`` with fewer than 3 training steps or no entropy spread)."""
    train = _train(rows)
    if len(train) < 3:
        return None
    h = trailing_mean(np.array([r["entropy"] for r in train], dtype=np.float64), TAIL)
    rew = trailing_mean(np.array([r["reward"] for r in train], dtype=np.float64), TAIL)
    try:
        fit = fit_entropy_law(h, rew)
    except ValueError:
        return None
    resid = rew - np.asarray(fit.predict(h))
    total = float(((rew - rew.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else math.nan
    spread = float(h.max() - h.min())
    ok = math.isfinite(r2) and r2 >= LAW_MIN_R2 and spread >= LAW_MIN_ENTROPY_RANGE
    reached = float(np.mean([r["reward"] for r in train[-TAIL:]]))
    return LawFit(fit.a, fit.b, r2, fit.ceiling, reached, spread, ok)


@dataclass(frozen=True)
class Mechanism:
    """Predicted (``-Cov(log pi, A)``) against observed entropy change per step, pooled over a method's seeds."""

    predicted: list[float]
    observed: list[float]
    r: float
    """Pearson r (NaN with fewer than 3 steps or no spread)."""
    slope: float
    """Least-squares slope of observed on predicted (the effective step size ``eta``)."""
    sign_agreement: float
    """Fraction of steps where the predicted and the observed change have the same sign."""


def mechanism(rows_by_seed: dict[int, Rows]) -> Mechanism | None:
    """The covariance prediction checked against the observed change (``None`` when no step measured both)."""
    pred, obs = [], []
    for rows in rows_by_seed.values():
        for r in _train(rows):
            if "observed_entropy_change" in r and "cov_mean" in r:
                pred.append(-float(r["cov_mean"]))
                obs.append(float(r["observed_entropy_change"]))
    if not pred:
        return None
    x, y = np.array(pred), np.array(obs)
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx) if sxx > 0 else math.nan
    agree = float(np.mean(np.sign(x) == np.sign(y)))
    return Mechanism(pred, obs, pearson(pred, obs), slope, agree)


def paired_to_baseline(
    runs: dict[str, dict[int, Rows]], *, baseline: str, steps: int, k_max: int
) -> dict[str, dict[str, PairedDifference]]:
    """For every method but ``baseline``: ``{metric: paired difference (method - baseline)}`` over the seeds where
    both runs finished, for ``entropy``, ``entropy_ratio`` (method / baseline final entropy, per seed),
    ``pass@1`` and ``pass@{k_max}``."""
    if baseline not in runs:
        return {}
    base = {s: final_values(rows, k_max=k_max) for s, rows in runs[baseline].items() if is_finished(rows, steps)}
    out: dict[str, dict[str, PairedDifference]] = {}
    for method, by_seed in runs.items():
        if method == baseline:
            continue
        mine = {s: final_values(rows, k_max=k_max) for s, rows in by_seed.items() if is_finished(rows, steps)}
        seeds = sorted(set(mine) & set(base))
        diffs = {
            key: paired_difference([mine[s][key] for s in seeds], [base[s][key] for s in seeds])
            for key in ("entropy", "pass@1", f"pass@{k_max}")
        }
        ratios = [mine[s]["entropy"] / base[s]["entropy"] for s in seeds if base[s]["entropy"] > 0]
        mean, half = mean_interval(ratios)
        diffs["entropy_ratio"] = PairedDifference(mean, half, math.nan, len(ratios))
        out[method] = diffs
    return out


def change_from_start(rows_by_seed: dict[int, Rows], *, k_max: int) -> dict[str, PairedDifference]:
    """How far a method's held-out ``pass@1`` and ``pass@{k_max}`` moved from where its runs started: per seed, the
    last evaluation minus the run's own step-0 evaluation (the warm start, on that seed's sampling stream), then the
    mean, its 95% interval and the paired t-test over seeds.  A negative ``pass@{k_max}`` change is RL narrowing what
    the policy reaches (Yue et al., arXiv 2504.13837).  Runs without a step-0 evaluation are left out."""
    firsts, lasts = [], []
    for rows in rows_by_seed.values():
        evals = _evals(rows)
        if len(evals) >= 2 and evals[0].get("step") == 0:
            firsts.append(evals[0])
            lasts.append(evals[-1])
    keys = ("pass@1", f"pass@{k_max}")
    return {
        k: paired_difference([float(r.get(k, math.nan)) for r in lasts], [float(r.get(k, math.nan)) for r in firsts])
        for k in keys
    }
