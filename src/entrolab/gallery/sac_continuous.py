"""Soft Actor-Critic for continuous control in one readable file, with entrolab's automatic temperature.

::

    python examples/sac_continuous.py --steps 15000 --seed 0        # Pendulum-v1, a few CPU minutes

The agent of Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (arXiv 1812.05905): a tanh-squashed
Gaussian policy, twin Q networks with Polyak-averaged targets, and the temperature ``alpha`` tuned so that the
policy's entropy meets ``-dim(A)`` (:class:`entrolab.control.LagrangianTemperature`, the paper's loss form).
Defaults are the paper's and stable-baselines3's: Adam 3e-4 everywhere, gamma 0.99, tau 0.005, batch 256, two
256-unit ReLU layers, one gradient step per environment step after ``learning_starts`` = 100 random steps.

Needs ``gymnasium`` (``pip install 'entrolab[gallery]'``).  Prints one JSON line: the final evaluation return, the
return curve, and the temperature and entropy trajectories.  ``entrolab gallery sac`` runs it against
stable-baselines3's SAC on the same seeds and budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from entrolab.control import LagrangianTemperature

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def mlp(inp: int, out: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class Actor(nn.Module):
    """``a = tanh(mu + sigma * eps)``, scaled to the action box; ``log pi`` with the change-of-variables term."""

    scale: Tensor
    bias: Tensor

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: Tensor, *, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        u = mu if deterministic else mu + log_std.exp() * torch.randn_like(mu)
        # log N(u; mu, sigma) - sum log(scale * (1 - tanh(u)^2)), the last term in a stable form
        log_prob = (-0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        log_prob = log_prob - torch.log(self.scale).sum()
        return torch.tanh(u) * self.scale + self.bias, log_prob


class Critic(nn.Module):
    """Twin Q networks."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class Replay:
    """A ring buffer of transitions (numpy, preallocated)."""

    def __init__(self, obs_dim: int, act_dim: int, size: int) -> None:
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.act = np.zeros((size, act_dim), np.float32)
        self.rew = np.zeros(size, np.float32)
        self.done = np.zeros(size, np.float32)
        self.size, self.n, self.i = size, 0, 0

    def add(self, o: np.ndarray, a: np.ndarray, r: float, o2: np.ndarray, d: bool) -> None:
        self.obs[self.i], self.act[self.i], self.rew[self.i], self.next_obs[self.i], self.done[self.i] = o, a, r, o2, d
        self.i = (self.i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[Tensor, ...]:
        j = rng.integers(0, self.n, batch)
        return tuple(torch.as_tensor(x[j]) for x in (self.obs, self.act, self.rew, self.next_obs, self.done))


def evaluate(actor: Actor, env_id: str, *, episodes: int, seed: int) -> float:
    """Mean return of the deterministic policy (the mean action) over ``episodes``."""
    import gymnasium as gym

    env = gym.make(env_id)
    total = 0.0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            with torch.no_grad():
                a, _ = actor(torch.as_tensor(obs, dtype=torch.float32), deterministic=True)
            obs, r, term, trunc, _ = env.step(a.numpy())
            total += float(r)
            done = term or trunc
    env.close()
    return total / episodes


def sac_update(
    sample: tuple[torch.Tensor, ...],
    *,
    actor: Actor,
    critic: Critic,
    target: Critic,
    opt_actor: torch.optim.Optimizer,
    opt_critic: torch.optim.Optimizer,
    temperature: LagrangianTemperature,
    gamma: float,
    tau: float,
) -> float:
    """One SAC update on a replay sample ``(obs, action, reward, next_obs, done)`` (arXiv 1812.05905, Algorithm 1):
    the twin critics to the soft Bellman target, the actor, the temperature, then Polyak-averaged target critics.
    Returns the policy's entropy estimate ``-E[log pi]`` on the sample."""
    o, a, r, o2, d = sample
    alpha = temperature.value
    with torch.no_grad():  # soft Bellman target with the target critics
        a2, logp2 = actor(o2)
        q1t, q2t = target(o2, a2)
        y = r + gamma * (1 - d) * (torch.min(q1t, q2t) - alpha * logp2)
    q1, q2 = critic(o, a)
    loss_q = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    opt_critic.zero_grad(set_to_none=True)
    loss_q.backward()
    opt_critic.step()
    a_new, logp = actor(o)
    q1n, q2n = critic(o, a_new)
    loss_pi = (alpha * logp - torch.min(q1n, q2n)).mean()
    opt_actor.zero_grad(set_to_none=True)
    loss_pi.backward()
    opt_actor.step()
    temperature.observe(logp.detach())  # alpha up when the entropy -E[log pi] is below -dim(A)
    with torch.no_grad():
        for p, pt in zip(critic.parameters(), target.parameters()):
            pt.lerp_(p, tau)
    return float(-logp.detach().mean())


def train(
    env_id: str = "Pendulum-v1",
    *,
    steps: int = 15_000,
    seed: int = 0,
    lr: float = 3e-4,
    gamma: float = 0.99,
    tau: float = 0.005,
    batch: int = 256,
    buffer: int = 1_000_000,
    learning_starts: int = 100,
    eval_every: int = 1_000,
    eval_episodes: int = 5,
    alpha_loss: str = "paper",
    threads: int | None = None,
) -> dict[str, Any]:
    """Train SAC; returns ``final_return``, ``returns`` (``[step, mean eval return]``), ``alpha`` and ``entropy``
    trajectories (every ``eval_every`` steps) and ``seconds``."""
    import gymnasium as gym

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"SAC here needs a continuous (Box) action space; {env_id} has {env.action_space}")
    obs_dim = int(np.prod(env.observation_space.shape or (1,)))
    act_dim = int(np.prod(env.action_space.shape))
    actor = Actor(obs_dim, act_dim, env.action_space.low, env.action_space.high)
    critic = Critic(obs_dim, act_dim)
    target = copy.deepcopy(critic).requires_grad_(False)
    opt_actor = torch.optim.Adam(actor.parameters(), lr=lr)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=lr)
    temperature = LagrangianTemperature(action_dim=act_dim, lr=lr, alpha_loss=alpha_loss)
    replay = Replay(obs_dim, act_dim, min(buffer, steps))
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out: dict[str, Any] = {"returns": [], "alpha": [], "entropy": []}
    t0 = time.perf_counter()
    entropy = float("nan")
    for step in range(1, steps + 1):
        if step <= learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32))[0].numpy()
        next_obs, reward, term, trunc, _ = env.step(action)
        replay.add(obs, action, float(reward), next_obs, bool(term))  # time-limit truncation is not a terminal
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()
        if step > learning_starts:
            entropy = sac_update(
                replay.sample(batch, rng), actor=actor, critic=critic, target=target, opt_actor=opt_actor,
                opt_critic=opt_critic, temperature=temperature, gamma=gamma, tau=tau,
            )  # fmt: skip
        if step % eval_every == 0 or step == steps:
            ret = evaluate(actor, env_id, episodes=eval_episodes, seed=10_000 + seed)
            out["returns"].append([step, ret])
            out["alpha"].append([step, temperature.value])
            out["entropy"].append([step, entropy])
    env.close()
    out["final_return"] = out["returns"][-1][1]
    out["seconds"] = time.perf_counter() - t0
    out["target_entropy"] = temperature.target_entropy
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--steps", type=int, default=15_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-loss", default="paper", choices=["paper", "log_alpha"])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    print(json.dumps(train(a.env, steps=a.steps, seed=a.seed, alpha_loss=a.alpha_loss, threads=a.threads)))


if __name__ == "__main__":
    main()
