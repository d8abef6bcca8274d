"""Hypothesis properties: 0 <= H <= log V, logp <= 0, shift invariance, and agreement of the chunked, unchunked
and fused paths for any chunk size."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrolab.entropy import _rows, linear_logprob_and_entropy, token_logprob_and_entropy

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logit_batches(draw):
    n = draw(st.integers(1, 12))
    v = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0, 1e3]))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=gen, dtype=torch.float64) * scale
    if draw(st.booleans()) and v > 1:
        mask = torch.rand(n, v, generator=gen) < 0.3
        mask[:, 0] = False
        z = z.masked_fill(mask, float("-inf"))
    labels = torch.zeros(n, dtype=torch.long)  # column 0 is always finite
    temperature = draw(st.sampled_from([0.5, 1.0, 1.7]))
    return z, labels, temperature


@SETTINGS
@given(batch=logit_batches(), chunk=st.integers(1, 20), native=st.booleans())
def test_bounds_shift_and_chunk_agreement(batch, chunk, native):
    z, labels, temperature = batch
    z32 = z.float()
    saved = _rows.native_for
    if not native:
        _rows.native_for = lambda x: None
    try:
        lp, h = token_logprob_and_entropy(z32, labels, temperature=temperature, chunk_size=chunk)
        lp_all, h_all = token_logprob_and_entropy(z32, labels, temperature=temperature, chunk_size=z.shape[0])
        lp_s, h_s = token_logprob_and_entropy(z32 + 17.0, labels, temperature=temperature, chunk_size=chunk)
    finally:
        _rows.native_for = saved
    v = z.shape[1]
    tol = 1e-5 * max(1.0, float(z[torch.isfinite(z)].abs().max()) / temperature)
    assert bool((h >= 0).all()) and bool((h <= math.log(v) + 1e-5).all())
    assert bool((lp <= 1e-6).all())
    assert torch.allclose(h, h_all, atol=1e-6) and torch.allclose(lp, lp_all, atol=1e-6)
    assert torch.allclose(h, h_s, atol=tol) and torch.allclose(lp, lp_s, atol=tol)


@SETTINGS
@given(
    n=st.integers(1, 40),
    hdim=st.integers(1, 24),
    v=st.integers(1, 400),
    chunk=st.integers(1, 50),
    block=st.integers(1, 64),
    seed=st.integers(0, 2**31 - 1),
)
def test_fused_agrees_with_from_logits_for_any_tiling(n, hdim, v, chunk, block, seed):
    from entrolab.entropy import fused_linear

    gen = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, hdim, generator=gen)
    w = torch.randn(v, hdim, generator=gen)
    labels = torch.randint(0, v, (n,), generator=gen)
    saved = fused_linear._CPU_TILE_ELEMENTS
    fused_linear._CPU_TILE_ELEMENTS = chunk * max(256, block)  # exercises partial vocabulary blocks
    try:
        lp1, h1 = linear_logprob_and_entropy(hid, w, labels, chunk_size=chunk)
    finally:
        fused_linear._CPU_TILE_ELEMENTS = saved
    lp2, h2 = token_logprob_and_entropy(hid @ w.T, labels)
    assert torch.allclose(h1, h2, atol=2e-5, rtol=1e-5) and torch.allclose(lp1, lp2, atol=2e-5, rtol=1e-5)
