"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and DAPO's overlong penalty.

Rewards are one scalar per response; responses are grouped by prompt, either by explicit ``group_ids`` (any
integers, not necessarily contiguous) or as consecutive blocks of ``group_size``.  The advantages are per response,
``(B,)``; the policy losses broadcast them over tokens.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from entrolab._validation import debug_enabled, describe, guard_gradient

__all__ = ["dapo_overlong_penalty", "dr_grpo_advantages", "grpo_advantages", "rloo_advantages"]

_SCALES = ("group", "batch", "none")


def _groups(rewards: Tensor, group_ids: Tensor | None, group_size: int | None) -> tuple[Tensor, int]:
    """Dense group index per response ``(B,)`` and the number of groups."""
    if not isinstance(rewards, Tensor) or not rewards.dtype.is_floating_point or rewards.ndim != 1:
        raise TypeError(f"rewards must be a 1-D floating tensor (B,), got {describe(rewards)}")
    if bool(torch.isinf(rewards).any()):
        raise ValueError("rewards must not be +-inf (NaN marks an unscorable response)")
    if (group_ids is None) == (group_size is None):
        raise ValueError("give exactly one of group_ids and group_size")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
            raise ValueError(f"group_size must be an int >= 1, got {describe(group_size)}")
        if rewards.numel() % group_size:
            raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}")
        index = torch.arange(rewards.numel(), device=rewards.device) // group_size
        return index, rewards.numel() // group_size
    assert group_ids is not None
    if not isinstance(group_ids, Tensor) or group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {describe(group_ids)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}, got {tuple(group_ids.shape)}"
        )
    _, index = torch.unique(group_ids, return_inverse=True)
    return index, int(index.max()) + 1 if index.numel() else 0


def _group_stats(rewards: Tensor, index: Tensor, num_groups: int, *, allow_singleton: bool):
    """Per-response (valid mask, group mean, unbiased group std, group count, zero-range flag)."""
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0).to(torch.float64)  # (B,) statistics in float64: cheap, and no overflow
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, index, valid.to(r.dtype))
    total = torch.zeros_like(count).index_add_(0, index, r)
    mean = total / count.clamp_min(1)
    dev = torch.where(valid, r - mean[index], 0.0)
    sq = torch.zeros_like(count).index_add_(0, index, dev * dev)
    # sqrt has an infinite slope at 0: clamp before it, so a zero-variance group has a zero (not NaN) gradient
    var = (sq / (count - 1).clamp_min(1)).clamp_min(torch.finfo(r.dtype).tiny)
    std = torch.where(sq > 0, var.sqrt(), 0.0)
    big = torch.full_like(count, float("-inf")).scatter_reduce_(0, index, torch.where(valid, r, float("-inf")), "amax")
    small = torch.full_like(count, float("inf")).scatter_reduce_(0, index, torch.where(valid, r, float("inf")), "amin")
    flat = (big <= small)[index]  # every valid reward of the group is equal (or there is at most one)
    single = (count <= 1)[index] & valid
    if bool(single.any()) and not allow_singleton:
        raise ValueError(
            "a group has a single scorable response: its advantage is undefined (verl would leak the raw reward); "
            "pass allow_singleton=True to give it advantage 0"
        )
    return valid, mean[index], std[index], count[index], flat


def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor | None = None,
    *,
    group_size: int | None = None,
    scale: str = "group",
    eps: float = 1e-6,
    allow_singleton: bool = False,
) -> Tensor:
    r"""GRPO advantages: ``(R_i - mean_g R) / (std_g R + eps)``.

    Parameters
    ----------
    rewards : Tensor
        One reward per response; NaN marks an unscorable response (excluded from the statistics, advantage 0).
    group_ids : Tensor, optional
        Group (prompt) id per response; need not be contiguous.  Give this or ``group_size``.
    group_size : int, optional
        Responses per prompt, consecutive in ``rewards``.
    scale : {"group", "batch", "none"}
        Divide by the group's unbiased standard deviation (GRPO), by the whole batch's, or not at all (Dr. GRPO).
    eps : float
        Added to the standard deviation (verl's 1e-6; TRL uses 1e-4).
    allow_singleton : bool
        A group with one scorable response raises ``ValueError`` unless this is True (then its advantage is 0).

    Returns
    -------
    Tensor
        Advantages ``(B,)``; exactly 0 for groups whose rewards are all equal.

    Shapes
    ------
    rewards, group_ids ``(B,)``.

    References
    ----------
    Shao et al., "DeepSeekMath", arXiv 2402.03300, section 4.1.2 (outcome supervision); ``shared/specs/llm_rl.md``
    section 5.

    Examples
    --------
    >>> import torch
    >>> [round(v, 4) for v in grpo_advantages(torch.tensor([1.0, 0, 0, 1, 1]), group_size=5).tolist()]
    [0.7303, -1.0954, -1.0954, 0.7303, 0.7303]
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {', '.join(_SCALES)}; got {scale!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not float(eps) >= 0:
        raise ValueError(f"eps must be a number >= 0, got {describe(eps)}")
    index, num_groups = _groups(rewards, group_ids, group_size)
    rewards = guard_gradient(rewards, "rewards")
    valid, mean, std, _, flat = _group_stats(rewards, index, num_groups, allow_singleton=allow_singleton)
    centred = torch.where(valid, rewards.to(torch.float64) - mean, 0.0)  # (B,)
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        r = torch.where(valid, rewards, 0.0).to(torch.float64)
        n = valid.sum()
        batch_mean = r.sum() / n.clamp_min(1)
        batch_sq = torch.where(valid, (r - batch_mean) ** 2, 0.0).sum()
        batch_var = (batch_sq / (n - 1).clamp_min(1)).clamp_min(torch.finfo(r.dtype).tiny)
        batch_std = torch.where(batch_sq > 0, batch_var.sqrt(), 0.0)
        adv = centred / (batch_std + eps)
    else:
        adv = centred
    return finite_advantages(torch.where(valid & ~flat, adv, 0.0).to(rewards.dtype))


def finite_advantages(adv: Tensor) -> Tensor:
    """Under ``debug_checks``: advantages that overflowed their dtype raise ``ValueError`` naming the rewards."""
    if debug_enabled() and not bool(torch.isfinite(adv).all()):
        raise ValueError(f"the advantages overflow {adv.dtype}: the rewards or advantages given are out of its range")
    return adv


def dr_grpo_advantages(
    rewards: Tensor, group_ids: Tensor | None = None, *, group_size: int | None = None, allow_singleton: bool = False
) -> Tensor:
    r"""Dr. GRPO advantages: ``R_i - mean_g R`` (no division by the standard deviation).

    Pair with ``agg="seq-mean-token-sum-norm"``.  Parameters as :func:`grpo_advantages`.

    References
    ----------
    Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783, eq. (3).

    Examples
    --------
    >>> import torch
    >>> [round(v, 4) for v in dr_grpo_advantages(torch.tensor([1.0, 0, 0, 1, 1]), group_size=5).tolist()]
    [0.4, -0.6, -0.6, 0.4, 0.4]
    """
    return grpo_advantages(rewards, group_ids, group_size=group_size, scale="none", allow_singleton=allow_singleton)


def rloo_advantages(
    rewards: Tensor, group_ids: Tensor | None = None, *, group_size: int | None = None, allow_singleton: bool = False
) -> Tensor:
    r"""RLOO advantages: ``R_i - mean_{j != i} R_j = n / (n - 1) (R_i - mean_g R)``.

    Parameters as :func:`grpo_advantages`.

    References
    ----------
    Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs", arXiv 2402.14740, eq. (6).

    Examples
    --------
    >>> import torch
    >>> [round(v, 4) for v in rloo_advantages(torch.tensor([1.0, 0, 0, 1, 1]), group_size=5).tolist()]
    [0.5, -0.75, -0.75, 0.5, 0.5]
    """
    index, num_groups = _groups(rewards, group_ids, group_size)
    rewards = guard_gradient(rewards, "rewards")
    valid, mean, _, count, flat = _group_stats(rewards, index, num_groups, allow_singleton=allow_singleton)
    factor = count / (count - 1).clamp_min(1)
    adv = torch.where(valid & ~flat & (count > 1), factor * (rewards.to(torch.float64) - mean), 0.0)
    return finite_advantages(adv.to(rewards.dtype))


def dapo_overlong_penalty(lengths: Tensor, *, max_length: int = 20480, cache_length: int = 4096) -> Tensor:
    r"""DAPO's soft overlong punishment, added to the reward of each response.

    ``0`` for ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache`` up to ``L_max``; ``-1`` beyond.

    Parameters
    ----------
    lengths : Tensor
        Response lengths ``(B,)`` (integers or floats).
    max_length, cache_length : int
        ``L_max`` and ``L_cache`` (DAPO: 20480 and 4096); ``0 < cache_length <= max_length``.

    References
    ----------
    Yu et al., "DAPO", arXiv 2503.14476, eq. (13).

    Examples
    --------
    >>> import torch
    >>> dapo_overlong_penalty(torch.tensor([16000, 16384, 18432, 20480, 20481])).tolist()
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if not isinstance(lengths, Tensor) or lengths.dtype == torch.bool or lengths.dtype.is_complex:
        raise TypeError(f"lengths must be a numeric tensor, got {describe(lengths)}")
    for name, v in (("max_length", max_length), ("cache_length", cache_length)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {describe(v)}")
    if cache_length > max_length:
        raise ValueError(f"cache_length ({cache_length}) must be <= max_length ({max_length})")
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0")
    n = lengths.to(torch.float64)
    start = max_length - cache_length
    penalty = torch.where(n <= start, 0.0, (start - n) / cache_length)
    return torch.where(n > max_length, -1.0, penalty).to(torch.float32)
