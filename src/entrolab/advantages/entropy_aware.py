"""AEPO-EB's entropy-aware advantage (arXiv 2510.14545, section 3.3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entrolab import _dist
from entrolab._validation import check_number, check_representable, describe, guard_gradient
from entrolab.advantages.group import finite_advantages
from entrolab.batch_stats import entropy_zscore
from entrolab.losses._common import check_policy_inputs
from entrolab.losses.balanced import _check_entropy_stats

__all__ = ["entropy_aware_advantages"]


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
    if not isinstance(advantages, Tensor) or not advantages.dtype.is_floating_point:
        raise TypeError(f"advantages must be a floating torch.Tensor, got {describe(advantages)}")
    x = check_policy_inputs(entropy, entropy, advantages.detach(), mask, entropy)
    coef = check_number("coef", coef, low=0.0)
    check_representable("coef", coef, x.adv.dtype)
    assert x.entropy is not None
    z = entropy_zscore(
        x.entropy, x.m, stats=_check_entropy_stats(entropy_stats, x.entropy),
        group=_dist.resolve_group(global_stats, process_group),
    )  # fmt: skip
    adv = guard_gradient(advantages, "advantages")
    adv = adv.unsqueeze(1) if adv.ndim == 1 else adv  # keeps the graph in advantages
    return finite_advantages(torch.where(x.m, adv.to(z.dtype) * (1 + coef * z), 0.0))
