"""The shared PPO surrogate's fast path (analytic gradient, float-mask arithmetic) against plain autograd.

The reference below is the textbook formula written with ``where``/``clamp``/``maximum`` and differentiated by
autograd; the fast path must give the same per-token values and the same gradient with respect to ``logp`` over a
shape grid with adversarial entries: log-ratios beyond the +-20 clamp, ratios exactly at the clip boundaries, zero
and huge advantages, garbage at masked positions, all-masked rows, per-token (HAPO) clip ranges, dual-clip and the
AEPO-EB stop-gradient high clip.  Same dtype on both sides, so boundary decisions are identical.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.losses._common import order_statistics
from entrolab.losses.ppo import adjust_tokens, ppo_core

SHAPES = [(1, 1), (3, 7), (17, 33)]
DTYPES = [torch.float64, torch.float32]


def reference(logp, old, a, m, eps_low, eps_high, dual_clip, top_gradient):
    lr = torch.where(m, logp - old, 0.0).clamp(-20.0, 20.0)
    r = torch.exp(lr)
    a0 = torch.where(m, a, 0.0)
    u = -a0 * r
    if top_gradient:
        hi = 1.0 + eps_high
        cr = torch.where(r > hi, hi * r / r.detach(), torch.clamp(r, min=1.0 - eps_low))
        c = -a0 * cr
    else:
        c = -a0 * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(u, c)
    if dual_clip is not None:
        floor = -a0 * dual_clip
        loss = torch.where((a0 < 0) & (loss > floor), floor, loss)
    return torch.where(m, loss, 0.0)


def batch(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    b, t = shape
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.4
    a = torch.randn(b, t, generator=g, dtype=torch.float64) * 2
    m = torch.rand(b, t, generator=g) < 0.8
    flat = [x.view(-1) for x in (logp, old, a)]
    n = b * t
    picks = torch.randperm(n, generator=g)
    specials = [
        (0, 0, 30.0),  # beyond the clamp: r = e^20, zero gradient
        (0, 0, -30.0),
        (1, 0, math.log(1.2)),  # exactly at the default high boundary
        (2, 0, math.log(0.8)),  # exactly at the default low boundary
        (3, 1, 0.0),  # r = 1
    ]
    for k, (slot, kind, delta) in enumerate(specials):
        if k >= n:
            break
        i = int(picks[k])
        flat[1][i] = flat[0][i] - delta
        flat[2][i] = (1.0, -1.0, 1e6, -1e6)[slot] if kind == 0 else 0.0
    if n > 6:  # garbage at a masked position and an all-masked row
        j = int(picks[6])
        m.view(-1)[j] = False
        flat[0][j], flat[1][j], flat[2][j] = float("nan"), float("inf"), float("-inf")
    if b > 2:
        m[-1] = False
    return logp.to(dtype), old.to(dtype), a.to(dtype), m


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("eps", "dual_clip", "top_gradient"),
    [
        ((0.2, 0.2), None, False),
        ((0.2, 0.28), 3.0, False),
        ((0.2, 0.2), 3.0, True),
        ("per-token", 3.0, False),
        ("per-token", None, True),
    ],
)
def test_fast_surrogate_matches_plain_autograd(shape, dtype, eps, dual_clip, top_gradient):
    logp, old, a, m = batch(shape, dtype, seed=31 * shape[0] + shape[1])
    if eps == "per-token":
        g = torch.Generator().manual_seed(1)
        eps_low = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.4).to(dtype)
        eps_high = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    else:
        eps_low, eps_high = eps
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    mf = m.to(dtype)
    x1 = logp.clone().requires_grad_(True)
    a_clean = torch.where(m, a, 0.0)
    fast, terms = ppo_core(
        x1, old, a_clean, mf, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, top_gradient=top_gradient
    )
    (g_fast,) = torch.autograd.grad((fast * upstream).sum(), x1)
    x2 = logp.clone().requires_grad_(True)
    ref = reference(x2, old, a, m, eps_low, eps_high, dual_clip, top_gradient)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), x2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(fast.detach(), ref.detach(), rtol=tol, atol=tol)
    assert torch.allclose(g_fast, g_ref, rtol=tol, atol=tol)
    assert torch.isfinite(g_fast).all() and bool((g_fast[~m] == 0).all())
    assert bool((terms.log_ratio[~m] == 0).all()) and not bool(terms.clipped[~m].any())
    assert bool((terms.ratio[~m] == 0).all())
    ref_clipped = (-a_clean * torch.clamp(terms.ratio, 1.0 - eps_low, 1.0 + eps_high)) > -a_clean * terms.ratio
    assert torch.equal(terms.clipped, (ref_clipped & m).to(dtype))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4099])
@pytest.mark.parametrize("kind", ["normal", "ties", "padded"])
def test_order_statistics_match_a_full_sort(n, kind):
    """The nested-partition selection behind every quantile and top-k equals indexing a full sort."""
    g = torch.Generator().manual_seed(n)
    if kind == "normal":
        x = torch.randn(n, generator=g)
    elif kind == "ties":
        x = torch.randint(0, 3, (n,), generator=g).float()
    else:  # padding at the dtype's extremes, as the losses' selections use it
        x = torch.randn(n, generator=g)
        x[torch.rand(n, generator=g) < 0.3] = torch.finfo(torch.float32).max
    sorted_x = torch.sort(x).values
    for ks in ([0], [n - 1], [n // 2, n // 2], [max(0, n - 2), n - 1], [0, n // 3, max(0, n - 2), n - 1]):
        before = x.clone()
        assert torch.equal(order_statistics(x, ks), sorted_x[ks]), ks
        assert torch.equal(x, before)  # not reordered without scratch=True
        buf = x.clone()
        assert torch.equal(order_statistics(buf, ks, scratch=True), sorted_x[ks]), ks
        assert torch.equal(torch.sort(buf).values, sorted_x)  # reordered in place, same multiset
    assert torch.equal(order_statistics(x.double(), [n - 1]), sorted_x.double()[[n - 1]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_adjust_tokens_edits_value_and_gradient_like_autograd(dtype):
    """``adjust_tokens`` (Clip-Cov's detached tokens, KL-Cov's penalty, in place on the surrogate's output and its
    gradient coefficient) gives the values and gradients of the plain autograd formulas."""
    g = torch.Generator().manual_seed(7)
    b, t = 5, 9
    logp0 = (-torch.rand(b, t, generator=g) * 3).to(dtype)
    old = logp0 + (torch.randn(b, t, generator=g) * 0.3).to(dtype)
    old[0, 0] = logp0[0, 0]  # on-policy token: |logp - old| has subgradient 0 there, as autograd's abs
    a = torch.randn(b, t, generator=g).to(dtype)
    m = torch.rand(b, t, generator=g) > 0.2
    m[0, 0] = True
    mf = m.to(dtype)
    a = torch.where(m, a, 0.0)
    idx = torch.tensor([0, 3, 17, 40])
    w = torch.rand(b, t, generator=g).to(dtype)

    def fast(mode):
        x = logp0.clone().requires_grad_(True)
        per_token, terms = ppo_core(x, old, a, mf, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
        if mode == "zero":
            adjust_tokens(per_token, terms, idx, zero=True)
        else:
            diff = (x.detach() - old).reshape(-1)[idx]
            adjust_tokens(per_token, terms, idx, add_value=0.5 * diff.abs(), add_grad=0.5 * torch.sign(diff))
        (per_token * w).sum().backward()
        return per_token.detach(), x.grad

    def slow(mode):
        x = logp0.clone().requires_grad_(True)
        per_token, _ = ppo_core(x, old, a, mf, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
        sel = torch.zeros(b * t, dtype=dtype)
        sel[idx] = 1.0
        sel = sel.view(b, t)
        per_token = per_token * (1.0 - sel) if mode == "zero" else per_token + 0.5 * sel * (x - old).abs()
        (per_token * w).sum().backward()
        return per_token.detach(), x.grad

    for mode in ("zero", "add"):
        v_fast, g_fast = fast(mode)
        v_slow, g_slow = slow(mode)
        assert torch.equal(v_fast, v_slow), mode
        assert torch.allclose(g_fast, g_slow, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6), mode
    _, terms = ppo_core(logp0, old, a, mf, eps_low=0.2, eps_high=0.2, dual_clip=None)
    with pytest.raises(ValueError, match="ppo_core"):
        adjust_tokens(logp0.clone(), terms._replace(coef=None), idx, zero=True)


def test_gradient_coefficient_is_freed_after_backward():
    """The surrogates save their gradient coefficient through save_for_backward (edited in place only via ``.data``),
    so autograd frees it after a backward: a caller who keeps the loss does not keep a (B, T) buffer alive."""
    import gc
    import weakref

    from entrolab.losses.ppo import fused_surrogate

    g = torch.Generator().manual_seed(3)
    lp = (-torch.rand(4, 16, generator=g) * 3).requires_grad_(True)
    old = lp.detach() + torch.randn(4, 16, generator=g) * 0.3
    a = torch.randn(4, 16, generator=g)
    mf = torch.ones(4, 16)
    per_token, terms = ppo_core(lp, old, a, mf, eps_low=0.2, eps_high=0.2, dual_clip=None)
    adjust_tokens(per_token, terms, torch.tensor([1, 5]), zero=True)
    ref = weakref.ref(terms.coef)
    del terms
    per_token.sum().backward()
    gc.collect()
    assert ref() is None  # per_token and its graph are still alive; the coefficient is not

    loss, coef = fused_surrogate(lp, lambda: (lp.detach() * 2, torch.full((4, 16), 2.0)))
    ref = weakref.ref(coef)
    del coef
    loss.sum().backward()
    gc.collect()
    assert ref() is None


def test_adjust_tokens_and_fused_surrogate_reject_bad_input():
    lp = torch.zeros(2, 3, requires_grad=True)
    per_token, terms = ppo_core(
        lp, torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3), eps_low=0.2, eps_high=0.2, dual_clip=None
    )
    with pytest.raises(TypeError, match="index"):
        adjust_tokens(per_token, terms, torch.tensor([0.5]), zero=True)
    with pytest.raises(ValueError, match="index"):
        adjust_tokens(per_token, terms, torch.tensor([6]), zero=True)
    with pytest.raises(ValueError, match="either zero"):
        adjust_tokens(per_token, terms, torch.tensor([1]))
    with pytest.raises(ValueError, match="either zero"):
        adjust_tokens(per_token, terms, torch.tensor([1]), zero=True, add_value=torch.ones(1))
    with pytest.raises(ValueError, match="add_grad"):
        adjust_tokens(per_token, terms, torch.tensor([1]), add_grad=torch.ones(2))
    from entrolab.losses.ppo import fused_surrogate

    with pytest.raises(TypeError, match="run"):
        fused_surrogate(lp, None)
