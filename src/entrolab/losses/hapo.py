"""HAPO: token-heterogeneous clipping and advantages from normalised log-entropy (arXiv 2509.16591)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._typing import LossOutput
from entrolab._validation import check_compat, check_number, check_same_device, debug_enabled, describe
from entrolab.batch_stats import masked_mean, masked_quantile
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    check_clip,
    check_finite_at_valid,
    check_policy_inputs,
    check_token_weights,
    compute_dtype,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation, as_mask
from entrolab.losses.ppo import clipped_surrogate, surrogate_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["HapoEntropyStats", "hapo", "hapo_normalized_entropy"]


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
    check_same_device(entropy, mask=mask)
    m = as_mask(mask, entropy.shape)
    if debug_enabled():
        check_finite_at_valid("entropy", entropy, m)
    h = entropy.detach().to(compute_dtype(entropy.dtype))
    return _normalized(h, m, entropy_pivot, compat, stats, _dist.resolve_group(global_stats, process_group))


def _normalized(
    entropy: Tensor, m: Tensor, entropy_pivot: object, compat: str, stats: HapoEntropyStats | None, group: Any
) -> tuple[Tensor, HapoEntropyStats]:
    """:func:`hapo_normalized_entropy` on checked, detached entropies in the compute dtype."""
    q = check_number("entropy_pivot", entropy_pivot, low=0.0, high=1.0)
    compat = check_compat(compat)
    if debug_enabled() and bool((m & (entropy < 0)).any()):
        raise ValueError("entropy must be >= 0 at valid positions")
    ell = torch.where(m, torch.log(entropy.clamp_min(1e-8)), 0)  # (B, T) log-entropy; a negative H counts as 1e-8
    if stats is None:
        pivot = masked_quantile(ell, m, q, interpolation="nearest", group=group)
        dev = torch.where(m, ell - pivot, 0)  # (B, T)
        n = _dist.all_sum(m.sum(), group).clamp_min(1)
        scale = (_dist.all_sum((dev * dev).sum(), group) / n).sqrt().clamp_min(1e-8)
        h = dev / scale
        pos_max = _dist.all_max(h.amax() if h.numel() else h.new_zeros(()), group).clamp_min(1e-8)
        neg_min = _dist.all_min(h.amin() if h.numel() else h.new_zeros(()), group).clamp_max(-1e-8)
        stats = HapoEntropyStats(pivot, scale, pos_max, neg_min)
    else:
        if not isinstance(stats, HapoEntropyStats):
            raise TypeError(f"stats must be a HapoEntropyStats, got {describe(stats)}")
        h = torch.where(m, (ell - stats.pivot_value.to(ell)) / stats.scale.to(ell), 0)
    neg_scale = stats.neg_min if compat == "code" else -stats.neg_min
    h_hat = (h.clamp_min(0) / stats.pos_max.to(h) + h.clamp_max(0) / neg_scale.to(h)).clamp(-1.0, 1.0)
    return torch.where(m, h_hat, 0), stats


@register_policy_loss("hapo")
def hapo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
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
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip, compute_dtype(logp.dtype))
    clip_alpha = check_number("clip_alpha", clip_alpha, low=0.0)
    adv_beta = check_number("adv_beta", adv_beta, low=0.0)
    weights = check_token_weights(token_weights, x)
    group = _dist.resolve_group(global_stats, process_group)
    assert x.entropy is not None

    h, _ = _normalized(x.entropy, x.m, entropy_pivot, compat, entropy_stats, group)  # (B, T) in [-1, 1]
    eps_lo = eps_low * (1 - clip_alpha * h.clamp_max(0))  # h <= 0: the low clip widens
    eps_hi = eps_high * (1 + clip_alpha * h.clamp_min(0))  # h > 0: the high clip widens
    r = torch.exp(torch.where(x.m, x.logp.detach() - x.old_logp, 0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    in_zone = (r > 1 - eps_lo / 2) & (r < 1 + eps_hi / 2)  # the neutral zone of the ratio
    use_ent = (h > 0) ^ in_zone  # high entropy: A_ent outside the zone; low entropy: A_ent inside it
    adv = x.adv * torch.where(use_ent, 1 + adv_beta * h, 1.0)  # A_ent = A (1 + beta h_hat)
    s = clipped_surrogate(x, adv, eps_low=eps_lo, eps_high=eps_hi, dual_clip=dual_clip)
    metrics = surrogate_metrics(s, x.m)
    metrics.update(
        hapo_h_mean=masked_mean(h, x.m),
        hapo_high_frac=masked_mean(h > 0, x.m),
        hapo_adv_changed_frac=masked_mean(use_ent & (h != 0), x.m),
    )
    return finish_loss(s.per_token, x, agg, metrics, weights)
