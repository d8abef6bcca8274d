"""The uniform contract of every registered policy loss: signature, bad input, masked garbage, all-masked and empty
batches, no in-place changes, detached 0-d metrics, paper citations, and split invariance with global normalisers."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

from entrolab.entropy import debug_checks
from entrolab.losses import AGG_MODES, Aggregation, get_policy_loss, policy_losses
from entrolab.losses.forking import high_entropy_mask
from entrolab.losses.hapo import hapo_normalized_entropy

NAMES = [
    "ppo",
    "gspo",
    "cispo",
    "clip_cov",
    "kl_cov",
    "steer",
    "hapo",
    "entropy_balanced",
    "high_entropy_tokens",
]


def batch(b=4, t=6, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=dtype) * 3
    old = logp + torch.randn(b, t, generator=g, dtype=dtype) * 0.3
    adv = torch.randn(b, generator=g, dtype=dtype)
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    entropy = torch.rand(b, t, generator=g, dtype=dtype) * 2 + 0.01
    return logp, old, adv, mask, entropy


def call(name, logp, old, adv, mask, entropy, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(1))
    return get_policy_loss(name)(logp, old, adv, mask, entropy=entropy, **{"agg": "token-mean", **kw})


def test_registry_has_every_issue_name():
    assert set(NAMES) <= set(policy_losses())
    with pytest.raises(ValueError, match=r"valid names: .*clip_cov"):
        get_policy_loss("clipcov")


@pytest.mark.parametrize("name", NAMES)
def test_uniform_signature_and_citation(name):
    fn = get_policy_loss(name)
    params = inspect.signature(fn).parameters
    assert list(params)[:4] == ["logp", "old_logp", "advantages", "mask"]
    for kw in ("entropy", "agg", "generator", "token_weights"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY
    # agg is required (TRL and verl default to different modes: no silent choice), entropy optional
    assert params["agg"].default is inspect.Parameter.empty and params["entropy"].default is None
    doc = fn.__doc__ or ""
    assert "arXiv" in doc and "Returns" in doc


@pytest.mark.parametrize("name", NAMES)
def test_masked_garbage_never_reaches_value_or_gradient(name):
    logp, old, adv, mask, ent = batch()
    lp = logp.clone().requires_grad_(True)
    clean = call(name, lp, old, adv, mask, ent)
    (g_clean,) = torch.autograd.grad(clean.loss, lp)
    dirty = [x.clone() for x in (logp, old, ent)]
    for x, v in zip(dirty, (float("nan"), float("inf"), float("-inf"))):
        x[~mask] = v
    lp2 = dirty[0].requires_grad_(True)
    out = call(name, lp2, dirty[1], adv, mask, dirty[2])
    (g,) = torch.autograd.grad(out.loss, lp2)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()
    assert torch.equal(out.loss.detach(), clean.loss.detach())
    assert torch.allclose(g, g_clean, atol=1e-12, rtol=0) and bool((g[~mask] == 0).all())


@pytest.mark.parametrize("name", NAMES)
def test_metrics_are_detached_zero_d_and_inputs_untouched(name):
    logp, old, adv, mask, ent = batch(seed=3)
    copies = [x.clone() for x in (logp, old, adv, mask, ent)]
    out = call(name, logp.requires_grad_(True), old, adv, mask, ent)
    assert out.loss.ndim == 0 and out.loss.requires_grad
    for key, v in out.metrics.items():
        assert isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad, key
        assert torch.isfinite(v), key
    for before, after in zip(copies, (logp.detach(), old, adv, mask, ent)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 5), (0, 5), (3, 0)])
def test_all_masked_and_empty_batches_give_zero_loss_and_finite_gradients(name, shape):
    logp, old, adv, _, ent = batch(*shape) if 0 not in shape else batch(max(shape[0], 1), max(shape[1], 1))
    logp, old, ent = logp[: shape[0], : shape[1]], old[: shape[0], : shape[1]], ent[: shape[0], : shape[1]]
    adv = adv[: shape[0]]
    mask = torch.zeros(shape, dtype=torch.bool)
    lp = logp.clone().requires_grad_(True)
    out = call(name, lp, old, adv, mask, ent)
    (g,) = torch.autograd.grad(out.loss, lp, allow_unused=True)
    assert float(out.loss.detach()) == 0.0
    assert g is None or (torch.isfinite(g).all() and bool((g == 0).all()))
    assert all(bool(torch.isfinite(v)) for v in out.metrics.values())


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_names_the_argument(name):
    logp, old, adv, mask, ent = batch()
    with pytest.raises(ValueError, match="old_logp"):
        call(name, logp, old[:, :-1], adv, mask, ent)
    with pytest.raises(ValueError, match="advantages"):
        call(name, logp, old, adv[:-1], mask, ent)
    with pytest.raises(ValueError, match="mask"):
        call(name, logp, old, adv, mask.double() * 0.5, ent)
    with pytest.raises(ValueError, match="mask"):
        call(name, logp, old, adv, mask[:, :-1], ent)
    with pytest.raises(ValueError, match="entropy"):
        call(name, logp, old, adv, mask, ent[:, :-1])
    for which, v in ((0, float("nan")), (1, float("inf")), (2, float("nan")), (3, float("-inf"))):
        args = [logp.clone(), old.clone(), adv.clone(), ent.clone()]
        args[which].view(-1)[0] = v  # position (0, 0) is valid
        arg_name = ("logp", "old_logp", "advantages", "entropy")[which]
        with debug_checks(), pytest.raises(ValueError, match=arg_name):  # values are checked in debug mode
            call(name, args[0], args[1], args[2], mask, args[3])
    with pytest.raises(ValueError, match="entropy"):  # a device mismatch is refused always
        call(name, logp, old, adv, mask, ent.to("meta"))
    with pytest.raises(TypeError, match="logp"):
        call(name, logp.long(), old, adv, mask, ent)
    with pytest.raises(ValueError, match=r"agg|mode"):
        call(name, logp, old, adv, mask, ent, agg="mean")


NEGATIVE = {
    "ppo": {"eps_low": -0.1},
    "gspo": {"eps_high": -1e-4},
    "cispo": {"ratio_max": -1.0},
    "clip_cov": {"ratio": 0.0},
    "kl_cov": {"ratio": 1.5},
    "steer": {"lambda_min": -0.5},
    "hapo": {"clip_alpha": -1.0},
    "entropy_balanced": {"entropy_adv_coef": -0.2},
    "high_entropy_tokens": {"rho": 0.0},
}


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_hyperparameters_raise_value_error_naming_them(name):
    logp, old, adv, mask, ent = batch()
    ((key, value),) = NEGATIVE[name].items()
    with pytest.raises(ValueError, match=key):
        call(name, logp, old, adv, mask, ent, **{key: value})


def _precomputed(name, logp, old, adv, mask, ent):
    """Hyperparameters that pin each method's batch statistics to the whole batch's, so splits can be compared."""
    a = adv.unsqueeze(1).expand_as(logp)
    if name == "steer":
        from entrolab.dynamics import steer_omega

        om = steer_omega(logp, old, adv, mask, entropy=ent).abs()
        return {"omega_range": (float(om[mask].min()), float(om[mask].max()))}
    if name == "hapo":
        return {"entropy_stats": hapo_normalized_entropy(ent, mask)[1]}
    if name == "entropy_balanced":
        h = ent[mask]  # the batch's own statistics, as a caller would precompute them
        return {"entropy_stats": (h.mean(), h.std())}
    if name == "high_entropy_tokens":
        return {"entropy_threshold": high_entropy_mask(ent, mask)[1]}
    if name in ("clip_cov", "kl_cov"):
        n = mask.sum()
        center = (float(torch.where(mask, a, 0).sum() / n), float(torch.where(mask, logp, 0).sum() / n))
        extra = {"cov_center": center}
        if name == "kl_cov":
            extra["kl_coef"] = 0.0  # the top-k count depends on N; the centre alone is split-invariant
        else:
            extra["cov_lb"], extra["cov_ub"] = 1e6, 1e7  # no candidates: the random choice is split-dependent
        return extra
    return {}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_any_split_with_global_normalisers_gives_the_whole_batch_gradient(name, mode):
    logp, old, adv, mask, ent = batch(6, 7, seed=5)
    kw = _precomputed(name, logp, old, adv, mask, ent)
    norms = {
        "num_tokens": float(mask.sum()),
        "num_sequences": float((mask.sum(1) > 0).sum()),
        "max_length": 7.0,
    }
    whole_spec = Aggregation(mode, max_length=7.0 if mode == "seq-mean-token-sum-norm" else None)
    lp = logp.clone().requires_grad_(True)
    whole = call(name, lp, old, adv, mask, ent, agg=whole_spec, **kw)
    (g_whole,) = torch.autograd.grad(whole.loss, lp)
    for cuts in ([0, 1, 6], [0, 2, 3, 6], [0, 5, 6]):
        lp = logp.clone().requires_grad_(True)
        total = 0.0
        for i, j in itertools.pairwise(cuts):
            spec = Aggregation(
                mode,
                num_tokens=norms["num_tokens"] if mode == "token-mean" else None,
                num_sequences=norms["num_sequences"] if mode.startswith("seq") else None,
                max_length=norms["max_length"] if mode == "seq-mean-token-sum-norm" else None,
            )
            total = total + call(name, lp[i:j], old[i:j], adv[i:j], mask[i:j], ent[i:j], agg=spec, **kw).loss
        (g,) = torch.autograd.grad(total, lp)
        assert math.isclose(float(total.detach()), float(whole.loss.detach()), rel_tol=1e-12, abs_tol=1e-12), (
            name,
            mode,
            cuts,
        )
        assert torch.allclose(g, g_whole, atol=1e-12, rtol=1e-10), (name, mode, cuts)


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_bfloat16_inputs_work(name):
    for dtype in (torch.float32, torch.bfloat16):
        logp, old, adv, mask, ent = (x.to(dtype) if x.dtype.is_floating_point else x for x in batch())
        lp = logp.clone().requires_grad_(True)
        out = call(name, lp, old, adv, mask, ent)
        (g,) = torch.autograd.grad(out.loss, lp)
        ref = call(name, *(x.double() if x.dtype.is_floating_point else x for x in (logp, old, adv, mask, ent)))
        assert g.dtype == dtype and torch.isfinite(g).all()
        tol = 1e-4 if dtype == torch.float32 else 0.1
        assert abs(float(out.loss.detach()) - float(ref.loss)) <= tol * (1 + abs(float(ref.loss)))


# ------------------------------------------------------------------ regressions of the retired native loss kernels
@pytest.mark.parametrize("name", NAMES)
def test_strided_inputs_equal_their_contiguous_copies(name):
    """A mask sliced out of a wider prompt+response mask, advantages sliced per token and entropies transposed twice
    (the old native HAPO path read freed memory for ``mask[:, prompt_len:]``)."""
    logp, old, adv, mask, ent = batch(5, 9, seed=3)
    wide_mask = torch.cat([torch.ones(5, 4, dtype=torch.bool), mask], 1)[:, 4:]  # non-contiguous view
    wide_adv = torch.cat([torch.zeros(5, 3, dtype=adv.dtype), adv.unsqueeze(1).expand(5, 9)], 1)[:, 3:]
    strided_ent = ent.t().contiguous().t()
    assert not wide_mask.is_contiguous() and not wide_adv.is_contiguous() and not strided_ent.is_contiguous()
    results = []
    for m, a, e in ((wide_mask, wide_adv, strided_ent), (mask.clone(), adv.unsqueeze(1).expand(5, 9).clone(), ent)):
        lp = logp.clone().requires_grad_(True)
        out = call(name, lp, old, a, m, e, generator=torch.Generator().manual_seed(0), agg="token-mean")
        out.loss.backward()
        results.append((out.loss.detach(), lp.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_high_entropy_mask_refuses_a_mask_on_another_device():
    """The native 80/20 path crashed the process for a mask on ``meta``; now a ValueError names the mask."""
    ent = torch.rand(2, 5)
    with pytest.raises(ValueError, match="mask"):
        high_entropy_mask(ent, torch.ones(2, 5, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="mask"):
        hapo_normalized_entropy(ent, torch.ones(2, 5, dtype=torch.bool, device="meta"))
