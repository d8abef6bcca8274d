"""ARES pieces: window entropy, high-window-entropy (HWE) token counts, difficulty buckets and the hierarchical
entropy reward (arXiv 2510.08457).  The per-bucket adaptive KL controller is
:class:`entrolab.control.BucketKLController`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entrolab._validation import as_mask, check_choice, check_number, describe

__all__ = [
    "ARES_BUCKETS",
    "ares_alpha_update",
    "ares_entropy_reward",
    "ares_second_chance",
    "ares_threshold_update",
    "difficulty_bucket",
    "hwe_counts",
    "topk_tail_entropy",
    "window_entropy",
]

ARES_BUCKETS = ("easy", "medium", "hard")
_MARGIN = {"easy": 0.15, "medium": 0.25, "hard": 0.35}
_KAPPA = {"easy": 2.0, "medium": 3.0, "hard": 4.0}
_TEMP = {"easy": 2.0, "medium": 2.5, "hard": 3.0}
_CAP = {"easy": 1.0, "medium": 1.0, "hard": 1.2}
_WRONG_SCALE = {"easy": 0.6, "medium": 0.8, "hard": 1.0}


def topk_tail_entropy(topk_logprobs: Tensor) -> Tensor:
    r"""Entropy from the top-k log-probs plus one tail bucket: ``-sum p ln p - (1 - sum p) ln(1 - sum p)``.

    Shapes
    ------
    topk_logprobs ``(..., k)`` (vLLM's top-10 log-probs); returns ``(...)``.  A tail of mass 0 contributes 0.

    Examples
    --------
    >>> import torch
    >>> round(float(topk_tail_entropy(torch.tensor([0.5, 0.25]).log())), 4)  # tail 0.25
    1.0397
    """
    if not isinstance(topk_logprobs, Tensor) or not topk_logprobs.dtype.is_floating_point:
        raise TypeError(f"topk_logprobs must be a floating tensor, got {describe(topk_logprobs)}")
    if bool(torch.isnan(topk_logprobs).any()) or bool((topk_logprobs > 1e-6).any()):
        raise ValueError("topk_logprobs must be log-probabilities (<= 0, no NaN)")
    p = topk_logprobs.clamp_max(0).exp()
    head = -(p * torch.where(p > 0, topk_logprobs, 0.0)).sum(-1)
    tail = (1 - p.sum(-1)).clamp_min(0)
    return head - torch.where(tail > 0, tail * torch.log(torch.where(tail > 0, tail, 1.0)), 0.0)


def window_entropy(entropy: Tensor, mask: Tensor, *, window: int = 4) -> tuple[Tensor, Tensor]:
    r"""Forward window entropy ``WE_i = mean(H_{i+1..i+w})``, defined only where ``w`` valid future tokens exist.

    Returns
    -------
    (Tensor, Tensor)
        ``WE`` ``(B, T)`` (0 where undefined) and the bool mask of defined positions.

    References
    ----------
    "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping", arXiv 2510.08457,
    section 3.2; ``shared/specs/llm_rl.md`` section 22.

    Examples
    --------
    >>> import torch
    >>> we, ok = window_entropy(torch.tensor([[1.0, 2, 3, 4, 5, 6]]), torch.ones(1, 6), window=2)
    >>> we[ok].tolist()
    [2.5, 3.5, 4.5, 5.5]
    """
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point or entropy.ndim != 2:
        raise TypeError(f"entropy must be a floating tensor (B, T), got {describe(entropy)}")
    m = as_mask(mask, entropy.shape)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if bool((m & ~torch.isfinite(entropy)).any()):
        raise ValueError("entropy is not finite at a valid position")
    b, t = entropy.shape
    h = torch.where(m, entropy, 0.0)
    zeros = h.new_zeros(b, window + 1)
    cs = torch.cumsum(torch.cat([h.new_zeros(b, 1), h, zeros], 1), 1)  # cs[:, k] = sum h[:, :k]
    cv = torch.cumsum(torch.cat([m.new_zeros(b, 1), m, m.new_zeros(b, window + 1)], 1).to(torch.int64), 1)
    idx = torch.arange(t, device=h.device)
    total = cs[:, idx + 1 + window] - cs[:, idx + 1]
    count = cv[:, idx + 1 + window] - cv[:, idx + 1]
    ok = m & (count == window)
    return torch.where(ok, total / window, 0.0), ok


def hwe_counts(
    window_entropy: Tensor, defined: Tensor, triggers: Tensor, *, threshold: float | Tensor
) -> tuple[Tensor, Tensor]:
    r"""Per-sequence HWE count (trigger positions with ``WE >= threshold``) and soft cost ``sum max(0, WE - tau)``.

    ``triggers`` marks positions whose token is a curated reasoning token (ARES normalises the argmax token and looks
    it up in its list); ``defined`` is :func:`window_entropy`'s mask.  Returns ``(count (B,), soft_cost (B,))``.
    """
    if not isinstance(window_entropy, Tensor) or not window_entropy.dtype.is_floating_point:
        raise TypeError(f"window_entropy must be a floating tensor, got {describe(window_entropy)}")
    for name, t in (("defined", defined), ("triggers", triggers)):
        if not isinstance(t, Tensor) or t.dtype != torch.bool or t.shape != window_entropy.shape:
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(window_entropy.shape)}, got {describe(t)}")
    tau = torch.as_tensor(threshold, dtype=window_entropy.dtype, device=window_entropy.device)
    if not bool(torch.isfinite(tau)):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    on = defined & triggers
    count = (on & (window_entropy >= tau)).sum(-1)
    cost = torch.where(on, (window_entropy - tau).clamp_min(0), 0.0).sum(-1)
    return count, cost


def ares_threshold_update(threshold: float | None, per_sample_p95: Tensor, *, momentum: float = 0.99) -> float:
    r"""The HWE threshold: first call (``threshold=None``) the mean of the per-sample 95th percentiles of ``WE``;
    afterwards ``tau <- momentum tau + (1 - momentum) median(per-sample p95)``."""
    if not isinstance(per_sample_p95, Tensor) or per_sample_p95.numel() == 0:
        raise ValueError(f"per_sample_p95 must be a non-empty tensor, got {describe(per_sample_p95)}")
    momentum = check_number("momentum", momentum, low=0.0, high=1.0)
    x = per_sample_p95.detach().to(torch.float64).reshape(-1)
    if threshold is None:
        return float(x.mean())
    return momentum * check_number("threshold", threshold) + (1 - momentum) * float(torch.quantile(x, 0.5))


def difficulty_bucket(group_accuracy: float) -> str:
    r"""ARES difficulty bucket from a prompt group's accuracy: ``>= 2/3`` easy, ``>= 1/3`` medium, else hard.

    Examples
    --------
    >>> [difficulty_bucket(a) for a in (1.0, 2 / 3, 0.5, 1 / 3, 0.0)]
    ['easy', 'easy', 'medium', 'medium', 'hard']
    """
    acc = check_number("group_accuracy", group_accuracy, low=0.0, high=1.0)
    # exact thirds: 2/3 and 1/3 computed from counts may land an ulp below, so compare with a tiny tolerance
    if acc >= 2 / 3 - 1e-12:
        return "easy"
    if acc >= 1 / 3 - 1e-12:
        return "medium"
    return "hard"


def _huber(x: float, kappa: float) -> float:
    return x * x / (2 * kappa) if x <= kappa else x - kappa / 2


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def ares_entropy_reward(hwe_count: float, *, target: float, bucket: str, correct: bool, alpha: float = 0.5) -> float:
    r"""ARES's hierarchical entropy reward (added to the accuracy reward), one response.

    ``delta = HWE - target``, ``m = max(1, f target)`` (f = 0.15/0.25/0.35 for easy/medium/hard), Huber ``kappa`` =
    2/3/4, ``temp`` = 2/2.5/3, ``cap = alpha * (1, 1, 1.2)``:

    - easy, correct: ``-min(cap, Huber(max(delta - m, 0)) / (m + kappa) cap)``; medium, correct: the same with
      ``|delta| - m``;
    - easy or medium, wrong: ``+sigmoid(max(delta - m, 0) / temp) cap (0.6 | 0.8)``;
    - hard, correct: ``+sigmoid((delta + m) / temp) cap`` if ``delta >= -m``, else
      ``-min(cap, 0.5 Huber(-delta - m) / (m + kappa) cap)``; hard, wrong: ``+sigmoid(max(delta - m, 0)/temp) cap``.

    References
    ----------
    arXiv 2510.08457, section 3.3 (the authors' ``examples/reward_function/aepo.py``); ``shared/specs/llm_rl.md``
    section 22 (medium-high confidence).

    Examples
    --------
    >>> round(ares_entropy_reward(12, target=10, bucket="hard", correct=True), 4)
    0.5173
    >>> round(ares_entropy_reward(15, target=10, bucket="easy", correct=True), 4)
    -0.3571
    """
    bucket = check_choice("bucket", bucket, ARES_BUCKETS)
    hwe = check_number("hwe_count", hwe_count, low=0.0)
    target = check_number("target", target, low=0.0)
    alpha = check_number("alpha", alpha, low=0.0)
    if not isinstance(correct, bool):
        raise TypeError(f"correct must be a bool, got {describe(correct)}")
    delta = hwe - target
    m = max(1.0, _MARGIN[bucket] * target)
    kappa, temp, cap = _KAPPA[bucket], _TEMP[bucket], alpha * _CAP[bucket]
    if not correct:
        return _sigmoid(max(delta - m, 0.0) / temp) * cap * _WRONG_SCALE[bucket]
    if bucket == "easy":
        return -min(cap, _huber(max(delta - m, 0.0), kappa) / (m + kappa) * cap)
    if bucket == "medium":
        return -min(cap, _huber(max(abs(delta) - m, 0.0), kappa) / (m + kappa) * cap)
    if delta >= -m:
        return _sigmoid((delta + m) / temp) * cap
    return -min(cap, 0.5 * _huber(-delta - m, kappa) / (m + kappa) * cap)


def ares_alpha_update(alpha: float, *, bucket: str, mean_hwe: float, target: float, step: float = 0.05) -> float:
    r"""Per-bucket reward scale: ``alpha <- clip(alpha + step * D, 0, 2)``, ``D = mean - target`` for easy and
    medium, ``target - mean`` for hard.

    Examples
    --------
    >>> ares_alpha_update(0.5, bucket="easy", mean_hwe=12, target=10)
    0.6
    >>> ares_alpha_update(1.95, bucket="hard", mean_hwe=0, target=10)  # clipped at 2
    2.0
    """
    bucket = check_choice("bucket", bucket, ARES_BUCKETS)
    alpha = check_number("alpha", alpha, low=0.0)
    d = check_number("mean_hwe", mean_hwe) - check_number("target", target)
    d = -d if bucket == "hard" else d
    return round(min(2.0, max(0.0, alpha + check_number("step", step, low=0.0) * d)), 12)


def ares_second_chance(
    soft_cost: Tensor,
    *,
    buckets: list[str] | tuple[str, ...],
    correct: Tensor,
    relax: float,
    min_soft_cost: float,
) -> Tensor:
    r"""ARES's optional "second chance": a per-sample factor on the dynamic KL term, ``relax`` for an **easy, wrong**
    sample whose soft cost (its summed excess window entropy, :func:`hwe_counts`) is at least ``min_soft_cost``, 1
    otherwise.  Multiply each sample's per-token KL (already weighted by its bucket's ``beta_d``,
    :class:`~entrolab.control.BucketKLController`) by it: a wrong answer on an easy prompt that explored a lot keeps
    a looser leash for one more try.

    ``relax`` and ``min_soft_cost`` have no defaults: the spec (``shared/specs/llm_rl.md`` section 22) records the
    switch but not the released values; pass the ones of your run.

    Shapes
    ------
    soft_cost, correct ``(B,)`` (``correct`` bool); ``buckets`` ``B`` names from :data:`ARES_BUCKETS`; returns ``(B,)``
    in ``soft_cost``'s dtype.

    Examples
    --------
    >>> import torch
    >>> ares_second_chance(torch.tensor([3.0, 3.0, 0.5, 3.0]), buckets=["easy", "easy", "easy", "hard"],
    ...                    correct=torch.tensor([False, True, False, False]), relax=0.5, min_soft_cost=1.0).tolist()
    [0.5, 1.0, 1.0, 1.0]
    """
    if not isinstance(soft_cost, Tensor) or not soft_cost.dtype.is_floating_point or soft_cost.ndim != 1:
        raise TypeError(f"soft_cost must be a 1-D floating tensor, got {describe(soft_cost)}")
    if not isinstance(correct, Tensor) or correct.dtype != torch.bool or correct.shape != soft_cost.shape:
        raise TypeError(f"correct must be a bool tensor of shape {tuple(soft_cost.shape)}, got {describe(correct)}")
    if len(buckets) != soft_cost.shape[0]:
        raise ValueError(f"buckets must have {soft_cost.shape[0]} entries, got {len(buckets)}")
    easy = torch.tensor([check_choice("buckets[i]", b, ARES_BUCKETS) == "easy" for b in buckets], dtype=torch.bool)
    relax = check_number("relax", relax, low=0.0, low_open=True)
    min_soft_cost = check_number("min_soft_cost", min_soft_cost, low=0.0)
    if not bool(torch.isfinite(soft_cost).all()) or bool((soft_cost < 0).any()):
        raise ValueError("soft_cost must be finite and >= 0")
    chance = easy.to(soft_cost.device) & ~correct & (soft_cost >= min_soft_cost)
    return torch.where(chance, relax, 1.0).to(soft_cost.dtype)
