"""GSPO (sequence-level importance ratio) and CISPO (clipped, detached importance weight on a REINFORCE loss)."""

from __future__ import annotations

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import check_number
from entrolab.batch_stats import masked_mean
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.registry import register_policy_loss

__all__ = ["cispo", "gspo"]

_GSPO_LOG_RATIO_MAX = 10.0  # verl clamps the sequence log-ratio at 10


@register_policy_loss("gspo")
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> LossOutput:
    r"""GSPO: PPO clipping on the length-normalised sequence ratio, in verl's token form (GSPO-token).

    ``log s_i = sum_t (logp - old_logp) m / max(sum_t m, 1)``; per token
    ``log s_it = sg(log s_i) + logp_t - sg(logp_t)`` (value ``s_i``, gradient ``s_i grad logp_t``), clamped at 10, and
    ``l = max(-A s_it, -A clip(s_it, 1 - eps_low, 1 + eps_high))``.  With ``agg="seq-mean-token-mean"`` (the
    paper's) the gradient equals the paper's sequence-level one.

    Parameters
    ----------
    logp, old_logp, advantages, mask, entropy, agg, generator
        As :func:`~entrolab.losses.ppo` (advantages are normally per sequence, ``(B,)``; ``generator`` is unused).
    eps_low, eps_high : float
        The sequence-ratio clip range (paper: 3e-4 and 4e-4; these are not PPO's 0.2).

    Returns
    -------
    LossOutput
        Metrics ``clipfrac`` (valid tokens of clipped sequences), ``seq_ratio_mean``, ``approx_kl``.

    Shapes
    ------
    logp, old_logp, mask ``(B, T)``; advantages ``(B,)`` or ``(B, T)``.

    Notes
    -----
    A fully masked sequence has ``log s = 0`` and contributes nothing.

    References
    ----------
    Zheng et al., "Group Sequence Policy Optimization", arXiv 2507.18071, eqs. (5)-(7) and (10) (GSPO-token).

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[-1.0, -2.0, -0.5]]); old = torch.tensor([[-1.2, -2.1, -0.5]])
    >>> round(float(gspo(lp, old, torch.tensor([1.0]), torch.ones(1, 3), agg="seq-mean-token-mean").loss), 4)
    -1.0004
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low = check_number("eps_low", eps_low, low=0.0, high=1.0)
    eps_high = check_number("eps_high", eps_high, low=0.0)
    weights = check_token_weights(token_weights, x)
    m = x.m

    lp = torch.where(m, x.logp, 0)  # (B, T)
    diff = torch.where(m, x.logp.detach() - x.old_logp, 0)  # (B, T)
    counts = m.sum(-1)  # (B,)
    seq_log_ratio = diff.sum(-1) / counts.clamp_min(1)  # (B,) log s_i, the length-normalised sequence ratio
    # GSPO-token: value s_i, gradient s_i d logp_t (eq. 10)
    token_log_ratio = (seq_log_ratio.unsqueeze(1) + lp - lp.detach()).clamp(max=_GSPO_LOG_RATIO_MAX)  # (B, T)
    ratio = torch.exp(token_log_ratio)
    a = torch.where(m, x.adv, 0)  # (B, T)
    pg_unclipped = -a * ratio
    pg_clipped = -a * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    has = counts > 0  # (B,)
    metrics = {
        "clipfrac": masked_mean(pg_clipped > pg_unclipped, m),
        "seq_ratio_mean": masked_mean(seq_log_ratio.exp(), has),
        "approx_kl": -masked_mean(diff, m),
    }
    return finish_loss(per_token, x, agg, metrics, weights)


@register_policy_loss("cispo")
def cispo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    ratio_min: float | None = None,
    ratio_max: float = 5.0,
) -> LossOutput:
    r"""CISPO: REINFORCE with a clipped, detached importance weight, ``l = -sg(clip(r, ratio_min, ratio_max)) A logp``.

    Unlike PPO the gradient never vanishes, it is only re-weighted: ``dl/dlogp = -w A``.  The loss *value* is not
    comparable with PPO's (it is positive for ``A > 0`` since ``logp < 0``).

    Parameters
    ----------
    logp, old_logp, advantages, mask, entropy, agg, generator
        As :func:`~entrolab.losses.ppo` (``generator`` is unused).
    ratio_min : float, optional
        Absolute lower bound of the weight (``None``: no lower bound, as in the paper and TRL; verl uses 0.8).
    ratio_max : float
        Absolute upper bound (TRL's recommended 5.0; verl's default is 1.2).  Named as absolute ratios to avoid the
        epsilon-vs-absolute confusion between verl and TRL.

    Returns
    -------
    LossOutput
        Metrics ``clipfrac`` (valid tokens whose weight differs from the ratio), ``weight_mean``, ``approx_kl``.

    Shapes
    ------
    logp, old_logp, mask ``(B, T)``; advantages ``(B,)`` or ``(B, T)``.

    References
    ----------
    MiniMax, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", arXiv 2506.13585, eq. (4).

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[0.5, 1.0, 1.5, 8.0]]).log().requires_grad_()
    >>> cispo(lp, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4), agg="token-sum").loss.backward()
    >>> lp.grad.tolist()  # -w with w = min(r, 5)
    [[-0.5, -1.0, -1.5, -5.0]]
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    weights = check_token_weights(token_weights, x)
    ratio_max = check_number("ratio_max", ratio_max, low=0.0, low_open=True)
    if ratio_min is not None:
        ratio_min = check_number("ratio_min", ratio_min, low=0.0)
        if ratio_max <= ratio_min:
            raise ValueError(f"ratio_max ({ratio_max}) must be > ratio_min ({ratio_min})")
    m = x.m
    log_ratio = torch.where(m, x.logp.detach() - x.old_logp, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(min=ratio_min, max=ratio_max)  # sg(clip(r)), detached
    per_token = -weight * torch.where(m, x.adv, 0.0) * torch.where(m, x.logp, 0.0)  # (B, T)
    metrics = {
        "clipfrac": masked_mean(weight != ratio, m),
        "weight_mean": masked_mean(weight, m),
        "approx_kl": masked_mean(-log_ratio, m),
    }
    return finish_loss(per_token, x, agg, metrics, weights)
