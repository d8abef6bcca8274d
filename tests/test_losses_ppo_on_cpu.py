"""PPO / DAPO clip-higher / dual-clip: the spec's worked table (values and gradients), overflow, metrics, registry."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.entropy import debug_checks
from entrolab.losses import get_policy_loss, policy_losses, ppo, register_policy_loss

# (r, A, loss with 0.2/0.2, loss with 0.2/0.28, loss with dual-clip 3 (0.2/0.28), grad wrt lp per setting)
TABLE = [
    (1.25, +1.0, -1.2, -1.25, -1.25, (0.0, -1.25, -1.25)),
    (1.25, -1.0, 1.25, 1.25, 1.25, (1.25, 1.25, 1.25)),
    (0.7, +1.0, -0.7, -0.7, -0.7, (-0.7, -0.7, -0.7)),
    (0.7, -1.0, 0.8, 0.8, 0.8, (0.0, 0.0, 0.0)),
    (5.0, -1.0, 5.0, 5.0, 3.0, (5.0, 5.0, 0.0)),
]
SETTINGS = [
    {"eps_low": 0.2, "eps_high": 0.2},
    {"eps_low": 0.2, "eps_high": 0.28},
    {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0},
]


@pytest.mark.parametrize("row", TABLE)
@pytest.mark.parametrize("setting", range(3))
def test_spec_worked_table(row, setting):
    r, a, *losses, grads = row
    lp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    out = ppo(
        lp,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([a], dtype=torch.float64),
        torch.ones(1, 1),
        agg="token-mean",
        **SETTINGS[setting],
    )
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(losses[setting], abs=1e-12)
    assert float(lp.grad) == pytest.approx(grads[setting], abs=1e-12)


def test_token_mean_over_mixed_batch_and_metrics():
    r = torch.tensor([[1.25, 0.7, 1.0], [5.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = ppo(r.log(), torch.zeros_like(r), adv, mask, agg="token-mean")
    assert float(out.loss) == pytest.approx((-1.2 - 0.7 + 5.0) / 3, abs=1e-12)
    assert float(out.metrics["clipfrac"]) == pytest.approx(1 / 3)  # only the first token is clipped
    assert all(v.ndim == 0 and not v.requires_grad for v in out.metrics.values())


def test_ratio_overflow_is_finite_with_zero_gradient():
    lp = torch.tensor([[100.0, 0.0]], requires_grad=True)
    out = ppo(lp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2), agg="token-mean")
    out.loss.backward()
    assert math.isfinite(float(out.loss.detach())) and lp.grad[0, 0] == 0


def test_garbage_at_masked_positions_is_ignored():
    lp = torch.tensor([[-1.0, float("nan")], [float("inf"), -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, float("-inf")], [0.0, -2.0]])
    mask = torch.tensor([[1, 0], [0, 1]])
    out = ppo(lp, old, torch.tensor([1.0, 2.0]), mask, agg="token-mean")
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(-1.5) and torch.isfinite(lp.grad).all()
    assert lp.grad[0, 1] == 0 and lp.grad[1, 0] == 0


def test_all_masked_batch_gives_zero_loss_and_gradient():
    lp = torch.randn(2, 3, requires_grad=True)
    out = ppo(lp, torch.randn(2, 3), torch.randn(2), torch.zeros(2, 3), agg="token-mean")
    out.loss.backward()
    assert float(out.loss.detach()) == 0 and torch.equal(lp.grad, torch.zeros(2, 3))
    assert all(torch.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize(
    ("kwargs", "inputs", "match"),
    [
        ({"dual_clip": 1.0}, {}, r"dual_clip must be in \(1.0"),
        ({"eps_low": -0.1}, {}, r"eps_low must be in \[0.0, 1.0\]"),
        ({"eps_high": float("nan")}, {}, "eps_high"),
        ({}, {"advantages": torch.zeros(3)}, r"advantages must have shape \(B,\)"),
        ({}, {"old_logp": torch.zeros(2, 4)}, "old_logp must have logp's shape"),
        ({}, {"logp": torch.tensor([[float("nan"), 0, 0], [0, 0, 0]])}, r"logp is not finite at valid position"),
        ({}, {"mask": torch.full((2, 3), 2)}, "mask must be boolean or hold only 0 and 1"),
    ],
)
def test_bad_input(kwargs, inputs, match):
    args = {
        "logp": torch.zeros(2, 3),
        "old_logp": torch.zeros(2, 3),
        "advantages": torch.zeros(2),
        "mask": torch.ones(2, 3),
    }
    args.update(inputs)
    with debug_checks(), pytest.raises(ValueError, match=match):  # debug_checks: the NaN case is a value check
        ppo(args["logp"], args["old_logp"], args["advantages"], args["mask"], agg="token-mean", **kwargs)


def test_registry():
    assert get_policy_loss("ppo") is ppo and "ppo" in policy_losses()
    with pytest.raises(ValueError, match=r"unknown policy loss 'nope'; valid names: .*ppo"):
        get_policy_loss("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("ppo")(ppo)
