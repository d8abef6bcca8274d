"""Group advantages: the spec's worked example, zero-variance and singleton groups, NaN rewards, ids; overlong."""

from __future__ import annotations

import pytest
import torch

from entrolab.advantages.group import dapo_overlong_penalty, dr_grpo_advantages, grpo_advantages, rloo_advantages

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)


def test_spec_worked_example():
    assert torch.allclose(
        grpo_advantages(R, group_size=5),
        torch.tensor([0.7303, -1.0954, -1.0954, 0.7303, 0.7303], dtype=torch.float64),
        atol=1e-4,
    )
    assert torch.allclose(
        grpo_advantages(R, group_size=5, eps=1e-4)[0], torch.tensor(0.7302, dtype=torch.float64), atol=1e-4
    )
    assert torch.allclose(
        dr_grpo_advantages(R, group_size=5), torch.tensor([0.4, -0.6, -0.6, 0.4, 0.4], dtype=torch.float64)
    )
    assert torch.allclose(
        rloo_advantages(R, group_size=5), torch.tensor([0.5, -0.75, -0.75, 0.5, 0.5], dtype=torch.float64)
    )


def test_rloo_identity(gen):
    r = torch.randn(12, generator=gen, dtype=torch.float64)
    adv = rloo_advantages(r, group_size=4)
    g = r.view(3, 4)
    loo = g - (g.sum(1, keepdim=True) - g) / 3
    assert torch.allclose(adv, loo.reshape(-1), atol=1e-12)


def test_zero_variance_groups_are_exactly_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.3, 0.3])
    ids = torch.tensor([7, 7, 7, 2, 2, 5, 5])  # non-contiguous, unsorted ids
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        adv = fn(r, ids)
        assert adv[[0, 1, 2, 5, 6]].tolist() == [0.0] * 5 and adv[3] > 0 > adv[4]


def test_group_ids_equal_contiguous_groups(gen):
    r = torch.randn(12, generator=gen)
    perm = torch.randperm(12, generator=gen)
    ids = (torch.arange(12) // 4)[perm]
    adv = grpo_advantages(r[perm], ids)
    assert torch.allclose(adv[perm.argsort()], grpo_advantages(r, group_size=4), atol=1e-6)


def test_nan_rewards_are_excluded_and_get_zero():
    r = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    adv = grpo_advantages(r, group_size=4)
    assert adv[1] == 0 and torch.allclose(adv[[0, 2, 3]], grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=3))


def test_singleton_groups():
    with pytest.raises(ValueError, match="single scorable response"):
        grpo_advantages(torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0, 0, 1]))
    adv = grpo_advantages(torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0, 0, 1]), allow_singleton=True)
    assert adv[2] == 0


def test_batch_and_none_scales():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    none = grpo_advantages(r, group_size=2, scale="none")
    assert none.tolist() == [0.5, -0.5, 1.0, -1.0]
    batch = grpo_advantages(r, group_size=2, scale="batch")
    assert torch.allclose(batch, none / (r.std() + 1e-6))


def test_overlong_penalty_boundaries():
    out = dapo_overlong_penalty(torch.tensor([16000, 16384, 18432, 20480, 20481]))
    assert out.tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: grpo_advantages(R), ValueError, "exactly one of group_ids and group_size"),
        (lambda: grpo_advantages(R, group_size=2), ValueError, "not a multiple of group_size=2"),
        (lambda: grpo_advantages(R, group_size=5, scale="std"), ValueError, "scale must be one of"),
        (lambda: grpo_advantages(R.long(), group_size=5), TypeError, "rewards must be a 1-D floating"),
        (lambda: grpo_advantages(torch.tensor([1.0, float("inf")]), group_size=2), ValueError, "inf"),
        (lambda: grpo_advantages(R, torch.zeros(4, dtype=torch.long)), ValueError, "group_ids must have the shape"),
        (lambda: dapo_overlong_penalty(torch.tensor([1]), cache_length=0), ValueError, "cache_length must be"),
        (lambda: dapo_overlong_penalty(torch.tensor([1]), max_length=10, cache_length=20), ValueError, "<= max"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
