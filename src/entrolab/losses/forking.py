"""The "80/20" forking-token mask: train only on the highest-entropy fraction of tokens (arXiv 2506.01939)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.losses import _dist, _fast
from entrolab.losses._common import (
    check_local_stat,
    check_number,
    masked_mean,
    order_statistics,
    valid_values,
)
from entrolab.losses.aggregation import Aggregation, as_mask
from entrolab.losses.registry import get_policy_loss, register_policy_loss

__all__ = ["high_entropy_mask", "high_entropy_tokens", "linear_quantile"]

# Registered losses whose ``entropy`` argument only feeds ``metrics["entropy"]`` (validated, averaged, reported):
# over these, high_entropy_tokens reports that mean itself (from the pass that packs the entropies) and does not pass
# the entropies on, which spares the base a second validation and a second masked mean.  A test checks that each of
# them gives the same loss and gradient with and without entropy.
_ENTROPY_ONLY_REPORTED = frozenset({"ppo", "clip_cov", "kl_cov", "cispo", "gspo"})


def linear_quantile(values: Tensor, q: float, *, num_valid: int | None = None, scratch: bool = False) -> Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) of a 1-D tensor, also beyond 2^24 elements.

    ``torch.quantile`` refuses inputs above 2^24 elements (pytorch issue #64947) and sorts; this takes the two order
    statistics it needs by selection.  With ``num_valid``, only the ``num_valid`` smallest entries count (the rest
    being ``+inf`` padding).  ``scratch=True`` lets the selection reorder ``values`` in place (a buffer the caller
    owns).  An empty input gives 0.
    """
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point or values.ndim != 1:
        raise TypeError(f"values must be a 1-D floating tensor, got {describe(values)}")
    q = check_number("q", q, low=0.0, high=1.0)
    if not isinstance(scratch, bool):
        raise TypeError(f"scratch must be a bool, got {describe(scratch)}")
    if num_valid is not None and not (isinstance(num_valid, int) and 0 <= num_valid <= values.numel()):
        raise ValueError(f"num_valid must be an int in [0, {values.numel()}], got {num_valid!r}")
    if num_valid is None and bool(torch.isnan(values).any()):
        raise ValueError("values must not contain NaN")
    n = values.numel() if num_valid is None else num_valid
    if n == 0:
        return values.new_zeros(())
    pos = q * (n - 1)
    lo = min(math.floor(pos), n - 1)
    hi = min(lo + 1, n - 1)
    v = order_statistics(values, [lo, hi] if hi != lo else [lo], scratch=scratch)
    v_lo, v_hi = v[0], v[-1]
    return torch.lerp(v_lo, v_hi, torch.tensor(pos - lo, dtype=values.dtype, device=values.device))


def high_entropy_mask(
    entropy: Tensor,
    mask: Tensor,
    *,
    rho: float = 0.2,
    entropy_threshold: float | Tensor | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> tuple[Tensor, Tensor]:
    r"""Valid tokens whose entropy is at least the ``(1 - rho)`` quantile of the valid tokens' entropies.

    Parameters
    ----------
    entropy : Tensor
        Token entropies ``(B, T)``.
    mask : Tensor
        Valid tokens.
    rho : float
        The kept fraction in ``(0, 1]``; 0.2 in the paper (``rho = 1`` keeps every token).
    entropy_threshold : float or Tensor, optional
        A precomputed threshold ``tau`` (spec section 0.2); else the linear-interpolation quantile of the tensors
        given.
    global_stats, process_group
        Take the quantile over the whole data-parallel batch (all-gather of the valid entropies, as TRL does).

    Returns
    -------
    (Tensor, Tensor)
        The bool mask ``(B, T)`` (``H >= tau``: ties are kept) and ``tau`` (0-d; 0 for an empty batch).

    References
    ----------
    Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM
    Reasoning", arXiv 2506.01939, eq. (6); ``shared/specs/llm_rl.md`` section 11.

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[0.1, 2.3, 0.05, 0.4, 1.7, 0.2, 0.0, 0.3, 0.6, 0.1]])
    >>> keep, tau = high_entropy_mask(h, torch.ones(1, 10))
    >>> round(float(tau), 4), keep.nonzero()[:, 1].tolist()
    (0.82, [1, 4])
    """
    keep, tau, _, _ = _high_entropy_mask(
        entropy, mask, rho=rho, entropy_threshold=entropy_threshold, global_stats=global_stats,
        process_group=process_group,
    )  # fmt: skip
    return keep, tau


def _high_entropy_mask(
    entropy: Tensor,
    mask: Tensor,
    *,
    rho: float,
    entropy_threshold: float | Tensor | None,
    global_stats: bool,
    process_group: Any,
) -> tuple[Tensor, Tensor, float | None, float | None]:
    """:func:`high_entropy_mask`, plus the kept fraction of valid tokens and the mean valid entropy when the native
    kernels computed them (else ``None``)."""
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy must be a floating tensor, got {describe(entropy)}")
    m = as_mask(mask, entropy.shape)
    rho = check_number("rho", rho, low=0.0, low_open=True, high=1.0)
    group = _dist.resolve_group(global_stats, process_group)
    k = _fast.native_for(entropy) if group is None and entropy_threshold is None and entropy.ndim == 2 else None
    if k is not None:  # one pass packs the valid entropies (and finds any non-finite one), one writes the mask
        packed, bad, total = _fast.pack_valid(k, entropy, m)
        if bad:
            raise ValueError("entropy is not finite at a valid position")
        n = packed.numel()
        tau = linear_quantile(packed, 1.0 - rho, num_valid=n, scratch=True)
        keep, kept = _fast.ge_mask(k, entropy, m, float(tau))
        return keep, tau, kept / max(n, 1), total / max(n, 1)
    big = torch.finfo(entropy.dtype).max
    if entropy.numel() and not bool(
        (torch.nan_to_num(entropy.detach(), nan=big, posinf=big, neginf=big).abs() * m).amax() < big
    ):
        raise ValueError("entropy is not finite at a valid position")
    h = entropy.detach()
    if entropy_threshold is not None:
        given = check_local_stat("entropy_threshold", entropy_threshold)
        assert given is not None
        tau = given.to(h)
    else:
        if group is None:
            tau = linear_quantile(valid_values(h, m), 1.0 - rho)
        else:
            tau = linear_quantile(_dist.gather_concat(h[m], group), 1.0 - rho)
    return m & (h >= tau), tau, None, None  # NaN garbage at padding compares False anyway


@functools.lru_cache(maxsize=64)
def _parameters(fn: Any) -> Any:
    return inspect.signature(fn).parameters


@register_policy_loss("high_entropy_tokens")
def high_entropy_tokens(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    rho: float = 0.2,
    base: str = "ppo",
    entropy_threshold: float | Tensor | None = None,
    global_stats: bool = False,
    process_group: Any = None,
    **base_hyperparameters: Any,
) -> LossOutput:
    r"""The 80/20 rule over any registered loss: only tokens with ``H >= tau`` (the top ``rho`` by entropy) train.

    Runs the ``base`` loss with its per-token losses multiplied by :func:`high_entropy_mask` (through the base's
    ``token_weights``), so the other tokens contribute neither value nor gradient, while every denominator still
    counts **all** valid tokens (the paper's ``1 / sum_i |o_i|``), and the base's batch statistics (Clip-Cov's
    covariance centre, ...) are still over all valid tokens.

    Parameters
    ----------
    logp, old_logp, advantages, mask, agg, generator, token_weights
        As in :func:`~entrolab.losses.ppo`, passed to the base loss (``token_weights`` multiplies the mask).
    entropy : Tensor
        Required: token entropies ``(B, T)``.
    rho : float
        Kept fraction in ``(0, 1]``; paper 0.2.
    base : str
        A registered loss name that accepts ``token_weights`` (every built-in does); the paper uses DAPO, i.e.
        ``"ppo"`` with ``eps_high=0.28``.
    entropy_threshold, global_stats, process_group
        As in :func:`high_entropy_mask`; ``global_stats``/``process_group`` are also passed to the base when it
        accepts them.
    **base_hyperparameters
        The base loss's own keywords (``eps_high=0.28``, ...).

    Returns
    -------
    LossOutput
        The base's metrics plus ``high_entropy_frac`` and ``entropy_threshold``.

    References
    ----------
    Wang et al., arXiv 2506.01939, eq. (6); ``shared/specs/llm_rl.md`` section 11.
    """
    if entropy is None:
        raise ValueError("high_entropy_tokens needs entropy= (token entropies, (B, T))")
    if base == "high_entropy_tokens":
        raise ValueError("base must be another loss, not 'high_entropy_tokens' itself")
    fn = get_policy_loss(base)
    params = _parameters(fn)
    if "token_weights" not in params:
        raise TypeError(f"base loss {base!r} does not accept token_weights, so the 80/20 mask cannot be applied")
    if not isinstance(logp, Tensor) or not logp.dtype.is_floating_point:
        raise TypeError(f"logp must be a floating torch.Tensor, got {describe(logp)}")
    if not isinstance(entropy, Tensor) or entropy.shape != logp.shape:
        raise ValueError(f"entropy must be a tensor of shape {tuple(logp.shape)}, got {describe(entropy)}")
    m = as_mask(mask, logp.shape)  # the base loss checks everything else
    keep, tau, kept, entropy_mean = _high_entropy_mask(
        entropy,
        m,
        rho=rho,
        entropy_threshold=entropy_threshold,
        global_stats=global_stats,
        process_group=process_group,
    )
    if token_weights is not None:
        if not isinstance(token_weights, Tensor) or token_weights.shape != m.shape:
            raise ValueError(f"token_weights must be a tensor of shape {tuple(m.shape)}, got {describe(token_weights)}")
        weights: Tensor = torch.where(keep, token_weights, torch.zeros_like(token_weights))
    else:
        weights = keep
    extra = dict(base_hyperparameters)
    if global_stats and "global_stats" in params:
        extra.update(global_stats=True, process_group=process_group)
    report_only = base in _ENTROPY_ONLY_REPORTED
    out = fn(
        logp,
        old_logp,
        advantages,
        mask,
        entropy=None if report_only else entropy,
        agg=agg,
        generator=generator,
        token_weights=weights,
        **extra,
    )
    if report_only:  # the base's entropy metric, from the mask's own pass when the native kernels ran
        mean = masked_mean(entropy, m) if entropy_mean is None else torch.tensor(entropy_mean, dtype=torch.float32)
        out.metrics["entropy"] = mean
    kept_frac = masked_mean(keep, m) if kept is None else torch.tensor(kept, dtype=torch.float32)
    out.metrics["high_entropy_frac"] = kept_frac
    out.metrics["entropy_threshold"] = tau.detach().float()
    return out
