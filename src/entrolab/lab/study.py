"""The decoding study: one policy, several truncation samplers, a range of temperatures.

``entrolab lab --study decoding`` evaluates the lab's warm-started policy and, when the run directory holds finished
runs, each method's first-seed policy, on the held-out prompts with plain sampling, top-p, min-p and Top-H at each
temperature, and reports accuracy, pass@k and distinct correct answers per temperature: the Top-H claim (coherence
kept at high temperature, arXiv 2509.02510, section 5) measured on our tasks.  Results go to ``OUT/decoding/``
(``results.json``, ``summary.md``, one figure per policy).

Every sampler filters the temperature-scaled logits, as transformers' warpers do after ``TemperatureLogitsWarper``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from entrolab.lab.checkpoints import read_checkpoint
from entrolab.lab.tasks import make_splits, resolve_task
from entrolab.sampling import min_p_mask, top_h_mask, top_p_mask

__all__ = ["DEFAULT_TEMPERATURES", "SAMPLERS", "run_decoding_study"]

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Sampling temperatures of the study."""


def _filter(mask_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda z: z.masked_fill(~mask_fn(z), -math.inf)


SAMPLERS: dict[str, list[Callable[[Tensor], Tensor]]] = {
    "plain": [],
    "top_p 0.9": [_filter(lambda z: top_p_mask(z, 0.9))],
    "min_p 0.1": [_filter(lambda z: min_p_mask(z, 0.1))],
    "top_h 0.4": [_filter(lambda z: top_h_mask(z, 0.4))],
}
"""The samplers compared, by name: their processors (applied after the temperature)."""


def _policies(cfg: Any, out: Path, init_model: Any) -> list[tuple[str, Any]]:
    """The warm start, then each method's first-seed final policy when the run directory has it."""
    import copy

    policies = [("warm start", init_model)]
    for name in cfg.methods:
        ckpt = out / "runs" / name / f"seed{cfg.seed}" / "checkpoint.pt"
        if ckpt.exists():
            model = copy.deepcopy(init_model)
            model.load_state_dict(read_checkpoint(ckpt)["model"])  # verified: a damaged file is a named error
            policies.append((f"{name} (seed {cfg.seed})", model))
    return policies


def run_decoding_study(
    cfg: Any,
    *,
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
    samplers: tuple[str, ...] = tuple(SAMPLERS),
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Run the study for the lab configuration ``cfg`` (its task, model, warm start, held-out split and ``out``);
    returns the paths written (``results``, ``summary``, one ``figure:<policy>`` per policy)."""
    from entrolab.lab.trainer import LabError, _tokenizer, evaluate, warm_start

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    bad = [t for t in temperatures if not (isinstance(t, int | float) and 0 < t < math.inf)]
    if not temperatures or bad:
        raise ValueError(f"temperatures must be numbers > 0, got {list(temperatures)}")
    unknown = [s for s in samplers if s not in SAMPLERS]
    if not samplers or unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; valid samplers: {', '.join(SAMPLERS)}")
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        task = resolve_task(cfg.task, verifier=cfg.verifier)
        tok = _tokenizer(cfg, task)
        eval_examples, exclude = make_splits(task, seed=cfg.seed, num_eval=cfg.eval_prompts)
        max_new = cfg.max_new_tokens or task.max_answer_chars + 2
        init_model, _ = warm_start(cfg, task, tok, exclude, max_new, out / "sft")
    except ValueError as exc:
        raise LabError(str(exc)) from None
    rows: list[dict[str, Any]] = []
    for policy_name, model in _policies(cfg, out, init_model):
        for sampler in samplers:
            for t in temperatures:
                g = torch.Generator().manual_seed(cfg.seed)  # the same draws for every cell
                res = evaluate(
                    model,
                    task,
                    tok,
                    eval_examples,
                    samples=cfg.eval_samples,
                    max_new=max_new,
                    generator=g,
                    temperature=float(t),
                    processors=SAMPLERS[sampler],
                )
                rows.append({"policy": policy_name, "sampler": sampler, "temperature": float(t), **res})
                say(
                    f"decoding study: {policy_name:22s} {sampler:10s} T={t:<4g} pass@1 {res['pass@1']:.3f} "
                    f"distinct {res['distinct_correct']:.2f}"
                )
    directory = out / "decoding"
    directory.mkdir(parents=True, exist_ok=True)
    results = directory / "results.json"
    results.write_text(json.dumps(rows, indent=1))
    paths: dict[str, Path] = {"results": results}
    paths.update(_figures(rows, directory, cfg.eval_samples))
    paths["summary"] = _summary(rows, directory, cfg)
    return paths


def _figures(rows: list[dict[str, Any]], directory: Path, samples: int) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(int(key.split("@")[1]) for key in rows[0] if key.startswith("pass@") and key[5:].isdigit())
    paths = {}
    for i, policy in enumerate(dict.fromkeys(r["policy"] for r in rows)):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            sel = [r for r in rows if r["policy"] == policy and r["sampler"] == sampler]
            temps = [r["temperature"] for r in sel]
            for ax, key in zip(axes, ("pass@1", f"pass@{k}", "distinct_correct")):
                ax.plot(temps, [r[key] for r in sel], marker="o", label=sampler)
        for ax, title in zip(axes, ("pass@1 (accuracy)", f"pass@{k}", "distinct correct answers per prompt")):
            ax.set_xlabel("temperature")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"decoding study: {policy} ({samples} samples per held-out prompt)", fontsize=11)
        fig.tight_layout()
        path = directory / f"decoding_{i}.png"
        fig.savefig(path, dpi=110)
        fig.savefig(path.with_suffix(".svg"))
        plt.close(fig)
        paths[f"figure:{policy}"] = path
    return paths


def _summary(rows: list[dict[str, Any]], directory: Path, cfg: Any) -> Path:
    k = max(int(key.split("@")[1]) for key in rows[0] if key.startswith("pass@") and key[5:].isdigit())
    lines = [
        "# Decoding study",
        "",
        f"Task `{cfg.task}`, model `{cfg.model}`, {cfg.eval_prompts} held-out prompts x {cfg.eval_samples} samples; "
        "each sampler filters the temperature-scaled logits.",
        "",
        f"| policy | sampler | temperature | pass@1 | pass@{k} | distinct correct |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['policy']} | {r['sampler']} | {r['temperature']:g} | {r['pass@1']:.3f} | {r[f'pass@{k}']:.3f} | "
        f"{r['distinct_correct']:.2f} |"
        for r in rows
    ]
    lines += ["", *(f"![{p.stem}]({p.name})" for p in sorted(directory.glob("decoding_*.png")))]
    path = directory / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
