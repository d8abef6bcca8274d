"""Policy losses, advantages and regularizers for LLM RL under one uniform, tested interface.

Every registered loss has the signature
``fn(logp, old_logp, advantages, mask, *, entropy=None, agg="token-mean", generator=None, **hyperparameters)``
and returns :class:`~entrolab._typing.LossOutput` ``(loss, metrics)``; swap methods by name with
:func:`get_policy_loss`.  Only :func:`aggregate` divides by counts.  See ``docs/losses.md`` for the table of methods.
"""

from entrolab._typing import LossOutput
from entrolab.losses.advantages import dapo_overlong_penalty, dr_grpo_advantages, grpo_advantages, rloo_advantages
from entrolab.losses.aggregation import AGG_MODES, Aggregation, aggregate
from entrolab.losses.ares import (
    ARES_BUCKETS,
    ares_alpha_update,
    ares_entropy_reward,
    ares_threshold_update,
    difficulty_bucket,
    hwe_counts,
    topk_tail_entropy,
    window_entropy,
)
from entrolab.losses.balanced import entropy_aware_advantages, entropy_balanced
from entrolab.losses.cov import clip_cov, kl_cov, token_covariance
from entrolab.losses.forking import high_entropy_mask, high_entropy_tokens, linear_quantile
from entrolab.losses.gspo import cispo, gspo
from entrolab.losses.hapo import HapoEntropyStats, hapo, hapo_normalized_entropy, hapo_token_level_advantages
from entrolab.losses.ppo import ppo
from entrolab.losses.registry import get_policy_loss, policy_losses, register_policy_loss
from entrolab.losses.regularizers import (
    KL_ESTIMATORS,
    EntropyHistory,
    SirenAnchor,
    entropy_bonus,
    epo,
    epo_phase_weight,
    kl_estimate,
    kl_penalty,
    siren,
    top_p_entropy,
)
from entrolab.losses.shaping import (
    aepo_mix,
    aepo_temperature,
    empg_advantages,
    ettrl_reshape,
    spear_recalibrate,
    spear_replay_weight,
    spear_subsample,
    spear_tool_bonus,
)
from entrolab.losses.steer import steer, steer_weights

__all__ = [
    "AGG_MODES",
    "ARES_BUCKETS",
    "KL_ESTIMATORS",
    "Aggregation",
    "EntropyHistory",
    "HapoEntropyStats",
    "LossOutput",
    "SirenAnchor",
    "aepo_mix",
    "aepo_temperature",
    "aggregate",
    "ares_alpha_update",
    "ares_entropy_reward",
    "ares_threshold_update",
    "cispo",
    "clip_cov",
    "dapo_overlong_penalty",
    "difficulty_bucket",
    "dr_grpo_advantages",
    "empg_advantages",
    "entropy_aware_advantages",
    "entropy_balanced",
    "entropy_bonus",
    "epo",
    "epo_phase_weight",
    "ettrl_reshape",
    "get_policy_loss",
    "grpo_advantages",
    "gspo",
    "hapo",
    "hapo_normalized_entropy",
    "hapo_token_level_advantages",
    "high_entropy_mask",
    "high_entropy_tokens",
    "hwe_counts",
    "kl_cov",
    "kl_estimate",
    "kl_penalty",
    "linear_quantile",
    "policy_losses",
    "ppo",
    "register_policy_loss",
    "rloo_advantages",
    "siren",
    "spear_recalibrate",
    "spear_replay_weight",
    "spear_subsample",
    "spear_tool_bonus",
    "steer",
    "steer_weights",
    "token_covariance",
    "top_p_entropy",
    "topk_tail_entropy",
    "window_entropy",
]
