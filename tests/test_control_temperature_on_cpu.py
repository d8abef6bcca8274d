"""SAC's automatic temperature (LagrangianTemperature): the spec's worked example, update direction and fixed point,
the two loss forms, automatic targets, exact resumption, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entrolab.control import Controller, LagrangianTemperature


def test_worked_example_gradients_of_both_forms():
    # spec: 6-D actions, mean log pi = 8, alpha = 0.2: paper-form gradient -0.2 (8 - 6) = -0.4, log-alpha form -2.0
    lp = torch.full((5,), 8.0)
    paper = LagrangianTemperature(action_dim=6, init=0.2)
    code = LagrangianTemperature(action_dim=6, init=0.2, alpha_loss="log_alpha")
    assert float(paper.log_alpha_grad(lp)) == pytest.approx(-0.4, abs=1e-12)
    assert float(code.log_alpha_grad(lp)) == pytest.approx(-2.0, abs=1e-12)
    # they differ exactly by the factor alpha
    for a in (0.05, 1.0, 3.0):
        g1 = LagrangianTemperature(action_dim=2, init=a).log_alpha_grad(torch.tensor([0.3, -1.7]))
        g2 = LagrangianTemperature(action_dim=2, init=a, alpha_loss="log_alpha").log_alpha_grad(
            torch.tensor([0.3, -1.7])
        )
        assert float(g1) == pytest.approx(a * float(g2), rel=1e-12)


@pytest.mark.parametrize("form", ["paper", "log_alpha"])
def test_direction_and_fixed_point(form):
    t = LagrangianTemperature(target_entropy=-1.0, init=0.5, alpha_loss=form, lr=1e-2)
    below = torch.full((8,), 2.0)  # entropy -2 < -1: alpha must rise
    above = torch.full((8,), -0.5)  # entropy 0.5 > -1: alpha must fall
    at = torch.full((8,), 1.0)  # entropy exactly the target: no change
    a0 = t.value
    t.observe(below)
    assert t.value > a0
    a1 = t.value
    t.observe(above)
    t.observe(above)
    assert t.value < a1
    fixed = LagrangianTemperature(target_entropy=-1.0, init=0.5, alpha_loss=form)
    fixed.observe(at)
    assert fixed.value == pytest.approx(0.5, abs=1e-15)


def test_automatic_targets_and_protocol():
    assert LagrangianTemperature(action_dim=3).target_entropy == -3.0
    assert LagrangianTemperature(num_actions=4).target_entropy == pytest.approx(0.98 * math.log(4))
    assert LagrangianTemperature(num_actions=4, discrete_fraction=0.5).target_entropy == pytest.approx(
        0.5 * math.log(4)
    )
    assert LagrangianTemperature(target_entropy=-0.3).target_entropy == -0.3
    assert isinstance(LagrangianTemperature(action_dim=1), Controller)
    assert LagrangianTemperature(action_dim=1, init=0.1).value == pytest.approx(0.1)


def test_state_round_trip_continues_exactly():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, generator=g) * 2 + 1 for _ in range(10)]
    full = LagrangianTemperature(action_dim=2, lr=0.05)
    half = LagrangianTemperature(action_dim=2, lr=0.05)
    for b in batches:
        full.observe(b)
    for b in batches[:5]:
        half.observe(b)
    saved = json.loads(json.dumps(half.state_dict()))  # JSON-serialisable
    resumed = LagrangianTemperature(action_dim=7)
    resumed.load_state_dict(saved)
    for b in batches[5:]:
        resumed.observe(b)
    assert resumed.value == full.value and resumed.target_entropy == -2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of"),
        ({"action_dim": 2, "num_actions": 3}, "exactly one of"),
        ({"action_dim": 0}, "action_dim"),
        ({"num_actions": 1}, "num_actions"),
        ({"target_entropy": "high"}, "target_entropy"),
        ({"target_entropy": float("nan")}, "target_entropy"),
        ({"action_dim": 2, "init": 0.0}, "init"),
        ({"action_dim": 2, "lr": -1.0}, "lr"),
        ({"action_dim": 2, "alpha_loss": "sb3"}, "alpha_loss"),
        ({"num_actions": 4, "discrete_fraction": 1.5}, "discrete_fraction"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LagrangianTemperature(**kwargs)


def test_bad_log_probs():
    t = LagrangianTemperature(action_dim=1)
    with pytest.raises(ValueError, match="finite"):
        t.observe(torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match="log_prob"):
        t.observe(torch.zeros(0))
    with pytest.raises(TypeError, match="log_prob"):
        t.observe([1.0])  # type: ignore[arg-type]
