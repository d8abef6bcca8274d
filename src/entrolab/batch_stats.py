"""Batch statistics shared by the losses and the diagnostics: masked means and quantiles, the token covariance
``Cov(log pi, A)``, STEER's ``Omega``, and the top-k / random-k token selections built on them.

Both :mod:`entrolab.losses` and :mod:`entrolab.dynamics` import this module and it imports neither (a leaf of the
import graph, with :mod:`entrolab._dist` and :mod:`entrolab._validation`).  Every function takes checked tensors:
a bool mask ``m`` ``(B, T)`` and values whose masked positions may hold anything (padding garbage, NaN); masked
positions never reach a result.  Every result is detached.

``group`` is ``None`` for the statistics of the tensors given (one micro-batch, every framework's default) or a
``torch.distributed`` process group: the statistic is then taken over the whole data-parallel batch, rank 0's rows
first, so two ranks holding halves of a batch get exactly what one process holding all of it gets.

On the local path nothing here reads a tensor value on the host: counts, quantile positions and ``k`` stay
tensors, so no call synchronises with an accelerator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entrolab import _dist

__all__ = [
    "centred_products",
    "entropy_zscore",
    "masked_mean",
    "masked_quantile",
    "random_k_mask",
    "select_count",
    "steer_omega_values",
    "top_k_mask",
]


def masked_mean(x: Tensor, m: Tensor) -> Tensor:
    """Detached float32 mean of ``x`` over the valid positions ``m`` (0 when there are none): a metric."""
    x = x.detach()
    total = torch.where(m, x, 0).sum(dtype=torch.float32 if x.dtype != torch.float64 else torch.float64)
    return (total / m.sum().clamp_min(1)).to(torch.float32)


def select_count(ratio: float, n: Tensor) -> Tensor:
    """``max(1, floor(ratio * n))`` as an int64 0-d tensor (Clip-Cov's ``n_clip``, KL-Cov's ``k``).

    The product is the float64 ``n * ratio`` truncated, as the authors' code computes ``int(N * ratio)``: so
    ``0.29 * 100`` selects 28 there and here (the product is 28.999999999999996).
    """
    return torch.floor(n.to(torch.float64) * ratio).clamp_min(1).to(torch.int64)


def masked_quantile(x: Tensor, m: Tensor, q: float, *, interpolation: str = "linear", group: Any = None) -> Tensor:
    """The ``q`` quantile of ``x`` over valid positions, as ``torch.quantile`` computes it (0-d, ``x``'s dtype).

    ``interpolation="linear"`` interpolates between the two order statistics around ``q (n - 1)``;
    ``"nearest"`` takes the one at ``round(q (n - 1))`` (half to even, as ``torch.quantile``).  No valid entry
    gives 0.  Unlike ``torch.quantile`` there is no 2^24-element limit (pytorch issue #64947): one sort of the
    values, with padding sorted last.
    """
    x = x.detach()
    if group is None:
        flat = torch.where(m, x, torch.inf).reshape(-1)  # (B*T,) padding last after the sort
        n = m.sum()
    else:
        flat = _dist.gather_concat(x[m], group)  # (N_global,)
        n = torch.tensor(flat.numel(), device=x.device)
    if flat.numel() == 0:
        return x.new_zeros(())
    ordered = torch.sort(flat).values
    pos = (n - 1).clamp_min(0).to(torch.float64) * q
    if interpolation == "nearest":
        idx = torch.round(pos).to(torch.int64).reshape(1)
        value = ordered.gather(0, idx)[0]
    else:
        lo = torch.floor(pos).to(torch.int64)
        hi = torch.minimum(lo + 1, (n - 1).clamp_min(0))
        v = ordered.gather(0, torch.stack([lo, hi]))
        value = torch.lerp(v[0], v[1], (pos - lo).to(x.dtype))
    return torch.where(n > 0, value, 0).to(x.dtype)


def centred_products(
    logp: Tensor, adv: Tensor, m: Tensor, *, center: tuple[Tensor, Tensor] | None = None, group: Any = None
) -> Tensor:
    r"""Per-token ``Cov_t = (A_t - mean A)(logp_t - mean logp)`` over valid tokens, 0 at masked positions ``(B, T)``.

    The means are over the valid tokens (of every rank with ``group``), accumulated in float64, unless ``center`` =
    ``(mean_advantage, mean_logp)`` is given.  Its mean over valid tokens is the batch covariance
    ``Cov(log pi, A)`` of Cui et al., arXiv 2505.22617, Theorem 2 / eq. (11).
    """
    lp = torch.where(m, logp.detach(), 0)  # (B, T)
    a = torch.where(m, adv.detach(), 0)  # (B, T)
    if center is None:
        sums = _dist.all_sum(torch.stack([a.sum(), lp.sum(), m.sum().to(a.dtype)]).to(torch.float64), group)
        n = sums[2].clamp_min(1)
        mean_a, mean_lp = (sums[0] / n).to(a.dtype), (sums[1] / n).to(lp.dtype)
    else:
        mean_a, mean_lp = center[0].to(a), center[1].to(lp)
    return torch.where(m, (a - mean_a) * (lp - mean_lp), 0)


def steer_omega_values(logp: Tensor, old_logp: Tensor, adv: Tensor, m: Tensor, entropy: Tensor) -> Tensor:
    r"""STEER's per-token first-order entropy contribution, 0 at masked positions ``(B, T)``.

    ``Omega_t = A_t / clamp(exp(old_logp_t), 1e-8, 1) * x (1 - x) (ln x + H_t)`` with
    ``x = clamp(exp(logp_t), 1e-8, 1 - 1e-8)``; non-finite values become 0 (Hao et al., arXiv 2510.10150,
    section 4; the closed form of the authors' ``compute_token_weights``).
    """
    x = torch.exp(torch.where(m, logp.detach(), 0)).clamp(1e-8, 1 - 1e-8)  # (B, T) current probability
    p_old = torch.exp(torch.where(m, old_logp.detach(), 0)).clamp(1e-8, 1.0)  # (B, T)
    a = torch.where(m, adv.detach(), 0)
    h = torch.where(m, entropy.detach(), 0)
    omega = a / p_old * x * (1 - x) * (torch.log(x) + h)
    return torch.where(m & torch.isfinite(omega), omega, 0)


def _ranks(values: Tensor, *, descending: bool) -> Tensor:
    """Rank of each entry of a 1-D tensor in sorted order, ties by position (0 = first)."""
    order = torch.sort(values, descending=descending, stable=True).indices  # (N,)
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))


def _global_ranks(values: Tensor, group: Any, *, descending: bool) -> Tensor:
    """:func:`_ranks` of this rank's entries within the concatenation of every rank's (rank order)."""
    if group is None:
        return _ranks(values, descending=descending)
    offset, _ = _dist.rank_offset(values.numel(), values.device, group)
    return _ranks(_dist.gather_concat(values, group), descending=descending)[offset : offset + values.numel()]


def top_k_mask(scores: Tensor, m: Tensor, k: Tensor, *, group: Any = None) -> Tensor:
    """Bool ``(B, T)``: the ``k`` valid tokens with the largest ``scores``, ties broken by row-major position
    (rank 0's tokens first across ranks).  ``k`` is an int64 0-d tensor; all valid tokens when ``k >= N``."""
    lowest = torch.finfo(scores.dtype).min
    keyed = torch.where(m, scores, lowest).reshape(-1)  # (B*T,) padding sorts after every valid token...
    ranks = _global_ranks(keyed, group, descending=True)
    return m & (ranks < k).view_as(m)  # ...and is excluded again here


def random_k_mask(candidates: Tensor, k: Tensor, *, generator: torch.Generator | None, group: Any = None) -> Tensor:
    """Bool ``(B, T)``: ``min(k, |candidates|)`` of the ``candidates`` chosen uniformly at random.

    Each position draws a float64 key from ``generator`` (on the first rank, for the whole batch, and broadcast)
    and the candidates with the smallest keys are chosen: a uniform random subset, drawn with no host sync.
    """
    n_local = candidates.numel()
    offset, total = _dist.rank_offset(n_local, candidates.device, group)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(total, generator=generator, device=gen_device, dtype=torch.float64).to(candidates.device)
    keys = _dist.broadcast_from_first(keys, group)[offset : offset + n_local]  # (B*T,) this rank's keys
    keyed = torch.where(candidates.reshape(-1), keys, 2.0)  # non-candidates sort after every candidate
    ranks = _global_ranks(keyed, group, descending=False)
    return candidates & (ranks < k).view_as(candidates)


def entropy_zscore(
    entropy: Tensor, m: Tensor, *, stats: tuple[Tensor, Tensor] | None = None, group: Any = None
) -> Tensor:
    """``z = (H - mean H) / std H`` over valid tokens ``(B, T)``, 0 at padding (AEPO-EB's entropy score).

    The std is the unbiased one, accumulated in float64; a zero or undefined std counts as 1.  ``stats`` =
    ``(mean, std)`` replaces the batch's own.
    """
    h = torch.where(m, entropy.detach(), 0)  # (B, T)
    if stats is not None:
        mean, std = stats
    else:
        hv = h.to(torch.float64)
        sums = _dist.all_sum(torch.stack([hv.sum(), (hv * hv).sum(), m.sum().to(torch.float64)]), group)
        n = sums[2]
        mean64 = sums[0] / n.clamp_min(1)
        var = ((sums[1] - n * mean64 * mean64) / (n - 1).clamp_min(1)).clamp_min(0)
        mean = mean64.to(h.dtype)
        std = torch.where(n > 1, var.sqrt(), 0.0).to(h.dtype)
    std = torch.where(std > 0, std, 1.0)
    return torch.where(m, (h - mean) / std, 0)
