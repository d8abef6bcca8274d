"""Property tests (Hypothesis) over every registered loss, the regularizers and the advantage functions.

Inputs are drawn over shapes (empty and zero-width included), dtypes (float16, bfloat16, float32, float64),
layouts (contiguous, strided column slices, expanded broadcasts), masks (all valid, none valid, random) and values
(ordinary, and extreme-but-finite up to the dtype's maximum).  The property: a ``ValueError``/``TypeError`` whose
message names an argument, or finite outputs and finite gradients; never another exception, never NaN.

Ordinary values run with the default checks (shapes, dtypes, devices: no host sync); extreme values run inside
``debug_checks()``, the documented mode in which values are checked too (an overflow is then a named error).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrolab.advantages import (
    dr_grpo_advantages,
    entropy_aware_advantages,
    grpo_advantages,
    hapo_token_level_advantages,
    rloo_advantages,
)
from entrolab.entropy import debug_checks
from entrolab.losses import AGG_MODES, Aggregation, entropy_bonus, epo, get_policy_loss, kl_penalty, policy_losses

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ARG_NAMES = (
    "logp", "old_logp", "advantages", "mask", "entropy", "rewards", "agg", "token_weights", "coef", "ref_logp",
    "reference_entropy", "group", "loss",
)  # fmt: skip
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, *, extreme: bool = False):
    b = draw(st.integers(0, 4))
    t = draw(st.integers(0, 6))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "strided", "expanded"]))
    mask_kind = draw(st.sampled_from(["all", "none", "random"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    big = torch.finfo(dtype).max if extreme else 3.0

    def values(lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        x = lo + (hi - lo) * u
        if extreme:  # sprinkle the dtype's extremes
            pick = torch.rand(shape, generator=g) < 0.3
            x = torch.where(pick, torch.sign(x) * big, x)
        return x.to(dtype).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max)

    def layout_of(x: torch.Tensor) -> torch.Tensor:
        if layout == "strided" and x.ndim == 2:
            wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype)
            wide[:, ::2] = x
            return wide[:, ::2]  # a non-contiguous view
        return x

    logp = layout_of(values(-big, 0.0, (b, t)))
    old = layout_of(values(-big, 0.0, (b, t)))
    adv = values(-big, big, (b, 1)).expand(b, t) if layout == "expanded" else layout_of(values(-big, big, (b, t)))
    ent = layout_of(values(0.0, big, (b, t)).abs())
    if mask_kind == "all":
        mask = torch.ones(b, t, dtype=torch.bool)
    elif mask_kind == "none":
        mask = torch.zeros(b, t, dtype=torch.bool)
    else:
        mask = torch.rand(b, t, generator=g) < 0.6
    if layout == "expanded" and b:
        mask = mask[:1].expand(b, t)
    agg_mode = draw(st.sampled_from(AGG_MODES))
    agg = Aggregation(agg_mode, max_length=float(max(t, 1))) if agg_mode == "seq-mean-token-sum-norm" else agg_mode
    return logp, old, adv, mask, ent, agg


def _named(exc: Exception) -> bool:
    return any(name in str(exc) for name in ARG_NAMES)


def check_property(call, inputs, *, extreme: bool) -> None:
    """Run ``call(*inputs)`` (returning a loss tensor or advantages) and its backward; assert the property above."""
    leaf = inputs[0].detach().clone().requires_grad_(True)
    try:
        with debug_checks(extreme):
            out = call(leaf, *inputs[1:])
            assert bool(torch.isfinite(out).all()), f"non-finite output {out}"
            grad = None
            if out.requires_grad:
                (grad,) = torch.autograd.grad(out.float().sum(), leaf, allow_unused=True)
    except (ValueError, TypeError) as exc:
        assert _named(exc), f"error does not name an argument: {exc!r}"  # noqa: PT017 - the property itself
        return
    assert grad is None or bool(torch.isfinite(grad).all()), "non-finite gradient"


LOSS_EXTRAS = {
    "clip_cov": {"ratio": 0.5, "cov_lb": -10.0, "cov_ub": 10.0},
    "kl_cov": {"ratio": 0.5},
}


@pytest.mark.parametrize("name", policy_losses())
@pytest.mark.parametrize("extreme", [False, True])
@PROPERTY
@given(data=st.data())
def test_every_registered_loss(name, extreme, data):
    logp, old, adv, mask, ent, agg = data.draw(batches(extreme=extreme))
    fn = get_policy_loss(name)
    kw = LOSS_EXTRAS.get(name, {})

    def call(lp, *_):
        out = fn(lp, old, adv, mask, entropy=ent, agg=agg, generator=torch.Generator().manual_seed(0), **kw)
        for key, value in out.metrics.items():
            assert value.ndim == 0 and bool(torch.isfinite(value)), (key, value)
        return out.loss

    check_property(call, (logp,), extreme=extreme)


@pytest.mark.parametrize("extreme", [False, True])
@PROPERTY
@given(data=st.data())
def test_regularizers(extreme, data):
    logp, old, _adv, mask, ent, agg = data.draw(batches(extreme=extreme))
    check_property(lambda e: entropy_bonus(e, mask, coef=0.01, agg=agg).loss, (ent,), extreme=extreme)
    check_property(lambda lp: kl_penalty(lp, old, mask, coef=0.1, agg=agg).loss, (logp,), extreme=extreme)
    check_property(lambda e: epo(e, mask, reference_entropy=1.0, coef=0.1, agg=agg).loss, (ent,), extreme=extreme)


@pytest.mark.parametrize("extreme", [False, True])
@PROPERTY
@given(data=st.data(), group=st.sampled_from([1, 2, 3]))
def test_advantage_functions(extreme, data, group):
    _logp, _old, adv, mask, ent, _agg = data.draw(batches(extreme=extreme))
    b = mask.shape[0]
    rewards = adv[:, 0] if adv.shape[1] else torch.zeros(b, dtype=adv.dtype)
    if b % group:
        group = 1
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        check_property(lambda r, fn=fn: fn(r, group_size=group, allow_singleton=True), (rewards,), extreme=extreme)
    check_property(lambda r: hapo_token_level_advantages(r, mask, group_size=group), (rewards,), extreme=extreme)
    check_property(lambda a: entropy_aware_advantages(a, ent, mask), (adv,), extreme=extreme)


def test_zero_variance_groups_have_finite_gradients():
    """A group whose rewards are all equal has advantage 0 and a finite (zero) gradient: no 0/0 in the backward."""
    r = torch.tensor([1.0, 1.0, 0.0, 1.0], requires_grad=True)
    a = grpo_advantages(r, group_size=2)
    a.sum().backward()
    assert torch.isfinite(r.grad).all() and a[:2].tolist() == [0.0, 0.0]
    assert math.isfinite(float(a[2])) and float(a[2]) < 0
