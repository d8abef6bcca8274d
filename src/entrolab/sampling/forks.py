"""Where to branch a rollout: the highest-entropy positions of a response (CURE, ETTRL/EPTree, AEPO-EB).

Shared primitive of the entropy-guided rollouts (``shared/specs/decoding.md`` section 7): rank one response's valid
positions by entropy, descending, ties broken by position, after exclusions; then take the top ``k`` (``"top"``,
EPTree's fork points) or one of them uniformly at random (``"random_of_top"``, CURE's critical token).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = ["FORK_STRATEGIES", "select_fork_points"]

FORK_STRATEGIES = ("top", "random_of_top")


def select_fork_points(
    entropy: Tensor,
    mask: Tensor,
    k: int,
    *,
    strategy: str = "top",
    exclude: Tensor | None = None,
    exclude_first: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fork positions of each response, highest entropy first.

    Parameters
    ----------
    entropy : Tensor
        Token entropies ``(B, T)`` (or ``(T,)`` for one response).
    mask : Tensor
        Valid response tokens, same shape (bool or 0/1).  Masked positions are never selected.
    k : int
        ``>= 1``: how many top positions to return (``"top"``) or to draw one from (``"random_of_top"``, CURE's 20).
    strategy : {"top", "random_of_top"}
    exclude : Tensor, optional
        Bool, same shape: positions that may not be forks (special tokens, one-character pieces: CURE skips tokens
        whose stripped text has at most one character).
    exclude_first : int
        The first ``exclude_first`` positions of every response are never forks (CURE's position 0; default 1).
    generator : torch.Generator, optional
        Drives ``"random_of_top"``; seed it for reproducible forks.

    Returns
    -------
    Tensor
        int64 ``(B, k)`` for ``"top"`` and ``(B, 1)`` for ``"random_of_top"`` (one dimension less for ``(T,)`` input):
        positions in descending entropy (ties by position), ``-1`` where a response has fewer valid candidates.

    References
    ----------
    CURE, arXiv 2508.11016 (``get_critic_key_token_mask``); TreeRL/EPTree, arXiv 2506.11902; AEPO, arXiv 2510.14545.

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([3.0, 0.5, 2.0, 2.0, 0.1])
    >>> select_fork_points(h, torch.ones(5, dtype=torch.bool), 3).tolist()  # position 0 excluded; the tie by position
    [2, 3, 1]
    """
    if strategy not in FORK_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, FORK_STRATEGIES))}; got {strategy!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {describe(k)}")
    if isinstance(exclude_first, bool) or not isinstance(exclude_first, numbers.Integral) or exclude_first < 0:
        raise ValueError(f"exclude_first must be an int >= 0, got {describe(exclude_first)}")
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point or entropy.ndim not in (1, 2):
        raise TypeError(f"entropy must be a floating tensor of shape (B, T) or (T,), got {describe(entropy)}")
    single = entropy.ndim == 1
    h = entropy.detach().reshape(-1, entropy.shape[-1])
    b, t = h.shape
    if not isinstance(mask, Tensor) or mask.shape != entropy.shape:
        raise ValueError(f"mask must be a tensor of entropy's shape {tuple(entropy.shape)}, got {describe(mask)}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must be boolean or hold only 0 and 1")
    valid = mask.reshape(b, t) != 0
    if exclude is not None:
        if not isinstance(exclude, Tensor) or exclude.shape != entropy.shape:
            raise ValueError(
                f"exclude must be a tensor of entropy's shape {tuple(entropy.shape)}, got {describe(exclude)}"
            )
        valid = valid & ~(exclude.reshape(b, t) != 0)
    valid[:, : min(exclude_first, t)] = False
    if bool((valid & ~torch.isfinite(h)).any()):
        raise ValueError("entropy is not finite at a candidate position")
    # rank: valid first, then entropy descending, then position ascending (a stable sort on the negated key)
    key = torch.where(valid, h.double(), -torch.inf)
    order = torch.sort(-key, dim=-1, stable=True).indices  # (B, T)
    n_valid = valid.sum(-1, keepdim=True)  # (B, 1)
    width = min(k, t)
    top = order[:, :width]
    rank = torch.arange(width, device=h.device).unsqueeze(0)
    top = torch.where(rank < n_valid, top, -1)
    if width < k:
        top = torch.cat([top, top.new_full((b, k - width), -1)], dim=-1)
    if strategy == "random_of_top":
        pool = n_valid.clamp_max(k).squeeze(-1)  # (B,)
        u = torch.rand(
            b, generator=generator, dtype=torch.float64, device=h.device if generator is None else generator.device
        )
        pick = (u.to(h.device) * pool).floor().long().clamp_max((pool - 1).clamp_min(0))
        top = torch.where(pool > 0, top.gather(1, pick.unsqueeze(1)).squeeze(1), -1).unsqueeze(1)
    return top[0] if single else top
