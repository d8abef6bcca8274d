"""Entropy-shaped advantages and schedules: EMPG (18), ETTRL (21), SPEAR (17), AEPO (15), ARES (22)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.advantages import (
    aepo_temperature,
    ares_alpha_update,
    ares_entropy_reward,
    ares_threshold_update,
    difficulty_bucket,
    empg_advantages,
    ettrl_reshape,
    hwe_counts,
    spear_recalibrate,
    spear_replay_weight,
    spear_subsample,
    spear_tool_bonus,
    topk_tail_entropy,
    window_entropy,
)

F64 = torch.float64


def test_empg_worked_example():
    # spec: g = [1.5194, 0.5590, 0.9216], f = [1, 0.3679, 0.6065]; A_mod = g A + 0.1 f(next).  Hand computation:
    # e = [1, e^-1, e^-0.5], mean 0.658137; g = [1.519441, 0.558971, 0.921588]; A_mod[1] = 0.558971 + 0.060653
    # = 0.619624 (the spec prints 0.6197, the sum of its rounded terms)
    a = empg_advantages(
        torch.tensor([[0.2, 1.0, 0.6]], dtype=F64), torch.ones(1, 3), torch.tensor([1.0], dtype=F64), final_norm="none"
    )
    assert a[0].tolist() == pytest.approx([1.556229, 0.619624, 0.921588], abs=1e-6)
    centred = empg_advantages(
        torch.tensor([[0.2, 1.0, 0.6]], dtype=F64), torch.ones(1, 3), torch.tensor([1.0], dtype=F64)
    )
    assert float(centred.sum()) == pytest.approx(0.0, abs=1e-12)
    unit = empg_advantages(
        torch.tensor([[0.2, 1.0, 0.6]], dtype=F64),
        torch.ones(1, 3),
        torch.tensor([1.0], dtype=F64),
        final_norm="meanstd",
    )
    assert float(unit.pow(2).mean()) == pytest.approx(1.0, abs=1e-6)


def test_empg_edge_cases():
    same = empg_advantages(
        torch.full((2, 3), 0.7, dtype=F64),
        torch.ones(2, 3),
        torch.tensor([1.0, -1.0], dtype=F64),
        final_norm="none",
        zeta=0.0,
    )
    assert same.flatten().tolist() == pytest.approx([1.0] * 3 + [-1.0] * 3)  # max = min -> Hn = 0, g = 1
    # the next-step bonus never crosses trajectory boundaries: the last valid step of each row gets none
    h = torch.tensor([[0.1, 0.5, 0.0], [0.9, 0.0, 0.0]], dtype=F64)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    k = empg_advantages(h, m, torch.zeros(2, dtype=F64), final_norm="none")
    assert float(k[0, 1]) == 0.0 and float(k[1, 0]) == 0.0 and float(k[0, 0]) > 0
    assert float(k[0, 2]) == 0.0
    with pytest.raises(ValueError, match="prefix"):
        empg_advantages(h, torch.tensor([[1, 0, 1], [1, 0, 0]]), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="final_norm"):
        empg_advantages(h, m, torch.zeros(2, dtype=F64), final_norm="std")
    empty = empg_advantages(h, torch.zeros(2, 3), torch.zeros(2, dtype=F64))
    assert bool((empty == 0).all())


def test_ettrl_reshape_is_documented_low_confidence_and_bounded():
    assert "LOW CONFIDENCE" in (ettrl_reshape.__doc__ or "")
    a = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=F64)
    h = torch.tensor([0.1, 2.0, 0.5, 0.5], dtype=F64)
    out = ettrl_reshape(a, h, group_size=2, alpha=10.0, clip=0.5)
    assert out.tolist() == pytest.approx([0.5, 1.5, -1.0, 1.0])  # clipped; a constant group is unchanged


def test_spear_worked_examples():
    a, keep = spear_recalibrate(
        torch.tensor([1.0, 0.4], dtype=F64), group_means=torch.tensor([0.2, 0.5, 0.6], dtype=F64)
    )
    assert a.tolist() == pytest.approx([0.5, -0.1]) and keep.tolist() == [True, False]
    at_baseline, keep = spear_recalibrate(  # exactly the median group mean: A_hat = 0, not kept ("> 0")
        torch.tensor([0.5, 0.75], dtype=F64), group_means=torch.tensor([0.25, 0.5, 1.0], dtype=F64)
    )
    assert at_baseline.tolist() == [0.0, 0.25] and keep.tolist() == [False, True]
    even, _ = spear_recalibrate(
        torch.tensor([1.0], dtype=F64), group_means=torch.tensor([0.2, 0.4, 0.6, 0.9], dtype=F64)
    )
    assert float(even) == pytest.approx(0.5)  # median of an even count: mean of the middle two (0.5)
    std, _ = spear_recalibrate(
        torch.tensor([1.0], dtype=F64),
        group_means=torch.tensor([0.5], dtype=F64),
        group_stds=torch.tensor([0.25], dtype=F64),
        normalize_std=True,
    )
    assert float(std) == pytest.approx(0.5 / (0.25 + 1e-6))
    assert spear_replay_weight(50, max_steps=100) == pytest.approx(0.5)
    assert spear_replay_weight(100, max_steps=100) == 1.0 and spear_replay_weight(101, max_steps=100) == 1.0
    assert spear_tool_bonus(3, 50, max_steps=100) == pytest.approx(0.15)
    assert spear_tool_bonus(30, 0, max_steps=100) == 1.0 and spear_tool_bonus(3, 101, max_steps=100) == 0.0
    with pytest.raises(ValueError, match="group_means"):
        spear_recalibrate(torch.tensor([1.0]), group_means=torch.zeros(0))


def test_spear_subsample_takes_the_largest_power_of_two():
    for count, cap, size in ((7, 2048, 4), (8, 2048, 8), (1, 2048, 1), (0, 2048, 0), (3000, 2048, 2048), (100, 48, 32)):
        keep = torch.zeros(max(count, 1) + 5, dtype=torch.bool)
        keep[:count] = True
        idx = spear_subsample(keep, buffer_size=cap, generator=torch.Generator().manual_seed(0))
        assert idx.numel() == size and bool(keep[idx].all()) and idx.unique().numel() == size
    a = spear_subsample(torch.ones(50, dtype=torch.bool), generator=torch.Generator().manual_seed(3))
    b = spear_subsample(torch.ones(50, dtype=torch.bool), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_aepo_temperature_boundary_and_first_step():
    assert aepo_temperature(0.0, target=0.5) == 1.2  # step 1: previous entropy starts at 0
    assert aepo_temperature(0.5, target=0.5) == 1.2  # <= (the code's comparison)
    assert aepo_temperature(0.5000001, target=0.5) == 0.8


def test_ares_pieces():
    assert float(topk_tail_entropy(torch.tensor([0.5, 0.25]).log())) == pytest.approx(
        -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.25)), abs=1e-6
    )
    full = torch.tensor([0.5, 0.5], dtype=F64).log()
    assert float(topk_tail_entropy(full)) == pytest.approx(math.log(2))  # tail mass 0 contributes 0
    we, ok = window_entropy(torch.tensor([[1.0, 2, 3, 4, 5, 6]]), torch.tensor([[1, 1, 1, 1, 1, 0]]), window=2)
    assert ok.tolist() == [[True, True, True, False, False, False]] and we[ok].tolist() == [2.5, 3.5, 4.5]
    trig = torch.tensor([[True, False, True, True, True, True]])
    count, cost = hwe_counts(we, ok, trig, threshold=3.0)
    assert count.tolist() == [1] and float(cost) == pytest.approx(1.5)
    assert ares_threshold_update(None, torch.tensor([1.0, 3.0])) == 2.0
    assert ares_threshold_update(2.0, torch.tensor([1.0, 3.0, 10.0])) == pytest.approx(0.99 * 2 + 0.01 * 3)
    assert [difficulty_bucket(x) for x in (2 / 3, 1 / 3, 1 / 3 - 1e-6)] == ["easy", "medium", "hard"]
    assert ares_entropy_reward(12, target=10, bucket="hard", correct=True) == pytest.approx(0.5173, abs=1e-4)
    assert ares_entropy_reward(15, target=10, bucket="easy", correct=True) == pytest.approx(-0.3571, abs=1e-4)
    assert ares_entropy_reward(10, target=10, bucket="medium", correct=True) == 0.0  # within the margin
    wrong = ares_entropy_reward(20, target=10, bucket="easy", correct=False)
    assert wrong == pytest.approx(1 / (1 + math.exp(-(10 - 1.5) / 2)) * 0.5 * 0.6)
    assert ares_alpha_update(0.0, bucket="medium", mean_hwe=0, target=10) == 0.0  # clipped at 0
    with pytest.raises(ValueError, match="bucket"):
        ares_entropy_reward(1, target=1, bucket="impossible", correct=True)


def test_aepo_mix_spec_example_halving_empty_filter_and_positions():
    from entrolab.losses import aepo_mix

    g = torch.Generator().manual_seed(0)
    adv = torch.where(torch.arange(640) < 150, 0.9, -0.3)[torch.randperm(640, generator=g)]  # 150 pass the filter
    taken, rows = aepo_mix(adv, k_max=60, below_target=True, batch_size=2560)
    assert taken.numel() == 60 and rows.tolist() == list(range(60))  # the first 60 rows of the batch
    assert bool((adv[taken] > 0.05).all()) and torch.equal(taken, (adv > 0.05).nonzero().flatten()[:60])
    assert aepo_mix(adv, k_max=60, below_target=False, batch_size=2560)[0].numel() == 30  # above the target: half
    none, none_rows = aepo_mix(torch.full((8,), 0.05), k_max=60, below_target=True, batch_size=16)
    assert none.numel() == 0 and none_rows.numel() == 0  # nothing passes (> 0.05, strict): the code would crash
    few, _ = aepo_mix(torch.tensor([0.5, 0.6]), k_max=60, below_target=True, batch_size=1)
    assert few.numel() == 1  # never more rows than the batch has
    taken_r, rows_r = aepo_mix(adv, k_max=5, below_target=True, batch_size=50, position="random", generator=g)
    assert taken_r.numel() == 5 and len(set(rows_r.tolist())) == 5 and bool((rows_r < 50).all())
    with pytest.raises(ValueError, match="k_max"):
        aepo_mix(adv, k_max=-1, below_target=True, batch_size=10)
    with pytest.raises(TypeError, match="below_target"):
        aepo_mix(adv, k_max=1, below_target=1, batch_size=10)
    with pytest.raises(ValueError, match="position"):
        aepo_mix(adv, k_max=1, below_target=True, batch_size=10, position="tail")


def test_ares_second_chance_relaxes_only_easy_wrong_high_cost_samples():
    from entrolab.advantages import ares_second_chance

    cost = torch.tensor([2.0, 2.0, 0.9, 2.0, 1.0], dtype=torch.float64)
    buckets = ["easy", "easy", "easy", "medium", "easy"]
    correct = torch.tensor([False, True, False, False, False])
    out = ares_second_chance(cost, buckets=buckets, correct=correct, relax=0.25, min_soft_cost=1.0)
    assert out.tolist() == [0.25, 1.0, 1.0, 1.0, 0.25]  # the threshold is inclusive (cost 1.0 qualifies)
    assert out.dtype == torch.float64
    with pytest.raises(ValueError, match="relax"):
        ares_second_chance(cost, buckets=buckets, correct=correct, relax=0.0, min_soft_cost=1.0)
    with pytest.raises(ValueError, match="buckets"):
        ares_second_chance(cost, buckets=buckets[:2], correct=correct, relax=0.5, min_soft_cost=1.0)
    with pytest.raises(ValueError, match="bucket"):
        ares_second_chance(cost, buckets=["easy"] * 4 + ["tricky"], correct=correct, relax=0.5, min_soft_cost=1.0)
