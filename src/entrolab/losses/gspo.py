"""GSPO (sequence-level importance ratio) and CISPO (clipped, detached importance weight on a REINFORCE loss)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    check_number,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
    masked_mean,
    positive,
    zero_masked,
    zero_masked_means,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.registry import register_policy_loss

__all__ = ["cispo", "gspo"]

_GSPO_LOG_RATIO_MAX = 10.0  # verl clamps the sequence log-ratio at 10


class _GSPOSurrogate(torch.autograd.Function):
    """GSPO's per-token clipped surrogate with its analytic gradient (one saved coefficient, one multiply backward).

    The token ratio is ``exp(min(s, 10))`` with ``s`` the row's mean log-ratio, and its gradient with respect to
    ``logp_t`` is the ratio itself (``s + logp_t - sg(logp_t)``); so ``dl/dlogp_t = -A r`` on the unclipped branch
    (ties included, as autograd's ``maximum``/``clamp`` give) where ``s <= 10``, and 0 elsewhere.  This is what plain
    autograd computes through the seven ops it replaces (``tests/test_losses_gspo_cispo_on_cpu.py`` checks it).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, lp_s: Tensor, seq_log_ratio: Tensor, a: Tensor, mf: Tensor, eps_low: float, eps_high: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        s = seq_log_ratio.clamp(max=_GSPO_LOG_RATIO_MAX)
        ratio = torch.exp(s).unsqueeze(1)  # (B, 1): one ratio per sequence
        neg_a = -a  # 0 at padding
        unclipped = neg_a * ratio
        clipped = neg_a * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
        per_token = torch.maximum(unclipped, clipped)
        keep = 1.0 - torch.sign(per_token - unclipped)  # the clipped branch is strictly larger -> 0
        inside = 1.0 - positive(seq_log_ratio - _GSPO_LOG_RATIO_MAX).unsqueeze(1)  # clamp(max): 0 beyond 10
        ctx.save_for_backward(unclipped * keep * inside * mf)
        ctx.mark_non_differentiable(unclipped, clipped)
        return per_token, unclipped, clipped

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        (coef,) = ctx.saved_tensors
        return grad * coef, None, None, None, None, None


@register_policy_loss("gspo")
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "seq-mean-token-mean",
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> LossOutput:
    r"""GSPO: PPO clipping on the length-normalised sequence ratio, in verl's token form (GSPO-token).

    ``log s_i = sum_t (logp - old_logp) m / max(sum_t m, 1)``; per token
    ``log s_it = sg(log s_i) + logp_t - sg(logp_t)`` (value ``s_i``, gradient ``s_i grad logp_t``), clamped at 10, and
    ``l = max(-A s_it, -A clip(s_it, 1 - eps_low, 1 + eps_high))``.  With the default ``seq-mean-token-mean``
    aggregation the gradient equals the paper's sequence-level one.

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
    >>> round(float(gspo(lp, old, torch.tensor([1.0]), torch.ones(1, 3)).loss), 4)  # s = 1.1052, clipped
    -1.0004
    """
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low = check_number("eps_low", eps_low, low=0.0, high=1.0)
    eps_high = check_number("eps_high", eps_high, low=0.0)
    mf = m.to(logp.dtype)
    lp_s = zero_masked(logp, mf)  # 0 at padding, gradient masked
    a = zero_masked(adv, mf)
    with torch.no_grad():
        diff = lp_s.detach() - zero_masked(old_logp.detach(), mf)
        diff_rows = diff.sum(-1)  # (B,)
        counts = mf.sum(-1)  # (B,)
        seq_log_ratio = diff_rows / counts.clamp_min(1)  # (B,)
    per_token, unclipped, clipped = _GSPOSurrogate.apply(lp_s, seq_log_ratio, a.detach(), mf, eps_low, eps_high)
    with torch.no_grad():
        has = (counts > 0).to(logp.dtype)  # (B,)
        n_seq = has.sum().clamp_min(1)
        clipfrac, neg_kl = zero_masked_means(m, positive(clipped - unclipped), diff_rows)
        metrics = {
            "clipfrac": clipfrac,
            "seq_ratio_mean": ((seq_log_ratio.exp() * has).sum() / n_seq).to(torch.float32),
            "approx_kl": -neg_kl,
        }
    return finish_loss(per_token, m, agg, metrics, entropy, check_token_weights(token_weights, m))


@register_policy_loss("cispo")
def cispo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
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
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    ratio_max = check_number("ratio_max", ratio_max, low=0.0, low_open=True)
    if ratio_min is not None:
        ratio_min = check_number("ratio_min", ratio_min, low=0.0)
        if ratio_max <= ratio_min:
            raise ValueError(f"ratio_max ({ratio_max}) must be > ratio_min ({ratio_min})")
    log_ratio = torch.where(m, logp - old_logp, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio).detach()
    weight = ratio.clamp(min=ratio_min, max=ratio_max)
    per_token = torch.where(m, -weight * torch.where(m, adv, 0.0) * torch.where(m, logp, 0.0), 0.0)
    metrics = {
        "clipfrac": masked_mean(weight != ratio, m),
        "weight_mean": masked_mean(weight, m),
        "approx_kl": masked_mean(-log_ratio, m),
    }
    return finish_loss(per_token, m, agg, metrics, entropy, check_token_weights(token_weights, m))
