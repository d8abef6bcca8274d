"""Clip-Cov and KL-Cov: act on the few tokens whose covariance Cov(log pi, A) drives entropy collapse.

Both use the per-token centred product ``Cov_t = (A_t - mean A) (logp_t - mean logp)`` over the valid tokens
(``shared/specs/llm_rl.md`` section 7.3).  By default its means, the candidate count and the selection are taken over
the tensors given (one micro-batch, as in every framework); ``cov_center=`` accepts precomputed means, and
``global_stats=True`` takes means, counts and the selection over the whole data-parallel batch through
``torch.distributed``, so that two ranks holding halves of a batch select exactly what one process holding all of it
selects (given the same ``generator`` state on the first rank, for Clip-Cov).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab.losses import _dist, _fast
from entrolab.losses._common import (
    check_clip,
    check_local_stat,
    check_number,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
    order_statistics,
    positive,
    valid_values,
    zero_masked,
    zero_masked_means,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.ppo import adjust_tokens, ppo_core, ppo_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["clip_cov", "kl_cov", "token_covariance"]

_HEAP_MAX_K = 4096  # KL-Cov's native selection keeps a heap of the k best up to this k, else packs and selects


def _center(
    lp_s: Tensor, a_s: Tensor, mf: Tensor, cov_center: tuple[Any, Any] | None, group: Any
) -> tuple[Tensor, Tensor]:
    """Means of the sanitised (0 at padding) advantages and log-probs over valid tokens, or the given centre."""
    if cov_center is not None:
        if not isinstance(cov_center, tuple | list) or len(cov_center) != 2:
            raise ValueError(f"cov_center must be a pair (mean_advantage, mean_logp), got {cov_center!r}")
        mean_a = check_local_stat("cov_center[0]", cov_center[0])
        mean_lp = check_local_stat("cov_center[1]", cov_center[1])
        assert mean_a is not None and mean_lp is not None
        return mean_a.to(a_s), mean_lp.to(lp_s)
    sums = torch.stack([a_s.sum(), lp_s.sum(), mf.sum()]).to(torch.float64)
    sums = _dist.all_sum(sums, group)
    n = sums[2].clamp_min(1)
    return (sums[0] / n).to(a_s.dtype), (sums[1] / n).to(lp_s.dtype)


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
    m, adv = check_policy_inputs(logp, logp, advantages, mask)
    return _covariance(logp, adv, m, cov_center, _dist.resolve_group(global_stats, process_group))


def _covariance(logp: Tensor, adv: Tensor, m: Tensor, cov_center: Any, group: Any, mf: Tensor | None = None) -> Tensor:
    """Per-token centred products, exactly 0 at masked positions (detached)."""
    mf = m.to(logp.dtype) if mf is None else mf
    return _covariance_clean(zero_masked(logp.detach(), mf), zero_masked(adv.detach(), mf), mf, cov_center, group)


def _covariance_clean(lp_s: Tensor, a_s: Tensor, mf: Tensor, cov_center: Any, group: Any) -> Tensor:
    """:func:`_covariance` on inputs already 0 at padding."""
    mean_a, mean_lp = _center(lp_s, a_s, mf, cov_center, group)
    return (a_s - mean_a) * (lp_s - mean_lp) * mf


def _select_count(ratio: float, n_total: int) -> int:
    """``max(1, floor(ratio * N))`` (the spec's n_clip / k), computed without float drift for exact fractions."""
    return max(1, math.floor(ratio * n_total + 1e-9 * ratio * n_total))


def _random_subset(cand: Tensor, n_select: int, generator: torch.Generator | None, group: Any) -> Tensor:
    """Choose ``min(n_select, |candidates|)`` candidates uniformly at random over the (global) candidate list.

    The draw is ``randperm(total candidates)`` on the first rank, broadcast, so it equals a single process's draw on
    the concatenated batch with the same generator state.
    """
    flat = cand.reshape(-1)
    local_idx = flat.nonzero().squeeze(1)  # row-major order of candidates
    offset, total = _dist.rank_offset(local_idx.numel(), cand.device, group)
    chosen = torch.zeros_like(flat)
    k = min(n_select, total)
    if k == 0:
        return chosen.view_as(cand)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    picks = torch.randperm(total, generator=generator, device=gen_device)[:k].to(cand.device)
    picks = _dist.broadcast_from_first(picks, group)
    mine = picks[(picks >= offset) & (picks < offset + local_idx.numel())] - offset
    chosen[local_idx[mine]] = True
    return chosen.view_as(cand)


def _topk_by_value_then_index(values: Tensor, gidx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k-th entry of ``values`` ordered by (value descending, global index ascending): ``(value, index)``."""
    order = torch.argsort(gidx)
    v, i = values[order], gidx[order]
    order = torch.sort(v, descending=True, stable=True).indices
    return v[order[k - 1]], i[order[k - 1]]


def _local_top_k(cov: Tensor, m: Tensor, mf: Tensor, k: int) -> Tensor:
    """0/1 mask (``cov``'s dtype) of the ``k`` valid tokens with the largest ``cov``, ties broken by row-major position.

    ``cov`` must be 0 at padding and ``mf`` is the float mask.
    """
    values = valid_values(cov, m)
    n_valid = values.numel()
    if k == 0 or n_valid == 0:
        return torch.zeros_like(mf)
    if k >= n_valid:
        return mf.clone()
    below, kth = order_statistics(values, [n_valid - k - 1, n_valid - k])  # the (k+1)-th and k-th largest
    if bool(below == kth):  # a tie straddles the boundary: resolve it by position
        greater = m & (cov > kth)
        tied = (m & (cov == kth)).reshape(-1)
        first = torch.cumsum(tied, 0) <= k - greater.sum()
        return (greater | (tied & first).view_as(m)).to(mf.dtype)
    return mf * (1.0 - positive(kth - cov))  # valid and cov >= kth, in float arithmetic


def _top_k(cov: Tensor, m: Tensor, mf: Tensor, n_select: int, group: Any) -> Tensor:
    """0/1 mask of the ``n_select`` valid tokens with the largest ``cov`` (ties by row-major index), over all ranks."""
    if group is None:
        return _local_top_k(cov, m, mf, min(n_select, int(m.sum())))
    values = cov[m]  # (N,) row-major
    n_local = values.numel()
    offset, total = _dist.rank_offset(n_local, cov.device, group)
    k = min(n_select, total)
    chosen = torch.zeros_like(m)
    if k == 0:
        return torch.zeros_like(mf)
    gidx = torch.arange(offset, offset + n_local, device=cov.device)
    # each rank's own top-min(k, n) (ties by index) is enough to decide the global top-k
    k_local = min(k, n_local)
    if k_local:
        kth_v, kth_i = _topk_by_value_then_index(values, gidx, k_local)
        keep = (values > kth_v) | ((values == kth_v) & (gidx <= kth_i))
        cand_v, cand_i = values[keep], gidx[keep]
    else:
        cand_v, cand_i = values[:0], gidx[:0]
    all_v = _dist.gather_concat(cand_v, group)
    all_i = _dist.gather_concat(cand_i, group)
    kth_v, kth_i = _topk_by_value_then_index(all_v, all_i, k)
    chosen[m] = (values > kth_v) | ((values == kth_v) & (gidx <= kth_i))
    return chosen.to(mf.dtype)


@register_policy_loss("clip_cov")
def clip_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
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
    this loss); this only changes tokens whose ratio would overflow.  One host synchronisation (the candidate
    count), as in verl, which also moves the covariance to the CPU.

    References
    ----------
    Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617,
    eq. (12) and Algorithm 1; ``shared/specs/llm_rl.md`` section 8.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[-0.1, -2.0, -0.5, -3.0]]); adv = torch.tensor([[1.0, 1, -1, -1]])
    >>> out = clip_cov(lp, lp, adv, torch.ones(1, 4), generator=torch.Generator().manual_seed(0))
    >>> float(out.metrics["covclip_frac"])  # one of the two candidates (Cov 1.3 and 1.6) is detached
    0.25
    """
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    ratio = check_number("ratio", ratio, low=0.0, low_open=True, high=1.0)
    cov_lb = check_number("cov_lb", cov_lb)
    cov_ub = check_number("cov_ub", cov_ub)
    if not cov_lb < cov_ub:
        raise ValueError(f"cov_lb must be < cov_ub, got cov_lb={cov_lb}, cov_ub={cov_ub}")
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip)
    weights = check_token_weights(token_weights, m)
    group = _dist.resolve_group(global_stats, process_group)

    mf = m.to(logp.dtype)
    a = zero_masked(adv, mf)
    per_token, terms = ppo_core(logp, old_logp, a, mf, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    metrics = ppo_metrics(m, mf, terms)
    k = _fast.native_for(logp, old_logp, advantages) if group is None else None
    if k is not None:  # centre and candidate flags in one native pass; only the chosen few tokens are touched
        cands, n, cov_sum = _fast.cov_candidates(
            k, logp, terms.clipped, advantages, m, center=_given_center(logp, cov_center), cov_lb=cov_lb, cov_ub=cov_ub
        )
        total = cands.total
        n_chosen = min(_select_count(ratio, n), total) if n else 0
        if n_chosen:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            picks = torch.randperm(total, generator=generator, device=gen_device)[:n_chosen]
            chosen = cands.flat_indices(picks)  # the candidates of those ranks in row-major order
            adjust_tokens(per_token, terms, chosen, zero=True)  # value and gradient 0, in place
        count = max(n, 1)
        covclip, candidates, cov_mean = torch.tensor([n_chosen, total, cov_sum], dtype=torch.float32).div_(count)
        metrics.update(covclip_frac=covclip, cov_candidate_frac=candidates, cov_mean=cov_mean)
        return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=terms.coef)
    cov = _covariance_clean(zero_masked(logp.detach(), mf), a.detach(), mf, cov_center, group)
    # candidates as 0/1 floats (mf * not clipped * cov in the open window): no bool passes on the hot path
    cand = (mf - terms.clipped) * positive(cov - cov_lb) * positive(cov_ub - cov)
    n_valid = _dist.all_sum(m.sum(), group)
    chosen = _random_subset(cand, _select_count(ratio, int(n_valid)), generator, group)
    per_token = per_token * (1.0 - chosen)  # value 0 and gradient 0; the token stays in every denominator
    covclip, candidates, cov_mean = zero_masked_means(m, chosen, cand, cov)
    metrics.update(covclip_frac=covclip, cov_candidate_frac=candidates, cov_mean=cov_mean)
    return finish_loss(per_token, m, agg, metrics, entropy, weights)


@register_policy_loss("kl_cov")
def kl_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    ratio: float = 2e-3,
    kl_coef: float = 1.0,
    cov_center: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
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

    Returns
    -------
    LossOutput
        Metrics: ``klcov_frac`` (penalised tokens / N), ``klcov_abs_log_ratio`` (mean ``|logp - old_logp|`` over the
        penalised tokens), ``cov_mean``, ``approx_kl``, ``ratio_mean``, ``entropy``.

    Notes
    -----
    Departures: the log-ratio is clamped to ``[-20, 20]`` before ``exp``; the covariance stays on the device (verl
    moves it to the CPU).  Fully on-policy (``logp == old_logp``) the penalty and its subgradient are 0, so KL-Cov is
    then plain unclipped policy gradient (repository issue #1).

    References
    ----------
    Cui et al., arXiv 2505.22617, eq. (13); ``shared/specs/llm_rl.md`` section 9.

    Examples
    --------
    >>> import math, torch
    >>> lp = torch.tensor([[math.log(3.0)]]); old = torch.zeros(1, 1)
    >>> float(kl_cov(lp, old, torch.tensor([1.0]), torch.ones(1, 1), kl_coef=0.0).loss)  # no clip: -A r = -3
    -3.0
    """
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    ratio = check_number("ratio", ratio, low=0.0, low_open=True, high=1.0)
    kl_coef = check_number("kl_coef", kl_coef, low=0.0)
    weights = check_token_weights(token_weights, m)
    group = _dist.resolve_group(global_stats, process_group)

    mf = m.to(logp.dtype)
    a = zero_masked(adv, mf)
    # no PPO clip: eps_low = 1 and eps_high = inf make the clip inactive (l = -A r, gradient -A r everywhere)
    per_token, terms = ppo_core(logp, old_logp, a, mf, eps_low=1.0, eps_high=math.inf, dual_clip=None)
    k = _fast.native_for(logp, old_logp, advantages) if group is None else None
    if k is not None:
        return _kl_cov_native(
            k, logp, old_logp, advantages, m, per_token, terms, entropy, agg, weights, ratio, kl_coef, cov_center
        )
    lp_s = zero_masked(logp.detach(), mf)
    olp_s = zero_masked(old_logp.detach(), mf)
    cov = _covariance_clean(lp_s, a.detach(), mf, cov_center, group)
    n_valid = _dist.all_sum(m.sum(), group)
    chosen = _top_k(cov, m, mf, _select_count(ratio, int(n_valid)), group)
    sel = chosen.to(logp.dtype)
    penalty = (zero_masked(logp, mf) - olp_s).abs()  # kl_coef |logp - old_logp| on the chosen tokens
    per_token = per_token + (kl_coef * sel) * penalty
    frac, kl_sel, cov_mean, approx_kl, ratio_mean = zero_masked_means(
        m, sel, penalty.detach() * sel, cov, terms.log_ratio, terms.ratio
    )
    metrics = {
        "klcov_frac": frac,
        "klcov_abs_log_ratio": kl_sel / frac.clamp_min(1e-30),  # mean over the penalised tokens (0 if none)
        "cov_mean": cov_mean,
        "approx_kl": -approx_kl,
        "ratio_mean": ratio_mean,
    }
    return finish_loss(per_token, m, agg, metrics, entropy, weights)


def _given_center(logp: Tensor, cov_center: Any) -> tuple[float, float] | None:
    """A given ``cov_center``, validated and cast to float32 as the PyTorch path casts it; ``None`` passes through."""
    if cov_center is None:
        return None
    mean_a, mean_lp = _center(logp, logp, logp, cov_center, None)
    return float(mean_a), float(mean_lp)


def _native_center(k: Any, logp: Tensor, advantages: Tensor, m: Tensor, cov_center: Any) -> tuple[int, float, float]:
    """Valid count and the float32 covariance centre (local means, or the given ``cov_center``) for the kernels."""
    n, mean_a, mean_lp = _fast.cov_center(k, logp, advantages, m)
    given = _given_center(logp, cov_center)
    if given is not None:
        mean_a, mean_lp = given
    return int(n), mean_a, mean_lp


def _kl_cov_native(
    k: Any,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    per_token: Tensor,
    terms: Any,
    entropy: Tensor | None,
    agg: Any,
    weights: Tensor | None,
    ratio: float,
    kl_coef: float,
    cov_center: Any,
) -> LossOutput:
    """:func:`kl_cov` on float32 CPU tensors, per-call statistics: for k up to ``_HEAP_MAX_K`` the centre and a size-k
    heap of the largest covariances in one native call; beyond it the valid covariances packed by one pass, the k-th
    largest by selection and the chosen tokens by a second pass.  The penalty then goes to those tokens only."""
    kmax = _select_count(ratio, logp.numel())  # k for every token valid: a bound on k
    if kmax <= _HEAP_MAX_K:  # the usual case (k = 0.2% of the tokens): centre and a size-k heap in one call
        center = _given_center(logp, cov_center)
        idx, n, cov_sum = _fast.cov_topk(k, logp, advantages, m, center=center, ratio=ratio, kmax=kmax)
        return _kl_cov_finish(logp, old_logp, m, per_token, terms, entropy, agg, weights, kl_coef, idx, n, cov_sum)
    n, mean_a, mean_lp = _native_center(k, logp, advantages, m, cov_center)
    n_select = min(_select_count(ratio, n), n) if n else 0
    cov_sum = 0.0
    idx = torch.zeros(0, dtype=torch.int64)
    if n:
        packed, cov_sum = _fast.cov_pack(k, logp, advantages, m, mean_a=mean_a, mean_lp=mean_lp, n=n)
        kth = -math.inf if n_select >= n else float(order_statistics(packed, [n - n_select], scratch=True)[0])
        idx = _fast.cov_top(k, logp, advantages, m, mean_a=mean_a, mean_lp=mean_lp, kth=kth, count=n_select)
    return _kl_cov_finish(logp, old_logp, m, per_token, terms, entropy, agg, weights, kl_coef, idx, n, cov_sum)


def _kl_cov_finish(
    logp: Tensor,
    old_logp: Tensor,
    m: Tensor,
    per_token: Tensor,
    terms: Any,
    entropy: Tensor | None,
    agg: Any,
    weights: Tensor | None,
    kl_coef: float,
    idx: Tensor,
    n: int,
    cov_sum: float,
) -> LossOutput:
    """KL-Cov's penalty on the chosen flat indices ``idx``, added in place to their loss and gradient coefficient
    (:func:`~entrolab.losses.ppo.adjust_tokens`), and its metrics."""
    with torch.no_grad():
        diff = logp.detach().reshape(-1)[idx] - old_logp.detach().reshape(-1)[idx]
        penalty = diff.abs()
    if idx.numel():  # kl_coef |logp - old_logp| on the chosen tokens, its gradient kl_coef sign(logp - old_logp)
        adjust_tokens(per_token, terms, idx, add_value=kl_coef * penalty, add_grad=kl_coef * torch.sign(diff))
    count = max(n, 1)
    approx_kl, ratio_mean = zero_masked_means(m, terms.log_ratio, terms.ratio)
    frac = torch.tensor(idx.numel() / count, dtype=torch.float32)
    kl_sel = penalty.detach().sum().to(torch.float32) / count
    metrics = {
        "klcov_frac": frac,
        "klcov_abs_log_ratio": kl_sel / frac.clamp_min(1e-30),
        "cov_mean": torch.tensor(cov_sum / count, dtype=torch.float32),
        "approx_kl": -approx_kl,
        "ratio_mean": ratio_mean,
    }
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=terms.coef)
