"""Which tokens Clip-Cov's covariance bounds select at lab scale (docs/lab.md, the Clip-Cov sweeps).

Clip-Cov (Cui et al., arXiv 2505.22617, section 4) detaches a random share of the tokens whose centred product
``Cov_t = (A_t - mean A)(log pi_t - mean log pi)`` lies in ``(cov_lb, cov_ub)``.  This script rolls out fresh
*training* batches (never the held-out prompts) from a finished lab run's warm start and from its ``grpo`` seed's
last two checkpoints, and prints, per lower bound, the share of tokens that are candidates and the share of those
with a positive advantage: the confident tokens of the better answers, whose detachment removes the learning signal
rather than the collapse.

    python examples/lab_clip_cov_candidates.py /tmp/sweep            # a run made by examples/lab_knob_sweep.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from entrolab.lab import trainer
from entrolab.lab.checkpoints import read_checkpoint
from entrolab.lab.cli import _saved_config
from entrolab.lab.presets import get_preset
from entrolab.lab.stages import ROLLOUTS, Batch, RunContext, RunState, advantage_stage, score_batch
from entrolab.losses import get_policy_loss
from entrolab.losses.cov import token_covariance

BOUNDS = (0.1, 0.3, 1.0)  # the lab preset's, an intermediate one, the paper's
BATCHES = 8


def candidates(ctx: RunContext, state: RunState, exclude: set[str], label: str) -> None:
    """Print the candidate shares over ``BATCHES`` fresh training batches sampled by ``state``'s policy."""
    cfg, counts, tokens, ent = ctx.cfg, {lb: [0, 0] for lb in BOUNDS}, 0, 0.0
    for _ in range(BATCHES):
        examples = [trainer.sample_train(ctx.task, state.rng, exclude) for _ in range(cfg.prompts_per_step)]
        b = Batch(examples, *ROLLOUTS["standard"](ctx, state, examples, 0))
        score_batch(ctx, b)
        advantage_stage(ctx, state, b, 0)
        mask = b.rollout.completion_mask  # (B, L)
        adv = b.adv[:, None].expand_as(mask).float()  # (B, L): the sequence advantage on each of its tokens
        cov = token_covariance(b.rollout.sample_logp, adv, mask)  # (B, L)
        tokens += int(mask.sum())
        assert b.rollout.sample_entropy is not None
        ent += float(b.rollout.sample_entropy[mask].mean()) / BATCHES
        for lb, c in counts.items():
            chosen = (cov > lb) & (cov < 5.0) & mask
            c[0] += int(chosen.sum())
            c[1] += int((chosen & (adv > 0)).sum())
    cells = [
        f"cov_lb {lb}: {n / tokens:5.1%} of tokens, {pos / max(n, 1):4.0%} with A > 0"
        for lb, (n, pos) in counts.items()
    ]
    print(f"{label:24s} entropy {ent:.3f}  " + "  ".join(cells))


def main(run_dir: str) -> None:
    out = Path(run_dir)
    cfg = _saved_config(out)
    torch.set_num_threads(1)
    task, tok, max_new, _, exclude = trainer._task_and_splits(cfg)
    init_model, _ = trainer.warm_start(cfg, task, tok, exclude, max_new, out / "sft")
    preset = get_preset("grpo", cfg.presets)
    ctx = RunContext(
        cfg, preset, task, tok, max_new, loss_fn=get_policy_loss(preset.loss), agg=preset.agg, spear_steps=1
    )
    seed_dir = out / "runs" / "grpo" / f"seed{cfg.seed}"
    candidates(ctx, RunState(cfg, preset, cfg.seed, init_model, has_tool=False), exclude, "warm start")
    for name in ("checkpoint.pt.prev", "checkpoint.pt"):
        state = RunState(cfg, preset, cfg.seed, init_model, has_tool=False)
        state.load_state_dict(read_checkpoint(seed_dir / name))
        candidates(ctx, state, exclude, f"grpo after {state.step} steps")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lab-runs/demo")
