"""Clip-Cov and KL-Cov: act on the few tokens whose covariance Cov(log pi, A) drives entropy collapse.

Both use the per-token centred product ``Cov_t = (A_t - mean A) (logp_t - mean logp)`` over the valid tokens
(``shared/specs/llm_rl.md`` section 7.3, :func:`entrolab.batch_stats.centred_products`).  By default its means, the
selected count and the selection are taken over the tensors given (one micro-batch, as in every framework);
``cov_center=`` accepts precomputed means, and ``global_stats=True`` takes means, counts and the selection over the
whole data-parallel batch through ``torch.distributed``, so that two ranks holding halves of a batch select exactly
what one process holding all of it selects (given the same ``generator`` state on the first rank, for Clip-Cov).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._typing import LossOutput
from entrolab._validation import check_choice, check_number
from entrolab.batch_stats import centred_products, masked_mean, random_k_mask, select_count, top_k_mask
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    PolicyInputs,
    check_clip,
    check_local_stat,
    check_policy_inputs,
    check_token_weights,
    compute_dtype,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.ppo import clipped_surrogate, surrogate_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["clip_cov", "kl_cov", "token_covariance"]


def _covariance(x: PolicyInputs, cov_center: Any, group: Any) -> Tensor:
    """The per-token centred products of checked inputs, about ``cov_center`` when given ``(B, T)``."""
    center = None
    if cov_center is not None:
        if not isinstance(cov_center, tuple | list) or len(cov_center) != 2:
            raise ValueError(f"cov_center must be a pair (mean_advantage, mean_logp), got {cov_center!r}")
        mean_a = check_local_stat("cov_center[0]", cov_center[0], x.adv)
        mean_lp = check_local_stat("cov_center[1]", cov_center[1], x.logp)
        assert mean_a is not None and mean_lp is not None
        center = (mean_a, mean_lp)
    return centred_products(x.logp, x.adv, x.m, center=center, group=group)


def _verl_top_cov(x: PolicyInputs, ratio: float) -> Tensor:
    """Bool ``(B, T)``: verl's KL-Cov selection, ``torch.topk`` over the valid tokens' covariance on the CPU."""
    m = x.m
    adv = x.adv.detach()[m].reshape(-1).cpu()  # (N,) row-major, as verl's boolean indexing
    lp = x.logp.detach()[m].reshape(-1).cpu()
    chosen = torch.zeros(m.numel(), dtype=torch.bool)
    if adv.numel() == 0:
        return chosen.view_as(m).to(m.device)
    cov = (adv - adv.mean()) * (lp - lp.mean())
    k = max(1, int(len(cov) * ratio))
    idx = torch.nonzero(m.reshape(-1).cpu(), as_tuple=True)[0][torch.topk(cov, k, largest=True).indices]
    chosen[idx] = True
    return chosen.view_as(m).to(m.device)


def token_covariance(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    cov_center: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Per-token centred product ``Cov_t = (A_t - mean A) (sg(logp_t) - mean sg(logp))`` (0 at masked positions).

    Parameters
    ----------
    logp : Tensor
        Log-probabilities of the sampled tokens (detached here).
    advantages : Tensor
        ``(B,)`` or ``(B, T)``.
    mask : Tensor
        Valid tokens; the means are over valid tokens only.
    cov_center : (mean_advantage, mean_logp), optional
        Precomputed means (for example all-reduced over ranks); the local means otherwise.
    global_stats, process_group
        Take the means over every rank of ``process_group`` (default: the world) through ``torch.distributed``.

    Returns
    -------
    Tensor
        ``(B, T)``, detached.

    References
    ----------
    Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617,
    eq. (11) (the per-token estimator of the covariance in Theorem 2); ``shared/specs/llm_rl.md`` section 7.3.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[-0.1, -2.0, -0.5, -3.0]]); adv = torch.tensor([[1.0, 1, -1, -1]])
    >>> [round(v, 4) for v in token_covariance(lp, adv, torch.ones(1, 4))[0].tolist()]
    [1.3, -0.6, -0.9, 1.6]
    """
    x = check_policy_inputs(logp, logp, advantages, mask)
    return _covariance(x, cov_center, _dist.resolve_group(global_stats, process_group))


@register_policy_loss("clip_cov")
def clip_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    ratio: float = 2e-4,
    cov_lb: float = 1.0,
    cov_ub: float = 5.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    cov_center: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> LossOutput:
    r"""Clip-Cov: PPO, with a random few high-covariance tokens detached (no value, no gradient).

    Per valid token: ``L1 = -A r``, ``L2 = -A clip(r, 1 - eps_low, 1 + eps_high)``; tokens PPO already clipped
    (``L2 > L1``) and padding are never selected.  Candidates are the other tokens with
    ``cov_lb < Cov_t < cov_ub`` (strict, :func:`token_covariance`); ``min(n_clip, |candidates|)`` of them, with
    ``n_clip = max(1, floor(ratio * N))``, are chosen uniformly at random and get loss 0.  They stay in every
    denominator.  The rest get ``max(L1, L2)`` (and dual-clip when ``dual_clip`` is set).

    Parameters
    ----------
    logp, old_logp, advantages, mask, entropy, agg, token_weights
        As in :func:`~entrolab.losses.ppo`.
    generator : torch.Generator, optional
        Drives the random choice (``torch.randperm`` over the candidates); seed it for reproducible runs.
    ratio : float
        Fraction of valid tokens to detach, in ``(0, 1]`` (a fraction, not a percent).  Paper: 2e-4.
    cov_lb, cov_ub : float
        Open covariance window ``(cov_lb, cov_ub)``; paper 1 and 5.
    eps_low, eps_high, dual_clip
        PPO's clip (the paper's scripts use ``eps_low = eps_high = 1``: only extreme ratios are filtered).
    cov_center : (mean_advantage, mean_logp), optional
        Precomputed covariance centre (spec section 0.2).
    global_stats, process_group
        Take the centre, ``N`` and the random choice over the whole data-parallel batch (``torch.distributed``).

    Returns
    -------
    LossOutput
        Metrics: ``clipfrac`` (PPO's clip), ``covclip_frac`` (detached tokens / N; verl reports this as
        ``pg_clipfrac``), ``cov_candidate_frac``, ``cov_mean``, ``approx_kl``, ``ratio_mean``, ``entropy``.

    Shapes
    ------
    logp, old_logp, mask, entropy ``(B, T)``; advantages ``(B,)`` or ``(B, T)``.

    Notes
    -----
    Follows the authors' code (``compute_policy_loss_clip_cov``), which matches the paper's eq. (12).  Departure: the
    log-ratio is clamped to ``[-20, 20]`` before ``exp`` as in :func:`~entrolab.losses.ppo` (verl does not clamp in
    this loss); this only changes tokens whose ratio would overflow.  The random choice draws one float64 key per
    token from ``generator`` and takes the candidates with the smallest keys (a uniform random subset, like verl's
    ``randperm`` over the candidates, but with no host synchronisation); the chosen tokens therefore differ from
    verl's for the same seed whenever there are more candidates than ``n_clip``.

    References
    ----------
    Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617,
    eq. (12) and Algorithm 1; ``shared/specs/llm_rl.md`` section 8.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[-0.1, -2.0, -0.5, -3.0]]); adv = torch.tensor([[1.0, 1, -1, -1]])
    >>> out = clip_cov(lp, lp, adv, torch.ones(1, 4), agg="token-mean", generator=torch.Generator().manual_seed(0))
    >>> float(out.metrics["covclip_frac"])  # one of the two candidates (Cov 1.3 and 1.6) is detached
    0.25
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    ratio = check_number("ratio", ratio, low=0.0, low_open=True, high=1.0)
    cov_lb = check_number("cov_lb", cov_lb)
    cov_ub = check_number("cov_ub", cov_ub)
    if not cov_lb < cov_ub:
        raise ValueError(f"cov_lb must be < cov_ub, got cov_lb={cov_lb}, cov_ub={cov_ub}")
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip, compute_dtype(logp.dtype))
    weights = check_token_weights(token_weights, x)
    group = _dist.resolve_group(global_stats, process_group)

    s = clipped_surrogate(x, x.adv, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    cov = _covariance(x, cov_center, group)  # (B, T)
    # candidates: valid, not already clipped by PPO, covariance strictly inside (cov_lb, cov_ub)
    candidates = x.m & ~s.clipped & (cov > cov_lb) & (cov < cov_ub)
    n_clip = select_count(ratio, _dist.all_sum(x.m.sum(), group))
    chosen = random_k_mask(candidates, n_clip, generator=generator, group=group)
    per_token = s.per_token * ~chosen  # value 0 and gradient 0; the token stays in every denominator
    metrics = surrogate_metrics(s, x.m)
    metrics.update(
        covclip_frac=masked_mean(chosen, x.m),
        cov_candidate_frac=masked_mean(candidates, x.m),
        cov_mean=masked_mean(cov, x.m),
    )
    return finish_loss(per_token, x, agg, metrics, weights)


@register_policy_loss("kl_cov")
def kl_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    ratio: float = 2e-3,
    kl_coef: float = 1.0,
    cov_center: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
    compat: str = "paper",
) -> LossOutput:
    r"""KL-Cov: unclipped policy gradient, plus ``kl_coef * |logp - old_logp|`` on the top-covariance tokens.

    Per valid token ``l_t = -A_t r_t`` (**no PPO clip**); the ``k = max(1, floor(ratio * N))`` tokens with the largest
    :func:`token_covariance` (ties broken by row-major position) get ``+ kl_coef * |logp_t - old_logp_t|``.

    Parameters
    ----------
    logp, old_logp, advantages, mask, entropy, agg, token_weights
        As in :func:`~entrolab.losses.ppo`.
    generator : torch.Generator, optional
        Unused (the selection is a deterministic top-k); part of the uniform signature.
    ratio : float
        Fraction of valid tokens penalised, in ``(0, 1]``: 2e-3 (the paper's 7B value) means 0.2% of the tokens;
        the original repository's ``k_percent`` is in percent (0.2 there is this 2e-3), and 0.2 here means 20%.
    kl_coef : float
        ``beta >= 0``; paper 1.0 (verl's config dataclass defaults to 0.1).
    cov_center, global_stats, process_group
        As in :func:`clip_cov` (the top-k is then over the whole data-parallel batch).
    compat : {"paper", "code"}
        ``"paper"``: ties in the covariance are broken by row-major position (the first wins), on the device.
        ``"code"``: verl's ``compute_policy_loss_kl_cov`` selection exactly: the covariance of the valid tokens
        (row-major) computed on the CPU as verl computes it, then ``torch.topk``, whose order among exact ties is
        its own (on a batch with 13 tokens at log-prob 0 it picks other tied tokens than the row-major rule).  This
        copies the tensors to the host (a sync) and refuses ``global_stats`` and ``cov_center``, which verl's loss
        does not have.

    Returns
    -------
    LossOutput
        Metrics: ``klcov_frac`` (penalised tokens / N), ``klcov_abs_log_ratio`` (mean ``|logp - old_logp|`` over the
        penalised tokens), ``cov_mean``, ``approx_kl``, ``ratio_mean``, ``entropy``.

    Notes
    -----
    Departures: the log-ratio is clamped to ``[-20, 20]`` before ``exp``; the covariance stays on the device (verl
    moves it to the CPU) and the top-k is a stable sort of it (ties by row-major position), with no host sync.
    Fully on-policy (``logp == old_logp``) the penalty and its subgradient are 0, so KL-Cov is then plain unclipped
    policy gradient (repository issue #1).

    References
    ----------
    Cui et al., arXiv 2505.22617, eq. (13); ``shared/specs/llm_rl.md`` section 9.

    Examples
    --------
    >>> import math, torch
    >>> lp = torch.tensor([[math.log(3.0)]]); old = torch.zeros(1, 1)
    >>> float(kl_cov(lp, old, torch.tensor([1.0]), torch.ones(1, 1), agg="token-mean", kl_coef=0.0).loss)  # -A r
    -3.0
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    ratio = check_number("ratio", ratio, low=0.0, low_open=True, high=1.0)
    kl_coef = check_number("kl_coef", kl_coef, low=0.0)
    weights = check_token_weights(token_weights, x)
    group = _dist.resolve_group(global_stats, process_group)

    log_ratio = torch.where(x.m, x.logp - x.old_logp, 0)  # (B, T)
    ratio_t = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg = -torch.where(x.m, x.adv, 0) * ratio_t  # (B, T) unclipped policy gradient
    compat = check_choice("compat", compat, ("paper", "code"))
    if compat == "code" and (group is not None or cov_center is not None):
        raise ValueError("kl_cov(compat='code') reproduces verl's local selection: no global_stats or cov_center")
    cov = _covariance(x, cov_center, group)  # (B, T)
    k = select_count(ratio, _dist.all_sum(x.m.sum(), group))
    # the k largest covariances: ties by position ("paper"), or verl's own top-k ("code")
    chosen = _verl_top_cov(x, ratio) if compat == "code" else top_k_mask(cov, x.m, k, group=group)
    penalty = log_ratio.abs()  # |logp - old_logp|
    per_token = pg + kl_coef * chosen * penalty
    frac = masked_mean(chosen, x.m)
    metrics = {
        "klcov_frac": frac,
        "klcov_abs_log_ratio": masked_mean(penalty * chosen, x.m) / frac.clamp_min(1e-30),  # over the chosen
        "cov_mean": masked_mean(cov, x.m),
        "approx_kl": -masked_mean(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), x.m),
        "ratio_mean": masked_mean(ratio_t, x.m),
    }
    return finish_loss(per_token, x, agg, metrics, weights)
