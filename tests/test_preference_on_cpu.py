"""CPL, SPO win-rate rewards and exploitability, and the preference-degree loss: the spec's closed forms and worked
examples, numerical stability, brute force, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.preference import (
    cpl_loss,
    exploitability,
    preference_degree_loss,
    segment_score,
    self_play_win_rate_rewards,
)


def test_cpl_closed_forms_and_stability():
    one, two = torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    assert float(cpl_loss(one, two, bias=0.5).loss) == pytest.approx(0.6931, abs=1e-4)
    assert float(cpl_loss(one, two, bias=1.0).loss) == pytest.approx(1.3133, abs=1e-4)
    assert float(cpl_loss(one, one, bias=1.0).loss) == pytest.approx(math.log(2))
    # bias 1 is the logistic loss on S+ - S-; stable for |S| up to 1e4 where the naive formula overflows
    s_pos = torch.tensor([1e4, -1e4, 3.0], dtype=torch.float64)
    s_neg = torch.tensor([-1e4, 1e4, 2.0], dtype=torch.float64)
    out = cpl_loss(s_pos, s_neg, bias=1.0).loss
    assert torch.isfinite(out)
    ref = torch.stack([torch.tensor(0.0, dtype=torch.float64), torch.tensor(2e4, dtype=torch.float64),
                       torch.log1p(torch.exp(torch.tensor(-1.0, dtype=torch.float64)))]).mean()  # fmt: skip
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="bias"):
        cpl_loss(one, two, bias=1.5)
    with pytest.raises(ValueError, match="bias"):
        cpl_loss(one, two, bias=0.0)


def test_segment_scores_discounting():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    assert float(segment_score(lp, alpha=0.1, discount=1.0)) == pytest.approx(-0.35)  # the code's plain sum
    assert float(segment_score(lp, alpha=1.0, discount=0.5)) == pytest.approx(-1.0 - 1.0 - 0.125)
    last = torch.zeros(1, 64, dtype=torch.float64)
    last[0, -1] = 1.0  # the weight of the last step of a 64-step segment at 0.99
    assert float(segment_score(last, alpha=1.0, discount=0.99)) == pytest.approx(0.5309, abs=1e-4)
    masked = segment_score(lp, alpha=1.0, discount=1.0, mask=torch.tensor([[True, False, True]]))
    assert float(masked) == pytest.approx(-1.5)


def test_spo_win_rates_and_exploitability():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        a = torch.rand(6, 6, generator=g, dtype=torch.float64)
        p = torch.triu(a, 1) + torch.tril(1 - a.T, -1) + 0.5 * torch.eye(6, dtype=torch.float64)  # P_ij + P_ji = 1
        r = self_play_win_rate_rewards(p)
        assert float(r.mean()) == pytest.approx(0.5, abs=1e-12)  # averaged over the group: exactly 1/2
    m = torch.tensor([[0.5, 0.9, 0.4], [0.1, 0.5, 0.9], [0.6, 0.1, 0.5]], dtype=torch.float64)
    winner = torch.tensor([4 / 9, 1 / 9, 4 / 9], dtype=torch.float64)
    assert exploitability(winner, m) == pytest.approx(0.0, abs=1e-12)
    assert exploitability(torch.full((3,), 1 / 3, dtype=torch.float64), m) == pytest.approx(0.1, abs=1e-12)
    assert exploitability(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), m) == pytest.approx(0.1, abs=1e-12)
    assert self_play_win_rate_rewards(m, centred=True).tolist() == pytest.approx([0.15, 0.0, -0.15])
    with pytest.raises(ValueError, match="probabilities"):
        self_play_win_rate_rewards(torch.tensor([[0.5, 1.5], [0.0, 0.5]]))
    with pytest.raises(ValueError, match="at least 2"):
        self_play_win_rate_rewards(torch.ones(1, 1))


def test_preference_degree_loss():
    c, r = torch.tensor([1.0]), torch.tensor([-0.5])
    base = preference_degree_loss(c, r, lam=0.0)
    assert float(base.loss) == pytest.approx(0.6210, abs=1e-4)
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.equal(preference_degree_loss(c, r, logits, labels, lam=0.0).loss, base.loss)  # lam 0: DPO exactly
    out = preference_degree_loss(c, r, logits, labels, lam=0.5)
    out.loss.backward()
    assert logits.grad is not None and float(out.metrics["degree_loss"]) > 0
    with pytest.raises(ValueError, match="degree_labels"):
        preference_degree_loss(c, r, logits, labels[:2], lam=0.5)
