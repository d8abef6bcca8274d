"""The fused native statistics of the entropy interventions (``_native/losses.c`` via ``entrolab.losses._fast``)
against the PyTorch path, loss, gradient and every metric, over a shape grid with adversarial entries.

(The worked examples of every loss already run on both paths: ``tests/conftest.py`` parametrises each
``test_losses_*`` test by backend.)
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from entrolab.losses import _fast, get_policy_loss

pytestmark = pytest.mark.skipif(
    _fast.native_for(torch.zeros(1)) is None, reason="native loss kernels unavailable (no C compiler?)"
)

SHAPES = [(1, 1), (3, 7), (17, 33), (64, 129)]
CASES = [
    ("steer", {}),
    ("steer", {"mode": "linear", "lambda_min": 0.5}),
    ("steer", {"omega_range": (0.01, 0.3)}),
    ("steer", {"dual_clip": None, "lambda_min": 0.3}),
    ("hapo", {}),
    ("hapo", {"compat": "code", "dual_clip": None, "entropy_pivot": 0.5}),
    ("hapo", {"clip_alpha": 0.5, "adv_beta": 2.0, "eps_high": 0.28}),
    ("entropy_balanced", {}),
    ("entropy_balanced", {"entropy_adv_coef": 0.7, "dual_clip": 3.0}),
    ("entropy_balanced", {"entropy_advantage": False, "dual_clip": None, "eps_high": 0.28}),
    ("entropy_balanced", {"compat": "code"}),
    ("kl_cov", {}),
    ("kl_cov", {"ratio": 0.3, "kl_coef": 0.5}),
    ("kl_cov", {"ratio": 1.0}),
    ("kl_cov", {"ratio": 0.2, "cov_center": (0.1, -1.5)}),
    ("clip_cov", {"ratio": 0.1, "cov_lb": 0.0, "cov_ub": 2.0}),
    ("clip_cov", {"ratio": 0.5, "cov_lb": -1.0, "cov_ub": 5.0, "dual_clip": 3.0, "eps_high": 0.28}),
    ("clip_cov", {"cov_center": (0.0, -2.0), "cov_lb": -5.0}),
    ("high_entropy_tokens", {}),
    ("high_entropy_tokens", {"rho": 0.5, "base": "kl_cov", "ratio": 0.1}),
    ("high_entropy_tokens", {"rho": 1.0, "base": "clip_cov", "ratio": 0.2, "cov_lb": -1.0}),
]


def _batch(b: int, t: int, *, seed: int, per_token_adv: bool, kind: str):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 4
    old = logp + torch.randn(b, t, generator=g) * 0.3
    entropy = torch.rand(b, t, generator=g) * 2
    adv = torch.randn(b, t, generator=g) if per_token_adv else torch.randn(b, generator=g)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    mask = torch.arange(t) < lengths.unsqueeze(1)
    if kind == "extreme":  # log-ratios beyond the +-20 clamp, tiny and zero entropies, zero advantages
        old = old + torch.where(torch.rand(b, t, generator=g) < 0.1, 30.0, 0.0)
        entropy = torch.where(torch.rand(b, t, generator=g) < 0.2, 0.0, entropy * 1e-3)
        adv = torch.where(torch.rand(adv.shape, generator=g) < 0.3, 0.0, adv * 1e3)
    elif kind == "ties":  # few distinct values: many exactly tied covariances and entropies (ties by position)
        logp = -torch.randint(1, 4, (b, t), generator=g).float()
        old = logp - torch.randint(0, 3, (b, t), generator=g).float() * 0.25  # the chosen tokens matter
        entropy = torch.randint(0, 3, (b, t), generator=g).float()
        adv = torch.randint(0, 2, adv.shape, generator=g).float() * 2 - 1
    elif kind == "holes":  # valid tokens that are not a prefix of their row: the kernels' compaction, not memcpy
        mask = torch.rand(b, t, generator=g) < 0.6  # gaps
        mask[0] = torch.arange(t) >= t // 2  # a left-padded row
    elif kind == "all_masked":
        mask = torch.zeros(b, t, dtype=torch.bool)
    elif kind == "full":
        mask = torch.ones(b, t, dtype=torch.bool)
    # garbage at padding: NaN and inf everywhere the mask is off
    garbage = torch.tensor([math.nan, math.inf, -math.inf])[torch.randint(0, 3, (b, t), generator=g)]
    logp = torch.where(mask, logp, garbage)
    old = torch.where(mask, old, garbage)
    entropy = torch.where(mask, entropy, garbage)
    if per_token_adv:
        adv = torch.where(mask, adv, garbage)
    return logp, old, adv, mask, entropy


def _run(name, kwargs, batch, *, native: bool, monkeypatch):
    logp, old, adv, mask, entropy = batch
    with monkeypatch.context() as mp:
        if not native:
            mp.setattr(_fast, "native_for", lambda *tensors: None)
        x = logp.clone().requires_grad_(True)
        extra = {"generator": torch.Generator().manual_seed(5)}  # Clip-Cov, alone or as the 80/20 base
        out = get_policy_loss(name)(x, old, adv, mask, entropy=entropy, **kwargs, **extra)
        out.loss.backward()
    return out, x.grad


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["random", "extreme", "ties", "holes", "all_masked", "full"])
@pytest.mark.parametrize("per_token_adv", [False, True], ids=["seq_adv", "token_adv"])
def test_native_statistics_match_the_pytorch_path(name, kwargs, shape, kind, per_token_adv, monkeypatch):
    batch = _batch(
        *shape, seed=zlib.crc32(f"{name}{shape}{kind}".encode()) % 10_000, per_token_adv=per_token_adv, kind=kind
    )
    inputs = [t.clone() for t in batch]
    fast, g_fast = _run(name, kwargs, batch, native=True, monkeypatch=monkeypatch)
    ref, g_ref = _run(name, kwargs, batch, native=False, monkeypatch=monkeypatch)
    for before, after in zip(inputs, batch):  # never modified in place
        assert torch.equal(before.nan_to_num(1.5, 2.5, 3.5), after.nan_to_num(1.5, 2.5, 3.5))
    assert torch.isfinite(fast.loss) and torch.isfinite(g_fast).all()
    scale = max(1.0, float(ref.loss.detach().abs()))
    got, want = float(fast.loss.detach()), float(ref.loss.detach())
    assert abs(got - want) <= 2e-5 * scale, (got, want)
    gscale = max(1.0, float(g_ref.abs().max()))
    assert float((g_fast - g_ref).abs().max()) <= 2e-5 * gscale
    assert set(fast.metrics) == set(ref.metrics)
    for key, value in ref.metrics.items():
        got = fast.metrics[key]
        assert got.dtype == value.dtype and got.shape == value.shape and not got.requires_grad, key
        tol = 1e-4 * max(1.0, float(value.abs()))
        assert float((got - value).abs()) <= tol, (key, float(got), float(value))


def test_native_path_is_used_for_float32_cpu_and_not_for_float64():
    x = torch.zeros(2, 3)
    assert _fast.native_for(x, x.double()) is None
    assert _fast.native_for(x, None) is not None


def test_hapo_native_rejects_negative_entropy_like_the_pytorch_path():
    lp = -torch.rand(2, 4)
    ent = torch.rand(2, 4)
    ent[1, 2] = -0.5
    with pytest.raises(ValueError, match="entropy must be >= 0"):
        get_policy_loss("hapo")(lp, lp, torch.ones(2), torch.ones(2, 4, dtype=torch.bool), entropy=ent)


@pytest.mark.parametrize("flags", [["-mno-avx512f"], ["-O0"]])
def test_portable_and_unoptimised_builds_match(flags, monkeypatch):
    """The loops auto-vectorised without AVX-512, and an unoptimised build, give the PyTorch path's numbers."""
    from entrolab import _native

    if _native._compiler() is None:
        pytest.skip("no C compiler")
    try:
        built = _native.build(flags)
    except RuntimeError as exc:
        pytest.skip(f"cannot build with {flags}: {exc}")
    kernels = _fast.LossKernels(built.lib)
    batch = _batch(17, 33, seed=3, per_token_adv=False, kind="random")
    for name, kwargs in CASES:
        ref, g_ref = _run(name, kwargs, batch, native=False, monkeypatch=monkeypatch)
        with monkeypatch.context() as mp:
            mp.setattr(_fast, "native_for", lambda *tensors: kernels)
            fast, g_fast = _run(name, kwargs, batch, native=True, monkeypatch=monkeypatch)
        assert float((fast.loss - ref.loss).detach().abs()) <= 2e-5 * max(1.0, float(ref.loss.detach().abs())), name
        assert float((g_fast - g_ref).abs().max()) <= 2e-5 * max(1.0, float(g_ref.abs().max())), name
