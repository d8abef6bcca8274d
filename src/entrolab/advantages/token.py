"""Token-level advantage methods that reshape a batch's sequence advantages with the token entropy: one registry,
used by the TRL trainer's ``advantage=`` option.

Each entry is ``fn(advantages, *, entropy, mask, **hyperparameters) -> Tensor`` with ``advantages`` ``(B,)``
(a group-relative advantage per response), ``entropy`` and ``mask`` ``(B, T)`` (the rollout's token entropy, detached;
valid completion tokens), returning ``(B, T)``.  Methods that need the response *groups* (HAPO's token-level group
advantage, ETTRL's within-group reshaping) are not here: they need the batch before it is shuffled and split, which
is the advantage estimator's place (verl's registry, :mod:`entrolab.integrations.verl`; the lab's advantage stage).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from entrolab.advantages.entropy_aware import entropy_aware_advantages
from entrolab.advantages.shaping import empg_advantages

__all__ = ["TOKEN_ADVANTAGES", "token_advantage_transform"]


def _empg(advantages: Tensor, *, entropy: Tensor, mask: Tensor, **kw: Any) -> Tensor:
    """EMPG (arXiv 2509.09265, eqs. 7-10) with every token a step, as the lab runs it on single-turn tasks."""
    return empg_advantages(entropy, mask, advantages, **kw)


def _entropy_aware(advantages: Tensor, *, entropy: Tensor, mask: Tensor, **kw: Any) -> Tensor:
    """AEPO-EB's entropy-aware advantage ``A (1 + coef sg(z))`` (:func:`entropy_aware_advantages`)."""
    return entropy_aware_advantages(advantages, entropy, mask, **kw)


TOKEN_ADVANTAGES: dict[str, tuple[Callable[..., Tensor], Callable[..., Any]]] = {
    "empg": (_empg, empg_advantages),
    "entropy_aware": (_entropy_aware, entropy_aware_advantages),
}
"""name -> (transform, the documented function whose keyword-only hyperparameters it accepts)."""

_RESERVED = {"step_entropy", "step_mask", "advantages", "entropy", "mask"}


def token_advantage_transform(name: str, **hyperparameters: Any) -> Callable[..., Tensor]:
    """``fn(advantages, *, entropy, mask, **_) -> Tensor`` for the method ``name`` with ``hyperparameters`` bound;
    unknown names and hyperparameters raise ``ValueError`` naming the valid ones (checked here, before training)."""
    if name not in TOKEN_ADVANTAGES:
        raise ValueError(f"unknown token advantage {name!r}; valid: {', '.join(sorted(TOKEN_ADVANTAGES))}")
    transform, documented = TOKEN_ADVANTAGES[name]
    params = inspect.signature(documented).parameters
    valid = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in _RESERVED)
    for key in hyperparameters:
        if key not in valid:
            raise ValueError(f"token advantage {name!r} has no hyperparameter {key!r}; valid: {', '.join(valid)}")
    bound: Mapping[str, Any] = dict(hyperparameters)

    def fn(advantages: Tensor, *, entropy: Tensor, mask: Tensor, **_: Any) -> Tensor:
        return transform(advantages, entropy=entropy, mask=mask, **bound)

    fn.__name__ = f"{name}_advantages"
    return fn
