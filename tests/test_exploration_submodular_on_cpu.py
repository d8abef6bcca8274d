"""SubPO: the spec's worked example, telescoping, the modular special case, unbiasedness against the exact gradient
of a tiny MDP, submodularity checks, and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entrolab.exploration import (
    CoverageObjective,
    FacilityLocationObjective,
    GridWorld,
    check_submodular,
    prefix_values,
    subpo_loss,
    subpo_weights,
)
from entrolab.exploration.submodular import brute_force_max


def test_worked_example_weights():
    v = torch.tensor([[0.0, 3, 5, 6, 6, 7]])
    assert subpo_weights(v).tolist() == [[7.0, 4.0, 2.0, 1.0, 1.0]]
    assert subpo_weights(v, credit="prefix_value").tolist() == [[3.0, 5.0, 6.0, 6.0, 7.0]]


def test_reward_to_go_of_marginal_gains_telescopes():
    env = GridWorld(6)
    obj = env.coverage(rich=(1, 1))
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, env.num_states, (7, 9), generator=g)
    values = prefix_values(obj, states)
    gains = values[:, 1:] - values[:, :-1]  # F(s_{j+1} | tau_{0:j})
    rtg = gains.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(subpo_weights(values), rtg)
    # the incremental coverage path equals F of the visited set, computed from scratch
    for b in range(3):
        for j in range(9):
            visited = torch.zeros(env.num_states, dtype=torch.bool)
            visited[states[b, : j + 1]] = True
            assert float(values[b, j]) == pytest.approx(float(obj.value(visited)))


def test_modular_objective_reduces_to_reinforce():
    # F(S) = sum_{s in S} w(s) over distinct states: SubPO's weight is the sum of future rewards w(s_{t+1})
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    obj = CoverageObjective(w, torch.eye(4, dtype=torch.bool))
    states = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    values = prefix_values(obj, states)
    rewards = w[states[:, 1:]]
    torch.testing.assert_close(subpo_weights(values), rewards.flip(1).cumsum(1).flip(1))


def test_unbiased_against_the_exact_gradient_of_a_tiny_mdp():
    # two actions (left/right) on a 4-state line, start at 1, H = 3; tabular time-augmented softmax policy
    n, horizon = 4, 3
    obj = CoverageObjective(torch.tensor([1.0, 0.5, 2.0, 3.0], dtype=torch.float64), torch.eye(n, dtype=torch.bool))

    def step(s: int, a: int) -> int:
        return min(n - 1, max(0, s + (1 if a else -1)))

    theta = torch.randn(horizon, n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta.requires_grad_()
    exact = torch.zeros((), dtype=torch.float64)  # J = sum_tau p(tau) F(tau), differentiated by autograd
    for actions in itertools.product((0, 1), repeat=horizon):
        s, logp, states = 1, torch.zeros((), dtype=torch.float64), [1]
        for h, a in enumerate(actions):
            logp = logp + torch.log_softmax(theta[h, s], -1)[a]
            s = step(s, a)
            states.append(s)
        exact = exact + logp.exp() * prefix_values(obj, torch.tensor([states]))[0, -1]
    (g_exact,) = torch.autograd.grad(exact, theta)
    # Monte Carlo SubPO (no baseline, no normalisation): mean over 20k trajectories
    gen = torch.Generator().manual_seed(1)
    m = 20000
    s = torch.full((m,), 1)
    states, logps = [s], []
    for h in range(horizon):
        logits = theta[h][s]  # (m, 2)
        a = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
        logps.append(torch.log_softmax(logits, -1).gather(1, a.unsqueeze(1)).squeeze(1))
        s = (s + 2 * a - 1).clamp(0, n - 1)
        states.append(s)
    values = prefix_values(obj, torch.stack(states, 1))
    loss = subpo_loss(torch.stack(logps, 1), values, baseline="none", normalize=False).loss
    (g_mc,) = torch.autograd.grad(-loss, theta)
    assert float((g_mc - g_exact).abs().max()) < 0.05 * float(g_exact.abs().max()) + 0.02
    assert float(g_exact.abs().max()) > 0.1


def test_objectives_are_monotone_and_submodular_and_a_bad_one_is_flagged():
    g = torch.Generator().manual_seed(0)
    check_submodular(GridWorld(5).coverage(rich=(0, 0)), generator=g)
    check_submodular(FacilityLocationObjective(torch.rand(6, 9, generator=g, dtype=torch.float64)), generator=g)

    class Supermodular:  # F(S) = |S|^2: increasing returns
        num_states = 5

        def value(self, visited: torch.Tensor) -> torch.Tensor:
            return visited.sum(-1).double() ** 2

    with pytest.raises(ValueError, match="not submodular"):
        check_submodular(Supermodular(), generator=g)


def test_brute_force_and_grid():
    obj = GridWorld(3).coverage(rich=(0, 0))
    assert brute_force_max(obj, 1) == pytest.approx(float(obj.value(torch.arange(9) == 4)))  # the centre covers all
    env = GridWorld(4, start=(0, 0))
    s = torch.tensor([env.start_state] * 5)
    assert env.step(s, torch.arange(5)).tolist() == [0, 0, 4, 0, 1]  # walls stop moves
    assert math.isclose(float(GridWorld(15).coverage().weights.max()), 5.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: subpo_weights(torch.zeros(2, 3), credit="prefix"), "credit"),
        (lambda: subpo_weights(torch.zeros(2, 1)), "H >= 1"),
        (lambda: subpo_loss(torch.zeros(2, 3), torch.zeros(2, 3)), "log_probs"),
        (lambda: subpo_loss(torch.zeros(2, 2), torch.zeros(2, 3), baseline="ema"), "baseline"),
        (lambda: CoverageObjective(torch.tensor([-1.0]), torch.ones(1, 1, dtype=torch.bool)), "monotone"),
        (lambda: CoverageObjective(torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool)), "cells"),
        (lambda: prefix_values(GridWorld(3).coverage(), torch.tensor([[0, 9]])), "states"),
        (lambda: GridWorld(1), "size"),
        (lambda: FacilityLocationObjective(torch.tensor([[-0.5]])), "similarities"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
