"""Minimum-entropy coupling (MEC), entropy-bounded information maximisation (EBIM) and their composition MEC-B.

- :func:`greedy_mec` / :func:`greedy_mec_sparse`: a joint distribution with the given marginals and low entropy (the
  greedy of Kocaoglu et al.: repeatedly couple the largest remaining masses), at most ``n + m - 1`` non-zeros, in
  ``O((n + m) log(n + m))``.
- :func:`ebim`: a deterministic encoder ``T = g(X)`` with ``H(T) <= rate`` and ``I(X; T) = H(T)`` as large as the
  greedy merge finds (merge the smallest remaining cell into the largest until the rate holds).
- :func:`mec_b`: the encoder from EBIM and the decoder from the MEC of ``p_T`` and ``p_Y``: ``X - T - Y`` with the
  marginals of ``X`` and ``Y`` and ``H(T) <= rate``.

Entropies in bits by default (``base=2``).

References
----------
Ebrahimi, Chen, Khisti, "Minimum Entropy Coupling with Bottleneck", NeurIPS 2024, arXiv 2410.21666; Kocaoglu et al.,
"Entropic causal inference" (2017), Algorithm 1 (greedy MEC); Compton (2022) for the greedy's guarantee;
``shared/specs/beyond_llm.md`` section 3.  The EBIM merge rule is a reconstruction that satisfies the paper's bound
``R - I_greedy <= h(p_2)`` (tested against brute force over all set partitions).
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = ["ebim", "entropy_bits", "greedy_mec", "greedy_mec_sparse", "mec_b"]


def _marginal(name: str, p: object) -> Tensor:
    if not isinstance(p, Tensor) or p.ndim != 1 or p.numel() == 0 or not p.dtype.is_floating_point:
        raise TypeError(f"{name} must be a non-empty 1-D floating tensor, got {describe(p)}")
    # the sum is checked to the rounding of the input's dtype (a float32 distribution sums to 1 +- n ulps), then
    # renormalised in float64 so that the coupling's marginals are exact
    tol = max(1e-9, 4 * torch.finfo(p.dtype).eps * p.numel())
    p = p.detach().to(torch.float64)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    if abs(float(p.sum()) - 1.0) > tol:
        raise ValueError(f"{name} must sum to 1 (within {tol:.2g}), got {float(p.sum())!r}")
    p = p / p.sum()
    return p


def entropy_bits(p: Tensor, *, base: float = 2.0) -> float:
    """Entropy of a distribution (any shape, entries summing to 1) in ``log_base`` units."""
    v = p.detach().to(torch.float64).flatten()
    v = v[v > 0]
    return float(-(v * v.log()).sum()) / math.log(base)


def greedy_mec_sparse(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy minimum-entropy coupling as ``(rows, cols, masses)`` (int64, int64, float64), for supports too large for
    a dense matrix.  Each step couples the largest remaining mass of ``p`` with that of ``q``."""
    pp, qq = _marginal("p", p), _marginal("q", q)
    hp = [(-float(v), i) for i, v in enumerate(pp.tolist())]
    hq = [(-float(v), j) for j, v in enumerate(qq.tolist())]
    heapq.heapify(hp)
    heapq.heapify(hq)
    rows, cols, masses = [], [], []
    while hp and hq:
        vp, i = heapq.heappop(hp)
        vq, j = heapq.heappop(hq)
        a, b = -vp, -vq
        w = min(a, b)
        if w > 0:
            rows.append(i)
            cols.append(j)
            masses.append(w)
        # a leftover below 1e-15 is rounding, not mass: dropping it keeps the support at n + m - 1
        if a - w > 1e-15:
            heapq.heappush(hp, (-(a - w), i))
        if b - w > 1e-15:
            heapq.heappush(hq, (-(b - w), j))
    return (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
            torch.tensor(masses, dtype=torch.float64))  # fmt: skip


def greedy_mec(p: Tensor, q: Tensor) -> Tensor:
    """Greedy minimum-entropy coupling of ``p`` ``(n,)`` and ``q`` ``(m,)`` as a dense ``(n, m)`` joint (float64).

    Its row and column sums are ``p`` and ``q`` (to rounding; ``1e-12`` tested), it has at most ``n + m - 1``
    non-zeros, and its entropy is at least ``max(H(p), H(q))`` and within ``log2 e`` bits of the optimum.

    Examples
    --------
    >>> import torch
    >>> j = greedy_mec(torch.tensor([0.6, 0.4], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    >>> j.tolist(), round(entropy_bits(j), 4)
    ([[0.5, 0.09999999999999998], [0.0, 0.4]], 1.361)
    """
    rows, cols, masses = greedy_mec_sparse(p, q)
    joint = torch.zeros(p.numel(), q.numel(), dtype=torch.float64)
    joint.index_put_((rows, cols), masses, accumulate=True)
    return joint


def ebim(p: Tensor, rate: float, *, base: float = 2.0) -> Tensor:
    r"""A deterministic encoder ``T = g(X)`` with ``H(T) <= rate``: ``(n,)`` int64 cell ids (0 = the most probable
    cell).  ``I(X; T) = H(T)`` for a deterministic map.

    Greedy: sort ``p`` in decreasing order, start from the identity and merge the smallest remaining cell into the
    largest until ``H(T) <= rate``.  ``rate >= H(p)`` returns the identity, ``rate = 0`` a constant map; the loss
    ``rate - I`` is at most ``h(p_2)`` (the binary entropy of the second-largest probability).

    Examples
    --------
    >>> import torch
    >>> ebim(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), 1.2).tolist()  # 0.2 merged into 0.5
    [0, 1, 0]
    """
    pp = _marginal("p", p)
    h = entropy_bits(pp, base=base)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= h + 1e-12:
        raise ValueError(f"rate must be in [0, H(p)] = [0, {h:.6g}], got {rate!r}")
    order = torch.argsort(pp, descending=True, stable=True).tolist()
    cell = {i: k for k, i in enumerate(order)}  # element -> cell
    mass = [float(pp[i]) for i in order]  # cell masses, cell k first held order[k]
    alive = list(range(len(order)))
    while entropy_bits(torch.tensor([mass[k] for k in alive], dtype=torch.float64), base=base) > rate + 1e-12:
        if len(alive) == 1:
            break
        small = alive.pop()  # the smallest remaining cell (cells stay sorted: merging only grows the largest)
        mass[alive[0]] += mass[small]
        for i, k in cell.items():
            if k == small:
                cell[i] = alive[0]
        alive.sort(key=lambda k: -mass[k])
    ids = {k: r for r, k in enumerate(alive)}
    return torch.tensor([ids[cell[i]] for i in range(pp.numel())], dtype=torch.long)


def mec_b(p_x: Tensor, p_y: Tensor, rate: float, *, base: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """MEC-B: the EBIM encoder ``g`` (``(|X|,)`` cell ids), the greedy MEC decoder coupling of ``p_T`` and ``p_Y``
    (``(|T|, |Y|)``) and the resulting joint ``p(x, y)`` ``(|X|, |Y|)`` of the chain ``X - T - Y``."""
    px, py = _marginal("p_x", p_x), _marginal("p_y", p_y)
    g = ebim(px, rate, base=base)
    p_t = torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, px)
    coupling = greedy_mec(p_t, py)
    q_y_given_t = coupling / p_t.unsqueeze(1)
    joint = px.unsqueeze(1) * q_y_given_t[g]
    return g, coupling, joint
