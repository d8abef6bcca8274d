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
    out = gspo(LP, OLD, torch.tensor([1.0, -1.0], dtype=torch.float64), MASK)
    assert float(out.metrics["seq_ratio_mean"]) == pytest.approx(s, abs=1e-6)
    # sequence 1 (A = +1) is clipped at 1.0004, sequence 2 (A = -1) is not: seq-mean-token-mean of (-1.0004, s)
    assert float(out.loss) == pytest.approx((-1.0004 + s) / 2, abs=1e-9)


def test_gspo_gradient_is_the_sequence_gradient():
    """Unclipped: d loss / d logp_t = -A_i s_i / n_i / B under seq-mean-token-mean."""
    lp = LP.clone().requires_grad_()
    adv = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    gspo(lp, OLD, adv, MASK).loss.backward()
    s = math.exp(0.1)
    expected = torch.tensor([[s / 3 / 2] * 3, [2 * s / 2 / 2] * 2 + [0.0]], dtype=torch.float64)
    assert torch.allclose(lp.grad, expected, atol=1e-12)
    lp.grad = None
    gspo(lp, OLD, torch.tensor([1.0, 1.0], dtype=torch.float64), MASK).loss.backward()  # both clipped
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_gspo_fully_masked_sequence_contributes_nothing():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    a = gspo(LP, OLD, torch.tensor([-1.0, 5.0], dtype=torch.float64), mask)
    b = gspo(LP[:1], OLD[:1], torch.tensor([-1.0], dtype=torch.float64), mask[:1])
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
        fn(LP, OLD, torch.ones(2, dtype=torch.float64), MASK, **kwargs)
