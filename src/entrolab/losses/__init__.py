"""Policy losses for LLM RL under one uniform, tested interface (work in progress: see issue 3).

Every registered loss has the signature
``fn(logp, old_logp, advantages, mask, *, entropy=None, agg="token-mean", generator=None, **hyperparameters)``
and returns :class:`~entrolab._typing.LossOutput` ``(loss, metrics)``.  Only :func:`aggregate` divides by counts.
"""

from entrolab._typing import LossOutput
from entrolab.losses.aggregation import AGG_MODES, Aggregation, aggregate
from entrolab.losses.gspo import cispo, gspo
from entrolab.losses.ppo import ppo
from entrolab.losses.registry import get_policy_loss, policy_losses, register_policy_loss

__all__ = [
    "AGG_MODES",
    "Aggregation",
    "LossOutput",
    "aggregate",
    "cispo",
    "get_policy_loss",
    "gspo",
    "policy_losses",
    "ppo",
    "register_policy_loss",
]
