"""linear_logprob_and_entropy against the float64 reference (materialised logits): values and gradients for hidden,
weight and bias over a shape grid, dtypes, temperatures, chunk sizes, -inf bias masks, and its agreement with the
from-logits path."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.entropy import fused_linear, linear_logprob_and_entropy, token_logprob_and_entropy
from entrolab.entropy.reference import linear_logprob_and_entropy_reference
from tests.conftest import DTYPES, TOLERANCES, assert_close


def _inputs(n, h, v, dtype, *, gen, bias=True, scale=1.0):
    hid = (torch.randn(n, h, generator=gen, dtype=torch.float64) * scale).to(dtype)
    w = (torch.randn(v, h, generator=gen, dtype=torch.float64) / math.sqrt(h) * 3).to(dtype)
    b = (torch.randn(v, generator=gen, dtype=torch.float64)).to(dtype) if bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    if n > 2:
        labels[1] = -100
    return hid, w, b, labels


def _check(hid, w, b, labels, *, temperature=1.0, chunk_size=None, matmul_dtype=None, scale=1.0):
    dtype = hid.dtype
    leaves = [t.clone().requires_grad_() for t in (hid, w) + ((b,) if b is not None else ())]
    refs = [t.detach().double().clone().requires_grad_() for t in leaves]
    lp, ent = linear_logprob_and_entropy(
        leaves[0],
        leaves[1],
        labels,
        bias=leaves[2] if b is not None else None,
        temperature=temperature,
        chunk_size=chunk_size,
        matmul_dtype=matmul_dtype,
    )
    rlp, rent = linear_logprob_and_entropy_reference(
        refs[0], refs[1], labels, bias=refs[2] if b is not None else None, temperature=temperature
    )
    assert_close(ent, rent, dtype, what="entropy", scale=scale)
    assert_close(lp, rlp, dtype, what="logp", scale=scale)
    g = torch.linspace(-1, 1, ent.numel(), dtype=torch.float64).view(ent.shape)
    ((lp * (1 - g).to(lp.dtype)).sum() + (ent * g.to(ent.dtype)).sum()).backward()
    ((rlp * (1 - g)).sum() + (rent * g).sum()).backward()
    for name, a, r in zip(("hidden", "weight", "bias"), leaves, refs):
        assert a.grad.dtype == dtype
        # gradients sum over N or V products: scale the tolerance with the contraction length
        assert_close(a.grad, r.grad, dtype, what=f"grad {name}", scale=scale * (4 if dtype != torch.float64 else 1))


@pytest.mark.parametrize(("n", "h", "v"), [(1, 1, 2), (7, 17, 3), (129, 64, 1000), (17, 17, 4099), (1000, 17, 123)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_matches_reference(backend, gen, n, h, v, dtype):
    hid, w, b, labels = _inputs(n, h, v, dtype, gen=gen)
    _check(hid, w, b, labels, temperature=0.7)


@pytest.mark.parametrize(("chunk_size", "block"), [(1, 256), (5, 300), (64, 257), (1000, 4099)])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_tiles_that_do_not_divide(backend, gen, monkeypatch, chunk_size, block, temperature):
    monkeypatch.setattr(fused_linear, "_CPU_TILE_ELEMENTS", chunk_size * block)
    hid, w, b, labels = _inputs(129, 17, 1031, torch.float32, gen=gen)
    _check(hid, w, b, labels, temperature=temperature, chunk_size=chunk_size)


def test_no_bias_no_labels_and_leading_dims(backend, gen):
    hid, w, _, _ = _inputs(2 * 9, 8, 77, torch.float32, gen=gen, bias=False)
    hid3 = hid.view(2, 9, 8).requires_grad_()
    lp, ent = linear_logprob_and_entropy(hid3, w)
    assert lp is None and ent.shape == (2, 9)
    _, rent = linear_logprob_and_entropy_reference(hid3.detach(), w)
    assert_close(ent, rent.view(2, 9), torch.float32, what="entropy")
    ent.sum().backward()
    assert hid3.grad.shape == (2, 9, 8)


def test_minus_inf_bias_masks_vocabulary(backend, gen):
    hid, w, b, labels = _inputs(33, 16, 600, torch.float32, gen=gen)
    b = b.clone()
    b[100:550] = float("-inf")  # whole vocabulary blocks are masked for every row
    labels = torch.where((labels >= 100) & (labels < 550), 3, labels)
    _check(hid, w, b, labels, temperature=1.3, chunk_size=7)


def test_large_logits_and_shift_invariance(backend, gen):
    hid, w, b, labels = _inputs(17, 8, 513, torch.float32, gen=gen, scale=300.0)
    _check(hid, w, b, labels, scale=10.0)  # logits ~ 1e3: float32 products carry 1e-4 absolute error
    lp1, h1 = linear_logprob_and_entropy(hid, w, labels, bias=b)
    lp2, h2 = linear_logprob_and_entropy(hid, w, labels, bias=b + 1000.0)
    assert torch.allclose(h1, h2, atol=1e-3) and torch.allclose(lp1, lp2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matmuls_accumulate_in_float32(backend, gen, dtype):
    """matmul_dtype = input dtype (the accelerator path), exercised on CPU."""
    hid, w, b, labels = _inputs(65, 32, 700, dtype, gen=gen)
    # the tile itself is rounded to the input dtype here, so compare with a looser (x4) tolerance
    _check(hid, w, b, labels, temperature=0.9, chunk_size=16, matmul_dtype=dtype, scale=4.0)


def test_agrees_with_from_logits_path(backend, gen):
    hid, w, b, labels = _inputs(50, 24, 301, torch.float32, gen=gen)
    lp1, h1 = linear_logprob_and_entropy(hid, w, labels, bias=b, temperature=0.6)
    lp2, h2 = token_logprob_and_entropy(hid @ w.T + b, labels, temperature=0.6)
    atol, rtol = TOLERANCES[torch.float32]
    assert torch.allclose(h1, h2, atol=atol, rtol=rtol) and torch.allclose(lp1, lp2, atol=atol, rtol=rtol)


def test_only_weight_requires_grad(backend, gen):
    hid, w, _, labels = _inputs(20, 8, 99, torch.float32, gen=gen, bias=False)
    wl = w.clone().requires_grad_()
    lp, ent = linear_logprob_and_entropy(hid, wl, labels)
    (lp.sum() - ent.sum()).backward()
    wr = w.double().requires_grad_()
    rlp, rent = linear_logprob_and_entropy_reference(hid.double(), wr, labels)
    (rlp.sum() - rent.sum()).backward()
    assert_close(wl.grad, wr.grad, torch.float32, what="grad weight", scale=4)


def test_inputs_are_not_modified(backend, gen):
    hid, w, b, labels = _inputs(9, 8, 77, torch.float32, gen=gen)
    copies = [t.clone() for t in (hid, w, b, labels)]
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
    before = [t.detach().clone() for t in leaves]
    lp, ent = linear_logprob_and_entropy(leaves[0], leaves[1], labels, bias=leaves[2], temperature=0.5)
    (lp.sum() + ent.sum()).backward()
    assert all(torch.equal(a.detach(), c) for a, c in zip(leaves, before))
    assert torch.equal(labels, copies[3])


def test_empty_batch(backend):
    hid = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    lp, ent = linear_logprob_and_entropy(hid, w, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_gradcheck_float64(gen):
    hid = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(13, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 12, -100, 3, 5, 7])

    def f(h_, w_, b_):
        return linear_logprob_and_entropy(h_, w_, labels, bias=b_, temperature=1.2, chunk_size=4)

    assert torch.autograd.gradcheck(f, (hid, w, b))
