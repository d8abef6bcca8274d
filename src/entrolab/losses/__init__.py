"""Policy losses and the regularizers added to them, under one uniform, tested interface.

Every registered loss has the signature
``fn(logp, old_logp, advantages, mask, *, agg, entropy=None, generator=None, token_weights=None, **hyperparameters)``
(``agg`` is required) and returns :class:`~entrolab._typing.LossOutput` ``(loss, metrics)``; swap methods by name
with :func:`get_policy_loss`.  Only :func:`aggregate` divides by counts.  See ``docs/losses.md`` for the table of
methods.

Per-paper helpers stay in their modules (``entrolab.losses.cov.token_covariance``,
``entrolab.losses.forking.high_entropy_mask``, ``entrolab.losses.hapo.hapo_normalized_entropy``,
``entrolab.losses.steer.steer_weights``, ...); advantages and advantage shaping are :mod:`entrolab.advantages`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from entrolab._typing import LossOutput
from entrolab.losses.aggregation import AGG_MODES, Aggregation, aggregate
from entrolab.losses.balanced import entropy_balanced
from entrolab.losses.cov import clip_cov, kl_cov
from entrolab.losses.entropy_terms import KL_ESTIMATORS, SirenAnchor, entropy_bonus, kl_estimate, kl_penalty, siren
from entrolab.losses.epo import epo
from entrolab.losses.forking import high_entropy_tokens
from entrolab.losses.gspo import cispo, gspo
from entrolab.losses.hapo import hapo
from entrolab.losses.ppo import ppo
from entrolab.losses.registry import OLD_ENTROPY_LOSSES, get_policy_loss, policy_losses, register_policy_loss
from entrolab.losses.steer import steer

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "OLD_ENTROPY_LOSSES",
    "Aggregation",
    "LossOutput",
    "SirenAnchor",
    "aggregate",
    "cispo",
    "clip_cov",
    "entropy_balanced",
    "entropy_bonus",
    "epo",
    "get_policy_loss",
    "gspo",
    "hapo",
    "high_entropy_tokens",
    "kl_cov",
    "kl_estimate",
    "kl_penalty",
    "policy_losses",
    "ppo",
    "register_policy_loss",
    "siren",
    "steer",
]

# Names that lived here before entrolab.advantages existed, or that are per-paper helpers now reached through their
# own modules: still importable from entrolab.losses for one release, with a DeprecationWarning.
_MOVED = {
    **{
        name: "entrolab.advantages"
        for name in (
            "ARES_BUCKETS",
            "aepo_mix",
            "aepo_temperature",
            "ares_alpha_update",
            "ares_entropy_reward",
            "ares_threshold_update",
            "dapo_overlong_penalty",
            "difficulty_bucket",
            "dr_grpo_advantages",
            "empg_advantages",
            "entropy_aware_advantages",
            "ettrl_reshape",
            "grpo_advantages",
            "hapo_token_level_advantages",
            "hwe_counts",
            "rloo_advantages",
            "spear_recalibrate",
            "spear_replay_weight",
            "spear_subsample",
            "spear_tool_bonus",
            "topk_tail_entropy",
            "window_entropy",
        )
    },
    "EntropyHistory": "entrolab.losses.epo",
    "epo_phase_weight": "entrolab.losses.epo",
    "top_p_entropy": "entrolab.losses.entropy_terms",
    "HapoEntropyStats": "entrolab.losses.hapo",
    "hapo_normalized_entropy": "entrolab.losses.hapo",
    "high_entropy_mask": "entrolab.losses.forking",
    "steer_weights": "entrolab.losses.steer",
    "token_covariance": "entrolab.losses.cov",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = _MOVED[name]
        warnings.warn(
            f"entrolab.losses.{name} moved to {module}.{name}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'entrolab.losses' has no attribute {name!r}")
