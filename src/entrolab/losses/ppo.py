"""PPO's clipped surrogate with separate low/high epsilons (DAPO clip-higher) and optional dual-clip."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.losses._common import (
    LOG_RATIO_CLAMP,
    check_clip,
    check_policy_inputs,
    check_token_weights,
    finish_loss,
    positive,
    zero_masked,
    zero_masked_means,
)
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.registry import register_policy_loss

__all__ = ["PPOTerms", "adjust_tokens", "fused_surrogate", "ppo", "ppo_core", "ppo_metrics", "ppo_token_losses"]


class PPOTerms(NamedTuple):
    """What :func:`ppo_core` computes besides the per-token loss (all detached, 0 at masked positions)."""

    log_ratio: Tensor
    ratio: Tensor
    clipped: Tensor
    """Float 0/1: the clipped branch is strictly larger (PPO's ``clipfrac``; Clip-Cov's ``clip_by_origin``)."""
    lower: Tensor | None
    """Float 0/1: dual-clip active (``None`` without dual-clip)."""
    top: Tensor | None = None
    """Float 0/1: top-clipped tokens that keep AEPO-EB's stop-gradient gradient (``None`` without it)."""
    coef: Tensor | None = None
    """``d per_token / d logp``, the very tensor the surrogate's backward multiplies by (see :func:`adjust_tokens`)."""


class _PPOSurrogate(torch.autograd.Function):
    """Per-token clipped surrogate with its analytic gradient: one saved coefficient, one multiply in backward.

    Everything is float arithmetic (no bool tensors, no ``where``): on CPU builds a comparison or a ``where`` over
    64k tokens costs 5-20x a multiply, and this function runs under every policy loss.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logp: Tensor,
        old_logp: Tensor,
        a: Tensor,
        mf: Tensor,
        eps_low: float | Tensor,
        eps_high: float | Tensor,
        dual_clip: float | None,
        top_gradient: bool,
        bounds: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
        raw = torch.nan_to_num(logp, nan=0.0, posinf=0.0, neginf=0.0) - torch.nan_to_num(
            old_logp, nan=0.0, posinf=0.0, neginf=0.0
        )
        raw = raw * mf  # exactly 0 at padding, whatever it held
        log_ratio = raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = torch.exp(log_ratio) * mf
        neg_a = -a  # a is 0 at padding, so every product below is too
        unclipped = neg_a * ratio
        low, high = (eps_low, eps_high) if bounds else (1.0 - eps_low, 1.0 + eps_high)
        clipped = neg_a * torch.clamp(ratio, low, high)  # type: ignore[arg-type]
        per_token = torch.maximum(unclipped, clipped)
        sel = torch.sign(per_token - unclipped)  # clipped > unclipped, strictly (the difference is >= 0)
        # d l / d logp: -A r on the unclipped branch (ties included, as autograd's max/clamp give), 0 when clipped
        keep = 1.0 - sel
        top = None
        if top_gradient:  # AEPO-EB's stop-gradient high clip: (1 + eps_high)(-A) on top-clipped tokens
            top = sel * positive(ratio - high)
        lower = None
        if dual_clip is not None:
            # floor -A c binds only for A < 0; |A| c is that floor there and >= 0 >= l for A >= 0 (never binds)
            floor = a.abs() * dual_clip
            lower = positive(per_token - floor)
            per_token = torch.minimum(per_token, floor)
            keep = keep * (1.0 - lower)
            # top needs no (1 - lower) factor: dual-clip binds only for A < 0, the top clip only for A > 0
        # the clamp zeroes the gradient beyond +-20 (log_ratio == raw inside, so |raw - log_ratio| = 0 there)
        inside = 1.0 - torch.sign((raw - log_ratio).abs_())
        coef = unclipped * keep
        if top is not None:
            coef = coef + (neg_a * high) * top
        coef = coef * inside
        # saved (so autograd frees it after backward) and also returned: adjust_tokens and finish_loss may edit a few
        # entries through ``coef.data`` before the backward reads it, which leaves the saved version check intact
        ctx.save_for_backward(coef)
        ctx.mark_non_differentiable(log_ratio, ratio, sel, coef)
        return per_token, log_ratio, ratio, sel, lower, top, coef

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        (coef,) = ctx.saved_tensors
        return grad * coef, None, None, None, None, None, None, None, None


class _FusedSurrogate(torch.autograd.Function):
    """Per-token losses computed by a fused native kernel together with their gradient coefficient."""

    @staticmethod
    def forward(ctx: Any, logp: Tensor, run: Any) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        loss, coef = run()
        ctx.save_for_backward(coef)  # as in _PPOSurrogate: finish_loss may scale it through ``coef.data``
        ctx.mark_non_differentiable(coef)
        return loss, coef

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Any) -> tuple[Tensor, None]:
        (coef,) = ctx.saved_tensors
        return grad * coef, None


def fused_surrogate(logp: Tensor, run: Any) -> tuple[Tensor, Tensor]:
    """Per-token losses ``(B, T)`` from ``run() -> (loss, coef)``, a kernel that also wrote ``coef = d loss / d logp``;
    the gradient reaches ``logp`` as ``grad * coef`` (HAPO's and AEPO-EB's fused surrogates, ``_native/losses.c``).
    Returns the losses and the coefficient the backward will read (for :func:`finish_loss`'s in-place weights)."""
    if not callable(run):
        raise TypeError(f"run must be a callable returning (loss, coef), got {describe(run)}")
    return _FusedSurrogate.apply(logp, run)  # type: ignore[no-any-return]


def ppo_core(
    logp: Tensor,
    old_logp: Tensor,
    a: Tensor,
    mf: Tensor,
    *,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    dual_clip: float | None,
    top_gradient: bool = False,
    bounds: bool = False,
) -> tuple[Tensor, PPOTerms]:
    """Per-token PPO losses ``(B, T)``, exactly 0 at masked positions, and the detached terms behind them.

    ``a`` must already be 0 at masked positions and ``mf`` is the float mask.  ``eps_low``/``eps_high`` may be
    per-token tensors (HAPO); with ``bounds=True`` they are the clip bounds ``1 - eps_low`` and ``1 + eps_high``
    themselves (HAPO's kernel writes those directly).  The gradient flows to ``logp`` only (``old_logp`` and ``a``
    are constants of the surrogate); it is the analytic ``-A r`` on the unclipped branch and 0 elsewhere, in one
    multiply, which ``tests/test_losses_fastpath_on_cpu.py`` checks against plain autograd in float64.
    """
    per_token, log_ratio, ratio, sel, lower, top, coef = _PPOSurrogate.apply(
        logp, old_logp.detach(), a.detach(), mf, eps_low, eps_high, dual_clip, top_gradient, bounds
    )
    return per_token, PPOTerms(log_ratio, ratio, sel, lower, top, coef)


def adjust_tokens(
    per_token: Tensor,
    terms: PPOTerms,
    index: Tensor,
    *,
    zero: bool = False,
    add_value: Tensor | None = None,
    add_grad: Tensor | None = None,
) -> None:
    """Edit a few tokens of a :func:`ppo_core` result in place, value and gradient together, without a new ``(B, T)``
    tensor or autograd node: ``zero=True`` sets their loss and gradient to 0 (Clip-Cov's detached tokens); else
    ``add_value`` is added to their loss and ``add_grad`` (its derivative in ``logp``) to their gradient (KL-Cov's
    penalty).  ``index`` holds flat token indices ``(k,)``; ``per_token`` must be the unmodified output of the same
    :func:`ppo_core` call (contiguous, and read by nothing else yet).
    """
    coef = terms.coef
    if coef is None:
        raise ValueError("terms must come from ppo_core (it carries the gradient coefficient)")
    if not isinstance(index, Tensor) or index.ndim != 1 or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be a 1-D int64 tensor of flat token indices, got {describe(index)}")
    if index.numel() and not (int(index.min()) >= 0 and int(index.max()) < per_token.numel()):
        raise ValueError(f"index must hold flat indices in [0, {per_token.numel()}), got {index.tolist()[:8]}...")
    if zero == (add_value is not None or add_grad is not None):
        raise ValueError("pass either zero=True or add_value/add_grad, not both or neither")
    for name, t in (("add_value", add_value), ("add_grad", add_grad)):
        if t is not None and (not isinstance(t, Tensor) or t.shape != index.shape):
            raise ValueError(f"{name} must be a tensor of index's shape {tuple(index.shape)}, got {describe(t)}")
    with torch.no_grad():
        flat, grad = per_token.view(-1), coef.data.view(-1)  # .data: the saved coefficient's version stays as saved
        if zero:
            flat.index_fill_(0, index, 0.0)
            grad.index_fill_(0, index, 0.0)
        else:
            if add_value is not None:
                flat.index_add_(0, index, add_value.to(flat.dtype))
            if add_grad is not None:
                grad.index_add_(0, index, add_grad.to(grad.dtype))


def ppo_metrics(m: Tensor, mf: Tensor, terms: PPOTerms) -> dict[str, Tensor]:
    """``clipfrac``, ``approx_kl``, ``ratio_mean`` (and ``clipfrac_lower`` with dual-clip, ``clipfrac_high`` with the
    stop-gradient high clip) in one stacked reduction."""
    values = [terms.clipped, terms.log_ratio, terms.ratio]
    extra = [(name, t) for name, t in (("clipfrac_lower", terms.lower), ("clipfrac_high", terms.top)) if t is not None]
    means = zero_masked_means(m, *values, *(t for _, t in extra))
    metrics = {"clipfrac": means[0], "approx_kl": -means[1], "ratio_mean": means[2]}
    metrics.update((name, mean) for (name, _), mean in zip(extra, means[3:], strict=True))
    return metrics


def ppo_token_losses(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    m: Tensor,
    *,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    dual_clip: float | None,
) -> tuple[Tensor, dict[str, Tensor], PPOTerms]:
    """Per-token PPO losses ``(B, T)`` (0 at masked positions), their clip metrics and the surrogate's terms; inputs
    already checked.

    ``eps_low`` and ``eps_high`` may be per-token tensors ``(B, T)`` (HAPO's adaptive clip)."""
    mf = m.to(logp.dtype)
    per_token, terms = ppo_core(
        logp, old_logp, zero_masked(adv, mf), mf, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip
    )
    return per_token, ppo_metrics(m, mf, terms), terms


@register_policy_loss("ppo")
def ppo(
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
    entropy : Tensor, optional
        Token entropies; only reported (``metrics["entropy"]``).
    agg : str or Aggregation
        Aggregation mode and optional global normalisers.
    generator : torch.Generator, optional
        Unused (PPO is deterministic); part of the uniform signature.
    token_weights : Tensor, optional
        Per-token multipliers ``(B, T)`` of the per-token losses (bool or float); the denominators keep the counts of
        ``mask``.  :func:`~entrolab.losses.high_entropy_tokens` applies the 80/20 mask through it.
    eps_low, eps_high : float
        Clip range ``[1 - eps_low, 1 + eps_high]``; DAPO's clip-higher is ``eps_high = 0.28``.
    dual_clip : float, optional
        The dual-clip constant ``c > 1`` (off by default; verl uses 3.0).

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
    The gradient is zero on the clipped branch (``A > 0, r > 1 + eps_high`` or ``A < 0, r < 1 - eps_low``) and under
    active dual-clip; elsewhere ``dl/dlogp = -A r``.

    References
    ----------
    Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347, eq. (7); dual-clip: Ye et al.,
    arXiv 1912.09729, eq. (5); clip-higher: "DAPO", arXiv 2503.14476, eq. (10).

    Examples
    --------
    >>> import math, torch
    >>> lp = torch.tensor([[math.log(1.25)]]); old = torch.zeros(1, 1); m = torch.ones(1, 1, dtype=torch.bool)
    >>> round(float(ppo(lp, old, torch.tensor([1.0]), m).loss), 6)  # clipped at 1.2
    -1.2
    >>> round(float(ppo(lp, old, torch.tensor([1.0]), m, eps_high=0.28).loss), 6)  # clip-higher lets it through
    -1.25
    """
    m, adv = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    eps_low, eps_high, dual_clip = check_clip(eps_low, eps_high, dual_clip)
    per_token, metrics, terms = ppo_token_losses(
        logp, old_logp, adv, m, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip
    )
    weights = check_token_weights(token_weights, m)
    return finish_loss(per_token, m, agg, metrics, entropy, weights, coef=terms.coef)
