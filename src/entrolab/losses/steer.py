"""STEER: damp the tokens whose update would change entropy the most (arXiv 2510.10150)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._typing import LossOutput
from entrolab._validation import check_choice, check_number, describe
from entrolab.batch_stats import masked_mean, steer_omega_values
from entrolab.losses._common import (
    PolicyInputs,
    check_clip,
    check_policy_inputs,
    check_token_weights,
    compute_dtype,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.ppo import clipped_surrogate, surrogate_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["steer", "steer_weights"]

STEER_MODES = ("exp", "linear")
_OMEGA_FLOOR = 0.02  # the authors' floor on max |Omega| in exp mode


def steer_weights(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor,
    lambda_min: float,
    lambda_max: float = 1.0,
    mode: str = "exp",
    omega_range: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""STEER's per-token weights ``w_t`` (no gradient) from ``|Omega_t|`` (:func:`entrolab.dynamics.steer_omega`).

    ``exp``: ``k = -ln(lambda_min) / max(max |Omega|, 0.02)``, ``w = clamp(exp(-k |Omega|), lambda_min, 1)``: the
    token with the largest ``|Omega|`` gets exactly ``lambda_min`` (unless every ``|Omega|`` is below 0.02).
    ``linear``: ``w = clamp(lambda_max - (|Omega| - min)(lambda_max - lambda_min)/(max - min), lambda_min,
    lambda_max)``, and ``(lambda_min + lambda_max)/2`` everywhere when ``max == min``.

    Parameters
    ----------
    logp, old_logp, advantages, mask
        As in :func:`~entrolab.losses.ppo`.
    entropy : Tensor
        The **old** policy's token entropies ``(B, T)`` (recorded with ``old_logp``).
    lambda_min, lambda_max : float
        Weight bounds, ``0 < lambda_min <= lambda_max``; in exp mode the upper clamp is 1 and ``lambda_max`` must be
        at least ``lambda_min`` but is otherwise unused (the authors' code).
    mode : {"exp", "linear"}
    omega_range : (min |Omega|, max |Omega|), optional
        Precomputed statistics (spec section 0.2); else over the valid tokens given.
    global_stats, process_group
        Take the min/max over the whole data-parallel batch (``torch.distributed`` all-reduce).

    Returns
    -------
    Tensor
        ``(B, T)`` weights, detached; 1 at masked positions.

    References
    ----------
    Hao et al., "Rethinking Entropy Interventions in RLVR", arXiv 2510.10150, section 4.2 (the weighting; the closed
    forms follow the authors' ``compute_token_weights``); ``shared/specs/llm_rl.md`` section 12.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[0.5, 0.9, 0.1]]).log(); h = torch.tensor([[1.0, 0.5, 2.0]])
    >>> a = torch.tensor([[1.0, 1, -1]])
    >>> w = steer_weights(lp, lp, a, torch.ones(1, 3), entropy=h, lambda_min=0.8)
    >>> [round(v, 4) for v in w[0].tolist()]
    [0.8819, 0.9682, 0.8]
    """
    mode = check_choice("mode", mode, STEER_MODES)
    lambda_min, lambda_max = _check_lambdas(lambda_min, lambda_max, mode)
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    group = _dist.resolve_group(global_stats, process_group)
    w = _weights(x, lambda_min, lambda_max, mode, omega_range, group)
    return torch.where(x.m, w, 1.0)


def _check_lambdas(lambda_min: object, lambda_max: object, mode: str) -> tuple[float, float]:
    low = check_number("lambda_min", lambda_min, low=0.0, low_open=True, high=1.0 if mode == "exp" else None)
    return low, check_number("lambda_max", lambda_max, low=low)


def _check_omega_range(omega_range: object, like: Tensor) -> tuple[Tensor, Tensor]:
    """A given ``(min |Omega|, max |Omega|)`` as 0-d tensors like ``like``, finite with ``0 <= min <= max``."""
    if not isinstance(omega_range, tuple | list) or len(omega_range) != 2:
        raise ValueError(f"omega_range must be a pair (min |Omega|, max |Omega|), got {omega_range!r}")
    for i, v in enumerate(omega_range):  # numbers are checked here; tensors only for their shape (no sync)
        if not isinstance(v, Tensor):
            check_number(f"omega_range[{i}]", v, low=0.0)
        elif v.numel() != 1 or not v.dtype.is_floating_point:
            raise ValueError(f"omega_range[{i}] must be a one-element floating tensor, got {describe(v)}")
    if not any(isinstance(v, Tensor) for v in omega_range) and not omega_range[0] <= omega_range[1]:
        raise ValueError(f"omega_range must satisfy 0 <= min <= max, finite; got {omega_range!r}")
    lo, hi = (torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(()) for v in omega_range)
    return lo, hi


def _weights(x: PolicyInputs, lambda_min: float, lambda_max: float, mode: str, omega_range: Any, group: Any) -> Tensor:
    """STEER's weights ``(B, T)`` on checked inputs (values at masked positions unspecified), detached."""
    assert x.entropy is not None
    mag = steer_omega_values(x.logp, x.old_logp, x.adv, x.m, x.entropy).abs()  # (B, T) |Omega|, 0 at padding
    if omega_range is not None:
        lo, hi = _check_omega_range(omega_range, mag)
    else:
        big = torch.finfo(mag.dtype).max
        hi = _dist.all_max(mag.amax() if mag.numel() else mag.new_zeros(()), group)
        lo = _dist.all_min(torch.where(x.m, mag, big).amin() if mag.numel() else mag.new_tensor(big), group)
        lo = torch.where(lo < big, lo, 0.0)  # no valid token
    if mode == "exp":
        k = -math.log(lambda_min) / hi.clamp_min(_OMEGA_FLOOR)
        return torch.exp(-k * mag).clamp(lambda_min, 1.0)
    span = hi - lo
    linear = lambda_max - (mag - lo) * ((lambda_max - lambda_min) / span.clamp_min(torch.finfo(mag.dtype).tiny))
    return torch.where(span > 0, linear.clamp(lambda_min, lambda_max), 0.5 * (lambda_min + lambda_max))


@register_policy_loss("steer")
def steer(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    lambda_min: float = 0.8,
    lambda_max: float | None = None,
    mode: str = "exp",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = 10.0,
    omega_range: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> LossOutput:
    r"""STEER: dual-clip PPO per token, times :func:`steer_weights` (``w`` carries no gradient).

    Parameters
    ----------
    logp, old_logp, advantages, mask, agg, token_weights
        As in :func:`~entrolab.losses.ppo`.
    entropy : Tensor
        Required: the old policy's token entropies ``(B, T)``.
    generator : torch.Generator, optional
        Unused; part of the uniform signature.
    lambda_min, lambda_max, mode
        Weight bounds and mode; ``lambda_max`` defaults to 1.0 in exp mode (``run_exp.sh``, the main run) and 1.2 in
        linear mode (``run_linear.sh``).
    eps_low, eps_high, dual_clip
        The authors' scripts: 0.2 / 0.28 and ``clip_ratio_c = 10``.
    omega_range, global_stats, process_group
        As in :func:`steer_weights`.

    Returns
    -------
    LossOutput
        PPO's metrics plus ``steer_weight_mean`` and ``steer_weight_min``.

    Notes
    -----
    Because ``w > 0`` and PPO's per-token loss is positively homogeneous in ``A`` (dual-clip included), weighting the
    loss by ``w`` equals weighting the advantages by ``w``: the route for engines that only let you change
    advantages.  The log-ratio is clamped to ``[-20, 20]`` as in :func:`~entrolab.losses.ppo`.

    References
    ----------
    Hao et al., "Rethinking Entropy Interventions in RLVR", arXiv 2510.10150, eq. (9) (loss mode
    ``entropy_control`` of the authors' code); ``shared/specs/llm_rl.md`` section 12.
    """
    if entropy is None:
        raise ValueError("steer needs entropy= (the old policy's token entropies, (B, T))")
    mode = check_choice("mode", mode, STEER_MODES)
    if lambda_max is None:
        lambda_max = 1.0 if mode == "exp" else 1.2
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    lambda_min, lambda_max = _check_lambdas(lambda_min, lambda_max, mode)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip, compute_dtype(logp.dtype))
    weights = check_token_weights(token_weights, x)
    group = _dist.resolve_group(global_stats, process_group)

    w = _weights(x, lambda_min, lambda_max, mode, omega_range, group)  # (B, T), no gradient
    # w > 0 and PPO's per-token loss is positively homogeneous in A: l(w A) = w l(A), gradient included
    s = clipped_surrogate(x, x.adv * w, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    metrics = surrogate_metrics(s, x.m)
    metrics["steer_weight_mean"] = masked_mean(w, x.m)
    metrics["steer_weight_min"] = torch.where(x.m, w, 1.0).amin().float() if w.numel() else torch.tensor(1.0)
    return finish_loss(s.per_token, x, agg, metrics, weights)
