"""Gallery entry ``cpl``: Contrastive Preference Learning against behaviour cloning on mixed-quality offline data.

The spec's demo (``shared/specs/beyond_llm.md`` section 7): a 2-D point mass (state: position and goal in
[-1, 1]^2; action: a velocity in [-1, 1]^2, the position moves by 0.1 a and is clipped; reward ``-|p - g|``).
2,000 offline segments of 16 steps, half from a noisy expert (unit speed towards the goal, N(0, 0.3^2) noise) and
half from a uniformly random policy; 1,000 pairs of segments labelled by a Bradley-Terry draw on their true returns.
A Gaussian MLP policy (2 x 128, tanh mean, learned log-std) trained from the same initialisation:

- ``cpl``: 300 steps of behaviour cloning on all data, then CPL (:func:`entrolab.preference.cpl_loss` on
  :func:`~entrolab.preference.segment_score`, alpha 0.1, lambda 0.5, discount 0.99);
- ``cpl_bc``: the paper's CPL-BC variant: the same warm-up, then CPL with lambda 1 plus the BC loss of the pair's
  segments (coefficient 1);
- ``bc``: behaviour cloning on all segments;
- ``bc_preferred``: behaviour cloning on the segments that won their comparison (a filtered-BC baseline).

Adam 1e-3, batch 64 (pairs or segments), the same number of steps for each.  Metric: mean return of the mean action
over 100 evaluation episodes of 32 steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.gallery._common import cell, column, plot_seed_points, pyplot, run_variants, save_figure
from entrolab.preference import cpl_loss, segment_score

TITLE = "Contrastive Preference Learning: fitting preferences with the policy itself, no reward model, no RL"
PAPER = "arXiv 2310.13639"
CLAIM = (
    "Modelling preferences by regret (the max-entropy optimal advantage, alpha log pi) lets a policy learn directly "
    "from preference-labelled segments and beat behaviour cloning, which imitates the bad half of the data too."
)
VARIANTS = ("cpl", "cpl_bc", "bc", "bc_preferred")
SEGMENTS, LENGTH, PAIRS, STEPS, QUICK_STEPS, WARMUP, EPISODES, HORIZON = 2000, 16, 1000, 2000, 20, 300, 100, 32
ALPHA, BIAS, DISCOUNT = 0.1, 0.5, 0.99


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"2-D point-mass reaching; {SEGMENTS:,} offline segments of {LENGTH} steps (half noisy expert, half random), "
        f"{PAIRS:,} Bradley-Terry-labelled pairs; a Gaussian MLP policy, {steps} Adam steps: CPL (alpha {ALPHA}, "
        f"lambda {BIAS}, after {min(WARMUP, steps)} BC steps) and CPL-BC (lambda 1 + BC) against BC on everything "
        f"and BC on the preferred segments; mean return over {EPISODES} episodes of {HORIZON} steps."
    )


def _step(pos: torch.Tensor, goal: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = (pos + 0.1 * action.clamp(-1, 1)).clamp(-1, 1)
    return pos, -(pos - goal).norm(dim=-1)


def _expert(pos: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    d = goal - pos
    return d / d.norm(dim=-1, keepdim=True).clamp_min(0.1)


def _collect(gen: torch.Generator) -> dict[str, torch.Tensor]:
    pos = torch.rand(SEGMENTS, 2, generator=gen) * 2 - 1
    goal = torch.rand(SEGMENTS, 2, generator=gen) * 2 - 1
    expert = torch.arange(SEGMENTS) % 2 == 0
    states, actions, rewards = [], [], []
    for _ in range(LENGTH):
        noisy = (_expert(pos, goal) + 0.3 * torch.randn(SEGMENTS, 2, generator=gen)).clamp(-1, 1)
        random = torch.rand(SEGMENTS, 2, generator=gen) * 2 - 1
        a = torch.where(expert.unsqueeze(1), noisy, random)
        states.append(torch.cat([pos, goal], 1))
        actions.append(a)
        pos, r = _step(pos, goal, a)
        rewards.append(r)
    returns = torch.stack(rewards, 1).sum(1)
    i = torch.randperm(SEGMENTS, generator=gen)[: 2 * PAIRS].reshape(PAIRS, 2)
    first_wins = torch.rand(PAIRS, generator=gen) < torch.sigmoid(returns[i[:, 0]] - returns[i[:, 1]])
    preferred = torch.where(first_wins, i[:, 0], i[:, 1])
    dispreferred = torch.where(first_wins, i[:, 1], i[:, 0])
    return {"states": torch.stack(states, 1), "actions": torch.stack(actions, 1), "returns": returns,
            "preferred": preferred, "dispreferred": dispreferred}  # fmt: skip


class _Policy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
        self.log_std = nn.Parameter(torch.full((2,), -0.5))

    def mean(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(states))

    def log_prob(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Gaussian log-density of ``actions`` ``(..., 2)``, summed over the action dimensions -> ``(...)``."""
        z = (actions - self.mean(states)) / self.log_std.exp()
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def _evaluate(policy: _Policy, seed: int) -> float:
    gen = torch.Generator().manual_seed(50_000 + seed)
    pos = torch.rand(EPISODES, 2, generator=gen) * 2 - 1
    goal = torch.rand(EPISODES, 2, generator=gen) * 2 - 1
    total = torch.zeros(EPISODES)
    with torch.no_grad():
        for _ in range(HORIZON):
            pos, r = _step(pos, goal, policy.mean(torch.cat([pos, goal], 1)))
            total += r
    return float(total.mean())


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    data = _collect(gen)
    torch.manual_seed(seed)
    policy = _Policy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    pool = data["preferred"].unique() if variant == "bc_preferred" else torch.arange(SEGMENTS)
    curve = []
    for step in range(updates):
        if variant.startswith("cpl") and step >= min(WARMUP, updates // 2):
            pick = torch.randint(PAIRS, (64,), generator=gen)
            pos, neg = data["preferred"][pick], data["dispreferred"][pick]
            lp_pos = policy.log_prob(data["states"][pos], data["actions"][pos])
            lp_neg = policy.log_prob(data["states"][neg], data["actions"][neg])
            s_pos = segment_score(lp_pos, alpha=ALPHA, discount=DISCOUNT)
            s_neg = segment_score(lp_neg, alpha=ALPHA, discount=DISCOUNT)
            loss = cpl_loss(s_pos, s_neg, bias=1.0 if variant == "cpl_bc" else BIAS).loss
            if variant == "cpl_bc":
                loss = loss - 0.5 * (lp_pos.mean() + lp_neg.mean())
        else:
            seg = pool[torch.randint(pool.numel(), (64,), generator=gen)]
            loss = -policy.log_prob(data["states"][seg], data["actions"][seg]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(updates // 10, 1) == 0:
            curve.append((step + 1, _evaluate(policy, seed)))
    expert_share = float((data["preferred"] % 2 == 0).float().mean())
    return {"return": _evaluate(policy, seed), "peak_return": max(c[1] for c in curve) if curve else -math.inf,
            "curve": curve, "preferred_expert_share": expert_share}  # fmt: skip


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_STEPS if quick else STEPS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    rows = [
        ("mean return (mean action, 100 episodes): CPL vs BC", cell(results, "cpl", "return", 2),
         cell(results, "bc", "return", 2)),
        ("... CPL-BC vs BC", cell(results, "cpl_bc", "return", 2), cell(results, "bc", "return", 2)),
        ("best return along training (every tenth of it): CPL vs BC", cell(results, "cpl", "peak_return", 2),
         cell(results, "bc", "peak_return", 2)),
        ("... CPL vs BC on the preferred segments", cell(results, "cpl", "return", 2),
         cell(results, "bc_preferred", "return", 2)),
    ]  # fmt: skip

    def mean(v: str) -> float:
        return sum(column(results, v, "return")) / len(results)

    share = sum(column(results, "cpl", "preferred_expert_share")) / len(results)
    verdict = (
        f"CPL reaches a mean return of {mean('cpl'):.2f} (CPL-BC {mean('cpl_bc'):.2f}) against {mean('bc'):.2f} for "
        f"BC and "
        f"{mean('bc_preferred'):.2f} for BC on the preferred segments ({share:.0%} of which are the expert's): "
        + ("CPL beats BC, as claimed." if mean("cpl") > mean("bc") else "CPL does not beat BC here.")
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    plot_seed_points(ax, results, VARIANTS, fmt="o-")
    ax.set(xlabel="step", ylabel="mean return", title="point-mass reaching from offline preferences")
    save_figure(fig, [ax], path)
