"""AEPO-EB (agentic "entropy-balanced policy optimization", arXiv 2510.14545): a stop-gradient high clip and an
entropy-aware advantage."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.losses import _dist, _fast
from entrolab.losses._common import (
    check_clip,
    check_compat,
    check_number,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
    zero_masked,
    zero_masked_means,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.ppo import fused_surrogate, ppo_core, ppo_metrics
from entrolab.losses.registry import register_policy_loss

__all__ = ["entropy_aware_advantages", "entropy_balanced"]


def _entropy_z(
    entropy: Tensor, m: Tensor, entropy_stats: tuple[Any, Any] | None, group: Any, mf: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``z = (H - mean) / std`` over valid tokens (unbiased std; std 0 or undefined -> 1), detached, 0 at padding."""
    mf = m.to(entropy.dtype) if mf is None else mf
    h = zero_masked(entropy.detach(), mf)
    if entropy_stats is not None:
        if not isinstance(entropy_stats, tuple | list) or len(entropy_stats) != 2:
            raise ValueError(f"entropy_stats must be a pair (mean, std), got {entropy_stats!r}")
        mean = torch.as_tensor(entropy_stats[0], dtype=h.dtype, device=h.device)
        std = torch.as_tensor(entropy_stats[1], dtype=h.dtype, device=h.device)
        if not bool(torch.isfinite(mean) & torch.isfinite(std) & (std >= 0)):
            raise ValueError(f"entropy_stats must be finite with std >= 0, got {entropy_stats!r}")
    else:
        hv = h.to(torch.float64)
        sums = _dist.all_sum(torch.stack([hv.sum(), (hv * hv).sum(), mf.sum().to(torch.float64)]), group)
        n = sums[2]
        mean64 = sums[0] / n.clamp_min(1)
        var = ((sums[1] - n * mean64 * mean64) / (n - 1).clamp_min(1)).clamp_min(0)
        mean = mean64.to(h.dtype)
        std = torch.where(n > 1, var.sqrt(), 0.0).to(h.dtype)
    std = torch.where(std > 0, std, 1.0)
    return (h - mean) / std * mf, mean, std


def entropy_aware_advantages(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    coef: float = 0.2,
    entropy_stats: tuple[float | Tensor, float | Tensor] | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""AEPO-EB's entropy-aware advantage ``A'_t = A_t (1 + coef * sg(z_t))``, ``z`` the token-entropy z-score.

    ``z_t = (H_t - mean H) / std H`` over valid tokens (unbiased std; a zero or undefined std counts as 1).

    Parameters
    ----------
    advantages : Tensor
        ``(B,)`` or ``(B, T)``.
    entropy : Tensor
        Token entropies ``(B, T)``.
    mask : Tensor
        Valid tokens.
    coef : float
        ``>= 0``; 0.2, hard-coded in the authors' code.
    entropy_stats : (mean, std), optional
        Precomputed statistics (spec section 0.2).
    global_stats, process_group
        Take mean and std over the whole data-parallel batch (``torch.distributed``).

    Returns
    -------
    Tensor
        ``(B, T)`` advantages (0 at masked positions), differentiable in ``advantages`` only.

    References
    ----------
    Dong et al., "Agentic Entropy-Balanced Policy Optimization", arXiv 2510.14545, section 3.3 (entropy-aware
    advantage estimation); ``shared/specs/llm_rl.md`` section 16.2.

    Examples
    --------
    >>> import torch
    >>> a = entropy_aware_advantages(torch.tensor([1.0]), torch.tensor([[0.5, 1.0, 2.5]]), torch.ones(1, 3))
    >>> [round(v, 4) for v in a[0].tolist()]
    [0.8399, 0.9359, 1.2242]
    """
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point or entropy.ndim != 2:
        raise TypeError(f"entropy must be a floating tensor (B, T), got {describe(entropy)}")
    m, adv = check_policy_inputs(entropy, entropy, advantages, mask, entropy)
    coef = check_number("coef", coef, low=0.0)
    z, _, _ = _entropy_z(entropy, m, entropy_stats, _dist.resolve_group(global_stats, process_group))
    return torch.where(m, adv * (1 + coef * z.to(adv.dtype)), 0.0)


@register_policy_loss("entropy_balanced")
def entropy_balanced(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    agg: str | Aggregation = "token-mean",
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
    >>> out = entropy_balanced(lp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), entropy_advantage=False)
    >>> out.loss.backward(); round(float(out.loss.detach()), 4), round(float(lp.grad), 4)  # value as PPO, grad -1.2
    (-1.2, -1.2)
    """
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip)
    if not isinstance(entropy_advantage, bool):
        raise TypeError(f"entropy_advantage must be a bool, got {describe(entropy_advantage)}")
    entropy_adv_coef = check_number("entropy_adv_coef", entropy_adv_coef, low=0.0)
    compat = check_compat(compat)
    weights = check_token_weights(token_weights, m)
    group = _dist.resolve_group(global_stats, process_group)
    reshape = entropy_advantage and compat == "paper"
    if reshape and entropy is None:
        raise ValueError(
            "entropy_balanced needs entropy= for its entropy-aware advantage (the authors' configs silently "
            "skip it); pass entropy_advantage=False to turn it off"
        )
    k = _fast.native_for(logp, old_logp, advantages, entropy if reshape else None)
    if k is not None and (not reshape or (group is None and entropy_stats is None)):
        return _balanced_native(
            k, logp, old_logp, advantages, m, entropy, agg, weights, eps_low, eps_high, dual_clip, reshape,
            entropy_adv_coef,
        )  # fmt: skip
    mf = m.to(logp.dtype)
    a = zero_masked(adv, mf)
    adv_metric = None
    if reshape:
        assert entropy is not None  # checked above
        z, _, _ = _entropy_z(entropy, m, entropy_stats, group, mf=mf)
        a = a * (1 + entropy_adv_coef * z.to(a.dtype))
        adv_metric = a
    per_token, terms = ppo_core(
        logp, old_logp, a, mf, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, top_gradient=True
    )
    metrics = ppo_metrics(m, mf, terms)  # clipfrac_high: the top-clipped tokens, counted by the surrogate
    if adv_metric is not None:
        metrics["entropy_adv_mean"] = zero_masked_means(m, adv_metric)[0]
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=terms.coef)


def _balanced_native(
    k: Any,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    entropy: Tensor | None,
    agg: Any,
    weights: Tensor | None,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    reshape: bool,
    coef: float,
) -> LossOutput:
    """:func:`entropy_balanced` on float32 CPU tensors with per-call statistics: the entropy's moments in one pass, then
    the entropy-aware advantage and the stop-gradient-clip surrogate with its gradient in one fused pass."""
    mean = std = 0.0
    if reshape:
        assert entropy is not None
        n, s1, s2 = _fast.masked_sums(k, entropy, m)
        mean64 = s1 / max(n, 1.0)
        var = max((s2 - n * mean64 * mean64) / max(n - 1.0, 1.0), 0.0)
        std = float(torch.tensor(math.sqrt(var) if n > 1 else 0.0, dtype=torch.float32))
        mean = float(torch.tensor(mean64, dtype=torch.float32))
    else:
        n = float(m.sum())
    stats: list[float] = []

    def run() -> tuple[Tensor, Tensor]:
        loss, grad, st = _fast.balanced_ppo(
            k, entropy if reshape else None, logp, old_logp, advantages, m, mean=mean,
            std=std if std > 0 else 1.0, coef=coef, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip,
        )  # fmt: skip
        stats.extend(st)
        return loss, grad

    per_token, grad_coef = fused_surrogate(logp, run)
    means = [torch.tensor(v / max(n, 1.0), dtype=torch.float32) for v in stats]
    metrics = {"clipfrac": means[0], "approx_kl": -means[1], "ratio_mean": means[2], "clipfrac_high": means[4]}
    if dual_clip is not None:
        metrics["clipfrac_lower"] = means[3]
    if reshape:
        metrics["entropy_adv_mean"] = means[5]
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=grad_coef)
