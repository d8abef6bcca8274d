"""Where to branch a rollout: the highest-entropy positions of a response (CURE, ETTRL/EPTree), and AEPO-EB's
entropy-balanced root/branch decisions at tool-call boundaries.

Shared primitive of the entropy-guided rollouts (``shared/specs/decoding.md`` section 7): rank one response's valid
positions by entropy, descending, ties broken by position, after exclusions; then take the top ``k`` (``"top"``,
EPTree's fork points) or one of them uniformly at random (``"random_of_top"``, CURE's critical token).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = [
    "FORK_STRATEGIES",
    "aepo_branch_probability",
    "aepo_root_count",
    "aepo_should_branch",
    "aepo_step_entropy",
    "select_fork_points",
]

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
    h = entropy.detach().reshape(1 if single else entropy.shape[0], entropy.shape[-1])  # (B, T), also when empty
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


# ------------------------------------------------------------------------------------------------------------ AEPO-EB
def _real(name: str, value: object, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def aepo_step_entropy(entropy: Tensor, mask: Tensor, *, vocab_size: int, first_n: int = 20) -> Tensor:
    r"""AEPO-EB's entropy signal of one generation step (a model turn): the **sum** of the token entropies of its first
    ``<= first_n`` valid tokens, divided by ``ln |V|``.

    Parameters
    ----------
    entropy : Tensor
        ``(B, T)`` or ``(T,)`` token entropies of the step's tokens (nats).
    mask : Tensor
        Same shape, bool: the step's tokens (a turn's tokens need not start at position 0).
    vocab_size : int
        ``|V| >= 2``.
    first_n : int
        ``>= 1``; the code's 20.

    Returns
    -------
    Tensor
        ``(B,)`` (or a scalar for ``(T,)`` input); 0 for a step without tokens.

    References
    ----------
    Dong et al., "Agentic Entropy-Balanced Policy Optimization", arXiv 2510.14545, section 3.1; the authors'
    ``vllm_rollout_with_tools.py``; ``shared/specs/decoding.md`` section 7.3.  Departure: the code sums the entropy of
    the **top-10 log-probs** vLLM returns (a truncated, lower estimate); we take the exact entropy of the sampling
    distribution, which the rollout already has.

    Examples
    --------
    >>> import math, torch
    >>> h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    >>> round(float(aepo_step_entropy(h, torch.tensor([False, True, True, True]), vocab_size=100, first_n=2)), 4)
    1.0857
    """
    if not isinstance(entropy, Tensor) or not entropy.dtype.is_floating_point or entropy.ndim not in (1, 2):
        raise TypeError(f"entropy must be a floating tensor of shape (B, T) or (T,), got {describe(entropy)}")
    if not isinstance(mask, Tensor) or mask.shape != entropy.shape:
        raise ValueError(f"mask must be a tensor of entropy's shape {tuple(entropy.shape)}, got {describe(mask)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {describe(vocab_size)}")
    if isinstance(first_n, bool) or not isinstance(first_n, numbers.Integral) or first_n < 1:
        raise ValueError(f"first_n must be an int >= 1, got {describe(first_n)}")
    m = mask != 0
    if bool((m & ~torch.isfinite(entropy)).any()):
        raise ValueError("entropy is not finite at a step token")
    first = m & (m.long().cumsum(-1) <= first_n)
    return torch.where(first, entropy, 0.0).sum(-1) / math.log(int(vocab_size))


def aepo_root_count(root_entropy: float, tool_entropy: float, *, budget: int, beta: float = 0.5) -> int:
    r"""AEPO-EB's pre-monitored number of root (global) samples of a question: ``m = int(k sigma(beta (H_root -
    mean H_tool))) + 1``, clamped to ``[1, k]``; the other ``k - m`` of the budget ``k`` go to branches.

    High entropy at the root relative to the tool steps asks for more independent roots; uncertain tool steps (high
    ``H_tool``) ask for more branching.

    References
    ----------
    arXiv 2510.14545, eq. (3) (``m = k sigma(beta dH)``); the code adds the ``+ 1`` and hard-codes ``beta = 0.5``;
    ``shared/specs/llm_rl.md`` section 16.1.

    Examples
    --------
    >>> aepo_root_count(0.30, 0.50, budget=12)
    6
    >>> aepo_root_count(1e3, 0.0, budget=12), aepo_root_count(-1e3, 0.0, budget=12)
    (12, 1)
    """
    h_root = _real("root_entropy", root_entropy)
    h_tool = _real("tool_entropy", tool_entropy)
    beta = _real("beta", beta, low=0.0)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {describe(budget)}")
    x = beta * (h_root - h_tool)
    sigma = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    return min(int(budget), max(1, int(int(budget) * sigma) + 1))


def aepo_branch_probability(
    uniform: float,
    entropy_now: float,
    entropy_init: float,
    *,
    consecutive: int,
    weight: float = 0.2,
    penalty: float = 0.05,
) -> float:
    r"""AEPO-EB's branch probability after a tool call: ``p = clip((U + w (H_now - H_init)) max(0, 1 - penalty l), 0,
    1)``.  The path branches iff ``p >= branch_probability`` (0.5), see :func:`aepo_should_branch`.

    Parameters
    ----------
    uniform : float
        ``U`` in ``[0, 1]``, one draw per decision (from the caller's seeded generator).
    entropy_now, entropy_init : float
        The path's step entropy after this tool call and in its first round (:func:`aepo_step_entropy`).
    consecutive : int
        ``l >= 0``: consecutive rounds in which this **question** created branches (reset after a round without).
    weight : float
        ``w = 0.2`` (``entropy_weight``).
    penalty : float
        The consecutive-branch penalty per round, ``0.05`` (hard-coded in the code).

    References
    ----------
    arXiv 2510.14545, section 3.1 (entropy-balanced rollout, branch penalty); ``shared/specs/llm_rl.md`` 16.1.

    Examples
    --------
    >>> round(aepo_branch_probability(0.45, 0.5, 0.0, consecutive=0), 4), round(aepo_branch_probability(
    ...     0.45, 0.5, 0.0, consecutive=2), 4)
    (0.55, 0.495)
    """
    u = _real("uniform", uniform, low=0.0, high=1.0)
    h_now = _real("entropy_now", entropy_now)
    h_init = _real("entropy_init", entropy_init)
    weight = _real("weight", weight, low=0.0)
    penalty = _real("penalty", penalty, low=0.0)
    if isinstance(consecutive, bool) or not isinstance(consecutive, numbers.Integral) or consecutive < 0:
        raise ValueError(f"consecutive must be an int >= 0, got {describe(consecutive)}")
    p = (u + weight * (h_now - h_init)) * max(0.0, 1.0 - penalty * int(consecutive))
    return min(1.0, max(0.0, p))


def aepo_should_branch(probability: float, *, threshold: float = 0.5) -> bool:
    """AEPO-EB's decision: branch iff ``probability >= threshold`` (``branch_probability``, 0.5; equality branches).

    Examples
    --------
    >>> aepo_should_branch(0.5), aepo_should_branch(0.495)
    (True, False)
    """
    p = _real("probability", probability, low=0.0, high=1.0)
    return p >= _real("threshold", threshold, low=0.0, high=1.0)
