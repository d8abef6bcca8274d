"""The lab's methods: named presets, each a combination of advantage, policy loss, regularizers and sampling.

A preset is data (:class:`Preset`), not code: the trainer reads its fields and calls the matching functions of
:mod:`entrolab.losses` and :mod:`entrolab.control`.  A config file composes new methods from the same parts::

    [presets.steer_hot]
    base = "steer"            # start from a built-in preset (default: "grpo")
    temperature = 1.2
    loss_kwargs = { k = 2.0 }

Unknown preset names, unknown fields and bad values fail with the name, the field and the valid choices.

Fractions the papers tune for 10^6-token batches (Clip-Cov's 2e-4, KL-Cov's 2e-3) would touch at most one token of a
lab batch (a few hundred tokens); the lab presets scale them to 2% and say so in their descriptions.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from entrolab._validation import check_bool, check_choice, check_int, check_number
from entrolab.losses import AGG_MODES, get_policy_loss, policy_losses

__all__ = ["ADVANTAGES", "PRESETS", "Preset", "get_preset", "preset_from_mapping"]

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "empg")
ROLLOUTS = ("standard", "cure", "aepo", "ettrl", "aepo_eb")


@dataclass(frozen=True)
class Preset:
    """One lab method.

    Every field has a default, so a config file only names what it changes.
    """

    name: str
    description: str = ""
    """One line: what the method does to entropy."""
    reference: str = ""
    """The paper (arXiv id)."""
    advantage: str = "grpo"
    """``grpo`` (group z-score), ``dr_grpo`` (group mean only), ``rloo`` (leave-one-out) or ``empg`` (GRPO, then
    EMPG's entropy modulation per token)."""
    loss: str = "ppo"
    """A registered policy loss (:func:`entrolab.losses.policy_losses`)."""
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Hyperparameters passed to the policy loss."""
    agg: str = "token-mean"
    """Aggregation mode (:data:`entrolab.losses.AGG_MODES`); ``seq-mean-token-sum-norm`` uses the generation length
    as its constant."""
    entropy_coef: float = 0.0
    """Fixed entropy-bonus coefficient (0: none)."""
    adaptive_entropy_target: float | None = None
    """Adaptive entropy coefficient (Skywork-OR1): the target as a fraction of the policy's mean entropy at the
    first RL step (``None``: off)."""
    siren_coef: float = 0.0
    """SIREN's coefficient (0: off); the anchor is the first step's masked top-p entropy."""
    epo_coef: float = 0.0
    """EPO's coefficient (0: off); the reference is the running mean of past steps' entropy."""
    kl_coef: float = 0.0
    """k3 KL penalty to the initial (warm-started) policy (0: off; the KL is still reported)."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts."""
    rollout: str = "standard"
    """``standard`` (``group_size`` independent samples per prompt), ``cure`` (CURE stage 1: ``group_size / 4``
    originals, each branched at a random one of its ``cure_top_k`` highest-entropy tokens into 3 continuations),
    ``ettrl`` (entropy-fork trees branched at the top-entropy token, trained on majority-vote pseudo-rewards) or
    ``aepo`` (tempered REINFORCE samples mixed into the batch) or ``aepo_eb`` (agentic AEPO's entropy-balanced roots
    and branches at tool replies; needs a task with a tool)."""
    cure_top_k: int = 20
    """CURE: how many of the highest-entropy positions the fork is drawn from."""
    cure_stage1_fraction: float = 0.5
    """CURE: the share of the RL steps run as stage 1 (branching); the rest is stage 2, plain DAPO sampling from the
    stage-1 policy (the paper: 300 stage-1 steps, then stage 2).  1.0 runs stage 1 only."""
    aepo_target: float = 0.75
    """AEPO (``rollout = "aepo"``): the entropy target as a fraction of the first step's mean token entropy."""

    spear_buffer_size: int = 0
    """SPEAR self-imitation (0: off): replay the positive-advantage trajectories of the last steps through a Clip-Cov
    pass once the buffer holds more than 1.5 x this many (the paper's 2048, scaled to the lab's 128-row batches)."""
    spear_tool_bonus: bool = False
    """SPEAR's curriculum: add ``min(1, 0.1 n_calls) (cos(pi s / S) + 1) / 2`` to each reward (tool tasks)."""
    spear_schedule_fraction: float = 0.5
    """SPEAR: ``S`` (replay-loss warm-up) and ``S_tool`` (tool-bonus decay) as a fraction of the run's RL steps (the
    paper: 100-200 steps)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"preset name must be a non-empty string, got {self.name!r}")
        try:
            self._check_fields()
        except (TypeError, ValueError) as exc:  # a config file's value: always a ValueError naming the preset
            raise ValueError(f"preset {self.name!r}: {exc}") from None

    def _check_fields(self) -> None:
        check_choice("rollout", self.rollout, ROLLOUTS)
        check_choice("advantage", self.advantage, ADVANTAGES)
        check_choice("loss", self.loss, tuple(policy_losses()))
        check_choice("agg", self.agg, AGG_MODES)
        for key in ("cure_stage1_fraction", "spear_schedule_fraction"):
            check_number(key, getattr(self, key), low=0.0, low_open=True, high=1.0)
        check_number("aepo_target", self.aepo_target, low=0.0, low_open=True, high=10.0, high_open=True)
        if self.adaptive_entropy_target is not None:
            check_number("adaptive_entropy_target", self.adaptive_entropy_target, low=0.0, low_open=True, high=10.0)
        for key in ("entropy_coef", "siren_coef", "epo_coef", "kl_coef"):
            check_number(key, getattr(self, key), low=0.0)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_int("spear_buffer_size", self.spear_buffer_size, low=0)
        check_int("cure_top_k", self.cure_top_k, low=1)
        check_bool("spear_tool_bonus", self.spear_tool_bonus)
        if not isinstance(self.loss_kwargs, Mapping):
            raise TypeError(f"loss_kwargs must be a mapping, got {self.loss_kwargs!r}")
        params = inspect.signature(get_policy_loss(self.loss)).parameters
        for key in self.loss_kwargs:
            if key not in params or key in ("logp", "old_logp", "advantages", "mask", "entropy", "agg", "generator"):
                raise ValueError(f"loss {self.loss!r} has no hyperparameter {key!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_kwargs"] = dict(self.loss_kwargs)
        return d


_LAB_RATIO = 0.02

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "grpo",
            "GRPO: PPO clip 0.2, group z-score advantages, per-sequence mean; the baseline whose entropy collapses",
            "arXiv 2402.03300",
            agg="seq-mean-token-mean",
        ),
        Preset(
            "dr_grpo",
            "Dr. GRPO: no std normalisation, constant-length token sum (removes GRPO's length and difficulty biases)",
            "arXiv 2503.20783",
            advantage="dr_grpo",
            agg="seq-mean-token-sum-norm",
        ),
        Preset(
            "dapo",
            "DAPO clip-higher: eps_high 0.28 lets low-probability tokens rise, slowing entropy collapse",
            "arXiv 2503.14476",
            loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
        ),
        Preset(
            "entropy_bonus",
            "fixed entropy bonus 0.01 * H: pushes entropy up everywhere (may over-explore)",
            "arXiv 1602.01783",
            entropy_coef=0.01,
        ),
        Preset(
            "adaptive_entropy",
            "Skywork-OR1 adaptive coefficient: bonus switched on when entropy falls below 60% of its start",
            "arXiv 2505.22312",
            adaptive_entropy_target=0.6,
        ),
        Preset(
            "clip_cov",
            "Clip-Cov: detach a random 2% (lab-scaled; paper 0.02%) of tokens with covariance in (1, 5)",
            "arXiv 2505.22617",
            loss="clip_cov",
            loss_kwargs={"ratio": _LAB_RATIO},
        ),
        Preset(
            "kl_cov",
            "KL-Cov: |log r| penalty on the top 2% (lab-scaled; paper 0.2%) covariance tokens",
            "arXiv 2505.22617",
            loss="kl_cov",
            loss_kwargs={"ratio": _LAB_RATIO},
        ),
        Preset(
            "steer",
            "STEER: down-weight tokens whose predicted entropy change |Omega| is large (exp weighting)",
            "arXiv 2510.10150",
            loss="steer",
        ),
        Preset(
            "siren",
            "SIREN: anchor the top-p entropy of the peak tokens to its first-step value",
            "arXiv 2509.25133",
            siren_coef=0.005,
        ),
        Preset(
            "epo",
            "EPO: hinge penalty keeping step entropy within [0.8, 1.2] x its running mean",
            "arXiv 2509.22576",
            epo_coef=0.01,
        ),
        Preset(
            "hapo",
            "HAPO: clip range and advantage adapted per token from normalised log-entropy",
            "arXiv 2509.16591",
            loss="hapo",
        ),
        Preset(
            "high_entropy_tokens",
            "80/20: policy gradient only through the top-20% entropy (forking) tokens",
            "arXiv 2506.01939",
            loss="high_entropy_tokens",
        ),
        Preset(
            "entropy_balanced",
            "AEPO-EB: stop-gradient high clip and entropy-aware advantage",
            "arXiv 2510.14545",
            loss="entropy_balanced",
        ),
        Preset(
            "empg",
            "EMPG: advantages modulated by token entropy, with a future-clarity bonus",
            "arXiv 2509.09265",
            advantage="empg",
        ),
        Preset(
            "cure",
            "CURE: stage 1 branches each sample at a random high-entropy token into 3 re-generated continuations "
            "(first half of the steps), stage 2 continues with plain DAPO",
            "arXiv 2508.11016",
            loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
            rollout="cure",
        ),
        Preset(
            "ettrl",
            "ETTRL (low confidence): test-time RL on majority-vote pseudo-rewards over entropy-fork trees, with "
            "entropy-based advantage reshaping",
            "arXiv 2508.11356",
            rollout="ettrl",
        ),
        Preset(
            "aepo_entropy",
            "AEPO: REINFORCE on correct answers sampled at 1.2 (entropy below target) or 0.8 (above), mixed into the "
            "batch, holds entropy near a target of 0.75 x the first step's",
            "arXiv 2510.08141",
            rollout="aepo",
        ),
        Preset(
            "aepo_agentic",
            "agentic AEPO: roots vs. branches at tool replies balanced by entropy (pre-monitoring, consecutive-branch "
            "penalty), stop-gradient high clip and entropy-aware advantage; tool tasks",
            "arXiv 2510.14545",
            loss="entropy_balanced",
            rollout="aepo_eb",
        ),
        Preset(
            "spear",
            "SPEAR: Dr.BoT (clip 0.2/0.28, no std, constant-length sums) with self-imitation replay of past wins "
            "(Clip-Cov pass, warmed up) and a decaying tool-call bonus",
            "arXiv 2509.22601",
            advantage="dr_grpo",
            agg="seq-mean-token-sum-norm",
            loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
            spear_buffer_size=64,
            spear_tool_bonus=True,
        ),
    ]
}


def get_preset(name: str, extra: Mapping[str, Preset] | None = None) -> Preset:
    """A preset by name (``extra`` presets from a config file first); unknown -> ``ValueError`` listing valid names."""
    table = {**PRESETS, **(extra or {})}
    if name not in table:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(table))}")
    return table[name]


_FIELDS = {f.name for f in dataclasses.fields(Preset)} - {"name"}


def preset_from_mapping(name: str, values: Mapping[str, Any], *, known: Mapping[str, Preset] | None = None) -> Preset:
    """A new preset ``name`` from a config-file table: ``base`` (default ``"grpo"``) plus overridden fields.

    ``loss_kwargs`` are merged into the base's when the loss is unchanged, replaced otherwise.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"preset {name!r} must be a table of fields, got {values!r}")
    values = dict(values)
    base = get_preset(values.pop("base", "grpo"), known)
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ValueError(f"preset {name!r}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(_FIELDS))}")
    merged = base.to_dict()
    if "loss_kwargs" in values and values.get("loss", base.loss) == base.loss:
        values["loss_kwargs"] = {**merged["loss_kwargs"], **dict(values["loss_kwargs"])}
    elif "loss" in values and values["loss"] != base.loss:
        merged["loss_kwargs"] = {}
    merged.update(values)
    merged["name"] = name
    return Preset(**merged)
