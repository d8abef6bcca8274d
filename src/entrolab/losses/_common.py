"""Input checks and the last step shared by the policy losses (not public).

Every registered loss starts with :func:`check_policy_inputs` and ends with :func:`finish_loss`; what lies between
is its paper's formula in plain tensor operations.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import (
    check_number,
    check_representable,
    check_same_device,
    debug_enabled,
    describe,
    guard_gradient,
)
from entrolab.batch_stats import masked_mean
from entrolab.losses.aggregation import Aggregation, aggregate_zero_masked, as_mask

LOG_RATIO_CLAMP = 20.0  # verl's convention: exp(+-20) bounds the ratio; the gradient is zero beyond it


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class PolicyInputs(NamedTuple):
    """The uniform loss inputs after :func:`check_policy_inputs`, in the compute dtype (float32, or float64).

    Masked positions still hold whatever the caller passed (padding garbage included): every use goes through
    ``torch.where(m, ...)``.
    """

    logp: Tensor
    """``(B, T)``, keeps its autograd graph."""
    old_logp: Tensor
    """``(B, T)``, detached."""
    adv: Tensor
    """``(B, T)``, detached (a ``(B,)`` input is broadcast, not copied)."""
    m: Tensor
    """``(B, T)`` bool."""
    entropy: Tensor | None
    """``(B, T)``, detached, or ``None``."""


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.Tensor, got {describe(t)}")
    return t


def check_policy_inputs(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, entropy: Tensor | None = None
) -> PolicyInputs:
    """Validate the uniform loss inputs (types, shapes, one device) and cast them to the compute dtype.

    Half-precision inputs are computed in float32 (the gradient flows back to ``logp`` in its own dtype).  Values
    are checked only under :func:`entrolab.entropy.debug_checks`: NaN or inf at a valid position raise there.
    """
    _check_tensor("logp", logp)
    _check_tensor("old_logp", old_logp)
    _check_tensor("advantages", advantages)
    if logp.ndim != 2:
        raise ValueError(f"logp must have shape (B, T), got {tuple(logp.shape)}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must have logp's shape {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    if entropy is not None and (
        not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point or entropy.shape != logp.shape
    ):
        raise ValueError(f"entropy must be a floating tensor of shape {tuple(logp.shape)}, got {describe(entropy)}")
    check_same_device(logp, old_logp=old_logp, advantages=advantages, mask=mask, entropy=entropy)
    m = as_mask(mask, logp.shape)
    if advantages.shape == logp.shape[:1]:
        adv = advantages.unsqueeze(1).expand(logp.shape)  # (B,) -> (B, T), a view
    elif advantages.shape == logp.shape:
        adv = advantages
    else:
        raise ValueError(
            f"advantages must have shape (B,) = {tuple(logp.shape[:1])} or (B, T) = {tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    dtype = compute_dtype(logp.dtype)
    lp = guard_gradient(logp, "logp").to(dtype)  # debug mode: a gradient overflowing logp's dtype raises
    inputs = PolicyInputs(
        lp,
        old_logp.detach().to(dtype),
        adv.detach().to(dtype),
        m,
        None if entropy is None else entropy.detach().to(dtype),
    )
    if debug_enabled():
        for name, t in (("logp", logp), ("old_logp", old_logp), ("advantages", adv), ("entropy", entropy)):
            if t is not None:
                check_finite_at_valid(name, t, m)
    return inputs


def check_finite_at_valid(name: str, t: Tensor, m: Tensor) -> None:
    """Raise ``ValueError`` naming ``t`` and the first valid position where it is NaN or inf (a host sync)."""
    bad = m & ~torch.isfinite(t)
    if bool(bad.any()):
        where = tuple(int(k) for k in bad.nonzero()[0])
        raise ValueError(f"{name} is not finite at valid position {where}: {float(t[where])}")


def check_clip(
    eps_low: object, eps_high: object, dual_clip: object, dtype: torch.dtype = torch.float32
) -> tuple[float, float, float | None]:
    """PPO's clip knobs: ``eps_low`` in [0, 1], ``eps_high >= 0`` finite, ``dual_clip`` None (off) or finite > 1
    and representable in the compute dtype."""
    low = check_number("eps_low", eps_low, low=0.0, high=1.0)
    high = check_number("eps_high", eps_high, low=0.0)
    check_representable("eps_high", high, dtype)
    dual = None if dual_clip is None else check_number("dual_clip", dual_clip, low=1.0, low_open=True)
    if dual is not None:
        check_representable("dual_clip", dual, dtype)
    return low, high, dual


def check_token_weights(token_weights: object, inputs: PolicyInputs) -> Tensor | None:
    """Optional per-token multipliers ``(B, T)`` of the per-token losses (bool or floating), on the inputs' device."""
    if token_weights is None:
        return None
    m = inputs.m
    if not isinstance(token_weights, Tensor) or token_weights.shape != m.shape:
        raise ValueError(f"token_weights must be a tensor of shape {tuple(m.shape)}, got {describe(token_weights)}")
    if token_weights.dtype != torch.bool and not token_weights.dtype.is_floating_point:
        raise TypeError(f"token_weights must be bool or floating, got {token_weights.dtype}")
    check_same_device(inputs.logp, token_weights=token_weights)
    if debug_enabled() and token_weights.dtype != torch.bool:
        check_finite_at_valid("token_weights", token_weights, m)
    return token_weights


def check_local_stat(name: str, value: object, like: Tensor) -> Tensor | None:
    """A precomputed batch statistic (a finite number or a one-element floating tensor) as a 0-d tensor like
    ``like``; ``None`` passes through.  A tensor's value is checked under ``debug_checks`` only."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise ValueError(f"{name} must be a number or a one-element floating tensor, got {describe(value)}")
        check_same_device(like, **{name: value})
        if debug_enabled() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value}")
        return value.detach().reshape(()).to(like.dtype)
    v = check_number(name, value)
    return torch.tensor(v, dtype=like.dtype, device=like.device)


def check_outputs_finite(loss: Tensor, metrics: dict[str, Tensor], inputs: PolicyInputs) -> None:
    """Under ``debug_checks``: a loss or metric that overflowed raises ``ValueError`` with the inputs' ranges."""
    bad = [name for name, v in (("loss", loss), *metrics.items()) if not bool(torch.isfinite(v).all())]
    if not bad:
        return
    m = inputs.m
    named = [("logp", inputs.logp), ("old_logp", inputs.old_logp), ("advantages", inputs.adv)]
    if inputs.entropy is not None:
        named.append(("entropy", inputs.entropy))
    ranges = ", ".join(
        f"{name} in [{float(torch.where(m, t, 0).amin()):.3g}, {float(torch.where(m, t, 0).amax()):.3g}]"
        for name, t in named
        if t.numel()
    )
    raise ValueError(
        f"{', '.join(bad)} overflowed (computed in {inputs.logp.dtype}, metrics in float32; {ranges}): "
        "the inputs are out of the range this loss can represent"
    )


def finish_loss(
    per_token: Tensor,
    inputs: PolicyInputs,
    agg: object,
    metrics: dict[str, Tensor],
    token_weights: Tensor | None = None,
) -> LossOutput:
    """Weight the per-token losses ``(B, T)`` by ``token_weights`` (the counts keep ``mask``'s), aggregate them with
    ``agg`` (:func:`~entrolab.losses.aggregate`, the one place that divides by counts) and add the entropy metric."""
    m = inputs.m
    if token_weights is not None:
        per_token = per_token * torch.where(m, token_weights.to(per_token.dtype), 0)
    if inputs.entropy is not None:
        metrics["entropy"] = masked_mean(inputs.entropy, m)
    loss = aggregate_zero_masked(torch.where(m, per_token, 0), m, Aggregation.of(agg))  # type: ignore[arg-type]
    if debug_enabled():
        check_outputs_finite(loss, metrics, inputs)
    return LossOutput(loss, metrics)
