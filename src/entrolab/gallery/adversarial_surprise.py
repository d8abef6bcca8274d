"""Gallery entry ``adversarial_surprise``: state coverage of the Explore/Control game against a random policy and a
single surprise-minimising policy, in a world with a noisy room and a dark room.

:class:`~entrolab.exploration.surprise.SurpriseRooms`: 7 x 7, an open room where episodes start, a noisy room whose
tiles change colour every step until its switch is pressed, a dark room where every view is the same; the agent sees
the 3 x 3 cells around it.  Episodes of 4 rounds x 16 steps.

- ``adversarial``: Alice (Explore) and Bob (Control) alternate, Alice first; Bob's reward is the log-likelihood of
  his observations under the episode's per-cell categorical density (nothing in the first half of his round), Alice's
  is minus Bob's next-round return (:func:`~entrolab.exploration.surprise.adversarial_surprise_rewards`).
- ``surprise_min``: one policy rewarded by the log-likelihood of every observation (SMiRL-style).
- ``random``: uniform actions.

Policies: MLPs over the position (one-hot), the time in the round and, for Bob and the surprise minimiser, the
density's smoothed frequencies; REINFORCE with per-step batch baselines, 64 episodes per update, Adam 3e-3.  The
metric is the number of distinct cells the body visits per episode (256 evaluation episodes), with the share of
steps spent in each room.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.exploration.surprise import (
    BOB,
    CategoricalDensity,
    SurpriseRooms,
    adversarial_surprise_rewards,
    round_owner,
)
from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure

TITLE = "Explore and Control with Adversarial Surprise"
PAPER = "arXiv 2107.07394"
CLAIM = (
    "A game in which Explore seeks states where Control cannot keep its observations predictable covers more of "
    "the environment than surprise minimisation (which hides in the dark) and is not trapped by uncontrollable noise."
)
VARIANTS = ("adversarial", "surprise_min", "random")
ROUND_LEN, ROUNDS, BATCH, UPDATES, QUICK_UPDATES = 16, 4, 64, 400, 8


def setup(quick: bool) -> str:
    updates = QUICK_UPDATES if quick else UPDATES
    return (
        f"SurpriseRooms (7 x 7; open, noisy and dark rooms; 3 x 3 views), {ROUNDS} rounds x {ROUND_LEN} steps per "
        f"episode, {updates} REINFORCE updates of {BATCH} episodes per learned variant; coverage over 256 evaluation "
        "episodes."
    )


class _Policy(nn.Module):
    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, 128), nn.Tanh(), nn.Linear(128, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _features(world: SurpriseRooms, state: dict[str, torch.Tensor], frac: float, stats: torch.Tensor | None):
    pos = state["pos"][:, 0] * world.SIZE + state["pos"][:, 1]
    parts = [torch.nn.functional.one_hot(pos, world.num_positions).float(), torch.full((pos.shape[0], 1), frac)]
    if stats is not None:
        parts.append(stats)
    return torch.cat(parts, 1)


def _episodes(variant: str, world: SurpriseRooms, policies: dict[str, _Policy], n: int, gen: torch.Generator):
    """Roll out ``n`` episodes; returns per-step log-probs of the acting policy, the owner of each step, Bob's (or
    the minimiser's) observation log-likelihoods, and visit statistics."""
    horizon = ROUND_LEN * ROUNDS
    state = world.reset(n)
    density = CategoricalDensity(batch=n, cells=world.cells, values=world.values)
    logps, owners, obs_lp = [], [], []
    visited = torch.zeros(n, world.num_positions, dtype=torch.bool)
    rooms = torch.zeros(n, 3)
    for t in range(horizon):
        owner = round_owner(t, ROUND_LEN) if variant == "adversarial" else BOB
        obs = world.observe(state, gen)
        if owner == BOB and variant != "random":
            obs_lp.append(density.log_prob(obs))
            density.update(obs)
        else:
            obs_lp.append(torch.zeros(n, dtype=torch.float64))
        pos_idx = state["pos"][:, 0] * world.SIZE + state["pos"][:, 1]
        visited[torch.arange(n), pos_idx] = True
        rooms += torch.nn.functional.one_hot(world.room(state), 3).float()
        if variant == "random":
            a = torch.randint(5, (n,), generator=gen)
            logps.append(torch.zeros(n))
        else:
            name = "alice" if owner != BOB else "bob"
            frac = (t % ROUND_LEN) / ROUND_LEN if variant == "adversarial" else t / horizon
            x = _features(world, state, frac, density.statistics() if name == "bob" else None)
            logits = policies[name](x)
            a = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            logps.append(torch.log_softmax(logits, -1).gather(1, a.unsqueeze(1)).squeeze(1))
        owners.append(owner)
        state = world.step(state, a)
    return {
        "logp": torch.stack(logps, 1),
        "owners": torch.tensor(owners),
        "obs_lp": torch.stack(obs_lp, 1).float(),
        "coverage": visited.sum(1).float(),
        "rooms": rooms / horizon,
        "switch": state["switch_off"].float(),
    }


def _reinforce(logp: torch.Tensor, rewards: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """REINFORCE over the steps ``mine`` (``(T,)`` bool) with rewards-to-go, per-step batch baseline, normalised."""
    rtg = rewards.flip(1).cumsum(1).flip(1)
    adv = rtg - rtg.mean(0, keepdim=True)
    adv = adv / (adv[:, mine].std() + 1e-8)
    return -(logp[:, mine] * adv[:, mine]).sum(1).mean()


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    world = SurpriseRooms()
    stats_dim = world.cells * world.values
    policies = {"alice": _Policy(world.num_positions + 1), "bob": _Policy(world.num_positions + 1 + stats_dim)}
    params = [p for pol in policies.values() for p in pol.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    curve = []
    for u in range(updates if variant != "random" else 0):
        ep = _episodes(variant, world, policies, BATCH, gen)
        if variant == "adversarial":
            bob_r, alice_r = adversarial_surprise_rewards(ep["obs_lp"], round_len=ROUND_LEN)
            bob_steps = ep["owners"] == BOB
            loss = _reinforce(ep["logp"], bob_r, bob_steps) + _reinforce(ep["logp"], alice_r, ~bob_steps)
        else:
            loss = _reinforce(ep["logp"], ep["obs_lp"], torch.ones(ep["logp"].shape[1], dtype=torch.bool))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if u % max(1, updates // 20) == 0 or u == updates - 1:
            curve.append([u + 1, float(ep["coverage"].mean())])
    with torch.no_grad():
        ev = _episodes(variant, world, policies, 256, gen)
    return {
        "coverage": float(ev["coverage"].mean()),
        "open_room": float(ev["rooms"][:, 0].mean()),
        "noisy_room": float(ev["rooms"][:, 1].mean()),
        "dark_room": float(ev["rooms"][:, 2].mean()),
        "switch_pressed": float(ev["switch"].mean()),
        "curve": curve,
    }


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_UPDATES if quick else UPDATES)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    col = functools.partial(column, results)

    f = functools.partial(cell, results, digits=2)

    pairs = [
        ("distinct cells per episode: vs surprise minimiser", "coverage", "surprise_min"),
        ("distinct cells per episode: vs random policy", "coverage", "random"),
        ("share of steps in the dark room: vs surprise minimiser", "dark_room", "surprise_min"),
        ("share of steps in the noisy room: vs random policy", "noisy_room", "random"),
        ("episodes with the switch pressed: vs random policy", "switch_pressed", "random"),
    ]
    rows = [(label, f("adversarial", key), f(base, key)) for label, key, base in pairs]
    n = len(results)
    adv, smin, rnd = (sum(col(v, "coverage")) / n for v in VARIANTS)
    verdict = (
        f"Adversarial surprise visits {adv:.1f} distinct cells per episode against {smin:.1f} for the surprise "
        f"minimiser and {rnd:.1f} for a random policy: the game covers "
        f"{'more' if adv > smin else 'not more'} than surprise minimisation and "
        f"{'more' if adv > rnd else 'not more'} than random exploration at this scale."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, v in enumerate(VARIANTS[:2]):
        for r in results:
            if r[v]["curve"]:
                x, y = zip(*r[v]["curve"])
                axes[0].plot(x, y, color=f"C{k}", alpha=0.8, label=v if r is results[0] else None)
    rnd = sum(r["random"]["coverage"] for r in results) / len(results)
    axes[0].axhline(rnd, color="C2", ls="--", label="random")
    axes[0].set(xlabel="update", ylabel="distinct cells per episode", title="coverage while training")
    rooms = ("open_room", "noisy_room", "dark_room")
    width = 0.25
    for k, v in enumerate(VARIANTS):
        means = [sum(r[v][room] for r in results) / len(results) for room in rooms]
        axes[1].bar([i + k * width for i in range(3)], means, width, color=f"C{k}", label=v)
    axes[1].set_xticks([i + width for i in range(3)], ["open", "noisy", "dark"])
    axes[1].set(ylabel="share of steps", title="where the body spends its time (evaluation)")
    save_figure(fig, axes, path)
