"""AEPO-EB (agentic "entropy-balanced policy optimization", arXiv 2510.14545): a stop-gradient high clip on an
entropy-aware advantage (the advantage alone is :func:`entrolab.advantages.entropy_aware_advantages`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._typing import LossOutput
from entrolab._validation import check_compat, check_number, describe
from entrolab.batch_stats import entropy_zscore, masked_mean
from entrolab.losses._common import (
    check_clip,
    check_policy_inputs,
    check_representable,
    check_token_weights,
    compute_dtype,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.ppo import clipped_surrogate, surrogate_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["entropy_balanced"]


def _check_entropy_stats(entropy_stats: object, like: Tensor) -> tuple[Tensor, Tensor] | None:
    """A given ``(mean, std)`` of the token entropies as 0-d tensors like ``like`` (finite, ``std >= 0``)."""
    if entropy_stats is None:
        return None
    if not isinstance(entropy_stats, tuple | list) or len(entropy_stats) != 2:
        raise ValueError(f"entropy_stats must be a pair (mean, std), got {entropy_stats!r}")
    for i, v in enumerate(entropy_stats):  # numbers are checked here; tensors only under debug_checks (no sync)
        if not isinstance(v, Tensor):
            check_number(f"entropy_stats[{i}]", v, low=0.0 if i == 1 else None)
        elif v.numel() != 1 or not v.dtype.is_floating_point:
            raise ValueError(f"entropy_stats[{i}] must be a one-element floating tensor, got {describe(v)}")
    mean, std = (torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(()) for v in entropy_stats)
    return mean, std


@register_policy_loss("entropy_balanced")
def entropy_balanced(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str | Aggregation,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    entropy_advantage: bool = True,
    entropy_adv_coef: float = 0.2,
    compat: str = "paper",
    entropy_stats: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> LossOutput:
    r"""AEPO-EB's entropy-balanced loss: PPO with a stop-gradient high clip, on entropy-aware advantages.

    The clip ``clip(r, 1 - eps_low, 1 + eps_high)`` becomes ``clamp(r, 1 - eps_low, (1 + eps_high) r / sg(r))``: the
    forward value is PPO's, but a top-clipped token (``A > 0``, ``r > 1 + eps_high``) keeps the gradient
    ``(1 + eps_high) (-A) grad logp`` instead of 0.  Low clip and dual-clip are unchanged.  The advantages are first
    reshaped by :func:`entropy_aware_advantages` (``entropy_adv_coef``) when ``entropy_advantage`` is on.

    Parameters
    ----------
    logp, old_logp, advantages, mask, agg, token_weights
        As in :func:`~entrolab.losses.ppo`.
    entropy : Tensor
        Token entropies ``(B, T)``; required when ``entropy_advantage`` is on (``compat="paper"``).
    generator : torch.Generator, optional
        Unused; part of the uniform signature.
    eps_low, eps_high, dual_clip
        The authors' settings: 0.2 / 0.2 and ``clip_ratio_c = 3``.
    entropy_advantage : bool
        Reshape the advantages by token entropy (default on, as the authors' flag).
    entropy_adv_coef : float
        The 0.2 hard-coded in the authors' code.
    compat : {"paper", "code"}
        ``"code"`` reproduces the released configs, where the entropy-aware advantage is **silently skipped**
        (the actor computes entropy only when ``entropy_coeff != 0``, and the configs set 0).  ``"paper"`` applies
        it, and raises ``ValueError`` if ``entropy`` is missing rather than skipping.
    entropy_stats, global_stats, process_group
        As in :func:`entropy_aware_advantages`.

    Returns
    -------
    LossOutput
        PPO's metrics (``clipfrac`` counts top and bottom clips) plus ``clipfrac_high`` (tokens with the
        stop-gradient gradient) and ``entropy_adv_mean`` (mean reshaped advantage) when the advantage is reshaped.

    References
    ----------
    Dong et al., "Agentic Entropy-Balanced Policy Optimization", arXiv 2510.14545, eqs. (10)-(12) (the code's
    ``compute_policy_loss_entropy_balanced_clipping``); ``shared/specs/llm_rl.md`` section 16.2.  The code applies
    the stop-gradient clip to every top-clipped token, not only high-entropy ones; so does this function.

    Examples
    --------
    >>> import math, torch
    >>> lp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    >>> out = entropy_balanced(
    ...     lp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), agg="token-mean", entropy_advantage=False
    ... )
    >>> out.loss.backward(); round(float(out.loss.detach()), 4), round(float(lp.grad), 4)  # value as PPO, grad -1.2
    (-1.2, -1.2)
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip, compute_dtype(logp.dtype))
    if not isinstance(entropy_advantage, bool):
        raise TypeError(f"entropy_advantage must be a bool, got {describe(entropy_advantage)}")
    entropy_adv_coef = check_number("entropy_adv_coef", entropy_adv_coef, low=0.0)
    check_representable("entropy_adv_coef", entropy_adv_coef, compute_dtype(logp.dtype))
    compat = check_compat(compat)
    weights = check_token_weights(token_weights, x)
    group = _dist.resolve_group(global_stats, process_group)
    reshape = entropy_advantage and compat == "paper"
    if reshape and x.entropy is None:
        raise ValueError(
            "entropy_balanced needs entropy= for its entropy-aware advantage (the authors' configs silently "
            "skip it); pass entropy_advantage=False to turn it off"
        )

    adv = x.adv
    if reshape:
        assert x.entropy is not None
        adv = adv * (
            1
            + entropy_adv_coef
            * entropy_zscore(x.entropy, x.m, stats=_check_entropy_stats(entropy_stats, x.entropy), group=group)
        )  # A (1 + c sg(z))
    s = clipped_surrogate(x, adv, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, stop_gradient_high=True)
    metrics = surrogate_metrics(s, x.m)  # clipfrac_high: the top-clipped tokens that keep their gradient
    if reshape:
        metrics["entropy_adv_mean"] = masked_mean(adv, x.m)
    return finish_loss(s.per_token, x, agg, metrics, weights)
