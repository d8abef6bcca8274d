"""PPO's clipped surrogate and the batch selections, against independent references written token by token.

The reference is not the library's formula re-typed: it walks the tokens one at a time in Python floats and picks
the branch (unclipped, clipped, dual-clip floor, stop-gradient top clip) by explicit case analysis, with the
gradient of each branch written down by hand (``d(-A r)/d logp = -A r``).  The library's value and autograd's
gradient must agree with it over a shape grid with adversarial entries: log-ratios beyond the +-20 clamp, ratios at
the clip boundaries, zero and huge advantages, garbage at masked positions and all-masked rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.batch_stats import masked_quantile, random_k_mask, select_count, top_k_mask
from entrolab.losses import get_policy_loss

SHAPES = [(1, 1), (3, 7), (4, 47), (17, 33)]


def reference_token(lp, old, a, eps_low, eps_high, dual_clip, stop_gradient_high):
    """(loss, d loss / d logp) of one valid token, by cases."""
    raw = lp - old
    lr = max(-20.0, min(20.0, raw))
    inside_clamp = -20.0 < raw < 20.0 or raw in (-20.0, 20.0)
    r = math.exp(lr)
    dr = r if inside_clamp else 0.0  # d r / d logp
    unclipped, d_unclipped = -a * r, -a * dr
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    cr = min(max(r, lo), hi)
    clipped = -a * cr
    if r > hi and stop_gradient_high:
        d_clipped = -a * hi * (dr / r)  # (1 + eps_high) r / sg(r): gradient survives
    elif lo <= r <= hi:
        d_clipped = -a * dr
    else:
        d_clipped = 0.0
    if clipped > unclipped:
        loss, grad = clipped, d_clipped
    else:
        loss, grad = unclipped, d_unclipped
    if dual_clip is not None and a < 0 and loss > -a * dual_clip:
        loss, grad = -a * dual_clip, 0.0
    return loss, grad


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
    specials = [(30.0, 1.0), (-30.0, -1.0), (math.log(1.25), 1e6), (math.log(0.7), -1e6), (0.0, 0.0)]
    for k, (delta, adv) in enumerate(specials[:n]):
        i = int(picks[k])
        flat[1][i] = flat[0][i] - delta
        flat[2][i] = adv
    if n > 6:  # garbage at a masked position
        j = int(picks[6])
        m.view(-1)[j] = False
        flat[0][j], flat[1][j], flat[2][j] = float("nan"), float("inf"), float("-inf")
    if b > 2:
        m[-1] = False  # an all-masked row
    return logp.to(dtype), old.to(dtype), a.to(dtype), m


CASES = [
    ("ppo", {"eps_low": 0.2, "eps_high": 0.2}, None, False),
    ("ppo", {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0}, 3.0, False),
    ("entropy_balanced", {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 3.0, "entropy_advantage": False}, 3.0, True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "kw", "dual_clip", "sg_high"), CASES)
def test_surrogate_matches_the_token_by_token_reference(shape, dtype, name, kw, dual_clip, sg_high):
    logp, old, a, m = batch(shape, dtype, seed=31 * shape[0] + shape[1])
    x = logp.clone().requires_grad_(True)
    out = get_policy_loss(name)(x, old, a, m, agg="token-sum", **kw)
    out.loss.backward()
    want_loss, want_grad = 0.0, torch.zeros(shape, dtype=torch.float64)
    for i in range(shape[0]):
        for j in range(shape[1]):
            if not m[i, j]:
                continue
            v, gr = reference_token(
                float(logp[i, j]), float(old[i, j]), float(a[i, j]), kw["eps_low"], kw["eps_high"], dual_clip, sg_high
            )
            want_loss += v
            want_grad[i, j] = gr
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    assert float(out.loss.detach()) == pytest.approx(want_loss, rel=tol, abs=tol)
    assert torch.allclose(x.grad.double(), want_grad, rtol=tol, atol=tol)
    assert bool((x.grad[~m] == 0).all())


def test_per_token_clip_ranges_follow_the_reference():
    """HAPO passes (B, T) clip ranges to the same surrogate: checked token by token with each token's own range."""
    from entrolab.losses._common import check_policy_inputs
    from entrolab.losses.ppo import clipped_surrogate

    logp, old, a, m = batch((5, 9), torch.float64, seed=5)
    g = torch.Generator().manual_seed(1)
    el = torch.rand(5, 9, generator=g, dtype=torch.float64) * 0.4
    eh = torch.rand(5, 9, generator=g, dtype=torch.float64) * 0.4
    x = logp.clone().requires_grad_(True)
    inputs = check_policy_inputs(x, old, a, m)
    s = clipped_surrogate(inputs, inputs.adv, eps_low=el, eps_high=eh, dual_clip=3.0)
    s.per_token.sum().backward()
    for i in range(5):
        for j in range(9):
            if m[i, j]:
                args = (float(logp[i, j]), float(old[i, j]), float(a[i, j]), float(el[i, j]), float(eh[i, j]))
                v, gr = reference_token(*args, 3.0, False)
                assert float(s.per_token[i, j]) == pytest.approx(v, rel=1e-12, abs=1e-12)
                assert float(x.grad[i, j]) == pytest.approx(gr, rel=1e-12, abs=1e-12)


def test_ppo_worked_example_by_hand():
    """r = [e^0.1, e^-0.3, e^0.5], A = [1, -1, 1], eps = 0.2: per-token losses -A max(...) give -1.10517,
    +0.8 (r = 0.7408 < 0.8: the clipped branch -A 0.8 is larger) and -1.2 (r = 1.6487 > 1.2); token-mean -0.50172;
    only the first token has a gradient, -r / 3."""
    lp = torch.tensor([[0.1, -0.3, 0.5]], dtype=torch.float64, requires_grad=True)
    out = get_policy_loss("ppo")(lp, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[1.0, -1, 1]]).double(),
                                 torch.ones(1, 3, dtype=torch.bool), agg="token-mean")  # fmt: skip
    assert float(out.loss.detach()) == pytest.approx((-math.exp(0.1) + 0.8 - 1.2) / 3, abs=1e-12)
    out.loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-math.exp(0.1) / 3, 0.0, 0.0], abs=1e-12)
    assert float(out.metrics["clipfrac"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000])
@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_masked_quantile_equals_torch_quantile_of_the_valid_values(n, q):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    m = torch.rand(3, n, generator=g) < 0.7
    x[~m] = float("nan")  # garbage at padding never reaches the result
    valid = x[m]
    for interpolation in ("linear", "nearest"):
        got = masked_quantile(x, m, q, interpolation=interpolation)
        want = torch.quantile(valid, q, interpolation=interpolation) if valid.numel() else torch.tensor(0.0)
        assert float(got) == pytest.approx(float(want), abs=1e-14), interpolation


def test_top_k_mask_takes_the_largest_and_breaks_ties_by_position():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, float("nan"), 3.0]])
    m = torch.tensor([[True, True, True, True], [True, True, False, True]])
    k = torch.tensor(3)
    got = top_k_mask(scores, m, k)
    assert got.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert top_k_mask(scores, m, torch.tensor(100)).tolist() == m.tolist()


def test_select_count_is_floor_with_a_floor_of_one():
    n = torch.tensor(100)
    assert int(select_count(0.07, n)) == 7  # 0.07 * 100 is 7.000000000000001 or 6.99...: exact fraction kept
    assert int(select_count(2e-4, n)) == 1
    assert int(select_count(0.5, torch.tensor(0))) == 1


def test_random_k_mask_is_a_uniform_subset_of_the_candidates():
    cand = torch.zeros(4, 10, dtype=torch.bool)
    cand[:, ::3] = True  # 16 candidates
    counts = torch.zeros(4, 10)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        chosen = random_k_mask(cand, torch.tensor(4), generator=g)
        assert int(chosen.sum()) == 4 and not bool((chosen & ~cand).any())
        counts += chosen
    freq = counts[cand] / 2000  # each candidate chosen with probability 4/16
    assert float((freq - 0.25).abs().max()) < 0.05
    assert int(random_k_mask(cand, torch.tensor(100), generator=g).sum()) == 16
