"""Preference learning without a reward model: CPL, self-play win-rate rewards (SPO) and the preference-degree loss.

- :func:`cpl_loss`: Contrastive Preference Learning, ``softplus(lam S(sigma-) - S(sigma+))`` with the segment score
  ``S = sum_t gamma^t alpha log pi(a_t | s_t)`` (the maximum-entropy optimal advantage), ``lam`` the conservative
  bias; the authors' code sums without discounting (``discount=1.0``).
- :func:`self_play_win_rate_rewards`: the minimaximalist reward of a sample, its mean win rate against the rest of
  its group under a (possibly intransitive) preference; :func:`exploitability` of a policy under a preference matrix.
- :func:`preference_degree_loss`: a DPO loss plus a weighted cross-entropy of an auxiliary preference-degree
  classifier (self-supervised preference optimisation; LOW CONFIDENCE).

References
----------
Hejna et al., arXiv 2310.13639 (CPL); Swamy et al., arXiv 2401.04056 (SPO); Li et al., arXiv 2409.17791 (SSPO);
``shared/specs/beyond_llm.md`` sections 7, 19 and 20.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe

__all__ = ["cpl_loss", "exploitability", "preference_degree_loss", "segment_score", "self_play_win_rate_rewards"]


def segment_score(
    log_probs: Tensor, *, alpha: float = 0.1, discount: float = 0.99, mask: Tensor | None = None
) -> Tensor:
    """``S = sum_t discount^t alpha log pi(a_t | s_t)`` over the last axis of ``log_probs`` ``(..., k)`` (masked steps
    excluded)."""
    if not isinstance(log_probs, Tensor) or not log_probs.dtype.is_floating_point or log_probs.ndim < 1:
        raise TypeError(f"log_probs must be a floating tensor (..., k), got {describe(log_probs)}")
    if not 0 < discount <= 1:
        raise ValueError(f"discount must be in (0, 1], got {discount!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    w = discount ** torch.arange(log_probs.shape[-1], dtype=log_probs.dtype, device=log_probs.device)
    terms = alpha * w * log_probs
    if mask is not None:
        terms = torch.where(mask, terms, 0.0)
    return terms.sum(-1)


def cpl_loss(score_preferred: Tensor, score_dispreferred: Tensor, *, bias: float = 0.5) -> LossOutput:
    r"""CPL's loss ``mean softplus(bias S- - S+)`` on segment scores (:func:`segment_score`); ``bias`` (lambda) in
    ``(0, 1]``, 1 = unbiased.  The arguments are (preferred, dispreferred): the authors' ``y = 1`` means the second is
    preferred, a trap this API avoids.

    Examples
    --------
    >>> import torch
    >>> round(float(cpl_loss(torch.tensor([1.0]), torch.tensor([2.0]), bias=0.5).loss), 4)
    0.6931
    """
    if not 0 < bias <= 1:
        raise ValueError(f"bias must be in (0, 1], got {bias!r}")
    if not isinstance(score_preferred, Tensor) or not isinstance(score_dispreferred, Tensor):
        raise TypeError("scores must be tensors")
    if score_preferred.shape != score_dispreferred.shape:
        raise ValueError(f"score shapes differ: {describe(score_preferred)} vs {describe(score_dispreferred)}")
    margin = score_preferred - bias * score_dispreferred
    loss = torch.nn.functional.softplus(-margin).mean()
    return LossOutput(loss, {"cpl_accuracy": (margin > 0).float().mean().detach()})


def self_play_win_rate_rewards(preferences: Tensor, *, centred: bool = False) -> Tensor:
    r"""SPO's reward of each sample of a group: its mean win probability against the other ``G - 1`` samples,
    ``r_i = mean_{j != i} P(x_i > x_j)`` (minus 1/2 with ``centred``).

    ``preferences`` ``(..., G, G)``: ``P(x_i > x_j)`` in ``[0, 1]`` (e.g. a judge's probabilities or 0/1 outcomes);
    the diagonal is ignored.  Returns ``(..., G)``.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])
    >>> self_play_win_rate_rewards(p).tolist()
    [1.0, 0.5, 0.0]
    """
    if not isinstance(preferences, Tensor) or preferences.ndim < 2 or preferences.shape[-1] != preferences.shape[-2]:
        raise ValueError(f"preferences must be (..., G, G), got {describe(preferences)}")
    g = preferences.shape[-1]
    if g < 2:
        raise ValueError("a group needs at least 2 samples")
    if bool(((preferences < 0) | (preferences > 1) | ~torch.isfinite(preferences)).any()):
        raise ValueError("preferences must be probabilities in [0, 1]")
    off = ~torch.eye(g, dtype=torch.bool, device=preferences.device)
    r = torch.where(off, preferences, 0.0).sum(-1) / (g - 1)
    return r - 0.5 if centred else r


def exploitability(policy: Tensor, preference_matrix: Tensor) -> float:
    """``max_a P(a > policy) - 1/2`` for a mixed ``policy`` ``(A,)`` under ``P(i > j) = M[i, j]`` (0 at the minimax
    winner of a symmetric game)."""
    if policy.ndim != 1 or preference_matrix.shape != (policy.numel(), policy.numel()):
        raise ValueError(f"need policy (A,) and a (A, A) matrix, got {describe(policy)}, {describe(preference_matrix)}")
    if bool((policy < 0).any()) or abs(float(policy.sum()) - 1) > 1e-6:
        raise ValueError("policy must be a distribution")
    return float((preference_matrix.to(policy.dtype) @ policy).max()) - 0.5


def preference_degree_loss(
    policy_chosen_logratio: Tensor,
    policy_rejected_logratio: Tensor,
    degree_logits: Tensor | None = None,
    degree_labels: Tensor | None = None,
    *,
    beta: float = 0.1,
    lam: float = 0.1,
) -> LossOutput:
    r"""DPO ``softplus(-beta (r_c - r_r))`` (``r`` = policy minus reference log-probabilities of a response) plus
    ``lam`` times the cross-entropy of a preference-degree classifier (``degree_logits`` ``(N, K + 1)`` against
    ``degree_labels`` ``(N,)``: how much key content was removed).  ``lam = 0`` (or no classifier) is DPO exactly.
    LOW CONFIDENCE: only the abstract is public (``shared/specs/beyond_llm.md`` section 20).

    Examples
    --------
    >>> import torch
    >>> round(float(preference_degree_loss(torch.tensor([1.0]), torch.tensor([-0.5]), lam=0.0).loss), 4)
    0.621
    """
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    if policy_chosen_logratio.shape != policy_rejected_logratio.shape:
        raise ValueError("chosen and rejected log-ratios must have one shape")
    dpo = torch.nn.functional.softplus(-beta * (policy_chosen_logratio - policy_rejected_logratio)).mean()
    metrics = {"dpo_loss": dpo.detach()}
    loss = dpo
    if degree_logits is not None and lam > 0:
        if degree_labels is None or degree_labels.shape != degree_logits.shape[:1]:
            raise ValueError(f"degree_labels must be ({degree_logits.shape[0]},), got {describe(degree_labels)}")
        ssl = torch.nn.functional.cross_entropy(degree_logits, degree_labels)
        loss = loss + lam * ssl
        metrics["degree_loss"] = ssl.detach()
    return LossOutput(loss, metrics)
