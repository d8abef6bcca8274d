"""AEPO-EB's entropy-balanced loss (section 16.2) and the 80/20 forking-token mask (section 11)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.advantages import entropy_aware_advantages
from entrolab.batch_stats import masked_quantile
from entrolab.losses import clip_cov, entropy_balanced, high_entropy_tokens, ppo, register_policy_loss
from entrolab.losses.forking import high_entropy_mask
from entrolab.losses.registry import _POLICY_LOSSES

F64 = torch.float64
ONE = torch.ones(1, 1, dtype=torch.bool)


@pytest.mark.parametrize("r", [0.5, 0.8, 1.0, 1.1, 1.5, 3.0, 6.0])
@pytest.mark.parametrize("a", [1.0, -1.0, 0.0, 2.5, -0.3])
def test_value_equals_ppo_in_every_region_and_gradient_differs_only_on_top_clip(r, a):
    def run(fn, **kw):
        lp = torch.tensor([[math.log(r)]], dtype=F64, requires_grad=True)
        out = fn(
            lp, torch.zeros(1, 1, dtype=F64), torch.tensor([a], dtype=F64), ONE, dual_clip=3.0, agg="token-mean", **kw
        )
        out.loss.backward()
        return float(out.loss.detach()), float(lp.grad)

    v_eb, g_eb = run(entropy_balanced, entropy_advantage=False)
    v_ppo, g_ppo = run(ppo)
    assert v_eb == pytest.approx(v_ppo, abs=1e-12)
    if a > 0 and r > 1.2:
        assert g_ppo == 0.0 and g_eb == pytest.approx(1.2 * (-a), abs=1e-12)  # (1 + eps_high)(-A) grad logp
    else:
        assert g_eb == pytest.approx(g_ppo, abs=1e-12)  # A < 0 and unclipped tokens are unaffected


def test_worked_example_stop_gradient_clip():
    lp = torch.tensor([[math.log(1.5)]], dtype=F64, requires_grad=True)
    out = entropy_balanced(
        lp, torch.zeros(1, 1, dtype=F64), torch.ones(1, dtype=F64), ONE, entropy_advantage=False, agg="token-mean"
    )
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(-1.2) and float(lp.grad) == pytest.approx(-1.2)
    assert float(out.metrics["clipfrac_high"]) == 1.0


def test_entropy_aware_advantage_worked_example_and_zero_std():
    h = torch.tensor([[0.5, 1.0, 2.5]], dtype=F64)
    a = entropy_aware_advantages(torch.ones(1, dtype=F64), h, torch.ones(1, 3))
    assert a[0].tolist() == pytest.approx([0.8399, 0.9359, 1.2242], abs=1e-4)
    flat = entropy_aware_advantages(torch.ones(1, dtype=F64), torch.ones(1, 3, dtype=F64), torch.ones(1, 3))
    assert flat.tolist() == [[1.0, 1.0, 1.0]]  # std 0 counts as 1: z = 0
    single = entropy_aware_advantages(torch.full((1,), 2.0, dtype=F64), h[:, :1], torch.ones(1, 1))
    assert single.tolist() == [[2.0]]  # one token: std undefined -> 1, z = 0


def test_entropy_advantage_is_applied_not_silently_skipped():
    h = torch.tensor([[0.5, 1.0, 2.5]], dtype=F64)
    lp = torch.zeros(1, 3, dtype=F64)
    adv = torch.ones(1, dtype=F64)
    on = entropy_balanced(lp, lp, adv, torch.ones(1, 3), entropy=h, agg="token-sum")
    off = entropy_balanced(lp, lp, adv, torch.ones(1, 3), entropy=h, agg="token-sum", entropy_advantage=False)
    assert float(on.loss) == pytest.approx(-(0.8399 + 0.9359 + 1.2242), abs=1e-3)  # differs from ...
    assert float(off.loss) == pytest.approx(-3.0)  # ... the unshaped advantage
    with pytest.raises(ValueError, match="entropy"):
        entropy_balanced(lp, lp, adv, torch.ones(1, 3), agg="token-mean")  # paper: no silent skip
    code = entropy_balanced(lp, lp, adv, torch.ones(1, 3), entropy=h, agg="token-sum", compat="code")
    assert float(code.loss) == float(off.loss)  # the released configs' behaviour, for replication


def test_entropy_stats_precomputed_equal_local():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(3, 5, generator=g, dtype=F64)
    m = torch.ones(3, 5, dtype=torch.bool)
    a = torch.randn(3, generator=g, dtype=F64)
    local = entropy_aware_advantages(a, h, m)
    given = entropy_aware_advantages(a, h, m, entropy_stats=(float(h.mean()), float(h.std())))
    assert torch.allclose(local, given, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------- 80/20
H10 = torch.tensor([[0.1, 2.3, 0.05, 0.4, 1.7, 0.2, 0.0, 0.3, 0.6, 0.1]], dtype=F64)


def test_worked_example_threshold_and_kept_tokens():
    keep, tau = high_entropy_mask(H10, torch.ones(1, 10))
    assert float(tau) == pytest.approx(0.82, abs=1e-12)
    assert keep[0].nonzero().flatten().tolist() == [1, 4]


def test_masked_quantile_matches_torch_and_works_beyond_its_limit():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 999):
        x = torch.randn(1, n, generator=g, dtype=F64)
        m = torch.ones(1, n, dtype=torch.bool)
        for q in (0.0, 0.2, 0.5, 0.8, 0.999, 1.0):
            assert float(masked_quantile(x, m, q)) == pytest.approx(float(torch.quantile(x, q)), abs=1e-14)
    big = torch.zeros(1, 2**24 + 3, dtype=torch.float32)
    big[0, -1] = 1.0
    with pytest.raises(RuntimeError):
        torch.quantile(big, 0.5)  # pytorch issue #64947
    m = torch.ones_like(big, dtype=torch.bool)
    assert float(masked_quantile(big, m, 1.0)) == 1.0 and float(masked_quantile(big, m, 0.5)) == 0.0


def test_ties_at_the_threshold_are_kept_and_rho_one_keeps_everything():
    h = torch.tensor([[1.0, 1.0, 1.0, 0.5]], dtype=F64)
    keep, tau = high_entropy_mask(h, torch.ones(1, 4), rho=0.25)
    assert float(tau) == 1.0 and keep.tolist() == [[True, True, True, False]]
    keep_all, _ = high_entropy_mask(h, torch.ones(1, 4), rho=1.0)
    assert bool(keep_all.all())


def test_denominator_counts_all_tokens_and_other_tokens_get_no_gradient():
    g = torch.Generator().manual_seed(2)
    lp = -torch.rand(1, 10, generator=g, dtype=F64)
    old = lp + 0.1
    adv = torch.tensor([1.5], dtype=F64)
    x = lp.clone().requires_grad_(True)
    out = high_entropy_tokens(x, old, adv, torch.ones(1, 10), entropy=H10, eps_high=0.28, agg="token-mean")
    (grad,) = torch.autograd.grad(out.loss, x)
    per_token = ppo(lp, old, adv, torch.ones(1, 10), eps_high=0.28, agg="token-sum", token_weights=H10 >= 0.82)
    assert float(out.loss.detach()) == pytest.approx(float(per_token.loss) / 10, abs=1e-14)  # / all 10 tokens
    assert grad[0].nonzero().flatten().tolist() == [1, 4]
    assert float(out.metrics["high_entropy_frac"]) == pytest.approx(0.2) and float(
        out.metrics["entropy_threshold"]
    ) == pytest.approx(0.82)


def test_over_another_base_loss_and_precomputed_threshold():
    g = torch.Generator().manual_seed(2)
    lp = -torch.rand(2, 10, generator=g, dtype=F64) * 3
    adv = torch.tensor([2.0, -2.0], dtype=F64)
    h = H10.repeat(2, 1)
    gen = torch.Generator().manual_seed(0)
    out = high_entropy_tokens(
        lp, lp, adv, torch.ones(2, 10), entropy=h, base="clip_cov", ratio=0.1, generator=gen, agg="token-mean"
    )
    assert "covclip_frac" in out.metrics  # the base's statistics are still over all valid tokens
    ref = clip_cov(
        lp,
        lp,
        adv,
        torch.ones(2, 10),
        ratio=0.1,
        generator=torch.Generator().manual_seed(0),
        token_weights=h >= 0.82,
        agg="token-mean",
    )
    assert float(out.loss) == float(ref.loss)
    fixed = high_entropy_tokens(lp, lp, adv, torch.ones(2, 10), entropy=h, entropy_threshold=2.0, agg="token-mean")
    assert float(fixed.metrics["high_entropy_frac"]) == pytest.approx(0.1)


def test_empty_batch_gives_all_false_mask_and_zero_loss():
    keep, tau = high_entropy_mask(torch.zeros(0, 4, dtype=F64), torch.zeros(0, 4))
    assert keep.shape == (0, 4) and float(tau) == 0.0
    m = torch.zeros(2, 3, dtype=torch.bool)
    out = high_entropy_tokens(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), m, entropy=torch.ones(2, 3), agg="token-mean"
    )
    assert float(out.loss) == 0.0


def test_base_must_accept_token_weights():
    @register_policy_loss("_no_weights_for_test")
    def no_weights(logp, old_logp, advantages, mask, *, entropy=None, agg="token-mean", generator=None):
        raise AssertionError("never called")

    try:
        with pytest.raises(TypeError, match="token_weights"):
            high_entropy_tokens(
                torch.zeros(1, 2),
                torch.zeros(1, 2),
                torch.ones(1),
                torch.ones(1, 2),
                entropy=torch.ones(1, 2),
                base="_no_weights_for_test",
                agg="token-mean",
            )
        with pytest.raises(ValueError, match="valid names"):
            high_entropy_tokens(
                torch.zeros(1, 2),
                torch.zeros(1, 2),
                torch.ones(1),
                torch.ones(1, 2),
                entropy=torch.ones(1, 2),
                base="nope",
                agg="token-mean",
            )
    finally:
        _POLICY_LOSSES.pop("_no_weights_for_test")


@pytest.mark.parametrize("base", ["ppo", "clip_cov", "kl_cov", "steer", "hapo", "entropy_balanced", "cispo", "gspo"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bool_token_weights_equal_float_weights(base, dtype):
    """Bool token weights (the 80/20 mask) and the same weights as floats give the same loss and gradient, for every
    base loss, and the dropped tokens get no gradient."""
    g = torch.Generator().manual_seed(11)
    b, t = 6, 37
    lp = (-torch.rand(b, t, generator=g) * 3).to(dtype)
    old = lp + (torch.randn(b, t, generator=g) * 0.3).to(dtype)
    adv = torch.randn(b, generator=g).to(dtype)
    ent = (torch.rand(b, t, generator=g) * 2).to(dtype)
    mask = torch.arange(t) < torch.randint(1, t + 1, (b,), generator=g).unsqueeze(1)
    keep = mask & (torch.rand(b, t, generator=g) < 0.3)
    kw = {"ratio": 0.2, "cov_lb": -1.0} if base == "clip_cov" else {"ratio": 0.1} if base == "kl_cov" else {}
    fn = _POLICY_LOSSES[base]

    def run(weights):
        x = lp.clone().requires_grad_(True)
        out = fn(
            x,
            old,
            adv,
            mask,
            entropy=ent,
            agg="token-mean",
            generator=torch.Generator().manual_seed(3),
            token_weights=weights,
            **kw,
        )
        out.loss.backward()
        return out.loss.detach(), x.grad

    loss_b, grad_b = run(keep)
    loss_f, grad_f = run(keep.to(dtype))
    tol = 1e-12 if dtype == F64 else 1e-6
    assert torch.allclose(loss_b, loss_f, rtol=0, atol=tol)
    assert torch.allclose(grad_b, grad_f, rtol=0, atol=tol)
    assert bool((grad_b[~keep] == 0).all())


def test_compat_code_keeps_exactly_ceil_rho_n_tokens_by_position_and_averages_over_them():
    """Spec 11's correction: entropies [3, 2, 2, 2, 1, 0, 0, 0, 0, 0], rho 0.2.  The paper's threshold (the
    0.8-quantile, 2.0) keeps 4 tokens; the authors' top-k keeps ceil(0.2 x 10) = 2, the 3 and the first 2.  On-policy
    PPO with A = 1 has per-token loss -1 on the kept tokens: the paper's token-mean over all 10 tokens is -4/10, the
    authors' mean over the selected tokens -2/2."""
    from entrolab.losses import high_entropy_tokens
    from entrolab.losses.forking import high_entropy_mask

    h = torch.tensor([[3.0, 2, 2, 2, 1, 0, 0, 0, 0, 0]])
    m = torch.ones(1, 10, dtype=torch.bool)
    paper, tau = high_entropy_mask(h, m, rho=0.2)
    code, smallest = high_entropy_mask(h, m, rho=0.2, compat="code")
    assert paper[0].nonzero().flatten().tolist() == [0, 1, 2, 3] and float(tau) == 2.0
    assert code[0].nonzero().flatten().tolist() == [0, 1] and float(smallest) == 2.0
    lp = torch.full((1, 10), -0.5, requires_grad=True)
    adv = torch.ones(1)
    kw = {"entropy": h, "agg": "token-mean", "rho": 0.2}
    out_paper = high_entropy_tokens(lp, lp.detach(), adv, m, **kw)
    out_code = high_entropy_tokens(lp, lp.detach(), adv, m, compat="code", **kw)
    assert float(out_paper.loss) == pytest.approx(-0.4) and float(out_code.loss) == pytest.approx(-1.0)
    (g_code,) = torch.autograd.grad(out_code.loss, lp)
    assert g_code[0].tolist() == pytest.approx([-0.5, -0.5] + [0.0] * 8)  # d(-r)/dlogp = -1, over 2 tokens
    with pytest.raises(ValueError, match="compat"):
        high_entropy_mask(h, m, compat="authors")
    with pytest.raises(ValueError, match="entropy_threshold"):
        high_entropy_mask(h, m, compat="code", entropy_threshold=1.0)
    assert not high_entropy_mask(h, torch.zeros_like(m), compat="code")[0].any()  # empty: nothing kept
