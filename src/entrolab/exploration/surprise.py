"""Explore and Control with Adversarial Surprise: two policies take turns controlling one body and compete over
observation surprise.

Explore (Alice) acts first; then Control (Bob), and so on, ``round_len`` steps each.  Bob's reward at a step is
``log p_theta(o_t)`` under a density of his own observations so far in the episode (refit online, fresh each episode;
nothing in the first ``no_reward_time`` fraction of his round); Alice's reward, delivered at the end of her round,
is minus Bob's return in the round that follows.  Alice learns to lead the body where Bob cannot regain control;
Bob learns to find the predictable places (a dark room) or to switch the noise off.  The paper shows the game covers
the latent state in block MDPs with stochastic observations, where novelty seeking is distracted by the noise and
surprise minimisation alone hides in the dark.

References
----------
Fickinger, Jaques, Parajuli, Chang, Rhinehart, Berseth, Russell, Levine, "Explore and Control with Adversarial
Surprise", arXiv 2107.07394; ``shared/specs/beyond_llm.md`` section 11 (medium confidence; defaults unverified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = ["CategoricalDensity", "SurpriseRooms", "adversarial_surprise_rewards", "round_owner"]

ALICE, BOB = 0, 1


class CategoricalDensity:
    r"""Per-cell categorical density of observations with Laplace smoothing, one per episode of a batch.

    ``log p(o) = sum_c log((n_c(o_c) + alpha) / (N + alpha K))`` over the ``cells`` of an observation whose entries
    take ``K`` values, with ``n_c`` the counts seen so far (``N`` of them).  ``reset`` starts fresh episodes.

    Examples
    --------
    >>> import torch, math
    >>> d = CategoricalDensity(batch=1, cells=1, values=3)
    >>> for v in (0, 0, 0, 0, 1):
    ...     d.update(torch.tensor([[v]]))
    >>> [round(float(d.log_prob(torch.tensor([[v]]))), 4) for v in (2, 0)]
    [-2.0794, -0.47]
    """

    def __init__(self, *, batch: int, cells: int, values: int, alpha: float = 1.0) -> None:
        for name, v in (("batch", batch), ("cells", cells), ("values", values)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.values, self.alpha = values, float(alpha)
        self.counts = torch.zeros(batch, cells, values, dtype=torch.float64)
        self.total = torch.zeros(batch, dtype=torch.float64)

    def _check(self, obs: Tensor) -> None:
        if not isinstance(obs, Tensor) or obs.dtype != torch.long or obs.shape != self.counts.shape[:2]:
            raise ValueError(f"obs must be int64 of shape {tuple(self.counts.shape[:2])}, got {describe(obs)}")
        if bool((obs < 0).any() | (obs >= self.values).any()):
            raise ValueError(f"observation values must be in [0, {self.values})")

    def log_prob(self, obs: Tensor) -> Tensor:
        """``(B,)`` log-likelihood of ``obs`` ``(B, cells)`` before it is added."""
        self._check(obs)
        n = self.counts.gather(2, obs.unsqueeze(2)).squeeze(2)  # (B, cells)
        denom = (self.total + self.alpha * self.values).unsqueeze(1)
        return torch.log((n + self.alpha) / denom).sum(1)

    def update(self, obs: Tensor, where: Tensor | None = None) -> None:
        """Add ``obs`` to the counts of the episodes where ``where`` (``(B,)`` bool, default all) holds."""
        self._check(obs)
        w = torch.ones(obs.shape[0], dtype=torch.float64) if where is None else where.to(torch.float64)
        self.counts.scatter_add_(2, obs.unsqueeze(2), w.view(-1, 1, 1).expand(-1, obs.shape[1], 1))
        self.total += w

    def statistics(self) -> Tensor:
        """``(B, cells * K)`` smoothed frequencies: the sufficient statistics Bob's policy sees."""
        p = (self.counts + self.alpha) / (self.total.view(-1, 1, 1) + self.alpha * self.values)
        return p.flatten(1).float()

    def reset(self) -> None:
        self.counts.zero_()
        self.total.zero_()


def round_owner(step: int, round_len: int) -> int:
    """Who controls the body at ``step`` (0-based): ``ALICE`` (0) in even rounds, ``BOB`` (1) in odd ones."""
    if isinstance(round_len, bool) or not isinstance(round_len, int) or round_len < 1:
        raise ValueError(f"round_len must be an int >= 1, got {round_len!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}")
    return (step // round_len) % 2


def adversarial_surprise_rewards(
    bob_log_prob: Tensor, *, round_len: int, no_reward_time: float = 0.5
) -> tuple[Tensor, Tensor]:
    r"""Per-step rewards of both players from Bob's observation log-likelihoods.

    Parameters
    ----------
    bob_log_prob : Tensor
        ``(B, T)``: ``log p_theta(o_t)`` at every step (only Bob's steps are read).
    round_len : int
        Steps per round; Alice owns rounds 0, 2, ...; ``T`` must be a multiple of ``2 round_len``.
    no_reward_time : float
        In ``[0, 1)``: Bob earns nothing in this first fraction of his round (he first has to get somewhere).

    Returns
    -------
    (Tensor, Tensor)
        Bob's ``(B, T)`` rewards (0 off his rounds) and Alice's ``(B, T)`` rewards: at the last step of each of her
        rounds, minus Bob's return in the round that follows; 0 elsewhere.  The game is zero-sum per pair of rounds.
    """
    if not isinstance(bob_log_prob, Tensor) or bob_log_prob.ndim != 2 or not bob_log_prob.dtype.is_floating_point:
        raise TypeError(f"bob_log_prob must be a floating tensor (B, T), got {describe(bob_log_prob)}")
    if not 0 <= no_reward_time < 1:
        raise ValueError(f"no_reward_time must be in [0, 1), got {no_reward_time!r}")
    b, t = bob_log_prob.shape
    if isinstance(round_len, bool) or not isinstance(round_len, int) or round_len < 1 or t % (2 * round_len):
        raise ValueError(f"T = {t} must be a multiple of 2 * round_len (round_len = {round_len!r})")
    steps = torch.arange(t)
    in_round = steps % round_len
    bob_step = (steps // round_len) % 2 == BOB
    paid = bob_step & (in_round >= int(no_reward_time * round_len))
    bob = torch.where(paid, bob_log_prob, 0.0)
    per_round = bob.view(b, t // round_len, round_len).sum(-1)  # (B, rounds)
    alice = torch.zeros_like(bob)
    ends = torch.arange(0, t // round_len, 2) * round_len + round_len - 1  # last step of each Alice round
    alice[:, ends] = -per_round[:, 1::2]
    return bob, alice


@dataclass
class SurpriseRooms:
    """A 7 x 7 world with an open room (west, the start), a noisy room (north-east: its tiles show random colours
    every step until the switch in its corner is stepped on) and a dark room (south-east: every view is black).
    The agent sees the 3 x 3 cells around it; 5 actions (stay, up, down, left, right).  Batched in torch; the
    gymnasium API is :meth:`gym_env`.

    Observation values: 0 floor, 1 wall, 2 switch, 3 dark, 4.. ``4 + colours - 1`` noise colours.
    """

    colours: int = 4

    SIZE = 7
    START = (3, 1)
    SWITCH = (0, 6)

    def __post_init__(self) -> None:
        if isinstance(self.colours, bool) or not isinstance(self.colours, int) or self.colours < 2:
            raise ValueError(f"colours must be an int >= 2, got {self.colours!r}")
        n = self.SIZE
        wall = torch.zeros(n, n, dtype=torch.bool)
        wall[:, 3] = True
        wall[3, 4:] = True
        wall[1, 3] = wall[5, 3] = False  # doors into the noisy (north) and dark (south) rooms
        r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        self.wall = wall
        self.noisy = (r <= 2) & (c >= 4)
        self.dark = (r >= 4) & (c >= 4)

    @property
    def values(self) -> int:
        return 4 + self.colours

    @property
    def cells(self) -> int:
        return 9

    @property
    def num_positions(self) -> int:
        return self.SIZE * self.SIZE

    def reset(self, batch: int) -> dict[str, Tensor]:
        pos = torch.tensor([self.START]).expand(batch, 2).clone()
        return {"pos": pos, "switch_off": torch.zeros(batch, dtype=torch.bool)}

    def step(self, state: dict[str, Tensor], actions: Tensor) -> dict[str, Tensor]:
        moves = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])
        new = (state["pos"] + moves[actions]).clamp(0, self.SIZE - 1)
        blocked = self.wall[new[:, 0], new[:, 1]]
        pos = torch.where(blocked.unsqueeze(1), state["pos"], new)
        pressed = (pos[:, 0] == self.SWITCH[0]) & (pos[:, 1] == self.SWITCH[1])
        return {"pos": pos, "switch_off": state["switch_off"] | pressed}

    def observe(self, state: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """``(B, 9)`` int64 views."""
        pos, b = state["pos"], state["pos"].shape[0]
        off = torch.tensor([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        cell = pos.unsqueeze(1) + off  # (B, 9, 2)
        outside = (cell < 0).any(-1) | (cell >= self.SIZE).any(-1)
        cr, cc = cell[..., 0].clamp(0, self.SIZE - 1), cell[..., 1].clamp(0, self.SIZE - 1)
        view = torch.where(outside | self.wall[cr, cc], 1, 0)
        view = torch.where((cr == self.SWITCH[0]) & (cc == self.SWITCH[1]) & ~outside, 2, view)
        noise = 4 + torch.randint(self.colours, (b, 9), generator=generator)
        noisy = self.noisy[cr, cc] & ~outside & ~self.wall[cr, cc] & ~state["switch_off"].unsqueeze(1)
        view = torch.where(noisy & (view == 0), noise, view)
        in_dark = self.dark[pos[:, 0], pos[:, 1]].unsqueeze(1)
        return torch.where(in_dark, 3, view).long()

    def room(self, state: dict[str, Tensor]) -> Tensor:
        """``(B,)``: 0 open room, 1 noisy room, 2 dark room."""
        pos = state["pos"]
        return torch.where(self.noisy[pos[:, 0], pos[:, 1]], 1, torch.where(self.dark[pos[:, 0], pos[:, 1]], 2, 0))

    def gym_env(self, *, max_steps: int = 64) -> Any:
        """A single-episode ``gymnasium.Env`` view of the same dynamics (observation: the 3 x 3 view, MultiDiscrete;
        no reward: the game's rewards come from the players' density)."""
        import gymnasium as gym

        world = self

        class Env(gym.Env):  # type: ignore[misc]
            def __init__(self) -> None:
                self.metadata: dict[str, Any] = {"render_modes": []}
                self.observation_space = gym.spaces.MultiDiscrete([world.values] * 9)
                self.action_space = gym.spaces.Discrete(5)
                self._gen = torch.Generator().manual_seed(0)

            def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
                super().reset(seed=seed)
                if seed is not None:
                    self._gen.manual_seed(seed)
                self._state, self._t = world.reset(1), 0
                return world.observe(self._state, self._gen)[0].numpy(), {"room": 0}

            def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
                self._state = world.step(self._state, torch.tensor([int(action)]))
                self._t += 1
                obs = world.observe(self._state, self._gen)[0].numpy()
                info = {"room": int(world.room(self._state)[0]), "switch_off": bool(self._state["switch_off"][0])}
                return obs, 0.0, False, self._t >= max_steps, info

        return Env()
