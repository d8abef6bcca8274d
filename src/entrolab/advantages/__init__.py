"""Advantages and per-paper reward/advantage shaping: what a method changes *before* the policy loss.

- group-relative advantages: :func:`grpo_advantages`, :func:`dr_grpo_advantages`, :func:`rloo_advantages`, and
  DAPO's :func:`dapo_overlong_penalty` (:mod:`entrolab.advantages.group`);
- HAPO's token-level group advantage :func:`hapo_token_level_advantages`;
- AEPO-EB's :func:`entropy_aware_advantages`;
- EMPG, ETTRL, AEPO's rollout temperature and mixing, SPEAR's replay (:mod:`entrolab.advantages.shaping`);
- ARES's entropy reward and its schedules (:mod:`entrolab.advantages.ares`);
- the registry of entropy-reshaped token advantages an engine applies per batch, :data:`TOKEN_ADVANTAGES`
  (:mod:`entrolab.advantages.token`).

The policy losses live in :mod:`entrolab.losses`; this package imports from it, never the other way round.
"""

from entrolab.advantages.ares import (
    ARES_BUCKETS,
    ares_alpha_update,
    ares_entropy_reward,
    ares_second_chance,
    ares_threshold_update,
    difficulty_bucket,
    hwe_counts,
    topk_tail_entropy,
    window_entropy,
)
from entrolab.advantages.entropy_aware import entropy_aware_advantages
from entrolab.advantages.group import dapo_overlong_penalty, dr_grpo_advantages, grpo_advantages, rloo_advantages
from entrolab.advantages.hapo import hapo_token_level_advantages
from entrolab.advantages.shaping import (
    aepo_mix,
    aepo_temperature,
    empg_advantages,
    ettrl_reshape,
    spear_recalibrate,
    spear_replay_weight,
    spear_subsample,
    spear_tool_bonus,
)
from entrolab.advantages.token import TOKEN_ADVANTAGES, token_advantage_transform

__all__ = [
    "ARES_BUCKETS",
    "TOKEN_ADVANTAGES",
    "aepo_mix",
    "aepo_temperature",
    "ares_alpha_update",
    "ares_entropy_reward",
    "ares_second_chance",
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
    "token_advantage_transform",
    "topk_tail_entropy",
    "window_entropy",
]
