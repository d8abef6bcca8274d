"""HAPO's token-level group advantage (arXiv 2509.16591, eq. 5)."""

from __future__ import annotations

import torch
from torch import Tensor

from entrolab._validation import as_mask, check_choice, check_number, describe, guard_gradient
from entrolab.advantages.group import _groups, finite_advantages, grpo_advantages

__all__ = ["hapo_token_level_advantages"]


def hapo_token_level_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_ids: Tensor | None = None,
    *,
    group_size: int | None = None,
    eps: float = 1e-6,
    fallback_threshold: float = 5.0,
    compat: str = "paper",
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
    compat : {"paper", "code"}
        ``"paper"``: the ``|A| >= fallback_threshold`` test runs over the responses' advantages.  ``"code"``: as the
        released ``compute_hapo_outcome_advantage``, it runs over the whole ``(B, T)`` tensor, so a response with
        padding also contributes its padded positions' value ``(0 - mu_g) / (sigma_g + eps)`` (a padded token's
        reward is 0): with continuous rewards far from 0 the fallback then triggers on padding alone (rewards 10
        and 11 on 3 and 2 of 3 positions: ``mu = 10.4``, ``sigma = 0.49``, padding ``-21.2``, so GRPO's ``-+0.71``
        replace ``-0.82, 1.22``).  Identical for
        rewards in ``{0, 1}`` (the padding value is then within the threshold whenever the real ones are).

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
    rewards = guard_gradient(rewards, "rewards")
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0).to(torch.float64)  # (B,) statistics in float64
    w = torch.where(valid, m.sum(-1).to(r.dtype), 0.0)  # (B,) token counts as weights
    wsum = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, index, w)
    mean = torch.zeros_like(wsum).index_add_(0, index, w * r) / wsum.clamp_min(1)
    dev = r - mean[index]
    var = torch.zeros_like(wsum).index_add_(0, index, w * dev * dev) / wsum.clamp_min(1)
    std = var.clamp_min(torch.finfo(r.dtype).tiny).sqrt()  # clamped: a zero-variance group has a zero gradient
    adv = torch.where(valid, dev / (std[index] + eps), 0.0)
    adv = torch.where(var[index] > 0, adv, 0.0).to(rewards.dtype)
    compat = check_choice("compat", compat, ("paper", "code"))
    over = adv.abs() >= fallback_threshold  # (B,)
    if compat == "code":  # the released test also sees each padded row's padding, whose reward is 0
        padded = valid & ~m.all(-1)
        pad_adv = torch.where(var[index] > 0, (0.0 - mean[index]) / (std[index] + eps), 0.0)
        over = over | (padded & (pad_adv.abs() >= fallback_threshold))
    big = torch.zeros(num_groups, dtype=torch.bool, device=r.device).index_put_((index,), over, accumulate=True)
    if bool(big.any()):
        grpo = grpo_advantages(rewards, index, allow_singleton=True)
        adv = torch.where(big[index], grpo, adv)
    return finite_advantages(adv)
