"""The lab's report: figures, a table of final metrics with intervals, ``report.html`` (self-contained) and
``summary.md``, rebuilt from the metrics files of a run directory alone (``entrolab report DIR``).

Figures (PNG for the HTML page and the README, SVG alongside):

- entropy vs step and accuracy vs step per method, mean over seeds with a 95% band (Student t);
- pass@k at the end of training per method (with the warm-started policy for reference);
- entropy vs reward with the fitted law ``R = -a exp(H) + b`` (:func:`entrolab.dynamics.fit_entropy_law`) and its
  predicted ceiling ``b - a`` per method.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from entrolab._stats import format_interval, mean_interval
from entrolab.dynamics import fit_entropy_law

__all__ = ["build_report", "load_run"]

_interval = mean_interval


def load_run(directory: str | Path) -> dict[str, Any]:
    """A run directory's config and metric rows: ``{"config", "sft", "runs": {method: {seed: [rows]}}}``.

    Malformed JSON lines raise ``ValueError`` naming the file and the line.
    """
    out = Path(directory)
    config_path = out / "config.json"
    if not config_path.exists():
        raise ValueError(f"{out} is not a lab run directory (no config.json)")
    config = json.loads(config_path.read_text())
    sft_path = out / "sft" / "summary.json"
    sft = json.loads(sft_path.read_text()) if sft_path.exists() else {}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for method in config["methods"]:
        for seed_dir in sorted((out / "runs" / method).glob("seed*")):
            path = seed_dir / "metrics.jsonl"
            if not path.exists():
                continue
            rows = []
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            runs.setdefault(method, {})[int(seed_dir.name[4:])] = rows
    return {"config": config, "sft": sft, "runs": runs, "dir": str(out)}


def _series(
    rows_by_seed: dict[int, list[dict]], kind: str, key: str, *, smooth: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and 95% half-width of ``key`` across seeds (steps present in every seed).  Each seed's curve is
    smoothed first (trailing moving average over ``smooth`` points), so the band is the seed-to-seed spread of the
    trend rather than of single noisy steps."""
    per_seed = [
        {r["step"]: r[key] for r in rows if r.get("kind") == kind and key in r} for rows in rows_by_seed.values()
    ]
    if not per_seed:
        return np.array([]), np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    curves = [_smooth(np.array([d[s] for s in steps], dtype=np.float64), smooth) for d in per_seed]
    means, halves = [], []
    for i in range(len(steps)):
        m, h = _interval([c[i] for c in curves])
        means.append(m)
        halves.append(h)
    return np.array(steps), np.array(means), np.array(halves)


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or y.size < width:
        return y
    kernel = np.ones(width) / width
    padded = np.concatenate([np.full(width - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def _endpoint(rows_by_seed: dict[int, list[dict]], kind: str, key: str, *, last: bool = True) -> tuple[float, float]:
    """Mean and 95% half-width across seeds of ``key`` in each seed's last (or first) ``kind`` row."""
    values = []
    for rows in rows_by_seed.values():
        cand = [r for r in rows if r.get("kind") == kind and key in r]
        if cand:
            values.append(cand[-1 if last else 0][key])
    return _interval(values)


_fmt = format_interval


DIAGNOSTIC_PREFIXES = (
    "clipfrac",
    "covclip_frac",
    "cov_candidate_frac",
    "klcov_",
    "steer_",
    "hapo_",
    "siren_",
    "epo_",
    "entropy_coef",
    "high_entropy_frac",
    "clipfrac_high",
    "entropy_adv_mean",
    "cure_",
    "ettrl_",
    "aepo_",
    "spear_",
    "tool_calls",
)
"""Train-row metrics shown per method in the report's diagnostics table (each method's own, when it logs them)."""


def _diagnostics(
    runs: dict[str, dict[int, list[dict]]], methods: list[str]
) -> list[tuple[str, str, tuple[float, float]]]:
    """``(method, metric, (mean, 95% half-width))`` of each method's own metrics, late in training."""
    out = []
    for m in methods:
        keys: list[str] = []
        for rows in runs[m].values():
            for r in rows:
                if r.get("kind") == "train":
                    keys += [k for k in r if k.startswith(DIAGNOSTIC_PREFIXES) and k not in keys]
        for key in keys:
            per_seed = []
            for rows in runs[m].values():
                vals = [r[key] for r in rows if r.get("kind") == "train" and isinstance(r.get(key), int | float)]
                if vals:
                    per_seed.append(float(np.mean(vals[-10:])))
            if per_seed:
                out.append((m, key, _interval(per_seed)))
    return out


def build_report(directory: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``summary.md`` and ``figures/*.png|svg`` into ``directory``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_run(directory)
    out = Path(directory)
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    runs = data["runs"]
    methods = [m for m in data["config"]["methods"] if m in runs]
    if not methods:
        raise ValueError(f"{out}: no metrics yet (no runs/<method>/seed*/metrics.jsonl)")
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    steps_total = data["config"]["steps"]
    smooth = max(1, steps_total // 12)
    paths: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(figdir / f"{name}.{ext}", dpi=110)
        plt.close(fig)
        paths[name] = figdir / f"{name}.png"

    # 1. entropy and accuracy vs step, seed bands
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((axes[0], "entropy", "mean token entropy (nats)", None), (axes[1], "accuracy", "train accuracy", 1.0))
    for ax, key, label, top in panels:
        for m in methods:
            x, y, h = _series(runs[m], "train", key, smooth=smooth)
            if x.size == 0:
                continue
            ax.plot(x, y, color=colors[m], label=m)
            lo, hi = np.maximum(y - h, 0.0), y + h if top is None else np.minimum(y + h, top)
            ax.fill_between(x, lo, hi, color=colors[m], alpha=0.12, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"entropy ({smooth}-step moving average; mean over seeds, 95% band)", fontsize=9)
    axes[1].set_title("accuracy on training prompts", fontsize=9)
    save(fig, "entropy_accuracy")

    # 2. pass@k at the end (and at the warm start)
    fig, ax = plt.subplots(figsize=(6, 4))
    sft_eval = data["sft"].get("eval", {})
    ks = sorted(int(k[5:]) for k in sft_eval if k.startswith("pass@"))
    if ks:
        ax.plot(ks, [sft_eval[f"pass@{k}"] for k in ks], "k--", label="warm start")
    for i, m in enumerate(methods):
        vals = [_endpoint(runs[m], "eval", f"pass@{k}") for k in ks]
        if ks and not any(math.isnan(v[0]) for v in vals):
            mean = np.array([v[0] for v in vals])
            half = np.array([v[1] for v in vals])
            x = np.array(ks, dtype=np.float64) * 2 ** (0.04 * (i - (len(methods) - 1) / 2))  # dodge the bars
            err = np.vstack([mean - np.maximum(mean - half, 0.0), np.minimum(mean + half, 1.0) - mean])
            ax.errorbar(x, mean, yerr=err, color=colors[m], label=m, capsize=2, marker="o", markersize=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out prompts)")
    ax.set_title("pass@k after RL (mean over seeds, 95% interval, clipped to [0, 1])", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "pass_at_k")

    # 3. entropy vs reward with the fitted law per method
    fig, ax = plt.subplots(figsize=(6, 4))
    fits: dict[str, Any] = {}
    for m in methods:
        h_all, r_all = [], []
        for rows in runs[m].values():
            tr = [r for r in rows if r.get("kind") == "train"]
            h_all += [r["entropy"] for r in tr]
            r_all += [r["reward"] for r in tr]
        if len(h_all) < 3:
            continue
        ax.scatter(h_all, r_all, s=4, color=colors[m], alpha=0.25)
        try:
            fit = fit_entropy_law(h_all, r_all)
        except ValueError:
            continue
        fits[m] = fit
        grid = np.linspace(0.0, max(h_all), 50)
        ax.plot(grid, fit.predict(grid), color=colors[m], label=f"{m}: ceiling {fit.ceiling:.2f}")
    ax.set_xlabel("mean token entropy (nats)")
    ax.set_ylabel("train reward")
    ax.set_title("R = -a exp(H) + b per method; ceiling = b - a at H = 0", fontsize=9)
    ax.grid(alpha=0.3)
    if fits:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "too few distinct points for a fit", transform=ax.transAxes, ha="center", fontsize=9)
    save(fig, "entropy_law")

    # table of final metrics
    header = [
        "method",
        "entropy start",
        "entropy end",
        "pass@1",
        f"pass@{ks[-1]}" if ks else "pass@k",
        "distinct correct",
        "KL to init",
        "law ceiling",
        "wall s / run",
        "tokens/s",
    ]
    table = []
    for m in methods:
        e0 = _endpoint(runs[m], "train", "entropy", last=False)
        e1 = _endpoint(runs[m], "train", "entropy")
        secs, tps = [], []
        for rows in runs[m].values():
            tr = [r for r in rows if r.get("kind") == "train"]
            secs.append(sum(r.get("step_seconds", 0.0) for r in tr) + sum(r.get("eval_seconds", 0.0) for r in rows))
            tps += [r.get("tokens_per_s", 0.0) for r in tr]
        table.append(
            [
                m,
                _fmt(*e0),
                _fmt(*e1),
                _fmt(*_endpoint(runs[m], "eval", "pass@1")),
                _fmt(*_endpoint(runs[m], "eval", f"pass@{ks[-1]}")) if ks else "-",
                _fmt(*_endpoint(runs[m], "eval", "distinct_correct"), digits=2),
                _fmt(*_endpoint(runs[m], "train", "kl_to_init"), digits=4),
                f"{fits[m].ceiling:.3f}" if m in fits else "-",
                f"{np.mean(secs):.1f}",
                f"{np.mean(tps):.0f}" if tps else "-",
            ]
        )
    diagnostics = _diagnostics(runs, methods)
    cfg = data["config"]
    seeds = cfg["seeds"]
    intro = (
        f"Task `{cfg['task']}`, model `{cfg['model']}`, {len(methods)} methods x {seeds} seed(s), {cfg['steps']} RL "
        f"steps of {cfg['prompts_per_step']} prompts x {cfg['group_size']} samples.  Warm start pass@1 "
        f"{sft_eval.get('pass@1', float('nan')):.3f}.  Intervals: 95% over seeds (Student t)."
    )
    md = ["# entrolab lab report", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    if diagnostics:
        md += ["", "Method diagnostics (mean over the last 10 train steps, then over seeds):", ""]
        md += ["| method | metric | value |", "|---|---|---|"]
        md += [f"| {m} | {k} | {_fmt(*v)} |" for m, k, v in diagnostics]
    md += ["", *(f"![{name}](figures/{name}.png)" for name in paths)]
    summary = out / "summary.md"
    summary.write_text("\n".join(md) + "\n")

    def img(name: str) -> str:
        data64 = base64.b64encode(paths[name].read_bytes()).decode()
        return (
            f'<figure><img alt="{name}" src="data:image/png;base64,{data64}"><figcaption>{name}</figcaption></figure>'
        )

    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table)
    diag_html = ""
    if diagnostics:
        diag_rows = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{html.escape(k)}</td><td>{html.escape(_fmt(*v))}</td></tr>"
            for m, k, v in diagnostics
        )
        diag_html = (
            "<h2>Method diagnostics</h2><p>Mean over the last 10 train steps, then over seeds.</p>"
            f"<table><tr><th>method</th><th>metric</th><th>value</th></tr>{diag_rows}</table>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>entrolab lab report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
figcaption {{ font-size: 0.8em; color: #666; }}
</style></head><body>
<h1>entrolab lab report</h1>
<p>{html.escape(intro)}</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>{rows_html}</table>
{diag_html}
{"".join(img(name) for name in paths)}
</body></html>
"""
    report = out / "report.html"
    report.write_text(page)
    return {"html": report, "summary": summary, **paths}
