"""Entropy-driven selection: KECOR's greedy kernel-coding-rate batch selection, and ADS's maximum-entropy
measurement under posterior particles.

``kecor_select`` picks a batch ``S`` maximising ``0.5 logdet(I + K_L[S, S] / sigma^2)`` over a pool, with ``K_L``
the kernel conditioned on the already labelled set (``posterior_kernel``); the objective is monotone submodular and
the greedy is a pivoted Cholesky on the posterior kernel: each pick has the largest residual variance, plus an
optional per-sample entropy bonus on the diagonal.  ``ntk_features`` gives the (randomly projected) per-sample
gradient features of a small proxy network whose inner products are the empirical neural-tangent kernel KECOR uses.

References
----------
Luo et al., "KECOR: Kernel Coding Rate Maximization for Active 3D Object Detection", arXiv 2307.07942;
``shared/specs/beyond_llm.md`` section 2.  A full active-learning stack with these kernels is ``bmdal-reg``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from entrolab._validation import describe

__all__ = ["kecor_select", "max_entropy_measurement", "ntk_features", "posterior_kernel"]


def _kernel(name: str, k: object, n: int | None = None) -> Tensor:
    if not isinstance(k, Tensor) or not k.dtype.is_floating_point or k.ndim != 2:
        raise TypeError(f"{name} must be a 2-D floating tensor, got {describe(k)}")
    if n is not None and k.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"{name} must be finite")
    return k


def posterior_kernel(kernel: Tensor, labelled: Tensor, *, sigma: float = 0.1) -> Tensor:
    r"""``K_L = K_PP - K_PL (K_LL + sigma^2 I)^{-1} K_LP``: the kernel of the pool ``P`` (every index not in
    ``labelled``) conditioned on the labelled points (a Gaussian-process posterior covariance).

    ``kernel`` ``(n, n)`` over pool and labelled points; ``labelled`` int64 indices.  Returns the pool's ``(p, p)``
    block, in the order of the remaining indices.
    """
    k = _kernel("kernel", kernel)
    n = k.shape[0]
    if k.shape != (n, n) or not bool(torch.allclose(k, k.T, atol=1e-8 * float(k.abs().max().clamp_min(1.0)))):
        raise ValueError(f"kernel must be square and symmetric, got shape {tuple(k.shape)}")
    if not isinstance(labelled, Tensor) or labelled.dtype != torch.long or labelled.ndim != 1:
        raise TypeError(f"labelled must be a 1-D int64 tensor of indices, got {describe(labelled)}")
    if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= n):
        raise ValueError(f"labelled indices must be in [0, {n})")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    pool = torch.ones(n, dtype=torch.bool)
    pool[labelled] = False
    kpp = k[pool][:, pool]
    if labelled.numel() == 0:
        return kpp
    kpl = k[pool][:, labelled]
    kll = k[labelled][:, labelled] + sigma**2 * torch.eye(labelled.numel(), dtype=k.dtype)
    return kpp - kpl @ torch.linalg.solve(kll, kpl.T)


def kecor_select(
    kernel: Tensor,
    budget: int,
    *,
    sigma: float = 0.1,
    noise: float = 0.0,
    entropy: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> tuple[Tensor, Tensor]:
    r"""Greedy selection of ``budget`` pool points maximising ``0.5 logdet(I + K[S, S] / sigma^2)``.

    The exact greedy as a pivoted Cholesky of ``A = I + (K + noise I) / sigma^2``: pick the largest residual
    diagonal ``d`` of ``A`` (plus ``entropy_weight * entropy / sigma^2``; ties to the lowest index), whose gain in the
    objective is ``0.5 ln d``; stop early when no residual variance is left.  Departure: KECOR's code pivots on the
    residuals of ``K`` itself (noise-free), which can order near-ties differently; both pick the spec's worked
    example alike.

    Parameters
    ----------
    kernel : Tensor
        ``(n, n)`` symmetric PSD pool kernel (already conditioned on the labelled set, :func:`posterior_kernel`).
    budget : int
        ``b >= 1``.
    sigma : float
        ``> 0``: the coding-rate distortion (KECOR's ``maxdet_sigma`` 0.1).
    noise : float
        ``sigma_n^2 >= 0`` added to the diagonal.
    entropy : Tensor, optional
        ``(n,)`` per-sample entropies (KECOR's class-proportion entropy) weighted by ``entropy_weight``
        (``ENT_SIGMA``: 0.1 on KITTI).

    Returns
    -------
    (Tensor, Tensor)
        Selected indices ``(k,)`` in pick order (``k <= budget``) and each pick's gain in ``0.5 logdet(I + K_SS /
        sigma^2)`` (with ``noise = 0`` they sum to the objective of the selected set).

    Examples
    --------
    >>> import torch
    >>> k = torch.tensor([[1, 0.9, 0.1], [0.9, 1, 0.1], [0.1, 0.1, 0.5]], dtype=torch.float64)
    >>> kecor_select(k, 2)[0].tolist()  # index 2 second, although its prior variance is the smallest
    [0, 2]
    """
    k = _kernel("kernel", kernel).to(torch.float64)
    n = k.shape[0]
    if k.shape != (n, n):
        raise ValueError(f"kernel must be square, got shape {tuple(k.shape)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")
    for name, v in (("sigma", sigma), ("noise", noise), ("entropy_weight", entropy_weight)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    a = k / sigma**2 + torch.eye(n, dtype=torch.float64) * (1 + noise / sigma**2)  # I + (K + noise I) / sigma^2
    d = a.diagonal().clone()
    bonus = torch.zeros(n, dtype=torch.float64)
    if entropy is not None:
        if not isinstance(entropy, Tensor) or entropy.shape != (n,) or not bool(torch.isfinite(entropy).all()):
            raise ValueError(f"entropy must be a finite ({n},) tensor, got {describe(entropy)}")
        bonus = entropy_weight * entropy.to(torch.float64) / sigma**2
    chosen: list[int] = []
    gains: list[float] = []
    cols = torch.zeros(n, 0, dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    for _ in range(min(budget, n)):
        i = int(torch.where(taken, -math.inf, d + bonus).argmax())
        if not d[i] > 1 + 1e-12:  # no residual variance left: a pick would add nothing
            break
        c = (a[:, i] - cols @ cols[i]) / math.sqrt(float(d[i]))
        gains.append(0.5 * math.log(float(d[i])))
        d = d - c**2
        cols = torch.cat([cols, c.unsqueeze(1)], 1)
        taken[i] = True
        chosen.append(i)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(gains, dtype=torch.float64)


def ntk_features(
    model: nn.Module, inputs: Tensor, *, projection_dim: int | None = 512, generator: torch.Generator | None = None
) -> Tensor:
    r"""Per-sample gradients of the summed outputs of ``model`` with respect to its parameters, ``(n, p)``; their
    Gram matrix is the empirical neural-tangent kernel.  With ``projection_dim`` the gradients are multiplied by a
    fixed Gaussian matrix scaled by ``1 / sqrt(projection_dim)`` (a sketch that preserves inner products in
    expectation; KECOR projects to 512).

    ``inputs`` ``(n, ...)``; one sample at a time through :func:`torch.func.vmap`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not isinstance(inputs, Tensor) or inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty (n, ...) tensor, got {describe(inputs)}")
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def out_sum(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).sum()

    grads = vmap(grad(out_sum), in_dims=(None, 0))(params, inputs)
    g = torch.cat([grads[k].reshape(inputs.shape[0], -1) for k in params], 1)
    if projection_dim is None or projection_dim >= g.shape[1]:
        return g
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
        raise ValueError(f"projection_dim must be an int >= 1 or None, got {projection_dim!r}")
    r = torch.randn(g.shape[1], projection_dim, generator=generator, dtype=g.dtype) / math.sqrt(projection_dim)
    return g @ r


def max_entropy_measurement(
    particles: Tensor,
    measured: Tensor,
    *,
    sigma: float,
    pairwise: str = "kl",
    exponent_sign: int = -1,
) -> tuple[int, Tensor]:
    r"""ADS: the unmeasured location where the particles' predictions disagree most.

    Scores every location ``l`` with :func:`entrolab.estimators.particle_entropy` of the ``N`` particles'
    predictions there (``exponent_sign=-1``, the paper's maximum-entropy criterion), or with the authors' code score
    ``sum_i ln sum_j exp(+|y_i - y_j|^2 / (2 sigma^2))`` (``exponent_sign=+1``: dominated by the largest pairwise
    distance; computed with log-sum-exp, which does not change its argmax).  Measured locations score ``-inf``
    (never picked, even when every other score is negative: the code multiplies by ``1 - mask``, which only works
    for positive scores).

    Parameters
    ----------
    particles : Tensor
        ``(N, L)`` or ``(N, L, D)`` predictions of ``N`` posterior particles at ``L`` locations.
    measured : Tensor
        ``(L,)`` bool: already measured.

    Returns
    -------
    (int, Tensor)
        The chosen location and the ``(L,)`` scores.

    References
    ----------
    Nolan et al., "Active Diffusion Subsampling", arXiv 2406.14388; ``shared/specs/beyond_llm.md`` section 10.

    Examples
    --------
    >>> import torch
    >>> a = torch.cat([torch.zeros(8), torch.full((8,), 30.0)])  # two far modes
    >>> b = torch.linspace(0, 12, 16)  # many moderately separated predictions
    >>> y = torch.stack([a, b], 1).double()
    >>> max_entropy_measurement(y, torch.zeros(2, dtype=torch.bool), sigma=1.0)[0]
    1
    >>> max_entropy_measurement(y, torch.zeros(2, dtype=torch.bool), sigma=1.0, exponent_sign=1)[0]
    0
    """
    from entrolab.estimators import particle_entropy

    if exponent_sign not in (-1, 1):
        raise ValueError(f"exponent_sign must be -1 (the paper) or +1 (the authors' code), got {exponent_sign!r}")
    scores = particle_entropy(particles, sigma, pairwise=pairwise)  # validates particles, sigma, pairwise
    if exponent_sign == 1:
        y = particles if particles.ndim == 3 else particles.unsqueeze(-1)
        yl = y.transpose(0, 1)
        sq = torch.cdist(yl, yl).pow(2)
        scores = torch.logsumexp(sq / (2 * sigma**2), dim=-1).sum(-1)
    if not isinstance(measured, Tensor) or measured.dtype != torch.bool or measured.shape != scores.shape:
        raise ValueError(f"measured must be a bool tensor of shape {tuple(scores.shape)}, got {describe(measured)}")
    if bool(measured.all()):
        raise ValueError("every location is already measured")
    scores = torch.where(measured, -math.inf, scores)
    return int(scores.argmax()), scores
