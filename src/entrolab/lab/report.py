"""The lab's report: ``report.html`` (self-contained) and ``summary.md``, rebuilt from a run directory's metric files
alone (``entrolab report DIR``).  It reads on its own: what was run, what entropy collapse is and what each metric
means, what happened in numbers (:mod:`entrolab.lab.analysis`), each figure with a caption saying what it shows
(:mod:`entrolab.lab.report_figures`), and what the run does not show.  Unfinished runs are listed and left out of
every number."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entrolab._stats import PairedDifference, format_interval, mean_interval
from entrolab.lab import report_figures as figs
from entrolab.lab.analysis import (
    TAIL,
    LawFit,
    Mechanism,
    change_from_start,
    final_values,
    is_finished,
    law_fit,
    mechanism,
    paired_to_baseline,
)

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
    times: dict[str, dict[int, dict[str, float]]] = {}
    for method in config["methods"]:
        for seed_dir in sorted((out / "runs" / method).glob("seed*")):
            path = seed_dir / "metrics.jsonl"
            if not path.exists():
                continue
            done = seed_dir / "done.json"
            if done.exists():
                try:
                    d = json.loads(done.read_text())
                    times.setdefault(method, {})[int(seed_dir.name[4:])] = {
                        "wall": float(d["seconds"]),
                        "cpu": float(d["cpu_seconds"]),
                    }
                except (ValueError, KeyError, TypeError):
                    pass  # an older or damaged done.json: the table then says "-"
            rows = []
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            runs.setdefault(method, {})[int(seed_dir.name[4:])] = rows
    return {"config": config, "sft": sft, "runs": runs, "times": times, "dir": str(out)}


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


BASELINE = "grpo"
"""The method every other is compared with (when it was run)."""

CAPTIONS = {
    "entropy_accuracy": "Training reward (left) and the policy's mean token entropy on its own samples (right) per "
    "step, mean over seeds with a 95% band.  Entropy collapse is the right panel falling while the left one climbs "
    "and then flattens.",
    "heldout": "Held-out pass@1 (solid) and pass@k at the largest k (dashed) at each evaluation, one panel per method "
    "with the baseline in grey: does the method change what RL learns on prompts it never trains on?",
    "entropy_law": "Training reward against entropy (trailing means) for every run, with the law R = -a exp(H) + b "
    "of each method's median-R² run: reward bought with entropy, and what is left when entropy is spent.",
    "mechanism": "Each point is one RL step: the covariance term -Cov(log pi, A) of its batch (the first-order "
    "entropy change of softmax policy gradient) against the entropy change actually measured on the same batch "
    "before and after the step's updates.",
    "pass_at_k": "pass@k on held-out prompts after RL (mean over seeds, 95% interval) against the warm start "
    "(dashed): RL that narrows the policy lifts small k and can lower large k.",
}

DEFINITIONS = [
    "**Entropy collapse**: in RL fine-tuning the policy's token entropy falls fast as reward rises; once it is spent "
    "the policy stops exploring and accuracy plateaus (Cui et al., arXiv 2505.22617).",
    "**entropy**: mean over sampled tokens of the entropy (nats) of the policy's next-token distribution on its own "
    f"training samples; a run's final value is the mean of its last {TAIL} steps.",
    "**pass@k**: probability that at least one of k samples is correct, on held-out prompts never trained on "
    "(unbiased estimator from n samples per prompt, Chen et al., arXiv 2107.03374); its SE is the standard error "
    "over the held-out prompts within one run, averaged over seeds.",
    "**difference to the baseline**: per seed, method minus baseline (same warm start, prompt order and sampling "
    "stream), then the mean with its 95% interval and a paired t-test's p-value over seeds.",
    "**CPU s / run** and **wall s / run**: a finished run's processor time (what the method costs) and elapsed time "
    "(which also counts waiting on a loaded machine or sharing it with parallel workers); compare methods by CPU "
    "time.",
]


@dataclass
class Analysis:
    """Everything the report states, computed once from the finished runs."""

    runs: dict[str, dict[int, list[dict]]]
    methods: list[str]
    unfinished: list[str]
    k_max: int
    warm: dict[str, float]
    finals: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    fits: dict[str, list[LawFit]] = field(default_factory=dict)
    mech: dict[str, Mechanism] = field(default_factory=dict)
    diffs: dict[str, dict[str, PairedDifference]] = field(default_factory=dict)
    vs_start: dict[str, dict[str, PairedDifference]] = field(default_factory=dict)
    start_entropy: dict[str, tuple[float, float]] = field(default_factory=dict)
    times: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)


def analyse(data: dict[str, Any]) -> Analysis:
    """Split finished from unfinished runs and compute every number the report states."""
    cfg, steps = data["config"], data["config"]["steps"]
    runs: dict[str, dict[int, list[dict]]] = {}
    unfinished = []
    for m in cfg["methods"]:
        for seed, rows in sorted(data["runs"].get(m, {}).items()):
            if is_finished(rows, steps):
                runs.setdefault(m, {})[seed] = rows
            else:
                last = max((r["step"] for r in rows if r.get("kind") == "train"), default=0)
                unfinished.append(f"{m} seed {seed} (stopped at step {last} of {steps})")
    methods = [m for m in cfg["methods"] if m in runs]
    warm = data["sft"].get("eval", {})
    ks = sorted(int(k[5:]) for k in warm if k.startswith("pass@") and k[5:].isdigit()) or [1]
    an = Analysis(runs, methods, unfinished, ks[-1], warm, times=data.get("times", {}))
    for m in methods:
        an.finals[m] = {s: {**final_values(rows, k_max=an.k_max), **_last_eval(rows)} for s, rows in runs[m].items()}
        an.fits[m] = [f for rows in runs[m].values() if (f := law_fit(rows)) is not None]
        if (me := mechanism(runs[m])) is not None:
            an.mech[m] = me
        first = [next(r["entropy"] for r in rows if r.get("kind") == "train") for rows in runs[m].values()]
        an.start_entropy[m] = mean_interval(first)
        an.vs_start[m] = change_from_start(runs[m], k_max=an.k_max)
    an.diffs = paired_to_baseline(runs, baseline=BASELINE, steps=steps, k_max=an.k_max)
    return an


def _last_eval(rows: list[dict]) -> dict[str, float]:
    evals = [r for r in rows if r.get("kind") == "eval"]
    return {k: v for k, v in evals[-1].items() if k.startswith("pass@")} if evals else {}


def _mean(an: Analysis, m: str, key: str) -> tuple[float, float]:
    return mean_interval([f[key] for f in an.finals[m].values() if key in f])


def _p(p: float) -> str:
    return "-" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def findings(an: Analysis) -> list[str]:
    """What the run shows, in sentences built from the numbers (every claim with its interval)."""
    out: list[str] = []
    k = an.k_max
    w1, wk = an.warm.get("pass@1", math.nan), an.warm.get(f"pass@{k}", math.nan)
    if BASELINE in an.methods:
        p1, pk, h1 = _mean(an, BASELINE, "pass@1"), _mean(an, BASELINE, f"pass@{k}"), _mean(an, BASELINE, "entropy")
        h0 = an.start_entropy[BASELINE][0]
        learned = p1[0] - w1 >= 0.25 or p1[0] >= 2 * w1
        out.append(
            f"**RL learns{'' if learned else ' only a little'}.** Under `{BASELINE}` held-out pass@1 goes from "
            f"{w1:.3f} (warm start) to {_fmt(*p1)}."
        )
        drop = 1 - h1[0] / h0 if h0 > 0 else math.nan
        out.append(
            f"**Entropy {'collapses' if drop >= 0.6 else 'falls'}.** `{BASELINE}`'s mean token entropy falls from "
            f"{h0:.3f} to {_fmt(*h1)} nats ({100 * drop:.0f}%); pass@{k} ends at {_fmt(*pk)} against the warm "
            f"start's {wk:.3f}{_narrowing(an.vs_start[BASELINE][f'pass@{k}'])}."
        )
    for m in an.methods:
        fits = an.fits.get(m, [])
        if not fits:
            continue
        r2 = float(np.median([f.r2 for f in fits]))
        good = [f for f in fits if f.meaningful]
        ceil = f"; predicted ceiling {_ceiling(float(np.median([f.ceiling for f in good])))}" if good else ""
        reached = np.median([f.reached for f in fits])
        out.append(
            f"**Law, `{m}`:** median R² {_r2(r2)} over {len(fits)} runs ({len(good)} meaningful{ceil}; reward "
            f"reached {reached:.3f})."
        )
    for m, me in an.mech.items():
        if not math.isfinite(me.r):
            out.append(
                f"**Mechanism, `{m}`:** no correlation to compute over {len(me.observed)} steps (fewer than 3, or "
                "the predicted or the observed entropy change did not vary)."
            )
            continue
        out.append(
            f"**Mechanism, `{m}`:** predicted and observed entropy change per step correlate with r = {me.r:.2f} "
            f"(slope {me.slope:.3g}, same sign in {100 * me.sign_agreement:.0f}% of {len(me.observed)} steps)."
        )
    out += _difference_sentences(an)
    return out


def _narrowing(d: PairedDifference) -> str:
    """The clause on pass@k's change from the warm start, with its test (none with fewer than 2 seeds)."""
    if d.n < 2:
        return " (one seed: no test of the change)"
    if d.mean < 0 and d.p_value < 0.05:
        verdict = "below it: RL narrowed what the policy reaches"
    elif d.mean < 0:
        verdict = "below it, but not significantly"
    else:
        verdict = "not below it"
    return f" ({verdict}; per seed, final minus the run's step-0 evaluation: {_diff_cell(d)})"


def _difference_sentences(an: Analysis) -> list[str]:
    out = []
    for m, d in an.diffs.items():
        ratio = d["entropy_ratio"]
        if d["entropy"].n < 2:
            out.append(
                f"**`{m}` vs `{BASELINE}`** ({d['entropy'].n} paired seed): final entropy {ratio.mean:.2f}x the "
                "baseline's; no interval or test with fewer than 2 seeds."
            )
            continue
        sig = [key for key in ("entropy", "pass@1", f"pass@{an.k_max}") if d[key].p_value < 0.05]
        not_sig = [key for key in ("entropy", "pass@1", f"pass@{an.k_max}") if not d[key].p_value < 0.05]
        out.append(
            f"**`{m}` vs `{BASELINE}`** ({d['entropy'].n} paired seeds): final entropy {ratio.mean:.2f}x the "
            f"baseline's; significant at 0.05: {', '.join(sig) or 'none'}; "
            f"not significant: {', '.join(not_sig) or 'none'}."
        )
    return out


def tables(an: Analysis) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The report's tables: final metrics, differences to the baseline, changes from the warm start, and the law per
    method."""
    k = an.k_max
    final = (
        ["method", "seeds", "entropy start", "entropy end", "pass@1", f"pass@{k}", f"SE of pass@{k}", "CPU s / run",
         "wall s / run"],
        [
            [
                m, str(len(an.finals[m])), _fmt(*an.start_entropy[m]), _fmt(*_mean(an, m, "entropy")),
                _fmt(*_mean(an, m, "pass@1")), _fmt(*_mean(an, m, f"pass@{k}")),
                _fmt(_mean(an, m, f"pass@{k}_se")[0], 0.0), _seconds(an, m, "cpu"), _seconds(an, m, "wall"),
            ]
            for m in an.methods
        ],
    )  # fmt: skip
    diff_rows = []
    for m, d in an.diffs.items():
        cells = [m, f"{d['entropy_ratio'].mean:.2f}x"]
        diff_rows.append(cells + [_diff_cell(d[key]) for key in ("entropy", "pass@1", f"pass@{k}")])
    diffs = ([f"method - {BASELINE}", "entropy ratio", "entropy", "pass@1", f"pass@{k}"], diff_rows)
    start = (
        ["method", "pass@1: final - step 0", f"pass@{k}: final - step 0"],
        [[m, *(_diff_cell(an.vs_start[m][key]) for key in ("pass@1", f"pass@{k}"))] for m in an.methods],
    )
    law_rows = []
    for m in an.methods:
        fits = an.fits.get(m, [])
        good = [f for f in fits if f.meaningful]
        law_rows.append([
            m, _r2(float(np.median([f.r2 for f in fits]))) if fits else "-", f"{len(good)} / {len(fits)}",
            _ceiling(float(np.median([f.ceiling for f in good]))) if good else "not reported",
            f"{np.median([f.reached for f in fits]):.3f}" if fits else "-",
        ])  # fmt: skip
    law = (["method", "median R²", "meaningful fits", "median ceiling b - a", "reward reached"], law_rows)
    return {"final": final, "diffs": diffs, "start": start, "law": law}


def _diff_cell(x: PairedDifference) -> str:
    """A paired difference as ``mean [low, high], p value`` (the mean alone with fewer than 2 pairs)."""
    if x.n < 2:  # no interval or test from one pair
        return f"{x.mean:+.3f} (1 seed: no interval)"
    return f"{x.mean:+.3f} [{x.mean - x.half_width:+.3f}, {x.mean + x.half_width:+.3f}], p {_p(x.p_value)}"


def _r2(value: float) -> str:
    """R², or why there is none (a training reward that never varied leaves nothing to explain)."""
    return f"{value:.2f}" if math.isfinite(value) else "undefined (the reward did not vary)"


def _ceiling(value: float) -> str:
    """The law's ceiling, flagged when the extrapolation passes the reward's maximum (1 for the lab's verifiers)."""
    return f"{value:.3f}" if value <= 1.0 else f"{value:.3f} (above the maximum reward 1: an extrapolation)"


def _seconds(an: Analysis, m: str, kind: str) -> str:
    """Mean CPU or wall seconds per finished run (``done.json``).  CPU time is the method's cost; wall time also
    counts waiting for a loaded machine (and, with parallel workers, sharing it), so the two are reported apart."""
    secs = [t[kind] for s, t in an.times.get(m, {}).items() if s in an.runs[m]]
    return f"{np.mean(secs):.1f}" if secs else "-"


CAVEATS = (
    "What this does not show: a small model on a synthetic task, warm-started on an imperfect demonstrator so that "
    "it can solve most prompts but spreads over near misses (the regime RL sharpens); the methods' knobs are "
    "lab-scaled (chosen on training entropy, never on the held-out prompts) and the papers' own scale and tasks "
    "may rank them differently.  Intervals are over RL seeds that share one warm start and one held-out split "
    "(both drawn from the base seed, `--seed`): they leave out how much another warm start would change the "
    "numbers.  A difference that is not significant here is not shown to be absent."
)


def build_report(directory: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``summary.md`` and ``figures/*.png|svg`` into ``directory``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_run(directory)
    out = Path(directory)
    an = analyse(data)
    if not an.methods:
        raise ValueError(f"{out}: no finished run yet (no runs/<method>/seed*/metrics.jsonl reaching the last step)")
    paths = _figures(plt, out, an, data["config"]["steps"])
    cfg = data["config"]
    intro = (
        f"Task `{cfg['task']}`, model `{cfg['model']}`, {len(an.methods)} methods x {cfg['seeds']} seed(s), "
        f"{cfg['steps']} RL steps of {cfg['prompts_per_step']} prompts x {cfg['group_size']} samples; held-out: "
        f"{cfg['eval_prompts']} prompts x {cfg['eval_samples']} samples.  Warm start pass@1 "
        f"{an.warm.get('pass@1', math.nan):.3f}, pass@{an.k_max} {an.warm.get(f'pass@{an.k_max}', math.nan):.3f}.  "
        "Intervals: 95% over seeds (Student t)."
    )
    if an.unfinished:
        intro += "  Unfinished runs, left out of every number: " + "; ".join(an.unfinished) + "."
    tabs = tables(an)
    diagnostics = _diagnostics(an.runs, an.methods)
    summary = out / "summary.md"
    summary.write_text(_markdown(intro, an, tabs, diagnostics, paths))
    report = out / "report.html"
    report.write_text(_html(intro, an, tabs, diagnostics, paths))
    return {"html": report, "summary": summary, **paths}


def _figures(plt: Any, out: Path, an: Analysis, steps: int) -> dict[str, Path]:
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(an.methods)}
    made = {
        "entropy_accuracy": figs.fig_training(plt, an.runs, an.methods, colors, max(1, steps // 12)),
        "heldout": figs.fig_heldout(plt, an.runs, an.methods, colors, an.k_max, BASELINE),
        "entropy_law": figs.fig_law(plt, an.runs, an.methods, colors, an.fits),
        "mechanism": figs.fig_mechanism(plt, an.methods, colors, an.mech),
        "pass_at_k": figs.fig_pass_at_k(plt, an.finals, an.methods, colors, an.warm),
    }
    paths = {}
    for name, fig in made.items():
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(figdir / f"{name}.{ext}", dpi=110)
        plt.close(fig)
        paths[name] = figdir / f"{name}.png"
    return paths


START_TITLE = "Change from the warm start (paired over seeds)"
START_NOTE = (
    "Per seed, the last held-out evaluation minus the run's step-0 evaluation of the warm start: pass@1 rising is RL "
    "sharpening; pass@k at the largest k falling is RL narrowing what the policy can reach (Yue et al., arXiv "
    "2504.13837)."
)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _markdown(intro: str, an: Analysis, tabs: dict, diagnostics: list, paths: dict[str, Path]) -> str:
    md = ["# entrolab lab report", "", intro, "", "## What happened", "", *(f"- {s}" for s in findings(an))]
    md += ["", "## Final metrics", "", *_md_table(*tabs["final"])]
    if tabs["diffs"][1]:
        md += ["", f"## Differences to `{BASELINE}` (paired over seeds)", "", *_md_table(*tabs["diffs"])]
    md += ["", f"## {START_TITLE}", "", START_NOTE, "", *_md_table(*tabs["start"])]
    md += ["", "## The entropy law per run", "", *_md_table(*tabs["law"])]
    if diagnostics:
        md += ["", "## Method diagnostics (mean over the last 10 train steps, then over seeds)", ""]
        md += _md_table(["method", "metric", "value"], [[m, k, _fmt(*v)] for m, k, v in diagnostics])
    md += ["", "## Definitions", "", *(f"- {d}" for d in DEFINITIONS), "", CAVEATS, ""]
    for name in paths:
        md += [f"![{name}](figures/{name}.png)", "", CAPTIONS[name], ""]
    return "\n".join(md)


def _inline(text: str) -> str:
    """Markdown's ``**bold**`` and backticks as HTML, the rest escaped."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(intro: str, an: Analysis, tabs: dict, diagnostics: list, paths: dict[str, Path]) -> str:
    def img(name: str) -> str:
        data64 = base64.b64encode(paths[name].read_bytes()).decode()
        return (
            f'<figure><img alt="{name}" src="data:image/png;base64,{data64}">'
            f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>"
        )

    parts = [f"<p>{_inline(intro)}</p>", "<h2>What happened</h2><ul>"]
    parts += [f"<li>{_inline(s)}</li>" for s in findings(an)] + ["</ul>"]
    parts += ["<h2>Final metrics</h2>", _html_table(*tabs["final"])]
    if tabs["diffs"][1]:
        parts += [f"<h2>Differences to {BASELINE} (paired over seeds)</h2>", _html_table(*tabs["diffs"])]
    parts += [f"<h2>{START_TITLE}</h2><p>{_inline(START_NOTE)}</p>", _html_table(*tabs["start"])]
    parts += ["<h2>The entropy law per run</h2>", _html_table(*tabs["law"])]
    if diagnostics:
        parts += ["<h2>Method diagnostics</h2><p>Mean over the last 10 train steps, then over seeds.</p>"]
        parts.append(_html_table(["method", "metric", "value"], [[m, k, _fmt(*v)] for m, k, v in diagnostics]))
    parts += ["<h2>Figures</h2>", *(img(name) for name in paths)]
    parts += ["<h2>Definitions</h2><ul>", *(f"<li>{_inline(d)}</li>" for d in DEFINITIONS), "</ul>"]
    parts.append(f"<p>{_inline(CAVEATS)}</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>entrolab lab report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
figcaption {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>entrolab lab report</h1>
{"".join(parts)}
</body></html>
"""
