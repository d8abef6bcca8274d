"""GSPO and CISPO: the spec's worked examples, the token form's gradient, bounds and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.losses import cispo, get_policy_loss, gspo

LP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]], dtype=torch.float64)
OLD = torch.tensor([[-1.2, -2.1, -0.5], [-0.3, -0.4, float("nan")]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_gspo_spec_example():
    s = math.exp(0.1)
    out = gspo(LP, OLD, torch.tensor([1.0, -1.0], dtype=torch.float64), MASK, agg="seq-mean-token-mean")
    assert float(out.metrics["seq_ratio_mean"]) == pytest.approx(s, abs=1e-6)
    # sequence 1 (A = +1) is clipped at 1.0004, sequence 2 (A = -1) is not: seq-mean-token-mean of (-1.0004, s)
    assert float(out.loss) == pytest.approx((-1.0004 + s) / 2, abs=1e-9)


def test_gspo_gradient_is_the_sequence_gradient():
    """Unclipped: d loss / d logp_t = -A_i s_i / n_i / B under seq-mean-token-mean."""
    lp = LP.clone().requires_grad_()
    adv = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    gspo(lp, OLD, adv, MASK, agg="seq-mean-token-mean").loss.backward()
    s = math.exp(0.1)
    expected = torch.tensor([[s / 3 / 2] * 3, [2 * s / 2 / 2] * 2 + [0.0]], dtype=torch.float64)
    assert torch.allclose(lp.grad, expected, atol=1e-12)
    lp.grad = None
    gspo(
        lp, OLD, torch.tensor([1.0, 1.0], dtype=torch.float64), MASK, agg="seq-mean-token-mean"
    ).loss.backward()  # both clipped
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_gspo_fully_masked_sequence_contributes_nothing():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    a = gspo(LP, OLD, torch.tensor([-1.0, 5.0], dtype=torch.float64), mask, agg="seq-mean-token-mean")
    b = gspo(LP[:1], OLD[:1], torch.tensor([-1.0], dtype=torch.float64), mask[:1], agg="seq-mean-token-mean")
    assert float(a.loss) == pytest.approx(float(b.loss))


def test_cispo_spec_example_and_verl_bounds():
    r = torch.tensor([[0.5, 1.0, 1.5, 8.0]])
    lp = r.log().requires_grad_()
    out = cispo(lp, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4), agg="token-sum")
    out.loss.backward()
    assert lp.grad.tolist() == [[-0.5, -1.0, -1.5, -5.0]]
    assert float(out.metrics["clipfrac"]) == pytest.approx(0.25)
    lp.grad = None
    cispo(
        lp, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4), agg="token-sum", ratio_min=0.8, ratio_max=1.2
    ).loss.backward()
    assert torch.allclose(lp.grad, -torch.tensor([[0.8, 1.0, 1.2, 1.2]]))


def test_registered():
    assert get_policy_loss("gspo") is gspo and get_policy_loss("cispo") is cispo


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (cispo, {"ratio_min": 2.0, "ratio_max": 1.5}, r"ratio_max \(1.5\) must be > ratio_min \(2.0\)"),
        (cispo, {"ratio_max": 0.0}, "ratio_max must be in"),
        (gspo, {"eps_low": 1.5}, "eps_low must be in"),
    ],
)
def test_bad_hyperparameters(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(LP, OLD, torch.ones(2, dtype=torch.float64), MASK, agg="token-mean", **kwargs)


def _gspo_autograd(logp, old, adv, mask, eps_low, eps_high):
    """The plain-autograd GSPO token form in float64: the reference of the analytic surrogate."""
    m = mask.bool()
    lp_s = torch.where(m, logp, 0.0)
    a = torch.where(m, adv if adv.ndim == 2 else adv.unsqueeze(1).expand_as(logp), 0.0)
    with torch.no_grad():
        seq = (lp_s - torch.where(m, old, 0.0)).sum(-1) / m.sum(-1).clamp_min(1)
    r = torch.exp((seq.unsqueeze(1) + lp_s - lp_s.detach()).clamp(max=10.0))
    return torch.maximum(-a * r, -a * r.clamp(1 - eps_low, 1 + eps_high)).sum()


@pytest.mark.parametrize(("b", "t"), [(1, 1), (3, 7), (5, 33), (8, 64)])
@pytest.mark.parametrize("adv_kind", ["seq", "token"])
def test_gspo_analytic_gradient_matches_autograd(b, t, adv_kind):
    """Values and gradients of the fused surrogate against autograd through the token form, with adversarial rows:
    all-masked, sequence log-ratios beyond the clamp at 10, exactly on-policy (ratio 1, a tie of the two branches),
    at the clip boundary, +-1e4 log-probabilities and NaN in the padding."""
    g = torch.Generator().manual_seed(b * 100 + t)
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    if b >= 3:
        mask[1] = False  # an all-masked row
        old[2] = logp[2] - 12.0  # sequence log-ratio 12 > 10: clamped, no gradient
    if b >= 5:
        old[3] = logp[3]  # on-policy: ratio exactly 1, clipped == unclipped
        old[4] = logp[4] - math.log(1.2)  # exactly at the upper clip boundary
    if b >= 8:
        logp[5] = -1e4
        old[5] = -1e4 + 0.1
        logp[6], old[6] = logp[6] + 50.0, old[6] + 50.0  # shifted log-probs, same ratios
        old[7] = torch.where(mask[7], old[7], float("nan"))  # garbage at padding
        logp[7] = torch.where(mask[7], logp[7], float("inf"))
    adv = (
        torch.randn(b, generator=g, dtype=torch.float64)
        if adv_kind == "seq"
        else torch.randn(b, t, generator=g, dtype=torch.float64)
    )
    lp1 = logp.clone().requires_grad_()
    out = gspo(lp1, old, adv, mask, agg="token-sum", eps_low=0.2, eps_high=0.2)
    out.loss.backward()
    lp2 = logp.clone().requires_grad_()
    ref = _gspo_autograd(lp2, old, adv, mask, 0.2, 0.2)
    ref.backward()
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(lp1.grad, lp2.grad, atol=1e-12, rtol=1e-12)
    assert bool(torch.isfinite(lp1.grad).all())
