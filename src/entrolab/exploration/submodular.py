"""Submodular RL (SubPO): policy gradients on a submodular function of the visited states.

The return of a trajectory is ``F(tau)``, a monotone submodular set function of the states it visits (coverage,
facility location), so it is not a sum of per-step rewards.  SubPO weights ``log pi(a_i | s_i, i)`` by the
reward-to-go of **marginal gains**, ``sum_{j >= i} F(s_{j+1} | tau_{0:j}) = F(tau) - F(tau_{0:i})``, minus a per-step
baseline; the policy sees the time step (or the history), since optimal policies are non-Markovian.

References
----------
Prajapat, Mutný, Zeilinger, Krause, "Submodular Reinforcement Learning", ICLR 2024, arXiv 2307.13372, section 4
(eq. 5); ``shared/specs/beyond_llm.md`` section 6.  The authors' ``main.py`` weights each action by the prefix value
``F(tau_{0:h+1})`` instead (the marginal difference is commented out): ``credit="prefix_value"``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe

__all__ = [
    "CREDITS",
    "CoverageObjective",
    "FacilityLocationObjective",
    "GridWorld",
    "SetFunction",
    "check_submodular",
    "prefix_values",
    "subpo_loss",
    "subpo_weights",
]

CREDITS = ("reward_to_go", "prefix_value")


class CoverageObjective:
    r"""Weighted coverage ``F(S) = sum_{c in N(S)} w(c)``: the total weight of the cells within reach of a visited
    state (``reach[s, c]``: state ``s`` covers cell ``c``).  Monotone and submodular.

    Parameters
    ----------
    weights : Tensor
        ``(C,)`` non-negative cell weights.
    reach : Tensor
        ``(S, C)`` bool.
    """

    def __init__(self, weights: Tensor, reach: Tensor) -> None:
        if not isinstance(weights, Tensor) or weights.ndim != 1 or not weights.dtype.is_floating_point:
            raise TypeError(f"weights must be a 1-D floating tensor, got {describe(weights)}")
        if not bool((weights >= 0).all() & torch.isfinite(weights).all()):
            raise ValueError("coverage weights must be finite and >= 0 (else F is not monotone)")
        if not isinstance(reach, Tensor) or reach.dtype != torch.bool or reach.ndim != 2:
            raise TypeError(f"reach must be a 2-D bool tensor (states, cells), got {describe(reach)}")
        if reach.shape[1] != weights.shape[0]:
            raise ValueError(f"reach has {reach.shape[1]} cells, weights {weights.shape[0]}")
        self.weights, self.reach = weights, reach

    @property
    def num_states(self) -> int:
        return int(self.reach.shape[0])

    def value(self, visited: Tensor) -> Tensor:
        """``F`` of ``(..., S)`` bool visit masks -> ``(...)``."""
        covered = (visited.unsqueeze(-1) & self.reach).any(-2)  # (..., C)
        return (covered.to(self.weights.dtype) * self.weights).sum(-1)

    def modular_reward(self, states: Tensor) -> Tensor:
        """The additive surrogate: each visit pays its whole neighbourhood's weight, covered before or not."""
        return (self.reach[states].to(self.weights.dtype) * self.weights).sum(-1)


class FacilityLocationObjective:
    r"""Facility location ``F(S) = sum_i max_{s in S} sim(i, s)`` (0 for the empty set) over ``sim`` ``(I, S)``
    with non-negative entries: monotone and submodular."""

    def __init__(self, similarity: Tensor) -> None:
        if not isinstance(similarity, Tensor) or similarity.ndim != 2 or not similarity.dtype.is_floating_point:
            raise TypeError(f"similarity must be a 2-D floating tensor, got {describe(similarity)}")
        if not bool((similarity >= 0).all() & torch.isfinite(similarity).all()):
            raise ValueError("facility-location similarities must be finite and >= 0")
        self.similarity = similarity

    @property
    def num_states(self) -> int:
        return int(self.similarity.shape[1])

    def value(self, visited: Tensor) -> Tensor:
        sim = torch.where(visited.unsqueeze(-2), self.similarity, 0.0)  # (..., I, S)
        return sim.amax(-1).sum(-1)


class SetFunction(Protocol):
    """What :func:`check_submodular` needs: the ground-set size and ``F`` of ``(..., S)`` bool masks."""

    @property
    def num_states(self) -> int: ...

    def value(self, visited: Tensor) -> Tensor: ...


def check_submodular(objective: SetFunction, *, trials: int = 200, generator: torch.Generator | None = None,
                     atol: float = 1e-9) -> None:  # fmt: skip
    """Test monotonicity and diminishing returns on random nested sets ``A ⊆ B`` and a state ``x``; raise
    ``ValueError`` with the counterexample when ``F(A + x) - F(A) < F(B + x) - F(B)`` or ``F(B) < F(A)``."""
    n = int(objective.num_states)
    for _ in range(trials):
        b = torch.rand(n, generator=generator) < 0.5
        a = b & (torch.rand(n, generator=generator) < 0.5)
        x = int(torch.randint(n, (1,), generator=generator))
        ax, bx = a.clone(), b.clone()
        ax[x] = bx[x] = True
        fa, fb, fax, fbx = (float(objective.value(s)) for s in (a, b, ax, bx))
        if fb < fa - atol:
            raise ValueError(f"objective is not monotone: F(B) = {fb} < F(A) = {fa} for A ⊆ B")
        if fax - fa < fbx - fb - atol:
            raise ValueError(
                f"objective is not submodular: gain of state {x} is {fax - fa} on A but {fbx - fb} on B ⊇ A"
            )


def prefix_values(objective: CoverageObjective | FacilityLocationObjective, states: Tensor) -> Tensor:
    """``F(tau_{0:j})`` for ``j = 0..H`` of trajectories ``states`` ``(B, H + 1)`` (int64 state ids, ``s_0`` first):
    ``(B, H + 1)``."""
    if not isinstance(states, Tensor) or states.dtype != torch.long or states.ndim != 2:
        raise TypeError(f"states must be an int64 tensor (B, H + 1), got {describe(states)}")
    b, h1 = states.shape
    if bool((states < 0).any() | (states >= objective.num_states).any()):
        raise ValueError(f"states must be ids in [0, {objective.num_states})")
    if isinstance(objective, CoverageObjective):  # incremental: covered cells grow by reach[s_j]
        covered = torch.zeros(b, objective.reach.shape[1], dtype=torch.bool)
        cols = []
        for j in range(h1):
            covered = covered | objective.reach[states[:, j]]
            cols.append((covered.to(objective.weights.dtype) * objective.weights).sum(-1))
        return torch.stack(cols, 1)
    visited = torch.zeros(b, objective.num_states, dtype=torch.bool)
    out = []
    for j in range(h1):
        visited = visited.clone()
        visited[torch.arange(b), states[:, j]] = True
        out.append(objective.value(visited))
    return torch.stack(out, 1)


def subpo_weights(values: Tensor, *, credit: str = "reward_to_go") -> Tensor:
    r"""Per-step weights ``(B, H)`` of ``log pi(a_i)`` from prefix values ``F(tau_{0:j})`` ``(B, H + 1)``.

    ``"reward_to_go"`` (the paper): ``F(tau) - F(tau_{0:i})``, the future marginal gains of step ``i``.
    ``"prefix_value"`` (the authors' code): ``F(tau_{0:i+1})``.

    Examples
    --------
    >>> import torch
    >>> v = torch.tensor([[0.0, 3, 5, 6, 6, 7]])
    >>> subpo_weights(v).tolist(), subpo_weights(v, credit="prefix_value").tolist()
    ([[7.0, 4.0, 2.0, 1.0, 1.0]], [[3.0, 5.0, 6.0, 6.0, 7.0]])
    """
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {', '.join(CREDITS)}; got {credit!r}")
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"values must be (B, H + 1) with H >= 1, got {describe(values)}")
    if credit == "prefix_value":
        return values[:, 1:]
    return values[:, -1:] - values[:, :-1]


def subpo_loss(
    log_probs: Tensor,
    values: Tensor,
    *,
    credit: str = "reward_to_go",
    baseline: str = "batch_mean",
    normalize: bool = True,
) -> LossOutput:
    r"""SubPO's surrogate loss: ``-mean_b sum_i log pi(a_i) (w_i - b_i)`` with :func:`subpo_weights`.

    Parameters
    ----------
    log_probs : Tensor
        ``(B, H)`` log-probabilities of the taken actions (with gradient).
    values : Tensor
        ``(B, H + 1)`` prefix values ``F(tau_{0:j})``.
    credit : {"reward_to_go", "prefix_value"}
    baseline : {"batch_mean", "none"}
        Per-step baseline ``b_i``: the batch mean of the weights at step ``i`` (unbiased for independent rollouts up
        to the ``1/B`` self-term), or none.
    normalize : bool
        Divide the centred weights by their standard deviation over the batch (the spec's demo).

    Returns
    -------
    LossOutput
        Metrics ``subpo_return`` (mean ``F(tau)``) and ``subpo_weight_mean``.
    """
    w = subpo_weights(values, credit=credit).detach()
    if not isinstance(log_probs, Tensor) or log_probs.shape != w.shape:
        raise ValueError(f"log_probs must have shape {tuple(w.shape)} (B, H), got {describe(log_probs)}")
    if baseline not in ("batch_mean", "none"):
        raise ValueError(f"baseline must be 'batch_mean' or 'none', got {baseline!r}")
    adv = w - w.mean(0, keepdim=True) if baseline == "batch_mean" else w
    if normalize:
        adv = adv / (adv.std() + 1e-8) if adv.numel() > 1 else adv
    loss = -(log_probs * adv).sum(-1).mean()
    return LossOutput(loss, {"subpo_return": values[:, -1].mean().detach(), "subpo_weight_mean": w.mean()})


@dataclass
class GridWorld:
    """A ``size x size`` grid, 5 actions (stay, up, down, left, right; walls stop moves), deterministic, batched."""

    size: int = 15
    start: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ValueError(f"size must be an int >= 2, got {self.size!r}")
        if self.start is None:
            self.start = (self.size // 2, self.size // 2)

    @property
    def num_states(self) -> int:
        return self.size * self.size

    @property
    def start_state(self) -> int:
        assert self.start is not None
        return self.start[0] * self.size + self.start[1]

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        r, c = states // self.size, states % self.size
        dr = torch.tensor([0, -1, 1, 0, 0])[actions]
        dc = torch.tensor([0, 0, 0, -1, 1])[actions]
        r = (r + dr).clamp(0, self.size - 1)
        c = (c + dc).clamp(0, self.size - 1)
        return r * self.size + c

    def coverage(self, *, radius: int = 1, rich: tuple[int, int] = (3, 3), scale: float = 8.0) -> CoverageObjective:
        """The spec's demo objective: cell weights ``1 + 4 exp(-|c - rich|^2 / scale)`` (a rich corner), a state
        covers the cells within Chebyshev distance ``radius``."""
        idx = torch.arange(self.num_states)
        r, c = idx // self.size, idx % self.size
        weights = 1 + 4 * torch.exp(-((r - rich[0]) ** 2 + (c - rich[1]) ** 2).double() / scale)
        reach = ((r.unsqueeze(1) - r.unsqueeze(0)).abs() <= radius) & (
            (c.unsqueeze(1) - c.unsqueeze(0)).abs() <= radius
        )
        return CoverageObjective(weights, reach)


def brute_force_max(objective: CoverageObjective | FacilityLocationObjective, k: int) -> float:
    """The best ``F`` over all sets of ``k`` states (tests on tiny instances)."""
    n = objective.num_states
    best = -math.inf
    for combo in itertools.combinations(range(n), k):
        v = torch.zeros(n, dtype=torch.bool)
        v[list(combo)] = True
        best = max(best, float(objective.value(v)))
    return best
