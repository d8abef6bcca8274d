"""Regularizers: KL estimators (section 6), entropy bonus (10), SIREN (13), EPO (14)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.entropy import debug_checks
from entrolab.losses import SirenAnchor, entropy_bonus, epo, kl_estimate, kl_penalty, ppo, siren
from entrolab.losses.entropy_terms import top_p_entropy
from entrolab.losses.epo import EntropyHistory, epo_phase_weight

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------ KL penalty
def test_kl_worked_example_and_aliases():
    lp, ref = torch.tensor([-1.0, -2.0], dtype=F64), torch.tensor([-1.5, -1.0], dtype=F64)
    expected = {"k1": [0.5, -1.0], "k2": [0.125, 0.5], "k3": [0.1065, 0.7183], "abs": [0.5, 1.0]}
    for kind, values in expected.items():
        assert kl_estimate(lp, ref, kind=kind).tolist() == pytest.approx(values, abs=1e-4)
    for alias, kind in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        assert torch.equal(kl_estimate(lp, ref, kind=alias), kl_estimate(lp, ref, kind=kind))
    with pytest.raises(ValueError, match="kind"):
        kl_estimate(lp, ref, kind="k4")


def test_k3_is_nonnegative_and_flat_at_equality():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(1000, generator=g, dtype=F64) * 10
    ref = torch.randn(1000, generator=g, dtype=F64) * 10
    assert bool((kl_estimate(lp, ref, kind="k3") >= 0).all())
    x = torch.tensor([-0.7], dtype=F64, requires_grad=True)
    v = kl_estimate(x, x.detach().clone(), kind="k3")
    v.sum().backward()
    assert float(v.detach()) == 0.0 and float(x.grad) == 0.0


def test_straight_through_variants_have_k2_gradients():
    lp = torch.tensor([-1.0, -2.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], dtype=F64)
    (g2,) = torch.autograd.grad(kl_estimate(lp, ref, kind="k2").sum(), lp)
    for plus, base in (("k1+", "k1"), ("k3+", "k3")):
        v = kl_estimate(lp, ref, kind=plus)
        assert torch.allclose(v.detach(), kl_estimate(lp, ref, kind=base).detach())
        (g,) = torch.autograd.grad(v.sum(), lp)
        assert torch.allclose(g, g2)


def test_expected_gradients_by_enumeration_on_a_categorical():
    z = torch.tensor([0.3, -1.0, 1.2, 0.1], dtype=F64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([1.0, 0.0, -0.5, 0.2], dtype=F64), 0)

    def expected_grad(kind):
        lp = torch.log_softmax(z, 0)
        p = lp.exp().detach()  # samples drawn from pi_theta: the expectation weights carry no gradient
        (g,) = torch.autograd.grad((p * kl_estimate(lp, ref, kind=kind)).sum(), z)
        return g

    lp = torch.log_softmax(z, 0)
    p = lp.exp()
    (g_fwd,) = torch.autograd.grad((p * (lp - ref)).sum(), z)  # grad KL(pi || ref)
    lp = torch.log_softmax(z, 0)
    (g_rev,) = torch.autograd.grad((ref.exp() * (ref - lp)).sum(), z)  # grad KL(ref || pi)
    assert torch.allclose(expected_grad("k1"), torch.zeros(4, dtype=F64), atol=1e-15)
    assert torch.allclose(expected_grad("k2"), g_fwd, atol=1e-14)
    assert torch.allclose(expected_grad("k3"), g_rev, atol=1e-14)


def test_kl_penalty_masks_and_scales():
    lp = torch.tensor([[-1.0, -2.0, float("nan")]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0, float("inf")]], dtype=F64)
    out = kl_penalty(lp, ref, torch.tensor([[1, 1, 0]]), kind="k2", coef=0.5)
    assert float(out.loss) == pytest.approx(0.5 * (0.125 + 0.5) / 2)
    assert float(out.metrics["kl"]) == pytest.approx(0.3125)
    with pytest.raises(ValueError, match="coef"):
        kl_penalty(lp, ref, torch.tensor([[1, 1, 0]]), coef=-0.1)
    with debug_checks(), pytest.raises(ValueError, match="ref_logp"):
        kl_penalty(torch.zeros(1, 3, dtype=F64), ref, torch.ones(1, 3))


# --------------------------------------------------------------------------------------------------- entropy bonus
def test_entropy_bonus_flows_gradients_and_has_the_stated_scale():
    logits = torch.randn(2, 5, 7, dtype=F64, requires_grad=True)
    lpv = torch.log_softmax(logits, -1)
    h = -(lpv.exp() * lpv).sum(-1)
    m = torch.ones(2, 5, dtype=torch.bool)
    m[1, 3:] = False
    pol = ppo(lpv[..., 0], lpv[..., 0].detach(), torch.tensor([1.0, -1.0], dtype=F64), m, agg="token-mean")
    bonus = entropy_bonus(h, m, coef=0.01)
    total = pol.loss + bonus.loss
    hbar = float(torch.where(m, h, 0).sum().detach() / m.sum())
    assert (float(pol.loss.detach()) - float(total.detach())) / hbar == pytest.approx(0.01, rel=1e-12)
    (g,) = torch.autograd.grad(bonus.loss, logits)
    assert float(g.abs().sum()) > 0


def test_entropy_bonus_reads_a_controller_value():
    ctl = AdaptiveEntropyCoefficient(target=1.0, init=0.0)
    h = torch.ones(1, 3, dtype=F64)
    assert float(entropy_bonus(h, torch.ones(1, 3), coef=ctl).loss) == 0.0  # first window: no bonus
    ctl.observe(0.5)  # below target -> coef 0.005, applied from now on
    out = entropy_bonus(h, torch.ones(1, 3), coef=ctl)
    assert float(out.loss) == pytest.approx(-0.005) and float(out.metrics["entropy_coef"]) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="coef"):
        entropy_bonus(h, torch.ones(1, 3), coef=float("nan"))


# ------------------------------------------------------------------------------------------------------------ SIREN
def test_top_p_entropy_worked_examples():
    z = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64).log()
    assert float(top_p_entropy(z)) == pytest.approx(0.6829, abs=1e-4)  # q = [4/7, 3/7]
    assert float(top_p_entropy(z, include_crossing_token=True)) == pytest.approx(1.0609, abs=1e-4)
    hi = torch.tensor([0.85, 0.1, 0.05], dtype=F64).log().requires_grad_(True)
    v = top_p_entropy(hi)
    (g,) = torch.autograd.grad(v, hi)
    assert float(v.detach()) == 0.0 and torch.isfinite(g).all() and bool((g == 0).all())


def test_top_p_entropy_matches_a_float64_reference_and_handles_k_at_least_v():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 50, generator=g, dtype=F64) * 2
    z[0, 10:] = float("-inf")
    for include in (False, True):
        got = top_p_entropy(z, top_p=0.8, top_k=10000, include_crossing_token=include)
        for row in range(6):
            p = torch.softmax(z[row], 0).sort(descending=True).values
            c = p.cumsum(0)
            cut = int((c < 0.8).sum())
            kept = p[: cut + 1] if include else p[:cut]
            q = kept / kept.sum() if kept.numel() else kept
            ref = float(-(q * q.log()).sum()) if kept.numel() else 0.0
            assert float(got[row]) == pytest.approx(ref, abs=1e-9)
    # top_k smaller than the set: the cumulative mass never reaches p -> keeps all k
    assert float(top_p_entropy(torch.zeros(8, dtype=F64), top_k=2)) == pytest.approx(math.log(2), abs=1e-9)


def test_top_p_float32_boundary_rule():
    z = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float32).log()
    # exactly at the boundary (0.4 + 0.3 = 0.7) exact arithmetic puts the crossing at rank 1: keep one token, H = 0.
    # float32 probabilities land a few ulps either side of 0.7; the 1e-6 slack resolves both precisions the same way
    assert float(top_p_entropy(z.double(), top_p=0.7)) == pytest.approx(0.0, abs=1e-9)
    assert float(top_p_entropy(z, top_p=0.7)) == pytest.approx(0.0, abs=1e-6)
    assert float(top_p_entropy(z, top_p=0.75)) == pytest.approx(0.6829, abs=1e-4)  # away from it, unchanged


def _siren_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 40, generator=g, dtype=F64) * 1.5
    m = torch.ones(3, 12, dtype=torch.bool)
    m[1, 8:] = False
    m[2, 5:] = False
    return logits, m


def test_siren_anchor_is_set_once_frozen_and_restored():
    logits, m = _siren_batch()
    anchor = SirenAnchor()
    first = siren(logits, m, anchor=anchor)
    assert float(first.loss) == 0.0 and anchor.is_set
    value = anchor.value
    x = (logits * 0.5).requires_grad_(True)
    second = siren(x, m, anchor=anchor)
    assert anchor.value == value and float(second.loss.detach()) > 0
    (g,) = torch.autograd.grad(second.loss, x)
    assert float(g.abs().sum()) > 0 and torch.isfinite(g).all()
    restored = SirenAnchor()
    restored.load_state_dict(anchor.state_dict())
    assert float(siren(logits * 0.5, m, anchor=restored).loss) == float(second.loss.detach())


def test_siren_peak_mask_is_per_sequence_and_matches_manual_computation():
    logits, m = _siren_batch()
    hp = top_p_entropy(logits)
    expected_terms = []
    for i in range(3):
        v = hp[i][m[i]]
        q = torch.quantile(v, 0.8)
        expected_terms.append(v[v > q].mean())
    h_bar = torch.stack(expected_terms).mean()
    out = siren(logits, m, anchor=0.3, coef=0.005)
    assert float(out.loss) == pytest.approx(0.005 * (float(h_bar) - 0.3) ** 2, rel=1e-10)
    assert float(out.metrics["siren_entropy"]) == pytest.approx(float(h_bar), rel=1e-6)


def test_siren_ignores_garbage_at_padding():
    logits, m = _siren_batch()
    dirty = logits.clone()
    dirty[~m] = float("nan")
    assert float(siren(dirty, m, anchor=0.3).loss) == float(siren(logits, m, anchor=0.3).loss)


# -------------------------------------------------------------------------------------------------------------- EPO
def test_epo_worked_examples_code_and_paper():
    h = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64, requires_grad=True)
    m = torch.ones(1, 3, dtype=torch.bool)
    code = epo(h, m, reference_entropy=1.0, compat="code", coef=1.0, agg="token-sum")
    assert float(code.metrics["epo_penalty"]) == pytest.approx(0.2 / 3)  # P = [0.1, 0, 0.1]
    paper = epo(h, m, reference_entropy=1.0, coef=1.0, agg="token-sum")
    assert float(paper.metrics["epo_penalty"]) == pytest.approx(0.06 / 3)  # P = 0.1 [0.3, 0, 0.3]
    # gradient of the smoothing term: code 0, paper dP/dH = [-0.1, 0, +0.1]
    bonus = epo(h, m, reference_entropy=None, coef=1.0, agg="token-sum")
    (g_bonus,) = torch.autograd.grad(bonus.loss, h)
    (g_code,) = torch.autograd.grad(code.loss, h)
    (g_paper,) = torch.autograd.grad(paper.loss, h)
    assert torch.equal(g_code, g_bonus)  # the released penalty contributes no gradient
    assert (g_paper - g_bonus)[0].tolist() == pytest.approx([-0.1, 0.0, 0.1], abs=1e-12)


def test_epo_squared_penalty_code_gate_and_validation():
    h = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    m = torch.ones(1, 3, dtype=torch.bool)
    sq = epo(h, m, reference_entropy=1.0, penalty="squared")
    assert float(sq.metrics["epo_penalty"]) == pytest.approx(0.1 * 2 * 0.09 / 3)
    turns = torch.tensor([[0, 1, 2]])
    gated = epo(h, m, reference_entropy=1.0, compat="code", turn_index=turns, max_steps=50)
    assert float(gated.metrics["epo_penalty"]) == 0.0  # no turn >= 25
    late = epo(h, m, reference_entropy=1.0, compat="code", turn_index=turns + 30, max_steps=50)
    assert float(late.metrics["epo_penalty"]) > 0
    with pytest.raises(ValueError, match="kappa_high"):
        epo(h, m, reference_entropy=1.0, kappa_low=1.5, kappa_high=1.2)
    with pytest.raises(ValueError, match="max_steps"):
        epo(h, m, reference_entropy=1.0, compat="code", turn_index=turns)


def test_epo_phase_weights_and_history():
    got = [epo_phase_weight(e) for e in (0, 10, 75, 76, 100, 150)]
    assert got == pytest.approx([1.0, 0.9532, 0.8271, 0.7686, 0.2943, 0.0398], abs=1e-4)
    hist = EntropyHistory(max_steps=4)
    assert hist.reference() is None
    hist.record([1.0, 2.0])
    hist.record([3.0, 2.0, 1.0, 1.0, 5.0])  # longer than max_steps: left-truncated
    assert hist.reference().tolist() == [1.5, 1.5, 0.5, 2.5]  # [1, 2, 0, 0] and [2, 1, 1, 5]
    other = EntropyHistory(max_steps=1)
    other.load_state_dict(hist.state_dict())
    assert torch.equal(other.reference(), hist.reference())
    ref = hist.reference()[torch.tensor([[0, 2, 3]])]  # per-token reference from each token's turn: 1.5, 0.5, 2.5
    out = epo(torch.tensor([[1.5, 0.5, 1.0]], dtype=F64), torch.ones(1, 3), reference_entropy=ref)
    assert float(out.metrics["epo_outside_band_frac"]) == pytest.approx(1 / 3)  # only 1.0 is outside [2.0, 3.0]


def test_epo_per_token_reference_ignores_padding_garbage():
    """A per-token reference entropy may hold NaN or inf at padding: the loss, its gradient and the metrics stay
    finite and equal those with a clean reference."""
    from entrolab.losses import epo

    g = torch.Generator().manual_seed(0)
    ent = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    ref = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.5
    dirty = ref.clone()
    dirty[0, 3], dirty[0, 4], dirty[2, 0] = float("nan"), float("inf"), -1.0
    clean = torch.where(mask, ref, 1.0)
    outs = []
    for r in (dirty, clean):
        e = ent.clone().requires_grad_()
        out = epo(e, mask, reference_entropy=r, coef=1.0)
        out.loss.backward()
        outs.append((out, e.grad))
    assert torch.isfinite(outs[0][0].loss) and bool(torch.isfinite(outs[0][1]).all())
    torch.testing.assert_close(outs[0][0].loss, outs[1][0].loss)
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for k in outs[1][0].metrics:
        torch.testing.assert_close(outs[0][0].metrics[k], outs[1][0].metrics[k])


def test_siren_compat_code_counts_a_response_without_peak_tokens_as_zero():
    """Spec 13's correction: two responses, the second with no peak token (all its positions have the same top-p
    entropy, so none is above its own quantile).  The paper-default mean is over the first response's peak tokens
    only, H; the released code's seq-mean-token-mean averages (H + 0) over both responses, H / 2."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 12, generator=g, dtype=torch.float64) * 2
    logits[1] = torch.linspace(3.0, -3.0, 12, dtype=torch.float64)  # every position of response 2 alike
    m = torch.ones(2, 6, dtype=torch.bool)
    hp = top_p_entropy(logits, top_p=0.8, top_k=12)
    peak = hp[0] > torch.quantile(hp[0], 0.8)
    h = float(hp[0][peak].mean())
    paper = siren(logits, m, anchor=0.0, coef=1.0, top_k=12)
    code = siren(logits, m, anchor=0.0, coef=1.0, top_k=12, compat="code")
    assert float(paper.metrics["siren_entropy"]) == pytest.approx(h)
    assert float(code.metrics["siren_entropy"]) == pytest.approx(h / 2)
    assert float(code.loss) == pytest.approx((h / 2) ** 2)
    with pytest.raises(ValueError, match="compat"):
        siren(logits, m, anchor=0.0, compat="verl")
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        siren(logits, m, anchor=0.0, compat="code", agg="token-mean")


def test_epo_sequence_level_band_tests_each_responses_mean_entropy():
    """The code's sequence mode, by hand: reference 1.0, band [0.8, 1.2], alpha 0.1.  Response 1 has token entropies
    [0.5, 1.5] (mean 1.0, inside the band), response 2 [1.4, 1.6] (mean 1.5, 0.3 above).  Token level: P = 0.1 x
    [0.3, 0.3, 0.2, 0.4]; sequence level: P = [0, 0, 0.03, 0.03], and only response 2's tokens get a gradient:
    P2 = 0.1 (mean - 1.2) sits on 2 of the 4 tokens, so d(token mean)/dH = 0.1 x 1/2 x 2/4 = 0.025 each."""
    h = torch.tensor([[0.5, 1.5], [1.4, 1.6]], dtype=torch.float64, requires_grad=True)
    m = torch.ones(2, 2, dtype=torch.bool)
    kw = {"reference_entropy": 1.0, "coef": 1.0, "alpha": 0.1}
    tok = epo(h, m, **kw)
    seq = epo(h, m, level="sequence", **kw)
    assert float(tok.metrics["epo_penalty"]) == pytest.approx(0.1 * (0.3 + 0.3 + 0.2 + 0.4) / 4)
    assert float(seq.metrics["epo_penalty"]) == pytest.approx(0.03 / 2)
    smooth_only = epo(h, m, level="sequence", **kw).loss + 1.0 * (h * m).sum() / 4  # remove the bonus term
    (grad,) = torch.autograd.grad(smooth_only, h)
    assert grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.025, 0.025])
    with pytest.raises(ValueError, match="level"):
        epo(h, m, level="turn", **kw)
