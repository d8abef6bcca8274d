"""Bad input at the public boundary: a TypeError/ValueError naming the argument, never a silent NaN."""

from __future__ import annotations

import pytest
import torch

from entrolab.entropy import linear_logprob_and_entropy, token_logprob_and_entropy

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("logits", "labels", "kwargs", "exc", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.long), None, {}, TypeError, "logits must have a floating dtype"),
        ([[0.0, 1.0]], None, {}, TypeError, "logits must be a torch.Tensor"),
        (torch.zeros(2, 3), torch.zeros(2), {}, TypeError, "labels must have an integer dtype"),
        (torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool), {}, TypeError, "labels must have an integer dtype"),
        (torch.zeros(2, 3), [0, 1], {}, TypeError, "labels must be a torch.Tensor"),
        (torch.tensor([[0.0, NAN, 1.0]]), None, {}, ValueError, "row 0 .* contains NaN"),
        (torch.tensor([[0.0, 1.0], [INF, 1.0]]), None, {}, ValueError, r"row 1 .* contains \+inf"),
        (torch.tensor([[0.0, 1.0], [-INF, -INF]]), None, {}, ValueError, "row 1 .* entirely -inf"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), {}, ValueError, r"labels must be in \[0, 3\) or -100.*got 3"),
        (torch.zeros(2, 3), torch.tensor([0, -1]), {}, ValueError, "labels must be in .*got -1"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), {}, ValueError, r"labels must have shape \(2,\)"),
        (torch.zeros(2, 3), None, {"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        (torch.zeros(2, 3), None, {"temperature": -1.0}, ValueError, "temperature"),
        (torch.zeros(2, 3), None, {"temperature": NAN}, ValueError, "temperature"),
        (torch.zeros(2, 3), None, {"temperature": "hot"}, TypeError, "temperature must be a real number"),
        (torch.zeros(2, 3), None, {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        (torch.zeros(2, 3), None, {"chunk_size": -4}, ValueError, "chunk_size"),
        (torch.zeros(2, 3), None, {"chunk_size": 2.5}, TypeError, "chunk_size must be None or an int"),
        (torch.zeros(2, 0), None, {}, ValueError, "at least one category"),
        (torch.tensor(1.0), None, {}, ValueError, "logits must have at least 1 dimension"),
    ],
)
def test_token_bad_input(backend, logits, labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        token_logprob_and_entropy(logits, labels, **kwargs)


def test_nan_in_large_row_is_caught(backend):
    z = torch.randn(5, 40000)
    z[3, 12345] = NAN
    with pytest.raises(ValueError, match=r"row 3 .* contains NaN"):
        token_logprob_and_entropy(z)
    z[3, 12345] = -INF  # -inf alone is allowed
    _, h = token_logprob_and_entropy(z)
    assert torch.isfinite(h).all()


def test_huge_logits_over_small_temperature_stay_finite(backend):
    """z / T overflows float32, but (z - max z) / T does not: the distribution is one-hot, H = 0, no inf or NaN."""
    z = torch.tensor([[3e38, 0.0], [1.0, 1.0]])
    lp, h = token_logprob_and_entropy(z, torch.tensor([0, 1]), temperature=0.01)
    assert h.tolist() == [0.0, pytest.approx(0.6931472)]
    assert lp.tolist() == [0.0, pytest.approx(-0.6931472)]


H, V = 4, 6


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((torch.zeros(2, H), torch.zeros(V, H + 1)), {}, ValueError, "hidden's last dimension"),
        ((torch.zeros(2, H), torch.zeros(V)), {}, ValueError, "weight must have at least 2"),
        ((torch.zeros(2, H), torch.zeros(1, V, H)), {}, ValueError, r"weight must have shape \(V, H\)"),
        ((torch.zeros(2, H), torch.zeros(V, H, dtype=torch.float64)), {}, TypeError, "weight must have hidden's dtype"),
        ((torch.zeros(2, H, dtype=torch.long), torch.zeros(V, H)), {}, TypeError, "hidden must have a floating"),
        ((torch.zeros(2, H), torch.zeros(0, H)), {}, ValueError, "at least one row"),
        ((torch.tensor([[NAN] * H, [0.0] * H]), torch.zeros(V, H)), {}, ValueError, "hidden contains NaN or inf"),
        ((torch.zeros(2, H), torch.full((V, H), INF)), {}, ValueError, "weight contains NaN or inf"),
        ((torch.zeros(2, H), torch.zeros(V, H), torch.tensor([0, V])), {}, ValueError, "labels must be in"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"bias": torch.zeros(V + 1)}, ValueError, r"bias must have shape"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"bias": torch.full((V,), NAN)}, ValueError, "bias must not"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"bias": torch.full((V,), -INF)}, ValueError, "every entry is -inf"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"temperature": 0}, ValueError, "temperature"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"chunk_size": 0}, ValueError, "chunk_size"),
        ((torch.zeros(2, H), torch.zeros(V, H)), {"matmul_dtype": "fp32"}, TypeError, "matmul_dtype"),
    ],
)
def test_linear_bad_input(backend, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        linear_logprob_and_entropy(*args, **kwargs)
