"""entrolab.control (section 10's worked trace, resume, accumulation) and entrolab.dynamics (sections 7.1-7.3)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entrolab.control import AdaptiveEntropyCoefficient, AdaptiveKLCoefficient, BucketKLController, Controller
from entrolab.dynamics import entropy_dynamics, fit_entropy_law, softmax_entropy_change

F64 = torch.float64
TRACE = (0.35, 0.25, 0.18, 0.15, 0.19, 0.22)


def test_adaptive_entropy_coefficient_worked_trace():
    ctl = AdaptiveEntropyCoefficient(target=0.2, delta=0.005)
    applied, after = [], []
    for e in TRACE:
        applied.append(ctl.value)
        ctl.observe(e)
        after.append(ctl.coef)
    assert applied == pytest.approx([0, 0, 0, 0.005, 0.010, 0.015])
    assert after == pytest.approx([0, 0, 0.005, 0.010, 0.015, 0.010])
    assert isinstance(ctl, Controller)


def test_window_is_token_weighted_over_micro_batches_and_reading_never_mutates():
    a = AdaptiveEntropyCoefficient(target=0.2)
    h1, m1 = torch.tensor([[0.1, 0.1, 9.9]]), torch.tensor([[1, 1, 0]])
    h2, m2 = torch.tensor([[0.4]]), torch.ones(1, 1)
    a.accumulate(h1, m1)
    a.accumulate(h2, m2)
    for _ in range(3):
        _ = a.value  # evaluation reads only
    a.observe()
    assert a.last_window_entropy == pytest.approx(0.2)  # (0.1 + 0.1 + 0.4) / 3, the padding ignored
    b = AdaptiveEntropyCoefficient(target=0.2)
    b.observe(torch.tensor([[0.1, 0.1, 0.4]]))
    assert b.state_dict() == a.state_dict()
    a.accumulate(0.3)
    with pytest.raises(ValueError, match="accumulate"):
        a.observe(0.3)


def test_controller_state_survives_save_and_resume(tmp_path):
    full = AdaptiveEntropyCoefficient(target=0.2)
    for e in TRACE:
        full.observe(e)
    first = AdaptiveEntropyCoefficient(target=0.2)
    for e in TRACE[:3]:
        first.observe(e)
    path = tmp_path / "entropy_ctrl_state.json"
    path.write_text(json.dumps(first.state_dict()))  # JSON-serialisable, +inf included
    resumed = AdaptiveEntropyCoefficient(target=0.2)
    resumed.load_state_dict(json.loads(path.read_text()))
    for e in TRACE[3:]:
        resumed.observe(e)
    assert resumed.state_dict() == full.state_dict() and resumed.value == full.value
    fresh = AdaptiveEntropyCoefficient(target=0.2)
    fresh.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert fresh.last_window_entropy == math.inf and fresh.value == 0.0


def test_controller_validation_and_empty_window():
    with pytest.raises(ValueError, match="delta"):
        AdaptiveEntropyCoefficient(target=0.2, delta=-1)
    with pytest.raises(ValueError, match="init"):
        AdaptiveEntropyCoefficient(target=0.2, init=2.0)
    with pytest.raises(ValueError, match="entropy"):
        AdaptiveEntropyCoefficient(target=0.2).observe(float("nan"))
    c = AdaptiveEntropyCoefficient(target=0.2)
    c.observe(torch.ones(2, 2), torch.zeros(2, 2))  # no tokens: nothing changes
    assert c.last_window_entropy == math.inf and c.coef == 0.0
    c = AdaptiveEntropyCoefficient(target=0.2, init=0.999, coef_max=1.0, delta=0.005)
    c.observe(0.1)
    assert c.coef == 1.0  # clamped at coef_max


def test_adaptive_kl_and_bucket_kl_controllers():
    kl = AdaptiveKLCoefficient(init=0.1, target=0.01, horizon=100)
    kl.observe(1.0, n_steps=10)  # error clipped at +0.2
    assert kl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    b = BucketKLController(update_every=3, dead_zone=0.02)
    for _ in range(2):
        b.observe(1.0, bucket="easy")
    assert b.value["easy"] == 1.0  # only every third observation updates
    b.observe(1.0, bucket="easy")
    assert b.value["easy"] > 1.0 and b.value["hard"] == 1.0
    quiet = BucketKLController(update_every=1)
    quiet.observe(0.01, bucket="medium")  # exactly on target: inside the dead zone
    assert quiet.value["medium"] == 1.0
    tiny = BucketKLController(update_every=1, beta_min=0.5, init=0.5)
    for _ in range(50):
        tiny.observe(0.0, bucket="hard")
    assert tiny.value["hard"] == pytest.approx(0.5)  # clamped at beta_min
    restored = BucketKLController(update_every=3)
    restored.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert restored.value == b.value
    with pytest.raises(ValueError, match="bucket"):
        b.observe(0.1, bucket="extreme")


def test_softmax_entropy_change_worked_example_and_finite_difference_limit():
    z = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=F64)
    a = torch.tensor([1.0, -0.5, 0.5, -1.0], dtype=F64)
    p = torch.softmax(z, 0)
    assert p.tolist() == pytest.approx([0.6439, 0.2369, 0.0871, 0.0321], abs=1e-4)

    def h(logits):
        lp = torch.log_softmax(logits, 0)
        return float(-(lp.exp() * lp).sum())

    assert h(z) == pytest.approx(0.9475, abs=1e-4)
    for dz, expected in ((a, -0.39991), (p * a, -0.22108)):  # natural PG, vanilla PG
        assert float(softmax_entropy_change(z, 1e-3 * dz)) / 1e-3 == pytest.approx(expected, abs=1e-5)
        ratios = [(h(z + eta * dz) - h(z)) / float(softmax_entropy_change(z, eta * dz)) for eta in (1e-1, 1e-2, 1e-3)]
        assert abs(ratios[-1] - 1) < abs(ratios[0] - 1) and ratios[-1] == pytest.approx(1, abs=1e-3)


def test_entropy_dynamics_statistics():
    lp = torch.tensor([[-0.1, -2.0, -0.5, -3.0, 7.0]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1, 1, 0]])
    d = entropy_dynamics(lp, adv, m, entropy=torch.ones(1, 5, dtype=F64), step_size=0.01)
    assert d.covariance[0, :4].tolist() == pytest.approx([1.3, -0.6, -0.9, 1.6]) and float(d.covariance[0, 4]) == 0
    assert float(d.cov_mean) == pytest.approx(0.35) and float(d.cov_max) == pytest.approx(1.6)
    assert float(d.cov_min) == pytest.approx(-0.9) and float(d.cov_positive_frac) == 0.5
    assert float(d.cov_std) == pytest.approx(float(torch.tensor([1.3, -0.6, -0.9, 1.6]).std(unbiased=False)), rel=1e-6)
    assert float(d.predicted_entropy_change) == pytest.approx(-0.0035) and float(d.entropy) == 1.0
    empty = entropy_dynamics(lp, adv, torch.zeros(1, 5))
    assert all(math.isfinite(float(v)) for v in empty[1:7])


def test_fit_entropy_law_recovers_the_worked_example():
    a, b = 0.3, 0.9
    hs = [0.1, 0.3, 0.5, 0.7, 1.0]
    rs = [-a * math.exp(h) + b for h in hs]
    fit = fit_entropy_law(hs, rs)
    assert (fit.a, fit.b, fit.ceiling) == pytest.approx((0.3, 0.9, 0.6)) and fit.rmse < 1e-12
    assert fit.predict(1.0) == pytest.approx(0.0845, abs=1e-4) and fit.predict(0.1) == pytest.approx(0.5684, abs=1e-4)
    assert torch.allclose(fit.predict(torch.tensor([1.0], dtype=F64)), torch.tensor([0.9 - 0.3 * math.e], dtype=F64))
    noisy = fit_entropy_law(torch.tensor(hs), torch.tensor(rs) + torch.tensor([0.01, -0.01, 0.01, -0.01, 0.0]))
    assert noisy.rmse > 0 and abs(noisy.a - 0.3) < 0.05
    for bad_h, bad_r, match in (
        ([1.0], [0.1], "at least 2"),
        ([1.0, 1.0], [0.1, 0.2], "distinct"),
        ([1.0, 2.0], [0.1], "pair"),
        ([1.0, float("nan")], [0.1, 0.2], "finite"),
    ):
        with pytest.raises(ValueError, match=match):
            fit_entropy_law(bad_h, bad_r)


def test_softmax_entropy_change_and_hwe_counts_reject_bad_input():
    from entrolab.losses import hwe_counts

    z = torch.zeros(4, dtype=F64)
    with pytest.raises(ValueError, match="logits"):
        softmax_entropy_change(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match="delta_logits"):
        softmax_entropy_change(z, torch.full((4,), float("inf"), dtype=F64))
    with pytest.raises(ValueError, match="delta_logits"):
        softmax_entropy_change(z, torch.zeros(3, dtype=F64))
    ok = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="window_entropy"):
        hwe_counts(torch.ones(1, 3, dtype=torch.long), ok, ok, threshold=0.5)
    with pytest.raises(ValueError, match="triggers"):
        hwe_counts(torch.ones(1, 3), ok, ok.float(), threshold=0.5)


def test_dynamics_metrics_match_numpy_percentiles_and_entropy_dynamics():
    import numpy as np

    from entrolab.dynamics import dynamics_metrics, entropy_dynamics

    g = torch.Generator().manual_seed(2)
    lp = -torch.rand(5, 7, generator=g) * 3
    adv = torch.randn(5, generator=g)
    ent = torch.rand(5, 7, generator=g) * 2
    m = torch.rand(5, 7, generator=g) < 0.7
    out = dynamics_metrics(lp, adv, m, entropy=ent)
    dyn = entropy_dynamics(lp, adv, m)
    assert all(v.ndim == 0 and v.dtype == torch.float32 and not v.requires_grad for v in out.values())
    for q in (10, 50, 90):
        assert float(out[f"entropy_p{q}"]) == pytest.approx(float(np.percentile(ent[m].numpy(), q)), rel=1e-6)
    assert float(out["entropy"]) == pytest.approx(float(ent[m].mean()), rel=1e-6)
    assert float(out["cov_mean"]) == float(dyn.cov_mean)
    assert float(out["predicted_entropy_change"]) == pytest.approx(-float(dyn.cov_mean))
    assert set(dynamics_metrics(lp, adv, m)) == {"cov_mean", "cov_std", "cov_positive_frac", "predicted_entropy_change"}
    empty = dynamics_metrics(lp, adv, torch.zeros_like(m), entropy=ent)  # all masked: zeros, not NaN
    assert all(float(v) == 0.0 for v in empty.values())
