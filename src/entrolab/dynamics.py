"""Entropy dynamics diagnostics: the covariance that drives entropy collapse, STEER's per-token Omega, and the
entropy-performance law ``R = -a exp(H) + b``.

These read a training batch and say where entropy is going; none of them changes a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._validation import check_number, describe
from entrolab.batch_stats import centred_products, masked_mean, masked_quantile, steer_omega_values
from entrolab.losses._common import check_policy_inputs

__all__ = [
    "EntropyDynamics",
    "EntropyLawFit",
    "dynamics_metrics",
    "entropy_dynamics",
    "fit_entropy_law",
    "softmax_entropy_change",
    "steer_omega",
]


class EntropyDynamics(NamedTuple):
    """What :func:`entropy_dynamics` returns; every field is a detached tensor."""

    covariance: Tensor
    """``(B, T)`` per-token centred products ``(A - mean A)(logp - mean logp)``, 0 at masked positions."""
    cov_mean: Tensor
    """0-d: the batch covariance Cov(log pi, A) (mean of ``covariance`` over valid tokens)."""
    cov_std: Tensor
    """0-d: the standard deviation of the per-token products (population)."""
    cov_max: Tensor
    cov_min: Tensor
    cov_positive_frac: Tensor
    """0-d: fraction of valid tokens with a positive product (they push entropy down)."""
    predicted_entropy_change: Tensor
    """0-d: ``-step_size * cov_mean``, the first-order natural-gradient prediction of the change in mean entropy."""
    entropy: Tensor | None
    """0-d mean entropy over valid tokens when ``entropy`` was given, else ``None``."""


def entropy_dynamics(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    step_size: float = 1.0,
    global_stats: bool = False,
    process_group: Any = None,
) -> EntropyDynamics:
    r"""Token covariance ``Cov(log pi, A)`` statistics and the first-order predicted entropy change.

    For a softmax policy updated by natural policy gradient (logits move by ``step_size * A``), the entropy changes
    by ``dH ~ -step_size * Cov(log pi(a), A(a))`` to first order.  The per-token estimator pools the valid tokens of
    the batch: ``Cov_t = (A_t - mean A)(logp_t - mean logp)``; its mean is the batch covariance.  A persistently
    positive value is entropy collapse in the making.

    Parameters
    ----------
    logp : Tensor
        Log-probabilities of the sampled tokens ``(B, T)``.
    advantages : Tensor
        ``(B,)`` or ``(B, T)``.
    mask : Tensor
        Valid tokens.
    entropy : Tensor, optional
        Token entropies ``(B, T)``; only their mean is reported.
    step_size : float
        The ``eta`` of the prediction (the learning rate of a natural-gradient step in logit space).
    global_stats, process_group
        Centre over the whole data-parallel batch through ``torch.distributed``.

    Returns
    -------
    EntropyDynamics

    References
    ----------
    Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617,
    Lemma 1 and Theorem 2 (natural policy gradient), eq. (11) for the estimator; ``shared/specs/llm_rl.md`` 7.2-7.3.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[-0.1, -2.0, -0.5, -3.0]]); adv = torch.tensor([[1.0, 1, -1, -1]])
    >>> d = entropy_dynamics(lp, adv, torch.ones(1, 4), step_size=0.01)
    >>> round(float(d.cov_mean), 4), round(float(d.predicted_entropy_change), 6)
    (0.35, -0.0035)
    """
    x = check_policy_inputs(logp, logp, advantages, mask, entropy)
    m = x.m
    step_size = check_number("step_size", step_size, low=0.0)
    group = _dist.resolve_group(global_stats, process_group)
    cov = centred_products(x.logp, x.adv, m, group=group)
    n = _dist.all_sum(m.sum().to(torch.float64), group).clamp_min(1)
    s1 = _dist.all_sum(cov.sum().to(torch.float64), group)
    s2 = _dist.all_sum((cov.to(torch.float64) ** 2).sum(), group)
    pos = _dist.all_sum((cov > 0).sum().to(torch.float64), group)
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    big = torch.where(m, cov, float("-inf")).max() if cov.numel() else cov.new_tensor(float("-inf"))
    small = torch.where(m, cov, float("inf")).min() if cov.numel() else cov.new_tensor(float("inf"))
    big, small = _dist.all_max(big, group), _dist.all_min(small, group)
    empty = _dist.all_sum(m.sum(), group) == 0
    big = torch.where(empty, 0.0, big)
    small = torch.where(empty, 0.0, small)
    f32 = torch.float32
    return EntropyDynamics(
        covariance=cov,
        cov_mean=mean.to(f32),
        cov_std=std.to(f32),
        cov_max=big.detach().to(f32),
        cov_min=small.detach().to(f32),
        cov_positive_frac=(pos / n).to(f32),
        predicted_entropy_change=(-step_size * mean).to(f32),
        entropy=masked_mean(x.entropy, m) if x.entropy is not None else None,
    )


def dynamics_metrics(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    global_stats: bool = False,
    process_group: Any = None,
) -> dict[str, Tensor]:
    r"""The entropy diagnostics the lab and the engine plug-ins log per step, as detached 0-d float32 tensors (no
    host sync): ``cov_mean``, ``cov_std``, ``cov_positive_frac`` and ``predicted_entropy_change`` (step size 1) of
    :func:`entropy_dynamics`, and with ``entropy`` its mean ``entropy`` and percentiles ``entropy_p10``,
    ``entropy_p50``, ``entropy_p90`` over the valid tokens (linear interpolation, as ``numpy.percentile``).

    ``logp`` are the sampling policy's log-probs of the sampled tokens (the covariance of Cui et al., arXiv
    2505.22617, Theorem 2, is taken under the policy that sampled).  Shapes: ``logp``, ``mask``, ``entropy``
    ``(B, T)``; ``advantages`` ``(B,)`` or ``(B, T)``.  With ``global_stats`` the covariance is centred over the
    data-parallel batch; the percentiles stay per process.
    """
    dyn = entropy_dynamics(
        logp.detach(), advantages.detach(), mask, entropy=None if entropy is None else entropy.detach(),
        global_stats=global_stats, process_group=process_group,
    )  # fmt: skip
    out = {
        "cov_mean": dyn.cov_mean,
        "cov_std": dyn.cov_std,
        "cov_positive_frac": dyn.cov_positive_frac,
        "predicted_entropy_change": dyn.predicted_entropy_change,
    }
    if entropy is not None:
        m = mask.bool()
        ent = entropy.detach()
        out["entropy"] = masked_mean(ent, m).to(torch.float32)
        for q in (10, 50, 90):
            out[f"entropy_p{q}"] = masked_quantile(ent, m, q / 100).to(torch.float32)
    return out


def softmax_entropy_change(logits: Tensor, delta_logits: Tensor, *, dim: int = -1) -> Tensor:
    r"""Exact first-order change of a softmax's entropy for a logit change: ``-Cov_{a~pi}(log pi_a, dz_a)``.

    ``dH/dz_a = -pi_a (log pi_a + H)``, so ``dH = -sum_a pi_a (log pi_a + H) dz_a = -Cov_pi(log pi, dz)``.

    Parameters
    ----------
    logits, delta_logits : Tensor
        Same shape ``(..., V)``.
    dim : int
        The vocabulary axis.

    Returns
    -------
    Tensor
        ``(...)``: the predicted ``dH`` in nats.

    References
    ----------
    Cui et al., arXiv 2505.22617, Lemma 1; ``shared/specs/llm_rl.md`` section 7.2.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([2.0, 1, 0, -1], dtype=torch.float64)
    >>> a = torch.tensor([1, -0.5, 0.5, -1], dtype=torch.float64)
    >>> round(float(softmax_entropy_change(z, 1e-3 * a)) / 1e-3, 5)  # natural policy gradient, dz = eta A
    -0.39991
    """
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating tensor, got {describe(logits)}")
    if not isinstance(delta_logits, Tensor) or delta_logits.shape != logits.shape:
        raise ValueError(f"delta_logits must be a tensor of shape {tuple(logits.shape)}, got {describe(delta_logits)}")
    if bool(torch.isnan(logits).any()) or bool((logits == float("inf")).any()):
        raise ValueError("logits must not contain NaN or +inf (-inf marks an impossible action)")
    if not bool(torch.isfinite(delta_logits).all()):
        raise ValueError("delta_logits must be finite")
    logp = torch.log_softmax(logits, dim=dim)
    p = logp.exp()
    safe = torch.where(p > 0, logp, 0.0)  # -inf logits: p = 0 contributes nothing
    h = -(p * safe).sum(dim, keepdim=True)
    return -(p * (safe + h) * delta_logits).sum(dim)


def steer_omega(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor,
) -> Tensor:
    r"""STEER's per-token first-order entropy contribution ``Omega`` (detached, 0 at masked positions).

    With ``x = clamp(exp(logp), 1e-8, 1 - 1e-8)``::

        Omega_t = A_t / clamp(exp(old_logp_t), 1e-8, 1) * x (1 - x) * (ln x + H_t)

    and non-finite values set to 0.  ``Omega > 0``: the update lowers entropy (a more-probable-than-typical token
    being reinforced).  ``entropy`` is the old policy's token entropy, recorded with the old log-probs.

    Shapes
    ------
    logp, old_logp, mask, entropy ``(B, T)``; advantages ``(B,)`` or ``(B, T)``.  Returns ``(B, T)``.

    References
    ----------
    Hao et al., "Rethinking Entropy Interventions in RLVR", arXiv 2510.10150, section 4 (the closed form is the
    authors' ``compute_token_weights``); ``shared/specs/llm_rl.md`` section 12.

    Examples
    --------
    >>> import torch
    >>> lp = torch.tensor([[0.5, 0.9, 0.1]]).log(); h = torch.tensor([[1.0, 0.5, 2.0]])
    >>> omega = steer_omega(lp, lp, torch.tensor([[1.0, 1, -1]]), torch.ones(1, 3), entropy=h)
    >>> [round(v, 4) for v in omega[0].tolist()]
    [0.1534, 0.0395, 0.2723]
    """
    if entropy is None:
        raise ValueError("steer_omega needs entropy= (the old policy's token entropies, (B, T))")
    x = check_policy_inputs(logp, old_logp, advantages, mask, entropy)
    assert x.entropy is not None
    return steer_omega_values(x.logp, x.old_logp, x.adv, x.m, x.entropy)


class EntropyLawFit(NamedTuple):
    """Least-squares fit of ``R = -a exp(H) + b`` (what :func:`fit_entropy_law` returns)."""

    a: float
    b: float
    ceiling: float
    """``b - a``: the predicted performance when entropy is exhausted (``H = 0``)."""
    rmse: float
    """Root-mean-square residual of the fit on the points it was fitted to."""
    predict: Callable[[Any], Any]
    """``predict(H)`` gives ``-a exp(H) + b`` for a float, array or tensor."""


def fit_entropy_law(entropy: Any, reward: Any) -> EntropyLawFit:
    r"""Fit the entropy-performance law ``R = -a exp(H) + b`` by ordinary least squares (closed form).

    It is linear regression of ``R`` on ``x = exp(H)``: slope ``-a``, intercept ``b``.

    Parameters
    ----------
    entropy, reward : sequence of float, array or tensor
        Paired observations ``(H_i, R_i)``, at least two, with at least two distinct entropies; all finite.

    Returns
    -------
    EntropyLawFit
        ``a``, ``b``, the ceiling ``b - a``, the residual RMSE and a prediction function.

    References
    ----------
    Cui et al., arXiv 2505.22617, eq. (1) (the paper fits on about the first 36 steps and predicts the rest);
    ``shared/specs/llm_rl.md`` section 7.1.

    Examples
    --------
    >>> fit = fit_entropy_law([1.0, 0.5, 0.1], [0.0845, 0.4054, 0.5684])
    >>> round(fit.a, 3), round(fit.b, 3), round(fit.ceiling, 3)
    (0.3, 0.9, 0.6)
    """
    h = torch.as_tensor(entropy, dtype=torch.float64).detach().cpu().reshape(-1)
    r = torch.as_tensor(reward, dtype=torch.float64).detach().cpu().reshape(-1)
    if h.numel() != r.numel():
        raise ValueError(f"entropy and reward must pair up, got {h.numel()} and {r.numel()} values")
    if h.numel() < 2:
        raise ValueError(f"fit_entropy_law needs at least 2 points, got {h.numel()}")
    if not bool(torch.isfinite(h).all() and torch.isfinite(r).all()):
        raise ValueError("entropy and reward must be finite")
    if bool(h.max() > 700):
        raise ValueError(f"entropy values up to {float(h.max())} overflow exp(H); entropies are in nats")
    x = h.exp()
    xm, rm = x.mean(), r.mean()
    sxx = ((x - xm) ** 2).sum()
    if not float(sxx) > 0:
        raise ValueError("fit_entropy_law needs at least two distinct entropy values")
    slope = float(((x - xm) * (r - rm)).sum() / sxx)
    b = float(rm - slope * xm)
    a = -slope
    rmse = float(((r - (b + slope * x)) ** 2).mean().sqrt())

    def predict(h_new: Any) -> Any:
        if isinstance(h_new, Tensor):
            return b - a * torch.exp(h_new)
        try:
            import numpy as np

            return b - a * np.exp(h_new)
        except TypeError:  # pragma: no cover - exotic input
            return b - a * math.exp(h_new)

    return EntropyLawFit(a=a, b=b, ceiling=b - a, rmse=rmse, predict=predict)
