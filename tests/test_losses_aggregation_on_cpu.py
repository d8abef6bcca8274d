"""aggregate(): the spec's worked examples, split invariance for every mode, all-masked batches, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from entrolab.losses import AGG_MODES, Aggregation, aggregate

NAN = float("nan")


def _example():
    values = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, float("inf"), NAN, -float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    return values, mask


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("token-mean", {}, 2.5),
        ("token-sum", {}, 10.0),
        ("seq-mean-token-mean", {}, 3.0),
        ("seq-mean-token-sum", {}, 5.0),
        ("seq-mean-token-sum-norm", {"max_length": 4}, 1.25),
    ],
)
def test_spec_worked_example(mode, kwargs, expected):
    values, mask = _example()  # garbage (NaN, inf) at masked positions must not leak
    assert float(aggregate(values, mask, mode, **kwargs)) == expected
    assert float(aggregate(values, mask.bool(), Aggregation(mode, **kwargs))) == expected


def test_spec_data_parallel_example():
    values, mask = _example()
    ranks = [aggregate(values[i : i + 1], mask[i : i + 1], "token-mean", num_tokens=4, dp_size=2) for i in (0, 1)]
    assert [float(r) for r in ranks] == [3.0, 2.0] and float(sum(ranks) / 2) == 2.5
    local = [float(aggregate(values[i : i + 1], mask[i : i + 1], "token-mean")) for i in (0, 1)]
    assert sum(local) / 2 == 3.0  # averaging local token-means is wrong: not 2.5
    ranks = [
        aggregate(values[i : i + 1], mask[i : i + 1], "seq-mean-token-mean", num_sequences=2, dp_size=2) for i in (0, 1)
    ]
    assert [float(r) for r in ranks] == [2.0, 4.0]


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize(("dp", "micro"), [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2)])
def test_any_split_gives_the_whole_batch_gradient(gen, mode, dp, micro):
    b, t = 12, 7
    values = torch.randn(b, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) < 0.6
    mask[3] = False  # an all-masked sequence
    counts = mask.sum(1)
    norms = {"num_tokens": float(mask.sum()), "num_sequences": float((counts > 0).sum())}
    extra = {"max_length": 9.0} if mode == "seq-mean-token-sum-norm" else {}
    whole = values.clone().requires_grad_()
    aggregate(whole, mask, mode, **extra).backward()
    split = values.clone().requires_grad_()
    rank_losses = []
    rows = torch.arange(b)
    for rank_rows in rows.chunk(dp):
        rank_loss = 0.0
        for mb in rank_rows.chunk(micro):
            spec = Aggregation(mode, **norms, **extra, dp_size=dp)
            rank_loss = rank_loss + aggregate(split[mb], mask[mb], spec)
        rank_losses.append(rank_loss)
    total = sum(rank_losses) / dp  # DDP averages over ranks
    total.backward()
    assert torch.allclose(total, aggregate(values, mask, mode, **extra), atol=1e-12, rtol=0)
    assert torch.allclose(split.grad, whole.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_all_masked_and_empty_give_zero(mode):
    extra = {"max_length": 4} if mode == "seq-mean-token-sum-norm" else {}
    values = torch.full((3, 5), NAN).requires_grad_()
    loss = aggregate(values, torch.zeros(3, 5, dtype=torch.bool), mode, **extra)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(values.grad, torch.zeros(3, 5))
    empty = aggregate(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool), mode, **extra)
    assert float(empty) == 0.0


def test_every_pair_of_modes_differs_on_uneven_lengths():
    values, mask = _example()
    results = {m: float(aggregate(values, mask, m, max_length=4)) for m in AGG_MODES}
    assert len(set(results.values())) == len(AGG_MODES)
    for a, b in itertools.combinations(AGG_MODES, 2):
        assert results[a] != results[b]


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((torch.zeros(2, 3), torch.ones(2, 3), "mean"), {}, ValueError, "agg mode must be one of token-mean"),
        ((torch.zeros(2, 3), torch.ones(2, 3), "seq-mean-token-sum-norm"), {}, ValueError, "needs max_length"),
        ((torch.zeros(2, 3), torch.ones(2, 4)), {}, ValueError, r"mask must have shape \(2, 3\)"),
        ((torch.zeros(2, 3), torch.full((2, 3), 0.5)), {}, ValueError, "mask must be boolean or hold only 0 and 1"),
        ((torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)), {}, TypeError, "values must be a floating"),
        ((torch.zeros(2, 3), torch.ones(2, 3)), {"num_tokens": 0}, ValueError, "num_tokens must be None or"),
        ((torch.zeros(2, 3), torch.ones(2, 3)), {"num_sequences": -1.0}, ValueError, "num_sequences"),
        ((torch.zeros(2, 3), torch.ones(2, 3)), {"dp_size": 0}, ValueError, "dp_size must be an int >= 1"),
        ((torch.zeros(2, 3), torch.ones(2, 3), Aggregation()), {"num_tokens": 3}, ValueError, "not both"),
        ((torch.zeros(2, 3), torch.ones(2, 3), 3), {}, TypeError, "mode must be a string"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        aggregate(*args, **kwargs)
