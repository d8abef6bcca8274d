"""Gallery entry ``subpo``: coverage on a grid by SubPO against the modular-reward policy and the code's credit.

The spec's demo (``shared/specs/beyond_llm.md`` section 6): a 15 x 15 grid, 5 actions, start at the centre, horizon
30; cell weights ``1 + 4 exp(-|c - (3, 3)|^2 / 8)`` (a rich corner); ``F`` = total weight of the cells within
Chebyshev radius 1 of a visited cell.  A time-augmented MLP policy (one-hot state and ``h / H`` -> 128 tanh -> 5
logits), 128 rollouts per update, Adam at 1e-2, per-step weights standardised over the batch.  Three ways to credit
actions, same everything else:

- ``subpo``: the reward-to-go of marginal gains (the paper);
- ``prefix_value``: each action weighted by the value of the prefix it ends (the authors' code);
- ``modular``: ordinary REINFORCE on an additive reward, each step paying its whole neighbourhood's weight whether
  covered before or not (the standard-RL baseline the paper compares to).

The metric is the mean ``F`` of 512 trajectories sampled from the final policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab._stats import format_interval, mean_interval
from entrolab.exploration.submodular import GridWorld, prefix_values, subpo_loss
from entrolab.gallery._common import pyplot, run_variants, save_figure

TITLE = "Submodular RL: policy gradients on marginal coverage gains"
PAPER = "arXiv 2307.13372"
CLAIM = (
    "When the objective is a submodular function of the visited states (coverage), crediting actions with the "
    "reward-to-go of marginal gains (SubPO, with a time-augmented policy) covers far more than standard RL on an "
    "additive reward, which rewards revisiting valuable states."
)
VARIANTS = ("subpo", "prefix_value", "modular")
SIZE, HORIZON, ROLLOUTS, UPDATES, QUICK_UPDATES = 15, 30, 128, 300, 15


def setup(quick: bool) -> str:
    updates = QUICK_UPDATES if quick else UPDATES
    return (
        f"{SIZE} x {SIZE} grid, horizon {HORIZON}, rich corner at (3, 3), coverage radius 1; time-augmented MLP "
        f"policy, {ROLLOUTS} rollouts x {updates} Adam updates (lr 1e-2) per variant; final F over 512 rollouts."
    )


class _Policy(nn.Module):
    def __init__(self, num_states: int) -> None:
        super().__init__()
        self.num_states = num_states
        self.net = nn.Sequential(nn.Linear(num_states + 1, 128), nn.Tanh(), nn.Linear(128, 5))

    def forward(self, states: torch.Tensor, h: int) -> torch.Tensor:
        x = torch.nn.functional.one_hot(states, self.num_states).float()
        t = torch.full((states.shape[0], 1), h / HORIZON)
        return self.net(torch.cat([x, t], -1))


def _rollout(policy: _Policy, env: GridWorld, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    states = torch.full((n,), env.start_state, dtype=torch.long)
    path, logps = [states], []
    for h in range(HORIZON):
        logits = policy(states, h)
        a = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
        logps.append(torch.log_softmax(logits, -1).gather(1, a.unsqueeze(1)).squeeze(1))
        states = env.step(states, a)
        path.append(states)
    return torch.stack(path, 1), torch.stack(logps, 1)  # (n, H + 1), (n, H)


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    """Train one credit variant; returns the final mean ``F`` and its learning curve."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    env = GridWorld(SIZE)
    objective = env.coverage()
    policy = _Policy(env.num_states)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    curve = []
    for u in range(updates):
        states, logps = _rollout(policy, env, ROLLOUTS, gen)
        values = prefix_values(objective, states)
        if variant == "modular":  # additive reward: cumulative sums of per-step neighbourhood weights
            rewards = objective.modular_reward(states[:, 1:])
            values = torch.cat([torch.zeros(ROLLOUTS, 1, dtype=rewards.dtype), rewards.cumsum(1)], 1)
        credit = "prefix_value" if variant == "prefix_value" else "reward_to_go"
        loss = subpo_loss(logps, values.float(), credit=credit).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if u % max(1, updates // 20) == 0 or u == updates - 1:
            curve.append([u + 1, float(prefix_values(objective, states)[:, -1].mean())])
    with torch.no_grad():
        states, _ = _rollout(policy, env, 512, gen)
    final = float(prefix_values(objective, states)[:, -1].mean())
    return {"final_F": final, "curve": curve}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_UPDATES if quick else UPDATES)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    def col(v: str) -> list[float]:
        return [r[v]["final_F"] for r in results]

    fmt = {v: format_interval(*mean_interval(col(v)), digits=1) for v in VARIANTS}
    rows = [
        ("final coverage F: SubPO vs modular reward", fmt["subpo"], fmt["modular"]),
        ("final coverage F: SubPO vs the code's prefix-value credit", fmt["subpo"], fmt["prefix_value"]),
    ]
    mean = {v: sum(col(v)) / len(results) for v in VARIANTS}
    sub, mod, pre = mean["subpo"], mean["modular"], mean["prefix_value"]
    wins = sum(a > b for a, b in zip(col("subpo"), col("modular")))
    verdict = (
        f"SubPO covers F = {sub:.1f} on average against {mod:.1f} for the modular-reward policy "
        f"({'higher' if sub > mod else 'not higher'}; SubPO ahead in {wins} of {len(results)} seeds) and {pre:.1f} "
        "for the code's prefix-value credit."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"subpo": "SubPO (marginal gains)", "prefix_value": "code: prefix value", "modular": "modular reward"}
    for k, v in enumerate(VARIANTS):
        for r in results:
            x, y = zip(*r[v]["curve"])
            ax.plot(x, y, color=f"C{k}", alpha=0.8, label=labels[v] if r is results[0] else None)
    ax.set(xlabel="update", ylabel="coverage F of the batch", title="15 x 15 grid, horizon 30 (one line per seed)")
    save_figure(fig, [ax], path)
