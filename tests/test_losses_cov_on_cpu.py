"""Clip-Cov and KL-Cov: the spec's worked examples (sections 7.3, 8, 9), selection rules, gradients, statistics."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.losses import clip_cov, kl_cov, ppo
from entrolab.losses.cov import token_covariance

F64 = torch.float64
LP = [-0.1, -2.0, -0.5, -3.0]
ADV = [1.0, 1.0, -1.0, -1.0]


def spec_tokens():
    return torch.tensor([LP], dtype=F64), torch.tensor([ADV], dtype=F64), torch.ones(1, 4, dtype=torch.bool)


def test_covariance_worked_example():
    lp, adv, m = spec_tokens()
    cov = token_covariance(lp, adv, m)
    assert cov[0].tolist() == pytest.approx([1.3, -0.6, -0.9, 1.6], abs=1e-12)
    # precomputed centre equal to the local one gives the same numbers
    assert torch.allclose(token_covariance(lp, adv, m, cov_center=(0.0, -1.4)), cov, atol=1e-15, rtol=0)
    # means are over valid tokens only
    lp2 = torch.cat([lp, torch.full((1, 2), 50.0, dtype=F64)], 1)
    adv2 = torch.cat([adv, torch.full((1, 2), 9.0, dtype=F64)], 1)
    m2 = torch.cat([m, torch.zeros(1, 2, dtype=torch.bool)], 1)
    assert torch.allclose(token_covariance(lp2, adv2, m2)[:, :4], cov) and bool(
        (token_covariance(lp2, adv2, m2)[:, 4:] == 0).all()
    )


def _chosen(lp, old, adv, m, **kw):
    """Tokens detached by clip_cov: value 0 and gradient 0 where the plain clipped loss has a gradient."""
    x = lp.clone().requires_grad_(True)
    out = clip_cov(x, old, adv, m, agg="token-sum", **kw)
    (g,) = torch.autograd.grad(out.loss, x)
    return (g == 0) & m, out


def test_clip_cov_worked_example_one_of_two_candidates_is_detached():
    lp, adv, m = spec_tokens()
    seen = set()
    for seed in range(40):
        chosen, out = _chosen(lp, lp, adv, m, generator=torch.Generator().manual_seed(seed))
        idx = chosen[0].nonzero().flatten().tolist()
        assert len(idx) == 1 and idx[0] in (0, 3)  # n_clip = max(1, floor(2e-4 * 4)) = 1, candidates {0, 3}
        seen.add(idx[0])
        # loss: the other three tokens' max(L1, L2) = -A (r = 1), divided by all 4 tokens (token-mean)
        tm = clip_cov(lp, lp, adv, m, generator=torch.Generator().manual_seed(seed), agg="token-mean")
        expected = sum(-a for i, a in enumerate(ADV) if i != idx[0]) / 4
        assert float(tm.loss) == pytest.approx(expected, abs=1e-12)
        assert float(out.metrics["covclip_frac"]) == 0.25 and float(out.metrics["cov_candidate_frac"]) == 0.5
    assert seen == {0, 3}  # both candidates are reachable: the choice is random, not top-k


def test_clip_cov_seeded_generator_is_reproducible_and_unseeded_respects_membership():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(8, 64, generator=g, dtype=F64) * 4
    adv = torch.randn(8, generator=g, dtype=F64) * 3
    m = torch.rand(8, 64, generator=g) < 0.9
    kw = {"ratio": 0.02, "cov_lb": 0.5, "cov_ub": 8.0}
    a, _ = _chosen(lp, lp, adv, m, generator=torch.Generator().manual_seed(7), **kw)
    b, _ = _chosen(lp, lp, adv, m, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a, b)
    cov = token_covariance(lp, adv, m)
    cand = m & (cov > 0.5) & (cov < 8.0)
    n_clip = max(1, math.floor(0.02 * int(m.sum())))
    for _ in range(5):
        c, _ = _chosen(lp, lp, adv, m, **kw)  # unseeded
        assert bool((c <= cand).all()) and int(c.sum()) == min(n_clip, int(cand.sum()))


def test_clip_cov_zeroed_tokens_stay_in_the_denominator():
    lp, adv, m = spec_tokens()
    out = clip_cov(
        lp, lp, adv, m, ratio=1.0, generator=torch.Generator().manual_seed(0), agg="token-mean"
    )  # both candidates go
    assert float(out.loss) == pytest.approx((-1.0 + 1.0) / 4, abs=1e-12)  # tokens 1 and 2 remain, over 4


def test_clip_cov_never_selects_ppo_clipped_or_padding_tokens():
    lp, adv, m = spec_tokens()
    old = lp.clone()
    old[0, 0] -= math.log(1.5)  # token 0: A = 1, r = 1.5 > 1.2, PPO clips it (clip_by_origin); its Cov stays 1.3
    chosen, out = _chosen(lp, old, adv, m, ratio=1.0, generator=torch.Generator().manual_seed(0))
    assert chosen[0].tolist() == [True, False, False, True]  # token 0's zero gradient is PPO's clip, not Clip-Cov
    assert float(out.metrics["covclip_frac"]) == 0.25 and float(out.metrics["clipfrac"]) == 0.25
    # padding with an in-window covariance is never selected
    m2 = m.clone()
    m2[0, 3] = False
    x = lp.clone().requires_grad_(True)
    out2 = clip_cov(
        x, lp, adv, m2, ratio=1.0, cov_center=(0.0, -1.4), generator=torch.Generator().manual_seed(0), agg="token-mean"
    )
    assert float(out2.metrics["covclip_frac"]) == pytest.approx(1 / 3)  # only token 0 (Cov 1.3); token 3 is padding


def test_clip_cov_without_candidates_is_the_plain_clipped_loss():
    lp, adv, m = spec_tokens()
    old = lp + 0.3
    a = clip_cov(lp, old, adv, m, cov_lb=10.0, cov_ub=20.0, eps_low=0.2, eps_high=0.28, agg="token-mean")
    b = ppo(lp, old, adv, m, eps_low=0.2, eps_high=0.28, agg="token-mean")
    assert float(a.loss) == float(b.loss) and float(a.metrics["covclip_frac"]) == 0.0


def test_clip_cov_detaches_at_least_one_token_in_a_small_batch():
    lp, adv, m = spec_tokens()
    out = clip_cov(lp, lp, adv, m, ratio=1e-9, generator=torch.Generator().manual_seed(0), agg="token-mean")
    assert float(out.metrics["covclip_frac"]) == 0.25


def test_clip_cov_statistics_are_per_call_and_the_precomputed_centre_pins_them():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(2, 8, generator=g, dtype=F64) * 4
    adv = torch.tensor([2.0, -1.0], dtype=F64)
    m = torch.ones(2, 8, dtype=torch.bool)
    whole = token_covariance(lp, adv, m)
    half = token_covariance(lp[:1], adv[:1], m[:1])
    assert not torch.allclose(whole[:1], half)  # per micro-batch, the centre moves (documented)
    n = 16
    centre = (float(adv.repeat_interleave(8).sum() / n), float(lp.sum() / n))
    assert torch.allclose(token_covariance(lp[:1], adv[:1], m[:1], cov_center=centre), whole[:1])


def test_clip_cov_validates_its_hyperparameters():
    lp, adv, m = spec_tokens()
    for kw, name in (({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"cov_lb": 5.0, "cov_ub": 1.0}, "cov_lb")):
        with pytest.raises(ValueError, match=name):
            clip_cov(lp, lp, adv, m, agg="token-mean", **kw)
    with pytest.raises(ValueError, match="cov_center"):
        clip_cov(lp, lp, adv, m, cov_center=(0.0,), agg="token-mean")
    with pytest.raises(ValueError, match="cov_center"):
        clip_cov(lp, lp, adv, m, cov_center=(float("nan"), 0.0), agg="token-mean")
    with pytest.raises(ValueError, match="global_stats"):
        clip_cov(lp, lp, adv, m, global_stats=True, agg="token-mean")  # no process group initialised


def test_kl_cov_worked_example_penalises_the_top_covariance_token():
    lp, adv, m = spec_tokens()
    old = lp - 0.25  # r = e^0.25 everywhere; |lp - old| = 0.25
    x = lp.clone().requires_grad_(True)
    out = kl_cov(x, old, adv, m, ratio=0.25, agg="token-sum")
    (g,) = torch.autograd.grad(out.loss, x)
    r = math.exp(0.25)
    expected = sum(-a * r for a in ADV) + 1.0 * 0.25  # only token 3 (Cov 1.6) gets beta |log r|
    assert float(out.loss.detach()) == pytest.approx(expected, abs=1e-12)
    grads = [-a * r for a in ADV]
    grads[3] += 1.0  # d|lp - old|/dlp = sign(0.25) = 1
    assert g[0].tolist() == pytest.approx(grads, abs=1e-12)
    assert float(out.metrics["klcov_frac"]) == 0.25


def test_kl_cov_applies_no_ppo_clip():
    lp = torch.tensor([[math.log(3.0), -1.0]], dtype=F64)
    old = torch.tensor([[0.0, -1.0]], dtype=F64)
    adv = torch.tensor([[1.0, -5.0]], dtype=F64)
    # token 1 has the larger covariance and is the one penalised; token 0 (r = 3, A = 1) has loss -3
    out = kl_cov(lp, old, adv, torch.ones(1, 2), ratio=0.5, agg="token-sum", cov_center=(0.0, 0.0))
    assert float(out.metrics["klcov_frac"]) == 0.5
    assert float(out.loss) == pytest.approx(-3.0 + 5.0, abs=1e-12)  # token 1: r = 1, |log r| = 0


def test_kl_cov_top_k_breaks_ties_by_position():
    lp = torch.full((1, 5), -1.0, dtype=F64)
    adv = torch.tensor([[-1.0, -0.1, -1.0, -0.1, -1.0]], dtype=F64)  # centre (0, 0): Cov = A lp = [1, .1, 1, .1, 1]
    old = lp - 0.5
    for k, expected in ((1, [0]), (2, [0, 2]), (3, [0, 2, 4])):
        x = lp.clone().requires_grad_(True)
        out = kl_cov(x, old, adv, torch.ones(1, 5), ratio=k / 5, agg="token-sum", cov_center=(0.0, 0.0))
        (g,) = torch.autograd.grad(out.loss, x)
        plain = -adv * math.exp(0.5)
        assert ((g - plain).abs() > 0.5)[0].nonzero().flatten().tolist() == expected


def test_kl_cov_is_plain_unclipped_policy_gradient_on_policy():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(3, 9, generator=g, dtype=F64) * 3
    adv = torch.randn(3, generator=g, dtype=F64)
    m = torch.ones(3, 9, dtype=torch.bool)
    x = lp.clone().requires_grad_(True)
    out = kl_cov(
        x, lp.clone(), adv, m, ratio=0.5, agg="token-mean"
    )  # old == current: |lp - old| = 0 with subgradient 0
    (grad,) = torch.autograd.grad(out.loss, x)
    assert torch.allclose(grad, -adv.unsqueeze(1).expand(3, 9) / 27, atol=1e-15)


def test_kl_cov_ratio_is_a_fraction():
    lp, adv, m = spec_tokens()
    for bad in (0.0, -0.1, 1.01, 20.0):
        with pytest.raises(ValueError, match="ratio"):
            kl_cov(lp, lp, adv, m, ratio=bad, agg="token-mean")
    with pytest.raises(ValueError, match="kl_coef"):
        kl_cov(lp, lp, adv, m, kl_coef=-1.0, agg="token-mean")
    assert "0.2 here means 20%" in (kl_cov.__doc__ or "")


def test_kl_cov_count_is_the_truncated_product_and_compat_is_checked():
    """``k = int(N * ratio)`` as the authors' code computes it: 0.29 x 100 is 28.999999999999996, so 28 tokens."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(10, 10, generator=g, dtype=torch.float64)
    adv = torch.randn(10, generator=g, dtype=torch.float64)
    m = torch.ones(10, 10, dtype=torch.bool)
    for compat in ("paper", "code"):
        out = kl_cov(lp, lp - 0.1, adv, m, agg="token-mean", ratio=0.29, compat=compat)
        assert float(out.metrics["klcov_frac"]) == pytest.approx(0.28)
    with pytest.raises(ValueError, match="compat"):
        kl_cov(lp, lp, adv, m, agg="token-mean", compat="verl")
    with pytest.raises(ValueError, match="cov_center"):
        kl_cov(lp, lp, adv, m, agg="token-mean", compat="code", cov_center=(0.0, 0.0))
