"""The "80/20" forking-token mask: train only on the highest-entropy fraction of tokens (arXiv 2506.01939)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._typing import LossOutput
from entrolab._validation import check_choice, check_number, check_same_device, debug_enabled, describe
from entrolab.batch_stats import masked_mean, masked_quantile, top_k_mask
from entrolab.losses._common import check_finite_at_valid, check_local_stat, compute_dtype
from entrolab.losses.aggregation import Aggregation, as_mask
from entrolab.losses.registry import get_policy_loss, register_policy_loss

__all__ = ["high_entropy_mask", "high_entropy_tokens"]


def high_entropy_mask(
    entropy: Tensor,
    mask: Tensor,
    *,
    rho: float = 0.2,
    entropy_threshold: float | Tensor | None = None,
    global_stats: bool = False,
    process_group: Any = None,
    compat: str = "paper",
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
    compat : {"paper", "code"}
        ``"paper"``: every valid token with ``H >= tau`` (ties at the threshold are all kept, so with ties more than
        ``rho N``: on ``[3, 2, 2, 2, 1, 0, 0, 0, 0, 0]`` with ``rho = 0.2``, 4 tokens).  ``"code"``: the authors'
        ``get_global_entropy_top_mask``, exactly ``ceil(rho N)`` tokens by top-k, ties by position (2 tokens
        there: the 3 and the first 2).  ``entropy_threshold`` is refused with ``"code"``.

    Returns
    -------
    (Tensor, Tensor)
        The bool mask ``(B, T)`` and ``tau`` (0-d; 0 for an empty batch): the quantile (``"paper"``), or the
        smallest kept entropy (``"code"``).

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
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy must be a floating tensor, got {describe(entropy)}")
    check_same_device(entropy, mask=mask)
    m = as_mask(mask, entropy.shape)
    rho = check_number("rho", rho, low=0.0, low_open=True, high=1.0)
    group = _dist.resolve_group(global_stats, process_group)
    if debug_enabled():
        check_finite_at_valid("entropy", entropy, m)
    compat = check_choice("compat", compat, ("paper", "code"))
    h = entropy.detach().to(compute_dtype(entropy.dtype))
    if compat == "code":
        if entropy_threshold is not None:
            raise ValueError("entropy_threshold cannot be combined with compat='code' (a top-k keeps ceil(rho N))")
        n = _dist.all_sum(m.sum(), group)
        k = torch.ceil(n.to(torch.float64) * rho).to(torch.int64)  # ceil(rho N) tokens
        keep = top_k_mask(h, m, k, group=group)  # ties by position, rank 0's tokens first
        smallest = torch.where(keep, h, torch.inf).amin() if h.numel() else h.new_tensor(torch.inf)
        kept_min = torch.where(_dist.all_sum(keep.sum(), group) > 0, _dist.all_min(smallest, group), 0.0)
        return keep, kept_min.to(h.dtype)
    tau = check_local_stat("entropy_threshold", entropy_threshold, h)
    if tau is None:
        tau = masked_quantile(h, m, 1.0 - rho, group=group)  # the (1 - rho) quantile of the valid entropies
    return m & (h >= tau), tau  # garbage (even NaN) at padding is excluded by m


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
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    rho: float = 0.2,
    base: str = "ppo",
    entropy_threshold: float | Tensor | None = None,
    global_stats: bool = False,
    process_group: Any = None,
    compat: str = "paper",
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
    compat : {"paper", "code"}
        ``"paper"``: the threshold mask of :func:`high_entropy_mask` as token weights, every denominator over all
        valid tokens (eq. 6).  ``"code"``: the authors' release (Beyond-the-80-20-Rule-RLVR): the top-k mask
        (``high_entropy_mask(compat="code")``) becomes the base loss's *mask*, so the loss is averaged over the
        selected tokens only (about ``1 / rho`` = 5x the paper's loss and gradient), and the base's batch
        statistics are over the selected tokens too.
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
    check_same_device(logp, entropy=entropy, mask=mask, old_logp=old_logp, advantages=advantages)
    m = as_mask(mask, logp.shape)  # the base loss checks everything else
    keep, tau = high_entropy_mask(
        entropy, m, rho=rho, entropy_threshold=entropy_threshold, global_stats=global_stats,
        process_group=process_group, compat=compat,
    )  # fmt: skip
    if token_weights is not None and (not isinstance(token_weights, Tensor) or token_weights.shape != m.shape):
        raise ValueError(f"token_weights must be a tensor of shape {tuple(m.shape)}, got {describe(token_weights)}")
    extra = dict(base_hyperparameters)
    if global_stats and "global_stats" in params:
        extra.update(global_stats=True, process_group=process_group)
    if compat == "code":  # the selected tokens are the loss's mask: every denominator counts only them
        base_mask: Tensor = keep
        weights = token_weights
    else:  # the mask as token weights: every denominator still counts all valid tokens
        base_mask = mask
        weights = keep if token_weights is None else torch.where(keep, token_weights, torch.zeros_like(token_weights))
    out = fn(
        logp, old_logp, advantages, base_mask, entropy=entropy, agg=agg, generator=generator, token_weights=weights,
        **extra,
    )  # fmt: skip
    out.metrics["high_entropy_frac"] = masked_mean(keep, m)
    out.metrics["entropy_threshold"] = tau.detach().float()
    return out
