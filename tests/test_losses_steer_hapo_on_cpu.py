"""STEER (section 12) and HAPO (section 20): worked examples, edge cases, compat flags, equivalences."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.advantages import grpo_advantages, hapo_token_level_advantages
from entrolab.batch_stats import masked_quantile
from entrolab.dynamics import steer_omega
from entrolab.losses import hapo, ppo, steer
from entrolab.losses.hapo import HapoEntropyStats, hapo_normalized_entropy
from entrolab.losses.steer import steer_weights

F64 = torch.float64


def steer_example():
    lp = torch.tensor([[0.5, 0.9, 0.1]], dtype=F64).log()
    h = torch.tensor([[1.0, 0.5, 2.0]], dtype=F64)
    a = torch.tensor([[1.0, 1.0, -1.0]], dtype=F64)
    return lp, h, a, torch.ones(1, 3, dtype=torch.bool)


def test_steer_omega_and_weights_worked_example():
    lp, h, a, m = steer_example()
    assert steer_omega(lp, lp, a, m, entropy=h)[0].tolist() == pytest.approx([0.1534, 0.0395, 0.2723], abs=1e-4)
    w = steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.8)
    assert w[0].tolist() == pytest.approx([0.8819, 0.9682, 0.8000], abs=1e-4)
    assert float(w[0, 2]) == pytest.approx(0.8, abs=1e-12)  # the largest |Omega| gets exactly lambda_min
    wl = steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.8, lambda_max=1.2, mode="linear")
    assert wl[0].tolist() == pytest.approx([1.0042, 1.2, 0.8], abs=1e-4)


def test_steer_exp_floor_keeps_tiny_omegas_near_one():
    lp, h, a, m = steer_example()
    w = steer_weights(lp, lp, a * 1e-4, m, entropy=h, lambda_min=0.8)  # max |Omega| ~ 2.7e-5 < 0.02
    k = -math.log(0.8) / 0.02
    om = steer_omega(lp, lp, a * 1e-4, m, entropy=h).abs()
    assert torch.allclose(w, torch.exp(-k * om)) and bool((w > 0.99).all())


def test_steer_linear_with_equal_omegas_gives_the_midpoint():
    lp = torch.full((1, 3), math.log(0.5), dtype=F64)
    w = steer_weights(
        lp,
        lp,
        torch.ones(1, 3, dtype=F64),
        torch.ones(1, 3),
        entropy=torch.ones(1, 3, dtype=F64),
        lambda_min=0.8,
        lambda_max=1.2,
        mode="linear",
    )
    assert torch.allclose(w, torch.full_like(w, 1.0))


def test_steer_weights_carry_no_gradient_and_non_finite_omega_is_zero():
    lp, h, a, m = steer_example()
    x = lp.clone().requires_grad_(True)
    assert not steer_weights(x, x, a, m, entropy=h, lambda_min=0.8).requires_grad
    om = steer_omega(lp, lp, torch.tensor([[1e308, 1.0, 1.0]], dtype=F64), m, entropy=h)
    assert om[0, 0] == 0 and torch.isfinite(om).all()  # A / pi_old overflows -> 0


def test_steer_loss_equals_ppo_on_weighted_advantages():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 7, generator=g, dtype=F64) * 3
    old = lp + torch.randn(4, 7, generator=g, dtype=F64) * 0.4
    adv = torch.randn(4, 7, generator=g, dtype=F64)
    ent = torch.rand(4, 7, generator=g, dtype=F64) * 2
    m = torch.rand(4, 7, generator=g) < 0.8
    for mode in ("exp", "linear"):
        w = steer_weights(
            lp, old, adv, m, entropy=ent, lambda_min=0.8, lambda_max=1.0 if mode == "exp" else 1.2, mode=mode
        )
        x1, x2 = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
        a = steer(x1, old, adv, m, entropy=ent, mode=mode, agg="token-mean")
        b = ppo(x2, old, adv * w, m, eps_low=0.2, eps_high=0.28, dual_clip=10.0, agg="token-mean")
        (ga,), (gb,) = torch.autograd.grad(a.loss, x1), torch.autograd.grad(b.loss, x2)
        assert float(a.loss.detach()) == pytest.approx(float(b.loss.detach()), abs=1e-12)
        assert torch.allclose(ga, gb, atol=1e-14)


def test_steer_needs_entropy_and_valid_bounds():
    lp, h, a, m = steer_example()
    with pytest.raises(ValueError, match="entropy"):
        steer(lp, lp, a, m, agg="token-mean")
    with pytest.raises(ValueError, match="lambda_max"):
        steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.9, lambda_max=0.8)
    with pytest.raises(ValueError, match="mode"):
        steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.8, mode="cosine")
    with pytest.raises(ValueError, match="omega_range"):
        steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.8, omega_range=(1.0, 0.5))


def test_steer_omega_range_equal_to_local_gives_the_same_weights():
    lp, h, a, m = steer_example()
    om = steer_omega(lp, lp, a, m, entropy=h).abs()
    for mode, lmax in (("exp", 1.0), ("linear", 1.2)):
        w1 = steer_weights(lp, lp, a, m, entropy=h, lambda_min=0.8, lambda_max=lmax, mode=mode)
        w2 = steer_weights(
            lp,
            lp,
            a,
            m,
            entropy=h,
            lambda_min=0.8,
            lambda_max=lmax,
            mode=mode,
            omega_range=(float(om.min()), float(om.max())),
        )
        assert torch.allclose(w1, w2, atol=1e-15)


# ------------------------------------------------------------------------------------------------------------- HAPO
H_EX = torch.tensor([[0.1, 0.5, 1.0, 2.0]], dtype=F64)


def test_hapo_normalised_entropy_worked_example_paper_and_code():
    m = torch.ones(1, 4, dtype=torch.bool)
    h, st = hapo_normalized_entropy(H_EX, m)
    assert h[0].tolist() == pytest.approx([-1.0, -0.3010, 0.0, 1.0], abs=1e-4)
    assert float(st.pivot_value) == pytest.approx(0.0, abs=1e-15) and float(st.scale) == pytest.approx(1.2513, abs=1e-4)
    hc, _ = hapo_normalized_entropy(H_EX, m, compat="code")
    assert hc[0].tolist() == pytest.approx([1.0, 0.3010, 0.0, 1.0], abs=1e-4)  # the sign bug
    assert bool((h[0, :2] < 0).all()) and bool(((h >= -1) & (h <= 1)).all())


def test_hapo_nearest_quantile_matches_torch_including_half_ties():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4, 5, 6, 11, 100, 1001):
        x = torch.randn(n, generator=g, dtype=F64)
        for q in (0.0, 0.125, 0.5, 0.8, 0.9, 1.0):
            got = masked_quantile(x.unsqueeze(0), torch.ones(1, n, dtype=torch.bool), q, interpolation="nearest")
            assert float(got) == float(torch.quantile(x, q, interpolation="nearest")), (n, q)


def test_hapo_zero_entropy_tokens_and_saved_statistics():
    h = torch.tensor([[0.0, 0.0, 1.0, 3.0, 0.5]], dtype=F64)
    m = torch.ones(1, 5, dtype=torch.bool)
    hat, st = hapo_normalized_entropy(h, m)
    assert torch.isfinite(hat).all() and float(hat[0, 0]) == -1.0
    again, _ = hapo_normalized_entropy(h, m, stats=st)
    assert torch.equal(hat, again)
    flat, _ = hapo_normalized_entropy(torch.ones(1, 3, dtype=F64), torch.ones(1, 3))  # all equal -> 0, finite
    assert bool((flat == 0).all())


def _hapo_token(h_idx, r, a=1.0):
    """HAPO's per-token loss on token h_idx of the section 20.1 batch, with ratio r there (others r = 1)."""
    lp = torch.zeros(1, 4, dtype=F64)
    lp[0, h_idx] = math.log(r)
    w = torch.zeros(1, 4, dtype=F64)
    w[0, h_idx] = 1.0  # isolate the token without changing the entropy statistics
    out = hapo(
        lp,
        torch.zeros(1, 4, dtype=F64),
        torch.full((1,), a, dtype=F64),
        torch.ones(1, 4),
        entropy=H_EX,
        agg="token-sum",
        token_weights=w,
        dual_clip=None,
    )
    return float(out.loss)


def test_hapo_worked_examples():
    # h_hat = 1 (H = 2.0): eps' = (0.2, 0.4), zone (0.9, 1.2); r = 1.25 is outside -> A_ent = 2, unclipped (<= 1.4)
    assert _hapo_token(3, 1.25) == pytest.approx(-2 * 1.25, abs=1e-12)
    assert _hapo_token(3, 1.0) == pytest.approx(-1.0, abs=1e-12)  # inside the zone -> A
    assert _hapo_token(3, 1.5) == pytest.approx(-2 * 1.4, abs=1e-12)  # the widened high clip 1 + 0.4
    # h_hat = -1 (H = 0.1): eps_low' = 0.4, zone (0.8, 1.1); inside, A_ent = A (1 - 1) = 0
    assert _hapo_token(0, 1.0) == 0.0
    assert _hapo_token(0, 1.2) == pytest.approx(-1.2 * 1.0, abs=1e-12)  # outside the zone -> A, clip at 1.2
    assert _hapo_token(0, 0.5, a=-1.0) == pytest.approx(0.6, abs=1e-12)  # low clip widened to 1 - 0.4


def test_hapo_section_20_5_intended_sign_example_through_fixed_statistics():
    # stats (pivot 0, scale 1, pos_max 1, neg_min -1) make h_hat = log H: H = exp(-0.5) gives h_hat = -0.5
    one = torch.tensor(1.0, dtype=F64)
    st = HapoEntropyStats(torch.tensor(0.0, dtype=F64), one, one, -one)
    ent = torch.tensor([[math.exp(-0.5)]], dtype=F64)

    def loss(r, compat="paper"):
        lp = torch.tensor([[math.log(r)]], dtype=F64)
        out = hapo(
            lp,
            torch.zeros(1, 1, dtype=F64),
            torch.ones(1, dtype=F64),
            torch.ones(1, 1),
            entropy=ent,
            entropy_stats=st,
            dual_clip=None,
            compat=compat,
            agg="token-mean",
        )
        return float(out.loss)

    # eps_low' = 0.3, zone (0.85, 1.1), A_ent = 0.5: r = 1.0 trains on 0.5, r = 1.2 on A = 1 (clipped at 1.2)
    assert loss(1.0) == pytest.approx(-0.5, abs=1e-12)
    assert loss(1.2) == pytest.approx(-1.2, abs=1e-12)
    # with the code's sign the same token is "high entropy" (h_hat = +0.5): A inside the zone (0.9, 1.15)
    assert loss(1.0, compat="code") == pytest.approx(-1.0, abs=1e-12)


def test_hapo_requires_entropy_and_validates():
    lp = torch.zeros(1, 4, dtype=F64)
    with pytest.raises(ValueError, match="entropy"):
        hapo(lp, lp, torch.ones(1, dtype=F64), torch.ones(1, 4), agg="token-mean")
    with pytest.raises(ValueError, match="compat"):
        hapo(lp, lp, torch.ones(1, dtype=F64), torch.ones(1, 4), entropy=H_EX, compat="paper-ish", agg="token-mean")
    with pytest.raises(ValueError, match="entropy_pivot"):
        hapo(lp, lp, torch.ones(1, dtype=F64), torch.ones(1, 4), entropy=H_EX, entropy_pivot=1.5, agg="token-mean")


def test_hapo_token_level_advantages_example_and_fallback():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    a = hapo_token_level_advantages(torch.tensor([1.0, 0.0], dtype=F64), mask, group_size=2)
    assert a.tolist() == pytest.approx([0.5773, -1.7320], abs=1e-4)
    g = grpo_advantages(torch.tensor([1.0, 0.0], dtype=F64), group_size=2)
    assert g.tolist() == pytest.approx([0.7071, -0.7071], abs=1e-4)
    # one long correct response and a one-token wrong one: |A| >= 5 -> GRPO for that group only
    mask2 = torch.zeros(4, 40, dtype=torch.bool)
    mask2[0, :40] = True
    mask2[1, :1] = True
    mask2[2:, :3] = True
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    a2 = hapo_token_level_advantages(r, mask2, torch.tensor([7, 7, 9, 9]))
    assert a2[:2].tolist() == pytest.approx(grpo_advantages(r[:2], group_size=2).tolist())
    assert a2[2:].tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    flat = hapo_token_level_advantages(torch.ones(2, dtype=F64), mask, group_size=2)
    assert bool((flat == 0).all())


def test_hapo_token_level_compat_code_tests_padding_in_the_fallback():
    """Spec 20.3's correction, by hand: rewards 10 and 11 on 3 and 2 of 3 positions.  Token-weighted mu = 10.4,
    population sigma = sqrt(0.24) = 0.4899: A = -0.8165, +1.2247 (no |A| >= 5).  The released test also sees the
    padded position of response 2, whose reward 0 gives (0 - 10.4) / 0.4899 = -21.2: the group falls back to GRPO's
    (11 - 10.5) / 0.7071 = +-0.7071.  Rewards in {0, 1} give the same under both rules."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = torch.tensor([10.0, 11.0], dtype=F64)
    paper = hapo_token_level_advantages(r, mask, group_size=2)
    code = hapo_token_level_advantages(r, mask, group_size=2, compat="code")
    assert paper.tolist() == pytest.approx([-0.4 / 0.24**0.5, 0.6 / 0.24**0.5], abs=1e-5)
    assert code.tolist() == pytest.approx([-(0.5**0.5), 0.5**0.5], abs=1e-5)
    binary = torch.tensor([1.0, 0.0], dtype=F64)
    torch.testing.assert_close(
        hapo_token_level_advantages(binary, mask, group_size=2),
        hapo_token_level_advantages(binary, mask, group_size=2, compat="code"),
    )
    with pytest.raises(ValueError, match="compat"):
        hapo_token_level_advantages(r, mask, group_size=2, compat="hapo")
