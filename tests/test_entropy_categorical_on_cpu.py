"""entropy / varentropy: closed forms, units, dims, -inf and zero-probability handling, gradients, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.entropy import entropy, varentropy
from entrolab.entropy.reference import entropy_reference, varentropy_reference


@pytest.mark.parametrize("v", [1, 2, 7, 123, 32768])
def test_uniform_and_one_hot(v):
    assert math.isclose(float(entropy(torch.zeros(v))), math.log(v), abs_tol=1e-5)
    assert float(varentropy(torch.zeros(v))) == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(v)
    one_hot[v // 2] = 1.0
    assert float(entropy(probs=one_hot)) == 0.0
    assert float(varentropy(probs=one_hot)) == 0.0


def test_hand_computed_values():
    p = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    # surprisals in bits: 1, 2, 3, 3 -> H = 1.75 bits, Var = 0.5*0.5625 + 0.25*0.0625 + 2*0.125*1.5625 = 0.6875
    assert float(entropy(probs=p, base=2)) == pytest.approx(1.75, abs=1e-12)
    assert float(varentropy(probs=p, base=2)) == pytest.approx(0.6875, abs=1e-12)
    assert float(entropy(probs=p)) == pytest.approx(1.75 * math.log(2), abs=1e-12)
    assert float(entropy(p.log(), base=2)) == pytest.approx(1.75, abs=1e-12)  # from logits = log p


@pytest.mark.parametrize("dim", [0, 1, -1, 2])
def test_dims_match_reference(gen, dim):
    z = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    z[0, 0, 0] = float("-inf")
    assert torch.allclose(entropy(z, dim=dim), entropy_reference(z, dim=dim), atol=1e-12)
    assert torch.allclose(varentropy(z, dim=dim), varentropy_reference(z, dim=dim), atol=1e-12)
    p = torch.softmax(z, dim)
    assert torch.allclose(entropy(probs=p, dim=dim), entropy_reference(probs=p, dim=dim), atol=1e-12)
    assert torch.allclose(
        varentropy(probs=p, dim=dim, base=3), varentropy_reference(probs=p, dim=dim, base=3), atol=1e-12
    )


def test_gradients_finite_with_zeros_and_minus_inf():
    z = torch.tensor([[0.0, float("-inf"), 1.0, 2.0]], requires_grad=True)
    (entropy(z) + varentropy(z)).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 1] == 0
    p = torch.tensor([0.0, 0.3, 0.7], dtype=torch.float64, requires_grad=True)
    (entropy(probs=p) + varentropy(probs=p)).backward()
    assert torch.isfinite(p.grad).all()
    zz = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: (entropy(x), varentropy(x)), (zz,))


def test_low_precision_inputs_computed_in_float32():
    z = torch.randn(5, 9).to(torch.bfloat16)
    h = entropy(z)
    assert h.dtype == torch.float32
    assert torch.allclose(h, entropy_reference(z.double()).float(), atol=1e-5)


def test_inputs_not_modified(gen):
    z = torch.randn(4, 6, generator=gen)
    before = z.clone()
    entropy(z)
    varentropy(z)
    assert torch.equal(z, before)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "exactly one"),
        ({"logits": torch.zeros(3), "probs": torch.ones(3) / 3}, ValueError, "exactly one"),
        ({"logits": torch.zeros(3, dtype=torch.long)}, TypeError, "floating"),
        ({"logits": [0.0, 1.0]}, TypeError, "torch.Tensor"),
        ({"logits": torch.tensor([0.0, float("nan")])}, ValueError, "NaN"),
        ({"logits": torch.tensor([0.0, float("inf")])}, ValueError, r"\+inf"),
        ({"logits": torch.full((2, 3), float("-inf"))}, ValueError, "entirely -inf"),
        ({"probs": torch.tensor([0.5, 0.6])}, ValueError, "sum to 1"),
        ({"probs": torch.tensor([1.5, -0.5])}, ValueError, ">= 0"),
        ({"probs": torch.tensor([float("nan"), 1.0])}, ValueError, "finite"),
        ({"logits": torch.zeros(3), "dim": 1}, ValueError, "dim"),
        ({"logits": torch.zeros(3), "base": 1}, ValueError, "base"),
        ({"logits": torch.zeros(3), "base": -2.0}, ValueError, "base"),
        ({"logits": torch.zeros(0)}, ValueError, "at least one category"),
    ],
)
def test_bad_input(kwargs, exc, match):
    for fn in (entropy, varentropy):
        with pytest.raises(exc, match=match):
            fn(**kwargs)
