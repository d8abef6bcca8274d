"""PPO's clipped surrogate with separate low/high epsilons (DAPO clip-higher) and optional dual-clip.

:func:`clipped_surrogate` is the textbook formula every PPO-style loss here builds on (Clip-Cov, STEER, HAPO,
AEPO-EB, the 80/20 mask); autograd does the backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab.batch_stats import masked_mean
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    PolicyInputs,
    check_clip,
    check_policy_inputs,
    check_token_weights,
    compute_dtype,
    finish_loss,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.registry import register_policy_loss

__all__ = ["Surrogate", "clipped_surrogate", "ppo", "surrogate_metrics"]


class Surrogate(NamedTuple):
    """What :func:`clipped_surrogate` returns: the per-token loss and the detached terms behind it."""

    per_token: Tensor
    """``(B, T)`` loss per token (0 at masked positions), differentiable in ``logp``."""
    log_ratio: Tensor
    """``(B, T)`` clamped ``logp - old_logp`` (0 at masked positions)."""
    ratio: Tensor
    """``(B, T)`` ``exp(log_ratio)``."""
    clipped: Tensor
    """``(B, T)`` bool: the clipped branch is strictly larger (PPO's ``clipfrac``; Clip-Cov's excluded tokens)."""
    lower: Tensor | None
    """``(B, T)`` bool: dual-clip binds (``None`` without dual-clip)."""
    top: Tensor | None
    """``(B, T)`` bool: top-clipped tokens that keep AEPO-EB's stop-gradient gradient (``None`` without it)."""


def clipped_surrogate(
    inputs: PolicyInputs,
    adv: Tensor,
    *,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    dual_clip: float | None,
    stop_gradient_high: bool = False,
) -> Surrogate:
    r"""Per-token PPO loss ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``, then dual-clip for ``A < 0``.

    ``adv`` ``(B, T)`` are the advantages to use (a method's reshaped ones, or ``inputs.adv``); ``eps_low`` and
    ``eps_high`` may be per-token tensors ``(B, T)`` (HAPO).  ``stop_gradient_high`` is AEPO-EB's high clip
    ``(1 + eps_high) r / sg(r)``: the same value, but a top-clipped token keeps the gradient
    ``(1 + eps_high)(-A)``.  Schulman et al., arXiv 1707.06347, eq. (7); dual-clip: Ye et al., arXiv 1912.09729,
    eq. (5).
    """
    m = inputs.m
    log_ratio = torch.where(m, inputs.logp - inputs.old_logp, 0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    a = torch.where(m, adv.detach(), 0)  # (B, T) constants of the surrogate
    low = 1 - eps_low
    high = 1 + eps_high
    if stop_gradient_high:
        high = high * ratio / ratio.detach()  # value 1 + eps_high, gradient (1 + eps_high) d log pi
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        low = torch.as_tensor(low, dtype=ratio.dtype, device=ratio.device)
        high = torch.as_tensor(high, dtype=ratio.dtype, device=ratio.device)
    pg_unclipped = -a * ratio  # (B, T)
    pg_clipped = -a * torch.clamp(ratio, low, high)  # type: ignore[arg-type]  # (B, T); floats or tensors
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    clipped = pg_clipped > pg_unclipped
    top = (clipped & (a > 0)) if stop_gradient_high else None
    lower = None
    if dual_clip is not None:
        pg_floor = -a * dual_clip  # binds only for A < 0
        lower = (a < 0) & (per_token > pg_floor)
        per_token = torch.where(a < 0, torch.minimum(per_token, pg_floor), per_token)
    return Surrogate(torch.where(m, per_token, 0), log_ratio.detach(), ratio.detach(), clipped, lower, top)


def surrogate_metrics(s: Surrogate, m: Tensor) -> dict[str, Tensor]:
    """``clipfrac``, ``approx_kl`` (mean ``old_logp - logp``), ``ratio_mean``, and ``clipfrac_lower`` with dual-clip,
    ``clipfrac_high`` with the stop-gradient high clip: means over valid tokens, detached float32."""
    metrics = {
        "clipfrac": masked_mean(s.clipped, m),
        "approx_kl": -masked_mean(s.log_ratio, m),
        "ratio_mean": masked_mean(s.ratio, m),
    }
    if s.lower is not None:
        metrics["clipfrac_lower"] = masked_mean(s.lower, m)
    if s.top is not None:
        metrics["clipfrac_high"] = masked_mean(s.top, m)
    return metrics


@register_policy_loss("ppo")
def ppo(
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
    dual_clip: float | None = None,
) -> LossOutput:
    r"""PPO clipped surrogate, with clip-higher (``eps_high != eps_low``) and optional dual-clip.

    Per valid token, with ``r = exp(clamp(logp - old_logp, -20, 20))``::

        l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high));   if A < 0 and dual_clip = c:  l = min(l, -A c)

    then :func:`~entrolab.losses.aggregate` with ``agg``.

    Parameters
    ----------
    logp, old_logp : Tensor
        Current and behaviour log-probabilities of the sampled tokens.
    advantages : Tensor
        Per sequence ``(B,)`` (broadcast over tokens) or per token ``(B, T)``.
    mask : Tensor
        Valid tokens (bool or 0/1).  Masked positions contribute exactly 0 to the loss and its gradient, whatever
        they hold.
    agg : str or Aggregation
        Required: the aggregation mode (``"token-mean"``, ...) and optional global normalisers.  TRL and verl
        default to different modes, so entrolab makes the caller choose.
    entropy : Tensor, optional
        Token entropies; only reported (``metrics["entropy"]``).
    generator : torch.Generator, optional
        Unused (PPO is deterministic); part of the uniform signature.
    token_weights : Tensor, optional
        Per-token multipliers ``(B, T)`` of the per-token losses (bool or float); the denominators keep the counts of
        ``mask``.  :func:`~entrolab.losses.high_entropy_tokens` applies the 80/20 mask through it.
    eps_low, eps_high : float
        Clip range ``[1 - eps_low, 1 + eps_high]``; DAPO's clip-higher is ``eps_high = 0.28``.
    dual_clip : float, optional
        The dual-clip constant ``c > 1`` (``None``, the default, is off; verl uses 3.0).

    Returns
    -------
    LossOutput
        The loss and metrics ``clipfrac``, ``approx_kl`` (mean ``old_logp - logp``), ``ratio_mean``, and
        ``clipfrac_lower`` with dual-clip, ``entropy`` when given.

    Shapes
    ------
    logp, old_logp, mask, entropy ``(B, T)``; advantages ``(B,)`` or ``(B, T)``.

    Notes
    -----
    The log-ratio is clamped to ``[-20, 20]`` before ``exp`` (verl's convention): tokens beyond it get zero gradient.
    Half-precision inputs are computed in float32.

    References
    ----------
    Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347, eq. (7); dual-clip: Ye et al.,
    arXiv 1912.09729, eq. (5); clip-higher: "DAPO", arXiv 2503.14476, eq. (10).

    Examples
    --------
    >>> import math, torch
    >>> lp = torch.tensor([[math.log(1.25)]]); old = torch.zeros(1, 1); m = torch.ones(1, 1, dtype=torch.bool)
    >>> round(float(ppo(lp, old, torch.tensor([1.0]), m, agg="token-mean").loss), 6)  # clipped at 1.2
    -1.2
    >>> round(float(ppo(lp, old, torch.tensor([1.0]), m, agg="token-mean", eps_high=0.28).loss), 6)  # clip-higher
    -1.25
    """
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip, compute_dtype(logp.dtype))
    weights = check_token_weights(token_weights, x)
    s = clipped_surrogate(x, x.adv, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    return finish_loss(s.per_token, x, agg, surrogate_metrics(s, x.m), weights)
