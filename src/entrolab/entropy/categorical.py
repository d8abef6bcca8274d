"""Plain entropy and varentropy of categorical distributions, for any dimension and unit.

These are the general-purpose estimators (decoding regimes, diagnostics, attention maps), differentiable by
ordinary autograd.  For per-token log-probs and entropies of LM logits in training, use
:func:`entrolab.entropy.token_logprob_and_entropy`, which is faster and leaner.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from entrolab._validation import check_floating, describe

__all__ = ["entropy", "varentropy"]


def _log_probs(logits: Tensor | None, probs: Tensor | None, dim: int, *, atol: float) -> tuple[Tensor, Tensor]:
    """(p, log p with 0 where p == 0), validated, in float32 or float64."""
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits and probs")
    name = "logits" if logits is not None else "probs"
    x = check_floating(name, logits if logits is not None else probs, min_ndim=1)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -x.ndim <= dim < x.ndim:
        raise ValueError(
            f"dim must be an int in [{-x.ndim}, {x.ndim}) for {name} of shape {tuple(x.shape)}, got {dim!r}"
        )
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must have at least one category along dim {dim}, got shape {tuple(x.shape)}")
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if logits is not None:
        if bool(torch.isnan(x).any()) or bool(torch.isposinf(x).any()):
            raise ValueError("logits must not contain NaN or +inf")
        if bool(torch.isneginf(x).all(dim).any()):
            raise ValueError(f"logits has a distribution that is entirely -inf along dim {dim}")
        logp = torch.log_softmax(x, dim)
        p = logp.exp()
        return p, torch.where(p > 0, logp, 0.0)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("probs must be finite")
    if bool((x < 0).any()):
        raise ValueError(f"probs must be >= 0, got a minimum of {float(x.min())}")
    total = x.detach().sum(dim)
    worst = float((total - 1).abs().max())
    if worst > atol:
        raise ValueError(f"probs must sum to 1 along dim {dim} (within {atol}); the worst sum is off by {worst:.3g}")
    safe = torch.where(x > 0, x, 1.0)  # log(1) = 0 at p = 0: zero value and zero gradient there
    return x, torch.where(x > 0, safe.log(), 0.0)


def _unit(base: float | None) -> float:
    if base is None:
        return 1.0
    if (
        isinstance(base, bool)
        or not isinstance(base, numbers.Real)
        or not math.isfinite(base)
        or base <= 0
        or base == 1
    ):
        raise ValueError(f"base must be a finite number > 0 and != 1 (or None for nats), got {describe(base)}")
    return math.log(base)


def entropy(
    logits: Tensor | None = None,
    *,
    probs: Tensor | None = None,
    dim: int = -1,
    base: float | None = None,
    atol: float = 1e-5,
) -> Tensor:
    r"""Shannon entropy ``H = -sum_k p_k log p_k`` of categorical distributions.

    Parameters
    ----------
    logits : Tensor, optional
        Unnormalised log-probabilities (``softmax`` is taken along ``dim``); ``-inf`` entries are allowed.
    probs : Tensor, optional
        Probabilities (non-negative, summing to 1 along ``dim`` within ``atol``).  Give exactly one of the two.
    dim : int
        The category dimension.
    base : float, optional
        Logarithm base of the unit: ``None`` for nats, ``2`` for bits.
    atol : float
        Tolerance on the sum of ``probs``.

    Returns
    -------
    Tensor
        The entropy, float32 (float64 for float64 input), with ``dim`` removed.

    Shapes
    ------
    ``(..., K, ...)`` -> ``(..., ...)``.

    Notes
    -----
    Zero-probability categories contribute exactly 0 (``0 log 0 = 0``) with zero gradient.  Differentiable by
    autograd through ``logits`` or ``probs``.

    References
    ----------
    C. E. Shannon, "A Mathematical Theory of Communication", 1948, eq. (4); the ``base`` argument follows
    ``scipy.stats.entropy``.

    Examples
    --------
    >>> import math, torch
    >>> h = entropy(torch.zeros(5))  # uniform over 5: log 5
    >>> abs(float(h) - math.log(5)) < 1e-6
    True
    >>> float(entropy(probs=torch.tensor([0.0, 1.0, 0.0])))  # one-hot: 0
    0.0
    >>> float(entropy(probs=torch.tensor([0.5, 0.25, 0.25]), base=2))  # 1.5 bits
    1.5
    """
    unit = _unit(base)
    p, logp = _log_probs(logits, probs, dim, atol=atol)
    h = (-(p * logp).sum(dim)).clamp_min(0.0) + 0.0  # rounding can give -1e-8 or -0.0; H >= 0
    return h / unit if unit != 1.0 else h


def varentropy(
    logits: Tensor | None = None,
    *,
    probs: Tensor | None = None,
    dim: int = -1,
    base: float | None = None,
    atol: float = 1e-5,
) -> Tensor:
    r"""Varentropy: the variance of the surprisal, ``sum_k p_k (log p_k + H)^2``.

    Parameters and shapes as :func:`entropy`; ``base`` scales the result by ``1 / log(base)^2`` (squared units).

    Returns
    -------
    Tensor
        The varentropy (>= 0), float32 (float64 for float64 input), with ``dim`` removed.

    Notes
    -----
    Zero for uniform and for one-hot distributions.  entropix uses it with the entropy to choose a decoding
    regime (``shared/specs/decoding.md`` section 5).

    References
    ----------
    I. Kontoyiannis and S. Verdu, "Optimal lossless data compression: non-asymptotics and asymptotics", IEEE
    Trans. Inf. Theory 60(2), 2014 (varentropy as the second-order term).

    Examples
    --------
    >>> import math, torch
    >>> round(float(varentropy(torch.zeros(7))), 9)  # uniform: every surprisal equals log 7
    0.0
    >>> p = torch.tensor([0.5, 0.5, 0.0, 0.0])
    >>> float(varentropy(probs=p))
    0.0
    >>> q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)  # surprisals (bits) 1, 2, 2; mean 1.5
    >>> round(float(varentropy(probs=q, base=2)), 12)  # 0.5*0.25 + 0.5*0.25
    0.25
    """
    unit = _unit(base)
    p, logp = _log_probs(logits, probs, dim, atol=atol)
    h = -(p * logp).sum(dim, keepdim=True)
    v = (p * (logp + h) ** 2).sum(dim)
    return v / unit**2 if unit != 1.0 else v
