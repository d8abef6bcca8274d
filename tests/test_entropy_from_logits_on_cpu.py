"""token_logprob_and_entropy against the float64 reference: values and gradients over the shape grid, every dtype,
temperatures != 1, ignored labels, adversarial rows, both backends, and the spec's worked example."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.entropy import debug_checks, token_logprob_and_entropy
from entrolab.entropy.reference import token_logprob_and_entropy_reference
from tests.conftest import ADVERSARIAL, DTYPES, assert_close, labels_for, make_logits

GRID = [(n, v) for n in (1, 17, 1000) for v in (1, 7, 123, 32768)]


def _check(z64, labels, dtype, temperature, chunk_size=None, *, scale=1.0):
    z = z64.to(dtype)
    zq = z.double()  # the reference sees exactly the values the fast path sees
    x = z.clone().requires_grad_()
    lp, h = token_logprob_and_entropy(x, labels, temperature=temperature, chunk_size=chunk_size)
    xr = zq.clone().requires_grad_()
    rlp, rh = token_logprob_and_entropy_reference(xr, labels, temperature=temperature)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert h.dtype == expected_dtype and h.shape == z.shape[:-1]
    assert_close(h, rh, dtype, what="entropy", scale=scale)
    g_h = torch.linspace(-1, 1, h.numel(), dtype=torch.float64).view(h.shape)
    total_ref = (rh * g_h).sum()
    total = (h * g_h.to(h.dtype)).sum()
    if labels is not None:
        assert lp.dtype == expected_dtype
        assert_close(lp, rlp, dtype, what="logp", scale=scale)
        g_lp = torch.linspace(0.5, -1.5, h.numel(), dtype=torch.float64).view(h.shape)
        total_ref = total_ref + (rlp * g_lp).sum()
        total = total + (lp * g_lp.to(lp.dtype)).sum()
    else:
        assert lp is None
    total.backward()
    total_ref.backward()
    assert x.grad.dtype == dtype
    assert_close(x.grad, xr.grad, dtype, what="grad", scale=scale)


@pytest.mark.parametrize(("n", "v"), GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_matches_reference(backend, gen, n, v, dtype):
    if n * v > 200_000 and dtype != torch.float32:
        pytest.skip("large shapes are covered in float32")
    z = make_logits("random", n, v, generator=gen)
    labels = labels_for(z, generator=gen)
    _check(z, labels, dtype, 0.7)


@pytest.mark.parametrize("kind", ADVERSARIAL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_adversarial_rows(backend, gen, kind, dtype, temperature):
    z = make_logits(kind, 9, 1031, generator=gen)
    if dtype in (torch.float16,) and kind in ("huge", "shifted"):
        z = z / 100  # float16 tops out at 65504: keep the rows representable
    labels = labels_for(z, generator=gen)
    _check(z, labels, dtype, temperature)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 16, 1000])
def test_chunk_sizes_that_do_not_divide(backend, gen, chunk_size):
    z = make_logits("random", 37, 99, generator=gen)
    _check(z, labels_for(z, generator=gen), torch.float32, 1.3, chunk_size)


def test_without_labels(backend, gen):
    z = make_logits("random", 5, 50, generator=gen)
    _check(z, None, torch.float32, 1.0)


def test_leading_dims_and_non_contiguous_rows(backend, gen):
    """(B, T, V) logits sliced as in a causal LM, logits[:, :-1]: rows are not uniformly strided."""
    full = make_logits("random", 3 * 8, 41, generator=gen).view(3, 8, 41).float()
    z = full[:, :-1]  # (3, 7, 41), a view
    labels = torch.randint(0, 41, (3, 7), generator=gen)
    x = z.clone().requires_grad_()  # contiguous copy for the reference gradient
    lp, h = token_logprob_and_entropy(z.detach().requires_grad_(), labels)  # view input
    rlp, rh = token_logprob_and_entropy_reference(x, labels)
    assert lp.shape == (3, 7) and h.shape == (3, 7)
    assert_close(lp, rlp, torch.float32, what="logp")
    assert_close(h, rh, torch.float32, what="entropy")
    # a transposed view (last dim not contiguous) also works
    zt = z.transpose(0, 1)  # (7, 3, 41)
    _, h2 = token_logprob_and_entropy(zt, labels.T)
    assert_close(h2, rh.T, torch.float32, what="entropy transposed")


def test_spec_worked_example(backend):
    """performance.md section 2: z = [2, 1, 0, -1], y = 1."""
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]], requires_grad=True)
    lp, h = token_logprob_and_entropy(z, torch.tensor([1]))
    p = torch.tensor([0.6439, 0.2369, 0.0871, 0.0321])
    assert torch.allclose(torch.softmax(z.detach(), -1), p, atol=1e-4)
    assert math.isclose(float(lp.detach()), math.log(0.236883), abs_tol=1e-5)
    lp.sum().backward()
    assert torch.allclose(z.grad[0], torch.tensor([-0.6439, 0.7631, -0.0871, -0.0321]), atol=1e-4)
    z.grad = None
    _, h = token_logprob_and_entropy(z)
    h.sum().backward()
    assert torch.allclose(z.grad[0], torch.tensor([-0.3267, 0.1167, 0.1301, 0.0799]), atol=1e-4)
    assert abs(float(z.grad.sum())) < 1e-6  # shift invariance: gradients sum to 0


def test_closed_forms(backend):
    """Uniform rows: H = log V with zero entropy gradient; one-hot rows: H = 0 with zero gradient."""
    for v in (1, 2, 7, 32768):
        z = torch.full((3, v), -2.5, requires_grad=True)
        _, h = token_logprob_and_entropy(z)
        assert torch.allclose(h, torch.full((3,), math.log(v)), atol=1e-5)
        h.sum().backward()
        assert float(z.grad.abs().max()) < 1e-6
    z = torch.full((2, 10), float("-inf"))
    z[0, 3] = 5.0
    z[1, 0] = -7.0
    z.requires_grad_()
    lp, h = token_logprob_and_entropy(z, torch.tensor([3, 0]))
    assert h.tolist() == [0.0, 0.0] and lp.tolist() == [0.0, 0.0]
    (lp + h).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_label_on_a_minus_inf_entry_gives_minus_inf(backend):
    z = torch.tensor([[0.0, float("-inf"), 1.0]])
    lp, _ = token_logprob_and_entropy(z, torch.tensor([1]))
    assert float(lp) == float("-inf")


def test_shift_invariance(backend, gen):
    z = make_logits("random", 11, 257, generator=gen).float()
    labels = labels_for(z, generator=gen)
    lp1, h1 = token_logprob_and_entropy(z, labels)
    lp2, h2 = token_logprob_and_entropy(z + 123.0, labels)
    assert torch.allclose(h1, h2, atol=2e-5) and torch.allclose(lp1, lp2, atol=2e-4)


def test_ignored_labels_get_no_gradient(backend):
    z = torch.randn(4, 9, requires_grad=True)
    labels = torch.tensor([1, -100, 2, -100])
    lp, _ = token_logprob_and_entropy(z, labels)
    assert lp[1] == 0 and lp[3] == 0
    lp.sum().backward()
    assert torch.equal(z.grad[1], torch.zeros(9)) and torch.equal(z.grad[3], torch.zeros(9))
    assert float(z.grad[0].abs().sum()) > 0


def test_inputs_are_not_modified(backend, gen):
    z = make_logits("neg_inf_masked", 6, 77, generator=gen).float().requires_grad_()
    labels = labels_for(z.detach(), generator=gen)
    before, labels_before = z.detach().clone(), labels.clone()
    lp, h = token_logprob_and_entropy(z, labels, temperature=0.5)
    (lp.sum() + h.sum()).backward()
    assert torch.equal(z.detach(), before) and torch.equal(labels, labels_before)


def test_empty_batch(backend):
    z = torch.randn(0, 5, requires_grad=True)
    lp, h = token_logprob_and_entropy(z, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and h.shape == (0,)
    (lp.sum() + h.sum()).backward()
    assert z.grad.shape == (0, 5)


def test_only_one_output_used(backend, gen):
    z = make_logits("random", 4, 30, generator=gen).float()
    labels = labels_for(z, generator=gen, ignore_some=False)
    x = z.clone().requires_grad_()
    lp, _ = token_logprob_and_entropy(x, labels)
    lp.sum().backward()
    xr = z.double().requires_grad_()
    rlp, _ = token_logprob_and_entropy_reference(xr, labels)
    rlp.sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, what="grad of logp only")


def test_gradcheck_float64():
    z = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    z.data[1, 2] = float("-inf")
    labels = torch.tensor([0, 1, -100, 3, 10])

    def f(x):
        lp, h = token_logprob_and_entropy(x, labels, temperature=0.8, chunk_size=2)
        return lp, h

    zz = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (zz,))
    # with a -inf entry: compare against the reference's autograd instead (finite differences cross -inf)
    lp, h = f(z)
    (lp.sum() + 2 * h.sum()).backward()
    zr = z.detach().clone().requires_grad_()
    rlp, rh = token_logprob_and_entropy_reference(zr, labels, temperature=0.8)
    (rlp.sum() + 2 * rh.sum()).backward()
    assert torch.allclose(z.grad, zr.grad, atol=1e-12)
    assert z.grad[1, 2] == 0


def test_debug_checks_pass_on_valid_output(backend, gen):
    z = make_logits("huge", 8, 64, generator=gen).float()
    with debug_checks():
        lp, h = token_logprob_and_entropy(z, labels_for(z, generator=gen))
    assert bool((h >= 0).all()) and bool((lp <= 0).all())
