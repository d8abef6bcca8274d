"""How the lab's Clip-Cov and KL-Cov presets were scaled: a knob sweep on *training* entropy only.

Runs GRPO and each variant for 5 seeds x 60 steps on the default task with seeds 100-104 (the demo uses 0-4, so the
evidence the demo reports is not the data the knobs were chosen on; held-out prompts are never read), then prints,
per variant, the final training entropy (mean of the last 5 steps) as a multiple of GRPO's on the same seed, the
final training reward, how many runs unlearned (final reward under half of GRPO's) and the final pass@group_size on
the training prompts.  About 6 minutes per 3 variants on 2 cores.

    python examples/lab_knob_sweep.py '[["kl_cov", "kc", {"ratio": 0.1, "kl_coef": 2.0}]]' /tmp/sweep
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys

from entrolab.lab import LabConfig, run_lab
from entrolab.lab.presets import get_preset

SEEDS = range(100, 105)


def _final(out: str, method: str, seed: int, key: str) -> float:
    with open(f"{out}/runs/{method}/seed{seed}/metrics.jsonl") as f:
        train = [r for r in map(json.loads, f) if r["kind"] == "train"]
    return statistics.mean(r[key] for r in train[-5:])


def main(variants: list[list], out: str) -> None:
    presets = {}
    for base, name, kwargs in variants:
        p = get_preset(base)
        presets[name] = dataclasses.replace(p, name=name, loss_kwargs={**p.loss_kwargs, **kwargs})
    methods = ("grpo", *presets)
    cfg = LabConfig(methods=methods, seed=SEEDS[0], seeds=len(SEEDS), out=out, presets=presets)
    run_lab(cfg, overwrite=True, progress=False)
    for m in methods:
        ratios = [_final(out, m, s, "entropy") / _final(out, "grpo", s, "entropy") for s in SEEDS]
        rewards = [_final(out, m, s, "reward") for s in SEEDS]
        # a run that unlearned: its final training reward under half of GRPO's on the same seed
        diverged = sum(r < 0.5 * _final(out, "grpo", s, "reward") for r, s in zip(rewards, SEEDS))
        # 1 - solve_none: pass@group_size on the step's fresh training prompts (narrowing shows as a fall)
        reach = statistics.mean(1 - _final(out, m, s, "solve_none") for s in SEEDS)
        print(
            f"{m:16s} entropy / grpo {statistics.mean(ratios):.2f} (min {min(ratios):.2f})  "
            f"reward {statistics.mean(rewards):.3f}  diverged {diverged}/{len(SEEDS)}  train pass@group {reach:.3f}"
        )


if __name__ == "__main__":  # spawned sweep workers import this module again
    main(json.loads(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "lab-runs/knob-sweep")
