"""Entropy estimators beyond token distributions: samples, spectra, kernels, clusters, particles and attention.

All return nats.  Each validates its input at the boundary and says what it needs (sample sizes, ranges) and how it
is biased.

- :func:`knn_entropy`: Kozachenko-Leonenko differential entropy of samples ``(n, d)``.
- :func:`von_neumann_entropy`: of a covariance or density matrix, normalised to unit trace.
- :func:`coding_rate`: ``0.5 logdet(I + K / sigma^2)`` of features or a kernel (KECOR, MCR^2).
- :func:`cluster_entropy`: entropy of the cluster masses of a categorical distribution (Centaur).
- :func:`particle_entropy`: the pairwise-distance entropy estimate of an equal-weight Gaussian mixture over
  particles (ADS), in ``[0, ln N]``.
- :func:`attention_entropy`: per head and query of attention weights (AEM, entropy-guided attention).

References: ``shared/specs/beyond_llm.md`` sections 1, 2, 9, 10, 12, 13, 15.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = [
    "attention_entropy",
    "cluster_entropy",
    "coding_rate",
    "knn_entropy",
    "particle_entropy",
    "von_neumann_entropy",
]


def _float_tensor(name: str, x: object, *, ndim: int | None = None, min_ndim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.Tensor, got {describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x


def _xlogx(p: Tensor) -> Tensor:
    """``p log p`` with ``0 log 0 = 0`` and a finite gradient at 0."""
    return torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)


def knn_entropy(x: Tensor, k: int = 3) -> Tensor:
    r"""Kozachenko-Leonenko estimate of the differential entropy of samples ``x`` ``(n, d)``:

    ``H = psi(n) - psi(k) + ln V_d + (d / n) sum_i ln eps_i``, with ``eps_i`` the Euclidean distance from ``x_i`` to
    its ``k``-th nearest other sample and ``V_d = pi^{d/2} / Gamma(d/2 + 1)`` the volume of the unit ball.

    The digamma form is the bias-corrected constant (the plain ``ln(n - 1)`` form is biased for small ``k``).  The
    estimate is consistent; its bias shrinks with ``n`` and grows with ``d`` (a few hundred samples per dimension
    for a few hundredths of a nat on a Gaussian, tested).  Duplicated samples make some ``eps_i = 0`` and the
    estimate ``-inf``: they raise ``ValueError``.  ``O(n^2 d)`` memory-chunked distance computation.

    References
    ----------
    Kozachenko and Leonenko (1987); Kraskov, Stögbauer, Grassberger, "Estimating mutual information", eq. (20);
    MEE (arXiv 2208.12055) uses its nearest-neighbour core.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> round(float(knn_entropy(x)), 1), round(math.log(2 * math.pi * math.e), 1)  # N(0, I_2): ln(2 pi e)
    (2.8, 2.8)
    """
    x = _float_tensor("x", x, ndim=2)
    n, d = x.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if n <= k:
        raise ValueError(f"x needs more than k = {k} samples, got n = {n}")
    xd = x.detach().to(torch.float64)
    eps = torch.empty(n, dtype=torch.float64)
    chunk = max(1, 2**22 // max(n, 1))
    for s in range(0, n, chunk):
        dist = torch.cdist(xd[s : s + chunk], xd)  # (c, n)
        dist[torch.arange(dist.shape[0]), torch.arange(s, s + dist.shape[0])] = math.inf  # not its own neighbour
        eps[s : s + chunk] = dist.kthvalue(k, dim=1).values
    if bool((eps <= 0).any()):
        raise ValueError("x has duplicated samples (a k-th neighbour at distance 0): the estimate diverges")
    log_vd = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    digamma = torch.special.digamma
    h = digamma(torch.tensor(float(n))) - digamma(torch.tensor(float(k))) + log_vd + d * eps.log().mean()
    return h.to(x.dtype)


def von_neumann_entropy(matrix: Tensor) -> Tensor:
    r"""Von Neumann entropy ``-sum_i lambda_i ln lambda_i`` of ``matrix / tr(matrix)`` (eigenvalues clamped at 0).

    ``matrix`` ``(..., d, d)``: symmetric positive semi-definite (a covariance or density matrix; symmetry is
    checked, small negative eigenvalues from rounding are clamped).  Isotropic -> ``ln d``; ``r`` equal non-zero
    eigenvalues -> ``ln r``; invariant to scaling and orthogonal rotations.  ``exp`` of it is the effective rank.
    Gradients are finite for rank-deficient inputs and repeated eigenvalues (eigenvalues only, ``eigvalsh``).

    References
    ----------
    Information-Koopman (arXiv 2510.13025): ``S_VN`` of the latent covariance; spec section 9.

    Examples
    --------
    >>> import torch
    >>> round(float(von_neumann_entropy(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))), 4)
    0.5623
    """
    m = _float_tensor("matrix", matrix, min_ndim=2)
    if m.shape[-1] != m.shape[-2] or m.shape[-1] == 0:
        raise ValueError(f"matrix must be square (..., d, d) with d >= 1, got shape {tuple(m.shape)}")
    scale = m.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    if not bool(((m - m.transpose(-1, -2)).abs() <= 1e-6 * scale).all()):
        raise ValueError("matrix must be symmetric")
    trace = m.diagonal(dim1=-2, dim2=-1).sum(-1)
    if not bool((trace > 0).all()):
        raise ValueError("matrix must have a positive trace (a non-zero covariance)")
    lam = torch.linalg.eigvalsh(m / trace[..., None, None]).clamp_min(0.0)
    return -_xlogx(lam).sum(-1)


def coding_rate(features_or_kernel: Tensor, sigma: float, *, kind: str = "auto") -> Tensor:
    r"""Coding rate ``0.5 logdet(I + K / sigma^2)`` (nats).

    ``kind="features"``: ``Z`` ``(n, d)`` with ``K = Z Z^T`` (computed as ``0.5 logdet(I_d + Z^T Z / sigma^2)`` when
    ``d < n``, the same by Sylvester's identity); ``"kernel"``: ``K`` ``(n, n)`` symmetric PSD; ``"auto"``: a square
    symmetric matrix is a kernel, anything else features.

    References
    ----------
    KECOR (arXiv 2307.07942), the coding rate of MCR^2 (Yu et al., 2020); spec section 2.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    >>> round(float(coding_rate(z, 1.0)), 4) == round(float(coding_rate(z @ z.T, 1.0, kind="kernel")), 4)
    True
    """
    x = _float_tensor("features_or_kernel", features_or_kernel, ndim=2)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if kind not in ("auto", "features", "kernel"):
        raise ValueError(f"kind must be 'auto', 'features' or 'kernel', got {kind!r}")
    square_sym = x.shape[0] == x.shape[1] and bool(torch.allclose(x, x.T))
    if kind == "kernel" or (kind == "auto" and square_sym):
        if not square_sym:
            raise ValueError(f"a kernel must be square and symmetric, got shape {tuple(x.shape)}")
        gram = x
    else:
        gram = x.T @ x if x.shape[1] < x.shape[0] else x @ x.T
    eye = torch.eye(gram.shape[0], dtype=x.dtype, device=x.device)
    sign, logdet = torch.linalg.slogdet(eye + gram / sigma**2)
    if not bool(sign > 0):
        raise ValueError("I + K / sigma^2 is not positive definite: the kernel is not positive semi-definite")
    return 0.5 * logdet


def cluster_entropy(probs: Tensor, assignment: Tensor) -> Tensor:
    r"""Entropy of the cluster masses ``P(c) = sum_{k: assignment[k] = c} p_k``: ``-sum_c P(c) ln P(c)``.

    ``probs`` ``(..., K)`` rows on the simplex (non-negative, summing to 1 within 1e-4); ``assignment`` ``(K,)``
    int64 cluster ids ``>= 0``.  In ``[0, ln C]``; differentiable in ``probs``.

    References
    ----------
    Centaur (arXiv 2503.11650, LOW CONFIDENCE reconstruction): "Cluster Entropy" of a planner's candidate
    trajectories, minimised by one test-time gradient step; spec section 13.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    >>> round(float(cluster_entropy(p, torch.tensor([0, 0, 1, 1]))), 4)  # masses (0.3, 0.7)
    0.6109
    """
    p = _float_tensor("probs", probs, min_ndim=1)
    if not isinstance(assignment, Tensor) or assignment.dtype != torch.long or assignment.shape != p.shape[-1:]:
        raise ValueError(f"assignment must be int64 of shape ({p.shape[-1]},), got {describe(assignment)}")
    if bool((assignment < 0).any()):
        raise ValueError("assignment must hold cluster ids >= 0")
    if bool((p < 0).any()) or not bool(((p.sum(-1) - 1).abs() <= 1e-4).all()):
        raise ValueError("probs must be non-negative rows summing to 1")
    n_clusters = int(assignment.max()) + 1 if assignment.numel() else 1
    mass = torch.zeros(*p.shape[:-1], n_clusters, dtype=p.dtype, device=p.device)
    mass = mass.index_add(-1, assignment.to(p.device), p)
    return -_xlogx(mass).sum(-1)


def particle_entropy(particles: Tensor, sigma: float, *, pairwise: str = "kl") -> Tensor:
    r"""Entropy estimate of the equal-weight Gaussian mixture over ``N`` particles' predictions:

    ``H = -(1/N) sum_i ln((1/N) sum_j exp(-|y_i - y_j|^2 / c))`` with ``c = 2 sigma^2`` (``pairwise="kl"``) or
    ``4 sigma^2`` (``"product"``, the overlap of two Gaussians, the other classical bound), by log-sum-exp; the
    Gaussian constant is dropped, so it lies in ``[0, ln N]``: 0 when the particles agree, ``ln N`` when they are
    distinguishable at scale ``sigma``.

    ``particles`` ``(N, L)`` (one scalar prediction per location) or ``(N, L, D)``; returns ``(L,)``.

    References
    ----------
    Active Diffusion Subsampling (arXiv 2406.14388): maximum-entropy measurement selection under the particles;
    Kolchinsky and Tracey (2017) for the pairwise-distance bounds; spec section 10.

    Examples
    --------
    >>> import torch
    >>> y = torch.cat([torch.zeros(8, 1), torch.full((8, 1), 30.0)]).double()  # two distinguishable groups
    >>> round(float(particle_entropy(y, 1.0)[0]), 4), round(math.log(2), 4)
    (0.6931, 0.6931)
    """
    y = _float_tensor("particles", particles, min_ndim=2)
    if y.ndim > 3:
        raise ValueError(f"particles must be (N, L) or (N, L, D), got shape {tuple(y.shape)}")
    if y.shape[0] < 1:
        raise ValueError("particles needs at least one particle")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if pairwise not in ("kl", "product"):
        raise ValueError(f"pairwise must be 'kl' or 'product', got {pairwise!r}")
    if y.ndim == 2:
        y = y.unsqueeze(-1)
    yl = y.transpose(0, 1)  # (L, N, D)
    sq = torch.cdist(yl, yl).pow(2)  # (L, N, N)
    c = sigma**2 * (2.0 if pairwise == "kl" else 4.0)
    n = y.shape[0]
    log_mix = torch.logsumexp(-sq / c, dim=-1) - math.log(n)  # (L, N)
    return -log_mix.mean(-1)


def attention_entropy(attn: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Entropy of attention weights per head and query: ``-sum_k a_k ln a_k`` over the valid keys.

    ``attn`` ``(..., Q, K)`` non-negative rows summing to 1 over the valid keys (within 1e-3); ``mask`` ``(..., K)``
    or ``(..., Q, K)`` bool of valid keys (``None``: all), broadcastable to ``attn``; weights on masked keys must be 0.
    Returns ``(..., Q)``; a query with no valid key gets 0.  Uniform over ``n`` keys -> ``ln n``.

    References
    ----------
    AEM (arXiv 2406.15303) and entropy-guided attention (arXiv 2501.03489); spec sections 1 and 15.

    Examples
    --------
    >>> import torch
    >>> round(float(attention_entropy(torch.full((1, 4), 0.25))[0]), 4), round(math.log(4), 4)
    (1.3863, 1.3863)
    """
    a = _float_tensor("attn", attn, min_ndim=2)
    valid = torch.ones_like(a, dtype=torch.bool)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {describe(mask)}")
        m = mask.unsqueeze(-2) if mask.ndim == a.ndim - 1 else mask
        try:
            valid = torch.broadcast_to(m, a.shape)
        except RuntimeError as exc:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to attn {tuple(a.shape)}") from exc
    if bool((a < 0).any()):
        raise ValueError("attn must be non-negative")
    if bool((a[~valid] != 0).any()):
        raise ValueError("attn puts weight on masked keys")
    sums = a.sum(-1)
    has = valid.any(-1)
    if not bool(((sums - 1).abs()[has] <= 1e-3).all()):
        raise ValueError("attn rows must sum to 1 over the valid keys")
    return torch.where(has, -_xlogx(torch.where(valid, a, 0.0)).sum(-1), 0.0)
