"""Adversarial surprise (density, rounds, zero-sum rewards, the rooms world) and InfoPower's terms (InfoNCE bound,
the empowerment bound on a discrete toy, the dual-ascent multiplier)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.control import DualAscentMultiplier
from entrolab.exploration.empowerment import PointMassWithDistractors, info_nce, inverse_dynamics_bound
from entrolab.exploration.surprise import (
    ALICE,
    BOB,
    CategoricalDensity,
    SurpriseRooms,
    adversarial_surprise_rewards,
    round_owner,
)


def test_density_worked_example_and_reset():
    d = CategoricalDensity(batch=2, cells=1, values=3)
    for v in (0, 0, 0, 0, 1):
        d.update(torch.tensor([[v], [2]]))
    lp = d.log_prob(torch.tensor([[2], [2]]))
    assert float(lp[0]) == pytest.approx(math.log(1 / 8), abs=1e-12)  # counts (4, 1, 0), alpha 1, K 3
    assert float(d.log_prob(torch.tensor([[0], [0]]))[0]) == pytest.approx(math.log(5 / 8), abs=1e-12)
    assert float(lp[1]) == pytest.approx(math.log(6 / 8), abs=1e-12)  # the other episode saw only 2s
    assert torch.allclose(d.statistics()[0], torch.tensor([5 / 8, 2 / 8, 1 / 8]))
    d.reset()
    assert float(d.log_prob(torch.tensor([[1], [1]]))[0]) == pytest.approx(math.log(1 / 3))
    d.update(torch.tensor([[0], [0]]), where=torch.tensor([True, False]))
    assert d.total.tolist() == [1.0, 0.0]
    # cells add up: log p of a 2-cell observation is the sum of the cells'
    d2 = CategoricalDensity(batch=1, cells=2, values=2)
    d2.update(torch.tensor([[0, 1]]))
    assert float(d2.log_prob(torch.tensor([[0, 0]]))) == pytest.approx(math.log(2 / 3) + math.log(1 / 3))


def test_rounds_alternate_with_alice_first():
    assert [round_owner(t, 3) for t in range(12)] == [ALICE] * 3 + [BOB] * 3 + [ALICE] * 3 + [BOB] * 3


def test_rewards_are_zero_sum_and_respect_no_reward_time():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(5, 16, generator=g, dtype=torch.float64) * 3
    bob, alice = adversarial_surprise_rewards(lp, round_len=4, no_reward_time=0.5)
    owners = torch.tensor([round_owner(t, 4) for t in range(16)])
    assert bool((bob[:, owners == ALICE] == 0).all())
    for start in (4, 12):  # Bob's rounds: nothing in the first half, log p after
        assert bool((bob[:, start : start + 2] == 0).all())
        assert torch.equal(bob[:, start + 2 : start + 4], lp[:, start + 2 : start + 4])
    # Alice is paid at the end of her round exactly minus Bob's next-round return, nowhere else
    for a_end, b_start in ((3, 4), (11, 12)):
        assert torch.allclose(alice[:, a_end], -bob[:, b_start : b_start + 4].sum(1))
    assert int((alice != 0).sum()) == 10
    assert torch.allclose(alice.sum(1), -bob.sum(1))
    with pytest.raises(ValueError, match="multiple"):
        adversarial_surprise_rewards(lp[:, :10], round_len=4)
    with pytest.raises(ValueError, match="no_reward_time"):
        adversarial_surprise_rewards(lp, round_len=4, no_reward_time=1.0)


def test_rooms_world():
    world = SurpriseRooms()
    g = torch.Generator().manual_seed(0)
    state = world.reset(2)
    assert world.room(state).tolist() == [0, 0]
    # the dark room's view is constant; the noisy room's changes until the switch is pressed
    dark = {"pos": torch.tensor([[5, 5], [5, 5]]), "switch_off": torch.zeros(2, dtype=torch.bool)}
    assert bool((world.observe(dark, g) == 3).all())
    noisy = {"pos": torch.tensor([[1, 5], [1, 5]]), "switch_off": torch.tensor([False, True])}
    views = torch.stack([world.observe(noisy, g) for _ in range(5)])
    assert len({tuple(v[0].tolist()) for v in views}) > 1 and len({tuple(v[1].tolist()) for v in views}) == 1
    # walls stop moves; stepping on the switch turns the noise off
    s = {"pos": torch.tensor([[1, 2]]), "switch_off": torch.zeros(1, dtype=torch.bool)}
    assert world.step(s, torch.tensor([4]))["pos"].tolist() == [[1, 3]]  # through the door
    blocked = {"pos": torch.tensor([[2, 2]]), "switch_off": torch.zeros(1, dtype=torch.bool)}
    assert world.step(blocked, torch.tensor([4]))["pos"].tolist() == [[2, 2]]
    on_switch = world.step({"pos": torch.tensor([[0, 5]]), "switch_off": torch.zeros(1, dtype=torch.bool)},
                           torch.tensor([4]))  # fmt: skip
    assert bool(on_switch["switch_off"][0])
    with pytest.raises(ValueError, match="colours"):
        SurpriseRooms(colours=1)


def test_rooms_gymnasium_api():
    from tests.conftest import engine

    engine("gymnasium", "gallery")
    env = SurpriseRooms().gym_env(max_steps=5)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["room"] == 0
    done = False
    steps = 0
    while not done:
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and reward == 0.0
        done, steps = term or trunc, steps + 1
    assert steps == 5


def test_info_nce_is_bounded_by_log_batch():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        q, k = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
        loss, bound = info_nce(q, k)
        assert float(bound) <= math.log(8) + 1e-6 and float(loss) >= 0
    _, perfect = info_nce(torch.eye(6) * 100, torch.eye(6))
    assert float(perfect) == pytest.approx(math.log(6), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(torch.ones(1, 3), torch.ones(1, 3))


def test_empowerment_bound_on_the_discrete_toy():
    # z_t = (z_{t-1} + a) mod 8, a uniform over 4: I(A; Z_t | Z_t-1) = ln 4; the bound is tight with the exact
    # inverse model and below it with any other
    g = torch.Generator().manual_seed(0)
    z0 = torch.randint(8, (4000,), generator=g)
    a = torch.randint(4, (4000,), generator=g)
    z1 = (z0 + a) % 8
    exact = torch.full((4000, 4), -1e9)
    exact[torch.arange(4000), (z1 - z0) % 8] = 0.0
    assert float(inverse_dynamics_bound(exact, a, action_entropy=math.log(4))) == pytest.approx(math.log(4))
    for _ in range(3):
        other = torch.randn(4000, 4, generator=g)
        assert float(inverse_dynamics_bound(other, a, action_entropy=math.log(4))) < math.log(4)
    with pytest.raises(ValueError, match="actions"):
        inverse_dynamics_bound(exact, a.float(), action_entropy=1.0)  # type: ignore[arg-type]


def test_dual_ascent_multiplier():
    m = DualAscentMultiplier(epsilon=0.5, lr=0.1, init=1.0)
    m.observe(torch.tensor([1.5, 1.5]))
    assert m.value == pytest.approx(1.1)  # KL above the bound: up
    m.observe(0.0)
    assert m.value == pytest.approx(1.05)  # below: down
    for _ in range(100):
        m.observe(-10.0)
    assert m.value == 0.0  # projected to >= 0
    back = DualAscentMultiplier(epsilon=9.0)
    back.load_state_dict(m.state_dict())
    assert back.value == 0.0 and back.epsilon == 0.5
    with pytest.raises(ValueError, match="constraint"):
        m.observe(float("nan"))


def test_point_mass_with_distractors():
    env = PointMassWithDistractors(noise_dims=5, seed=1)
    g = torch.Generator().manual_seed(0)
    pos, noise = env.reset(4, g)
    pos2, noise2 = env.step(pos, noise, torch.tensor([1, 1, 0, 8]), g)
    assert torch.allclose(pos2[2], pos[2]) and bool((pos2.abs() <= 1).all())
    obs = env.observe(pos2, noise2)
    assert obs.shape == (4, 7)
    assert torch.allclose(obs @ env.mix, torch.cat([pos2, noise2], 1), atol=1e-5)  # an orthogonal mixing
    with pytest.raises(ValueError, match="rho"):
        PointMassWithDistractors(rho=1.0)
