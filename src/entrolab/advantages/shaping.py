"""Entropy-shaped advantages and schedules: EMPG, ETTRL (low confidence), SPEAR, AEPO's temperature switch."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from entrolab._validation import as_mask, check_choice, check_number, describe
from entrolab.advantages.group import _groups

__all__ = [
    "aepo_temperature",
    "empg_advantages",
    "ettrl_reshape",
    "spear_recalibrate",
    "spear_replay_weight",
    "spear_subsample",
    "spear_tool_bonus",
]

EMPG_FINAL_NORMS = ("mean", "meanstd", "none")


def empg_advantages(
    step_entropy: Tensor,
    step_mask: Tensor,
    advantages: Tensor,
    *,
    k: float = 1.0,
    k_future: float = 1.0,
    zeta: float = 0.1,
    final_norm: str = "mean",
) -> Tensor:
    r"""EMPG: entropy-modulated step advantages with a future-clarity bonus, for multi-step trajectories.

    Over **all valid steps of the batch**: ``Hn = (H - min H) / (max H - min H + 1e-8)``;
    ``g = exp(-k Hn) / (mean exp(-k Hn) + 1e-8)`` (batch mean 1); ``f = exp(-k_future Hn)``. Each step gets
    ``A_mod(i, j) = g(Hn_ij) A_i + zeta f(Hn_i,j+1)``, the bonus from the **next** step of the same trajectory (the
    last step gets none).  Finally ``final_norm``: ``"mean"`` subtracts the batch mean over valid steps (the paper),
    ``"meanstd"`` also divides by the (population) std, ``"none"`` leaves it.

    Parameters
    ----------
    step_entropy : Tensor
        ``(B, J)`` mean token entropy of step ``j`` of trajectory ``i`` (rollout-time).
    step_mask : Tensor
        ``(B, J)`` valid steps; each row's valid steps must be a prefix (steps in order, then padding).
    advantages : Tensor
        ``(B,)`` trajectory-level advantages (e.g. GRPO).
    k, k_future : float
        ``>= 0``; 1.0 and 1.0.
    zeta : float
        ``>= 0``; 0.1.
    final_norm : {"mean", "meanstd", "none"}

    Returns
    -------
    Tensor
        ``(B, J)`` step advantages (0 at padding); broadcast each to its step's tokens.

    References
    ----------
    Wang et al., "Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents", arXiv
    2509.09265, eqs. (7)-(10) (the project page's ``compute_empg_advantage``); ``shared/specs/llm_rl.md`` 18.
    Medium confidence on the final normalisation.

    Examples
    --------
    >>> import torch
    >>> a = empg_advantages(torch.tensor([[0.2, 1.0, 0.6]]), torch.ones(1, 3), torch.tensor([1.0]), final_norm="none")
    >>> [round(v, 4) for v in a[0].tolist()]
    [1.5562, 0.6196, 0.9216]
    """
    if not isinstance(step_entropy, Tensor) or not step_entropy.dtype.is_floating_point or step_entropy.ndim != 2:
        raise TypeError(f"step_entropy must be a floating tensor (B, J), got {describe(step_entropy)}")
    m = as_mask(step_mask, step_entropy.shape, name="step_mask")
    if not isinstance(advantages, Tensor) or advantages.shape != step_entropy.shape[:1]:
        want = tuple(step_entropy.shape[:1])
        raise ValueError(f"advantages must have shape (B,) = {want}, got {describe(advantages)}")
    if bool((m & ~torch.isfinite(step_entropy)).any()) or bool((m & (step_entropy < 0)).any()):
        raise ValueError("step_entropy must be finite and >= 0 at valid steps")
    if bool(~torch.isfinite(advantages).all()):
        raise ValueError("advantages must be finite")
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError("step_mask rows must be a prefix of valid steps followed by padding")
    k = check_number("k", k, low=0.0)
    k_future = check_number("k_future", k_future, low=0.0)
    zeta = check_number("zeta", zeta, low=0.0)
    final_norm = check_choice("final_norm", final_norm, EMPG_FINAL_NORMS)
    h = torch.where(m, step_entropy, 0.0)
    if not bool(m.any()):
        return torch.zeros_like(h)
    lo = torch.where(m, h, float("inf")).amin()
    hi = torch.where(m, h, float("-inf")).amax()
    hn = torch.where(m, (h - lo) / (hi - lo + 1e-8), 0.0)
    e = torch.exp(-k * hn)
    g = e / (torch.where(m, e, 0.0).sum() / m.sum() + 1e-8)
    f = torch.exp(-k_future * hn)
    nxt = torch.zeros_like(f)
    nxt[:, :-1] = torch.where(m[:, 1:], f[:, 1:], 0.0)
    a = torch.where(m, g * advantages.unsqueeze(1).to(h.dtype) + zeta * nxt, 0.0)
    if final_norm != "none":
        n = m.sum()
        mean = a.sum() / n
        a = torch.where(m, a - mean, 0.0)
        if final_norm == "meanstd":
            std = (a.pow(2).sum() / n).sqrt()
            a = a / (std + 1e-8)
    return a


def ettrl_reshape(
    advantages: Tensor,
    response_entropy: Tensor,
    group_ids: Tensor | None = None,
    *,
    group_size: int | None = None,
    alpha: float = 0.5,
    clip: float = 0.5,
) -> Tensor:
    r"""ETTRL's entropy-based advantage reshaping (EAR). **LOW CONFIDENCE: a reconstruction, not the paper.**

    ``A'_i = A_i clip(1 + alpha z_i, 1 - clip, 1 + clip)`` with ``z_i`` the within-group z-score (population std,
    0 for a constant group) of the responses' mean entropies.  Only the paper's abstract was available to the spec;
    the form and the defaults here are plausible guesses that curb over-confident (low-entropy) responses trained on
    noisy majority-vote labels.  Do not cite results obtained with it as ETTRL's.

    Parameters
    ----------
    advantages : Tensor
        ``(B,)``.
    response_entropy : Tensor
        ``(B,)`` mean token entropy of each response.
    group_ids, group_size
        Grouping, as in :func:`~entrolab.losses.grpo_advantages`.
    alpha, clip : float
        ``alpha >= 0``; ``clip`` in ``[0, 1]``.

    Returns
    -------
    Tensor
        ``(B,)``.

    References
    ----------
    Liu et al., "ETTRL: Balancing Exploration and Exploitation in LLM Test-Time Reinforcement Learning Via Entropy
    Mechanism", arXiv 2508.11356 (abstract only); ``shared/specs/llm_rl.md`` section 21.
    """
    index, num_groups = _groups(response_entropy, group_ids, group_size)
    if not isinstance(advantages, Tensor) or advantages.shape != response_entropy.shape:
        raise ValueError(f"advantages must have shape {tuple(response_entropy.shape)}, got {describe(advantages)}")
    if not bool(torch.isfinite(advantages).all() and torch.isfinite(response_entropy).all()):
        raise ValueError("advantages and response_entropy must be finite")
    alpha = check_number("alpha", alpha, low=0.0)
    clip = check_number("clip", clip, low=0.0, high=1.0)
    h = response_entropy
    cnt = torch.zeros(num_groups, dtype=h.dtype, device=h.device).index_add_(0, index, torch.ones_like(h))
    mean = torch.zeros_like(cnt).index_add_(0, index, h) / cnt.clamp_min(1)
    dev = h - mean[index]
    std = (torch.zeros_like(cnt).index_add_(0, index, dev * dev) / cnt.clamp_min(1)).sqrt()[index]
    z = torch.where(std > 0, dev / torch.where(std > 0, std, 1.0), 0.0)
    return advantages * (1 + alpha * z).clamp(1 - clip, 1 + clip)


def _median(values: Tensor) -> Tensor:
    return torch.quantile(values.to(torch.float64), 0.5).to(values.dtype)


def spear_recalibrate(
    rewards: Tensor,
    *,
    group_means: Tensor,
    group_stds: Tensor | None = None,
    normalize_std: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""SPEAR's off-policy advantage recalibration for replayed trajectories.

    ``b`` = median of the stored per-group mean rewards, ``A_hat = R - b``, divided by ``(sigma + 1e-6)`` with
    ``sigma`` = median of the stored per-group stds only when ``normalize_std`` (the SPEAR scripts: off).  Only
    ``A_hat > 0`` is kept (the paper's "positive advantages", as the authors' code filters; a replayed trajectory
    exactly at the baseline carries no signal).  The median of an even count is the mean of the two middle values
    (numpy's; note ``torch.median`` returns the lower one).

    Parameters
    ----------
    rewards : Tensor
        ``(B,)`` rewards of the replayed trajectories.
    group_means : Tensor
        ``(G,)`` per-group mean rewards from the baseline buffer (the last ``baseline_buffer_size`` = 10240 groups).
    group_stds : Tensor, optional
        ``(G,)`` per-group reward stds; required with ``normalize_std``.
    normalize_std : bool

    Returns
    -------
    (Tensor, Tensor)
        ``A_hat`` ``(B,)`` and the bool keep mask ``A_hat > 0``.

    References
    ----------
    "Learn the Ropes, Then Trust the Wins: Self-imitation with Progressive Exploration for Agentic Reinforcement
    Learning", arXiv 2509.22601, section 3.2 (advantage recalibration); ``shared/specs/llm_rl.md`` section 17.

    Examples
    --------
    >>> import torch
    >>> a, keep = spear_recalibrate(torch.tensor([1.0, 0.4, 0.5]), group_means=torch.tensor([0.2, 0.5, 0.6]))
    >>> [round(v, 4) for v in a.tolist()], keep.tolist()
    ([0.5, -0.1, 0.0], [True, False, False])
    """
    for name, t in (("rewards", rewards), ("group_means", group_means)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point or t.ndim != 1:
            raise TypeError(f"{name} must be a 1-D floating tensor, got {describe(t)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite")
    if group_means.numel() == 0:
        raise ValueError("group_means is empty: the baseline buffer has no groups yet")
    a = rewards - _median(group_means)
    if normalize_std:
        if not isinstance(group_stds, Tensor) or group_stds.ndim != 1 or group_stds.numel() == 0:
            raise ValueError(f"normalize_std=True needs group_stds, a non-empty 1-D tensor; got {describe(group_stds)}")
        if not bool(torch.isfinite(group_stds).all() and (group_stds >= 0).all()):
            raise ValueError("group_stds must be finite and >= 0")
        a = a / (_median(group_stds) + 1e-6)
    return a, a > 0


def spear_subsample(keep: Tensor, *, buffer_size: int = 2048, generator: torch.Generator | None = None) -> Tensor:
    r"""Indices of a random subset of the kept trajectories, of the largest power-of-two size ``<= min(count,
    buffer_size)`` (SPEAR's replay batch).  Empty when nothing is kept.

    Examples
    --------
    >>> import torch
    >>> spear_subsample(torch.tensor([True] * 7), generator=torch.Generator().manual_seed(0)).numel()
    4
    """
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.ndim != 1:
        raise TypeError(f"keep must be a 1-D bool tensor, got {describe(keep)}")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
    idx = keep.nonzero().squeeze(1)
    n = min(idx.numel(), buffer_size)
    if n == 0:
        return idx
    size = 1 << (n.bit_length() - 1)
    perm = torch.randperm(idx.numel(), generator=generator, device=generator.device if generator else "cpu")
    return idx[perm[:size].to(idx.device)].sort().values


def spear_replay_weight(step: int, *, max_steps: int, coef: float = 1.0) -> float:
    r"""SPEAR's replay-loss scale: ``coef (1 - cos(pi s / S)) / 2`` for ``s <= S``, ``coef`` afterwards.

    Examples
    --------
    >>> [spear_replay_weight(s, max_steps=100) for s in (50, 100, 500)]
    [0.5, 1.0, 1.0]
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    coef = check_number("coef", coef, low=0.0)
    if step >= max_steps:
        return coef
    return round(coef * (1 - math.cos(math.pi * step / max_steps)) / 2, 15)


def spear_tool_bonus(num_turns: Any, step: int, *, max_steps: int) -> Any:
    r"""SPEAR's intrinsic tool-call reward ("cosine" curriculum): ``min(1, 0.1 n) (cos(pi s / S) + 1) / 2`` for
    ``s <= S``, 0 afterwards; added to the reward on the last response token.

    Examples
    --------
    >>> round(spear_tool_bonus(3, 50, max_steps=100), 4)
    0.15
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    factor = (math.cos(math.pi * step / max_steps) + 1) / 2 if step <= max_steps else 0.0
    if isinstance(num_turns, Tensor):
        if bool((num_turns < 0).any()):
            raise ValueError("num_turns must be >= 0")
        return (0.1 * num_turns.to(torch.float32)).clamp_max(1.0) * factor
    n = check_number("num_turns", num_turns, low=0.0)
    return min(1.0, 0.1 * n) * factor


def aepo_temperature(previous_entropy: float, *, target: float, t_high: float = 1.2, t_low: float = 0.8) -> float:
    r"""AEPO (arbitrary entropy) rollout temperature: ``t_high`` if the previous update's entropy ``<= target``.

    The first step (previous entropy 0, as in the code) therefore samples hot.

    References
    ----------
    Wang et al., "Arbitrary Entropy Policy Optimization", arXiv 2510.08141, eq. (7); ``shared/specs/llm_rl.md``
    section 15.

    Examples
    --------
    >>> aepo_temperature(0.42, target=0.5), aepo_temperature(0.5, target=0.5), aepo_temperature(0.6, target=0.5)
    (1.2, 1.2, 0.8)
    """
    h = check_number("previous_entropy", previous_entropy, low=0.0)
    target = check_number("target", target, low=0.0)
    t_high = check_number("t_high", t_high, low=0.0, low_open=True)
    t_low = check_number("t_low", t_low, low=0.0, low_open=True)
    return t_high if h <= target else t_low


def aepo_mix(
    tempered_advantages: Tensor,
    *,
    k_max: int,
    below_target: bool,
    adv_threshold: float = 0.05,
    batch_size: int,
    position: str = "head",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""AEPO's batch mixer: which tempered samples enter the batch, and which batch rows they replace.

    The tempered samples with sequence advantage ``> adv_threshold`` (correct answers in mixed groups) are kept, in
    order; ``k = min(k_max, kept)`` of them enter when the previous entropy is at or below the target
    (``below_target``), ``floor(min(k_max, kept) / 2)`` otherwise.  They replace the first ``k`` rows of the batch
    (``position="head"``, the authors' code) or ``k`` rows drawn at random (``"random"``); the caller gives them
    advantage 1 at every token (REINFORCE with reward 1, positives only).  The batch size never changes.

    Parameters
    ----------
    tempered_advantages : Tensor
        ``(N,)`` GRPO advantages of the tempered samples.
    k_max : int
        ``>= 0``; the authors' ``reinforce_sample_num`` (60 of 2560 samples).
    below_target : bool
        Whether the previous update's entropy was at most the target (the same test as :func:`aepo_temperature`).
    adv_threshold : float
        The code's hard-coded 0.05.
    batch_size : int
        Rows of the main batch.
    position : {"head", "random"}
    generator : torch.Generator, optional
        For ``position="random"``.

    Returns
    -------
    (Tensor, Tensor)
        ``(k,)`` indices into the tempered samples and ``(k,)`` batch rows they replace (int64; empty when nothing
        passes the filter: the authors' code crashes there).

    References
    ----------
    Wang et al., arXiv 2510.08141 (the ``trainer.algorithm=AEPO`` branch of the code); ``shared/specs/llm_rl.md``
    section 15.

    Examples
    --------
    >>> import torch
    >>> adv = torch.tensor([0.5, -0.5, 0.04, 1.2, 0.9])
    >>> taken, rows = aepo_mix(adv, k_max=2, below_target=True, batch_size=10)
    >>> taken.tolist(), rows.tolist()
    ([0, 3], [0, 1])
    >>> aepo_mix(adv, k_max=2, below_target=False, batch_size=10)[0].tolist()  # above the target: half
    [0]
    """
    if not isinstance(tempered_advantages, Tensor) or tempered_advantages.ndim != 1:
        raise ValueError(f"tempered_advantages must be a 1-D tensor, got {describe(tempered_advantages)}")
    if not bool(torch.isfinite(tempered_advantages).all()):
        raise ValueError("tempered_advantages must be finite")
    for name, value in (("k_max", k_max), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {describe(value)}")
    if not isinstance(below_target, bool):
        raise TypeError(f"below_target must be a bool, got {describe(below_target)}")
    adv_threshold = check_number("adv_threshold", adv_threshold)
    if position not in ("head", "random"):
        raise ValueError(f"position must be 'head' or 'random', got {position!r}")
    kept = (tempered_advantages > adv_threshold).nonzero().flatten()
    k = min(int(k_max), kept.numel(), int(batch_size))
    if not below_target:
        k //= 2
    taken = kept[:k]
    if position == "head":
        rows = torch.arange(k)
    else:
        rows = torch.randperm(int(batch_size), generator=generator)[:k].sort().values
    return taken, rows
