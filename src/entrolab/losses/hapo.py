"""HAPO: token-heterogeneous clipping and advantages from normalised log-entropy (arXiv 2509.16591)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.losses import _dist, _fast
from entrolab.losses._common import (
    check_clip,
    check_compat,
    check_number,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
    order_statistics,
    valid_values,
    zero_masked,
    zero_masked_means,
)
from entrolab.losses.advantages import _groups, grpo_advantages
from entrolab.losses.aggregation import Aggregation, as_mask
from entrolab.losses.ppo import fused_surrogate, ppo_core, ppo_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["HapoEntropyStats", "hapo", "hapo_normalized_entropy", "hapo_token_level_advantages"]


class HapoEntropyStats(NamedTuple):
    """The batch statistics behind :func:`hapo_normalized_entropy`, 0-d tensors (keep them for the next rollout)."""

    pivot_value: Tensor
    """The pivot quantile of ``log H`` ("nearest" interpolation)."""
    scale: Tensor
    """``sqrt(mean((log H - pivot_value)^2))``, floored at 1e-8."""
    pos_max: Tensor
    """``max(h)`` over positive ``h``, floored at 1e-8."""
    neg_min: Tensor
    """``min(h)`` over non-positive ``h``, capped at -1e-8."""


def _nearest_quantile(values: Tensor, q: float, *, scratch: bool = False) -> Tensor:
    """``torch.quantile(values, q, interpolation="nearest")`` of a 1-D tensor, without its 2^24-element limit."""
    n = values.numel()
    if n == 0:
        return values.new_zeros(())
    pos = torch.tensor(q, dtype=values.dtype) * (n - 1)
    idx = int(torch.round(pos))  # half to even, as torch.quantile
    return order_statistics(values, [idx], scratch=scratch)[0]


def hapo_normalized_entropy(
    entropy: Tensor,
    mask: Tensor,
    *,
    entropy_pivot: float = 0.8,
    compat: str = "paper",
    stats: HapoEntropyStats | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> tuple[Tensor, HapoEntropyStats]:
    r"""HAPO's normalised entropy ``h_hat`` in ``[-1, 1]``, and the statistics it used.

    ``l = log(max(H, 1e-8))``; ``p`` = the ``entropy_pivot`` quantile of ``l`` over valid tokens ("nearest");
    ``h = (l - p) / sqrt(mean((l - p)^2))``; ``h_hat = h / max(h+)`` for ``h > 0`` and ``h / |min(h-)|`` for
    ``h <= 0``.  Tokens below the pivot get ``h_hat < 0``.

    Parameters
    ----------
    entropy : Tensor
        Token entropies ``(B, T)`` (nats).
    mask : Tensor
        Valid tokens.
    entropy_pivot : float
        Quantile in ``[0, 1]``; 0.8 in the authors' recipe (0.5 is their function default).
    compat : {"paper", "code"}
        ``"code"`` reproduces the released code's sign bug: ``h / min(h-)`` maps below-pivot tokens to **positive**
        values, so low-entropy tokens are treated as high-entropy.
    stats : HapoEntropyStats, optional
        Use these statistics (for example the previous training batch's, at rollout) instead of computing them.
    global_stats, process_group
        Compute the statistics over the whole data-parallel batch (``torch.distributed``).

    Returns
    -------
    (Tensor, HapoEntropyStats)
        ``h_hat`` ``(B, T)`` (0 at masked positions, detached) and the statistics.

    References
    ----------
    Liu et al., "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
    arXiv 2509.16591, section 3.1 (the code's ``compute_entropy_h``); ``shared/specs/llm_rl.md`` section 20.1.

    Examples
    --------
    >>> import torch
    >>> h, _ = hapo_normalized_entropy(torch.tensor([[0.1, 0.5, 1.0, 2.0]]), torch.ones(1, 4))
    >>> [round(v, 4) for v in h[0].tolist()]
    [-1.0, -0.301, 0.0, 1.0]
    """
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy must be a floating tensor, got {describe(entropy)}")
    m = as_mask(mask, entropy.shape)
    if bool((m & ~torch.isfinite(entropy)).any()):
        raise ValueError("entropy is not finite at a valid position")
    return _normalized(entropy, m, m.to(entropy.dtype), entropy_pivot, compat, stats, global_stats, process_group)


def _normalized(
    entropy: Tensor,
    m: Tensor,
    mf: Tensor,
    entropy_pivot: object,
    compat: str,
    stats: HapoEntropyStats | None,
    global_stats: bool,
    process_group: Any,
) -> tuple[Tensor, HapoEntropyStats]:
    """:func:`hapo_normalized_entropy` on finite-at-valid ``entropy`` with float mask ``mf``."""
    q = check_number("entropy_pivot", entropy_pivot, low=0.0, high=1.0)
    compat = check_compat(compat)
    group = _dist.resolve_group(global_stats, process_group)
    with torch.no_grad():
        h_s = zero_masked(entropy.detach(), mf)
        if h_s.numel() and bool(h_s.amin() < 0):
            raise ValueError("entropy must be >= 0 at valid positions")
        ell = torch.log(h_s.clamp_min(1e-8)) * mf  # padding: log(1e-8) * 0 = 0
        if stats is None:
            if group is None:
                pivot = _nearest_quantile(valid_values(ell, m), q)
            else:
                pivot = _nearest_quantile(_dist.gather_concat(ell[m], group), q)
            dev = (ell - pivot) * mf
            flat = dev.reshape(-1)
            sq = _dist.all_sum(torch.dot(flat, flat), group)
            n = _dist.all_sum(mf.sum(), group).clamp_min(1)
            scale = (sq / n).sqrt().clamp_min(1e-8)
            h = dev / scale
            pos_max = _dist.all_max(h.amax() if h.numel() else h.new_zeros(()), group).clamp_min(1e-8)
            neg_min = _dist.all_min(h.amin() if h.numel() else h.new_zeros(()), group).clamp_max(-1e-8)
            stats = HapoEntropyStats(pivot, scale, pos_max, neg_min)
        else:
            if not isinstance(stats, HapoEntropyStats):
                raise TypeError(f"stats must be a HapoEntropyStats, got {describe(stats)}")
            h = (ell - stats.pivot_value) / stats.scale * mf
        neg_scale = stats.neg_min if compat == "code" else -stats.neg_min
        h_hat = (h.clamp_min(0) / stats.pos_max + h.clamp_max(0) / neg_scale).clamp(-1.0, 1.0) * mf
        return h_hat, stats


@register_policy_loss("hapo")
def hapo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    clip_alpha: float = 1.0,
    adv_beta: float = 1.0,
    entropy_pivot: float = 0.8,
    compat: str = "paper",
    entropy_stats: HapoEntropyStats | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> LossOutput:
    r"""HAPO: asymmetric adaptive clipping and differential advantage redistribution by normalised entropy.

    With ``h_hat`` from :func:`hapo_normalized_entropy` (no gradient):

    - adaptive clip: ``eps_low' = eps_low (1 - clip_alpha h_hat)`` where ``h_hat <= 0`` (low-entropy tokens may be
      pushed down harder), ``eps_high' = eps_high (1 + clip_alpha h_hat)`` where ``h_hat > 0``;
    - advantage: ``A_ent = A (1 + adv_beta h_hat)``; with the open neutral zone
      ``(1 - eps_low'/2, 1 + eps_high'/2)`` of the ratio, high-entropy tokens use ``A`` inside the zone and
      ``A_ent`` outside, low-entropy tokens ``A_ent`` inside and ``A`` outside;
    - then dual-clip PPO with the per-token ``eps'``.

    Parameters
    ----------
    logp, old_logp, advantages, mask, agg, token_weights
        As in :func:`~entrolab.losses.ppo`.
    entropy : Tensor
        Required: token entropies ``(B, T)``.
    generator : torch.Generator, optional
        Unused; part of the uniform signature.
    eps_low, eps_high, dual_clip
        Base clip range (recipe 0.2 / 0.2) and verl's default dual-clip 3.
    clip_alpha, adv_beta : float
        ``>= 0``; recipe 1 and 1.
    entropy_pivot, compat, entropy_stats, global_stats, process_group
        As in :func:`hapo_normalized_entropy` (``entropy_stats`` there is ``stats``).  ``compat="code"`` reproduces
        the released sign bug.

    Returns
    -------
    LossOutput
        PPO's metrics plus ``hapo_h_mean``, ``hapo_high_frac`` (tokens with ``h_hat > 0``) and
        ``hapo_adv_changed_frac`` (tokens trained on ``A_ent`` rather than ``A``).

    References
    ----------
    Liu et al., arXiv 2509.16591, eqs. (6)-(9) (``ada_clip``, ``ada_advantage``); ``shared/specs/llm_rl.md``
    sections 20.4-20.5.  Departure: the default normalisation has the paper's sign; ``compat="code"`` has the code's.
    """
    if entropy is None:
        raise ValueError("hapo needs entropy= (token entropies, (B, T))")
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip)
    clip_alpha = check_number("clip_alpha", clip_alpha, low=0.0)
    adv_beta = check_number("adv_beta", adv_beta, low=0.0)
    weights = check_token_weights(token_weights, m)
    mf = m.to(logp.dtype)
    group = _dist.resolve_group(global_stats, process_group)
    k = _fast.native_for(logp, old_logp, advantages, entropy) if group is None and entropy_stats is None else None
    if k is not None:
        return _hapo_native(
            k, logp, old_logp, advantages, m, mf, entropy, agg, weights, eps_low, eps_high, dual_clip, clip_alpha,
            adv_beta, entropy_pivot, compat,
        )  # fmt: skip
    h_hat, _ = _normalized(entropy, m, mf, entropy_pivot, compat, entropy_stats, global_stats, process_group)
    h = h_hat.to(logp.dtype)
    el = eps_low * (1 - clip_alpha * h.clamp_max(0))  # h <= 0: the low clip widens
    eh = eps_high * (1 + clip_alpha * h.clamp_min(0))  # h > 0: the high clip widens
    a = zero_masked(adv, mf)
    with torch.no_grad():
        r = torch.exp((zero_masked(logp.detach(), mf) - zero_masked(old_logp, mf)).clamp(-20, 20))
        in_zone = (r > 1 - el / 2) & (r < 1 + eh / 2)
        use_ent = (h > 0) ^ in_zone  # high entropy: A_ent outside the zone; low entropy: A_ent inside it
    a = a * (1 + adv_beta * h * use_ent)
    per_token, terms = ppo_core(logp, old_logp, a, mf, eps_low=el, eps_high=eh, dual_clip=dual_clip)
    metrics = ppo_metrics(m, mf, terms)
    h_mean, high_frac, changed = zero_masked_means(m, h, h > 0, use_ent & (h != 0))
    metrics.update(hapo_h_mean=h_mean, hapo_high_frac=high_frac, hapo_adv_changed_frac=changed)
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=terms.coef)


def _hapo_native(
    k: Any,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    mf: Tensor,
    entropy: Tensor,
    agg: Any,
    weights: Tensor | None,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    clip_alpha: float,
    adv_beta: float,
    entropy_pivot: object,
    compat: str,
) -> LossOutput:
    """:func:`hapo` on float32 CPU tensors with per-call statistics, three fused passes (``_native/losses.c``) around
    the pivot selection: the packed log-entropies, their spread around the pivot, and one pass for the normalised
    entropy, the per-token clip range, the redistributed advantage and the dual-clip surrogate with its gradient."""
    q = check_number("entropy_pivot", entropy_pivot, low=0.0, high=1.0)
    compat = check_compat(compat)
    packed, st = _fast.hapo_log_entropy(k, entropy, m)
    if st[5] > 0:
        raise ValueError("entropy must be >= 0 at valid positions")
    n = int(st[0])
    pivot = float(_nearest_quantile(packed, q, scratch=True)) if n else 0.0
    sq, dmax, dmin = _fast.sq_dev(k, entropy, m, pivot)
    scale = max(math.sqrt(sq / max(n, 1)), 1e-8)
    # h = (ell - pivot) / scale; the PyTorch path's extremes include padding's h = 0, hence the 0 in max/min
    pos_max = max(dmax / scale if n else 0.0, 1e-8)
    neg_min = min(dmin / scale if n else 0.0, -1e-8)
    neg_scale = neg_min if compat == "code" else -neg_min
    stats: list[float] = []

    def run() -> tuple[Tensor, Tensor]:
        loss, coef, st = _fast.hapo_ppo(
            k, entropy, logp, old_logp, advantages, m, pivot=pivot, scale=scale, pos_max=pos_max,
            neg_scale=neg_scale, eps_low=eps_low, eps_high=eps_high, clip_alpha=clip_alpha, adv_beta=adv_beta,
            dual_clip=dual_clip,
        )  # fmt: skip
        stats.extend(st)
        return loss, coef

    per_token, grad_coef = fused_surrogate(logp, run)
    count = max(n, 1)
    means = [torch.tensor(v / count, dtype=torch.float32) for v in stats]
    metrics = {"clipfrac": means[0], "approx_kl": -means[1], "ratio_mean": means[2]}
    if dual_clip is not None:
        metrics["clipfrac_lower"] = means[3]
    metrics.update(hapo_h_mean=means[4], hapo_high_frac=means[5], hapo_adv_changed_frac=means[6])
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=grad_coef)


def hapo_token_level_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_ids: Tensor | None = None,
    *,
    group_size: int | None = None,
    eps: float = 1e-6,
    fallback_threshold: float = 5.0,
) -> Tensor:
    r"""HAPO's token-level group advantage: every valid token of a group carries its response's reward.

    ``mu_g``, ``sigma_g`` are the token-weighted mean and **population** std of the rewards of group ``g``;
    ``A_i = (R_i - mu_g) / (sigma_g + eps)``.  A group where any ``|A_i| >= fallback_threshold`` falls back to the
    GRPO advantage (unbiased std over responses, :func:`~entrolab.losses.grpo_advantages`).

    Parameters
    ----------
    rewards : Tensor
        ``(B,)``; NaN marks an unscorable response (weight 0, advantage 0).
    mask : Tensor
        ``(B, T)`` valid tokens (the weights are the per-response token counts).
    group_ids, group_size
        Grouping, as in :func:`~entrolab.losses.grpo_advantages`.
    eps : float
        Added to ``sigma_g``.
    fallback_threshold : float
        ``> 0``; the authors use 5.

    Returns
    -------
    Tensor
        ``(B,)``; 0 for zero-variance groups.

    References
    ----------
    Liu et al., arXiv 2509.16591, eq. (5) (``compute_hapo_outcome_advantage``); ``shared/specs/llm_rl.md`` 20.3.

    Examples
    --------
    >>> import torch
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> [round(v, 4) for v in hapo_token_level_advantages(torch.tensor([1.0, 0.0]), mask, group_size=2).tolist()]
    [0.5773, -1.732]
    """
    index, num_groups = _groups(rewards, group_ids, group_size)
    if not isinstance(mask, Tensor) or mask.ndim != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"mask must have shape (B, T) with B = {rewards.shape[0]}, got {describe(mask)}")
    m = as_mask(mask, mask.shape)
    eps = check_number("eps", eps, low=0.0)
    fallback_threshold = check_number("fallback_threshold", fallback_threshold, low=0.0, low_open=True)
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0)
    w = torch.where(valid, m.sum(-1).to(r.dtype), 0.0)
    wsum = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, index, w)
    mean = torch.zeros_like(wsum).index_add_(0, index, w * r) / wsum.clamp_min(1)
    dev = r - mean[index]
    var = torch.zeros_like(wsum).index_add_(0, index, w * dev * dev) / wsum.clamp_min(1)
    adv = torch.where(valid, dev / (var.sqrt()[index] + eps), 0.0)
    adv = torch.where(var[index] > 0, adv, 0.0)
    big = torch.zeros(num_groups, dtype=torch.bool, device=r.device).index_put_(
        (index,), adv.abs() >= fallback_threshold, accumulate=True
    )
    if bool(big.any()):
        grpo = grpo_advantages(rewards, index, allow_singleton=True)
        adv = torch.where(big[index], grpo, adv)
    return adv
