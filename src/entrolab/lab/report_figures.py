"""The lab report's figures, one function each; every function takes the finished runs and returns a matplotlib
figure (the caller saves it).  Bands and error bars are 95% intervals over seeds (Student t)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrolab._stats import mean_interval
from entrolab.lab.analysis import TAIL, LawFit, Mechanism, trailing_mean

__all__ = ["fig_heldout", "fig_law", "fig_mechanism", "fig_pass_at_k", "fig_training"]

Runs = dict[str, dict[int, list[dict[str, Any]]]]


def series(rows_by_seed: dict[int, list[dict]], kind: str, key: str, *, smooth: int = 1) -> tuple[Any, Any, Any]:
    """Steps, mean and 95% half-width of ``key`` across seeds (steps present in every seed); each seed's curve is
    smoothed first by :func:`~entrolab.lab.analysis.trailing_mean` over ``smooth`` points."""
    per_seed = [
        {r["step"]: r[key] for r in rows if r.get("kind") == kind and key in r} for rows in rows_by_seed.values()
    ]
    if not per_seed:
        return np.array([]), np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    curves = [trailing_mean(np.array([d[s] for s in steps], dtype=np.float64), smooth) for d in per_seed]
    stats = [mean_interval([c[i] for c in curves]) for i in range(len(steps))]
    return np.array(steps), np.array([m for m, _ in stats]), np.array([h for _, h in stats])


def _band(ax: Any, x: Any, y: Any, h: Any, color: Any, label: str, top: float | None = None) -> None:
    ax.plot(x, y, color=color, label=label)
    hi = y + h if top is None else np.minimum(y + h, top)
    ax.fill_between(x, np.maximum(y - h, 0.0), hi, color=color, alpha=0.12, linewidth=0)


def fig_training(plt: Any, runs: Runs, methods: list[str], colors: dict[str, Any], smooth: int) -> Any:
    """Training reward and mean token entropy vs step, per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "reward", "training reward"), (axes[1], "entropy", "mean token entropy (nats)")):
        for m in methods:
            x, y, h = series(runs[m], "train", key, smooth=smooth)
            if x.size:
                _band(ax, x, y, h, colors[m], m, 1.0 if key == "reward" else None)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"reward on the training batch ({smooth}-step trailing mean)", fontsize=9)
    axes[1].set_title("entropy of the policy on its own samples", fontsize=9)
    return fig


def fig_heldout(plt: Any, runs: Runs, methods: list[str], colors: dict[str, Any], k_max: int, baseline: str) -> Any:
    """Held-out pass@1 (solid) and pass@k_max (dashed) vs step: one panel per method, the baseline in grey."""
    n = len(methods)
    cols = min(3, n)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), squeeze=False, sharey=True)
    for i, m in enumerate(methods):
        ax = axes[i // cols][i % cols]
        shown = [(baseline, "0.6")] if m != baseline and baseline in runs else []
        for name, color in [*shown, (m, colors[m])]:
            for key, style in (("pass@1", "-"), (f"pass@{k_max}", "--")):
                x, y, h = series(runs[name], "eval", key)
                if x.size:
                    ax.plot(x, y, style, color=color, label=f"{name} {key}")
                    ax.fill_between(x, np.maximum(y - h, 0), np.minimum(y + h, 1), color=color, alpha=0.1, lw=0)
        ax.set_title(m, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("RL step")
        ax.legend(fontsize=6)
    for j in range(n, rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].set_ylabel("held-out pass@k")
    return fig


def fig_law(plt: Any, runs: Runs, methods: list[str], colors: dict[str, Any], fits: dict[str, list[LawFit]]) -> Any:
    """Smoothed (entropy, reward) of every run and the fit of the run with the median R², per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        for rows in runs[m].values():
            tr = [r for r in rows if r.get("kind") == "train"]
            h = trailing_mean(np.array([r["entropy"] for r in tr]), TAIL)
            rew = trailing_mean(np.array([r["reward"] for r in tr]), TAIL)
            ax.scatter(h, rew, s=3, color=colors[m], alpha=0.3)
        good = sorted(fits.get(m, []), key=lambda f: f.r2)
        if good:
            f = good[len(good) // 2]
            grid = np.linspace(0.0, max(f.entropy_range * 1.5, 0.1), 50)
            ax.plot(grid, f.b - f.a * np.exp(grid), color=colors[m], label=f"{m}: median R² {f.r2:.2f}")
    ax.set_xlabel("mean token entropy (nats)")
    ax.set_ylabel("training reward")
    ax.set_title(f"R = -a exp(H) + b, fitted per run ({TAIL}-step trailing means)", fontsize=9)
    ax.grid(alpha=0.3)
    if any(fits.get(m) for m in methods):
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "too few distinct points for a fit", transform=ax.transAxes, ha="center", fontsize=9)
    return fig


def fig_mechanism(plt: Any, methods: list[str], colors: dict[str, Any], mech: dict[str, Mechanism]) -> Any:
    """Per step: the covariance prediction ``-Cov(log pi, A)`` against the observed entropy change on the same
    batch, one panel per method with Pearson r and the fitted slope."""
    shown = [m for m in methods if m in mech]
    cols = min(3, max(1, len(shown)))
    rows_n = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for i, m in enumerate(shown):
        ax, me = axes[i // cols][i % cols], mech[m]
        ax.scatter(me.predicted, me.observed, s=4, color=colors[m], alpha=0.5)
        ax.axhline(0, color="0.7", lw=0.6)
        ax.axvline(0, color="0.7", lw=0.6)
        fit = f"r = {me.r:.2f}, slope = {me.slope:.3g}" if math.isfinite(me.r) else "no correlation (no spread)"
        ax.set_title(f"{m}: {fit}", fontsize=9)
        ax.set_xlabel("predicted: -Cov(log pi, A)")
        ax.set_ylabel("observed entropy change")
        ax.locator_params(axis="x", nbins=4)  # 4-inch panels: the default ticks ran into each other
        ax.grid(alpha=0.3)
    for j in range(len(shown), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    return fig


def fig_pass_at_k(
    plt: Any, finals: dict[str, dict[int, dict[str, float]]], methods: list[str], colors: dict[str, Any], warm: dict
) -> Any:
    """pass@k after RL per method (mean over seeds, 95% interval), the warm start dashed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = sorted(int(k[5:]) for k in warm if k.startswith("pass@") and k[5:].isdigit())
    if ks:
        ax.plot(ks, [warm[f"pass@{k}"] for k in ks], "k--", label="warm start")
    for i, m in enumerate(methods):
        vals = [mean_interval([f[f"pass@{k}"] for f in finals[m].values() if f"pass@{k}" in f]) for k in ks]
        if not ks or any(math.isnan(v[0]) for v in vals):
            continue
        mean, half = np.array([v[0] for v in vals]), np.array([v[1] for v in vals])
        x = np.array(ks, dtype=np.float64) * 2 ** (0.04 * (i - (len(methods) - 1) / 2))  # dodge
        err = np.vstack([mean - np.maximum(mean - half, 0.0), np.minimum(mean + half, 1.0) - mean])
        ax.errorbar(x, mean, yerr=err, color=colors[m], label=m, capsize=2, marker="o", markersize=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out prompts)")
    ax.set_title("pass@k after RL (mean over seeds, 95% interval)", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
