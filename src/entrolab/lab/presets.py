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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from entrolab._validation import check_bool, check_choice, check_int, check_number
from entrolab.losses import AGG_MODES, get_policy_loss, policy_losses

__all__ = [
    "ADVANTAGES",
    "PRESETS",
    "REPLAY_KNOBS",
    "ROLLOUT_KNOBS",
    "Preset",
    "aepo_knobs",
    "cure_knobs",
    "get_preset",
    "no_knobs",
    "preset_from_mapping",
    "spear_knobs",
]

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "empg")


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
    originals, each branched at a random one of its ``top_k`` highest-entropy tokens into 3 continuations),
    ``ettrl`` (entropy-fork trees branched at the top-entropy token, trained on majority-vote pseudo-rewards) or
    ``aepo`` (tempered REINFORCE samples mixed into the batch) or ``aepo_eb`` (agentic AEPO's entropy-balanced roots
    and branches at tool replies; needs a task with a tool)."""
    rollout_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The rollout's knobs, checked against ``ROLLOUT_KNOBS[rollout]`` (:func:`cure_knobs`, :func:`aepo_knobs`)."""
    replay: str = "none"
    """``none`` or ``spear`` (SPEAR's self-imitation replay and tool-call curriculum)."""
    replay_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The replay's knobs, checked against ``REPLAY_KNOBS[replay]`` (:func:`spear_knobs`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"preset name must be a non-empty string, got {self.name!r}")
        try:
            self._check_fields()
        except (TypeError, ValueError) as exc:  # a config file's value: always a ValueError naming the preset
            raise ValueError(f"preset {self.name!r}: {exc}") from None

    def _check_fields(self) -> None:
        check_choice("rollout", self.rollout, tuple(ROLLOUT_KNOBS))
        check_choice("advantage", self.advantage, ADVANTAGES)
        check_choice("loss", self.loss, tuple(policy_losses()))
        check_choice("agg", self.agg, AGG_MODES)
        check_choice("replay", self.replay, tuple(REPLAY_KNOBS))
        if self.adaptive_entropy_target is not None:
            check_number("adaptive_entropy_target", self.adaptive_entropy_target, low=0.0, low_open=True, high=10.0)
        for key in ("entropy_coef", "siren_coef", "epo_coef", "kl_coef"):
            check_number(key, getattr(self, key), low=0.0)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        _check_kwargs("loss", self.loss, get_policy_loss(self.loss), self.loss_kwargs, exclude=_LOSS_INPUTS)
        _check_kwargs("rollout", self.rollout, ROLLOUT_KNOBS[self.rollout], self.rollout_kwargs)
        _check_kwargs("replay", self.replay, REPLAY_KNOBS[self.replay], self.replay_kwargs)
        ROLLOUT_KNOBS[self.rollout](**self.rollout_kwargs)  # the values, by name
        REPLAY_KNOBS[self.replay](**self.replay_kwargs)
        _dry_run_loss(self.loss, self.agg, self.loss_kwargs)

    @property
    def rollout_knobs(self) -> dict[str, Any]:
        """Every knob of the rollout, defaults filled in."""
        return ROLLOUT_KNOBS[self.rollout](**self.rollout_kwargs)

    @property
    def replay_knobs(self) -> dict[str, Any]:
        """Every knob of the replay, defaults filled in."""
        return REPLAY_KNOBS[self.replay](**self.replay_kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in _KWARGS:
            d[key] = dict(getattr(self, key))
        return d


_LOSS_INPUTS = ("logp", "old_logp", "advantages", "mask", "entropy", "agg", "generator")
_KWARGS = {"loss_kwargs": "loss", "rollout_kwargs": "rollout", "replay_kwargs": "replay"}


def _check_kwargs(
    stage: str, choice: str, fn: Callable[..., Any], kwargs: object, *, exclude: tuple[str, ...] = ()
) -> None:
    """``kwargs`` is a mapping whose keys are keyword parameters of ``fn`` (the stage's function)."""
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{stage}_kwargs must be a mapping, got {kwargs!r}")
    params = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in exclude
    ]
    for key in kwargs:
        if key not in params:
            valid = ", ".join(params) or "none"
            raise ValueError(f"{stage} {choice!r} has no hyperparameter {key!r}; valid: {valid}")


def _dry_run_loss(loss: str, agg: str, kwargs: Mapping[str, Any]) -> None:
    """Call the loss once on a 2 x 3 batch with ``kwargs``: its own validation refuses a bad value (``ratio=-1``,
    ``kl_coef=nan``) now, when the preset is read, not after the warm start; a non-finite result is refused too."""
    import torch

    from entrolab.losses import Aggregation

    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.7, -1.5]])
    adv = torch.tensor([[1.0], [-1.0]]).expand(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    how = Aggregation(agg, max_length=3) if agg == "seq-mean-token-sum-norm" else agg
    gen = torch.Generator().manual_seed(0)
    out = get_policy_loss(loss)(logp, logp - 0.1, adv, mask, entropy=torch.ones(2, 3), agg=how, generator=gen, **kwargs)
    if not bool(torch.isfinite(out.loss)):
        raise ValueError(f"loss_kwargs {dict(kwargs)!r} give a non-finite {loss!r} loss on a small test batch")


# ------------------------------------------------------------------------- per-stage knobs, checked by name
def no_knobs() -> dict[str, Any]:
    """A stage without knobs."""
    return {}


def cure_knobs(
    *,
    top_k: int = 20,
    stage1_fraction: float = 0.5,
    max_prompt_tokens: int | None = None,
    truncate: str = "error",
    compat: str = "paper",
) -> dict[str, Any]:
    """CURE's rollout (arXiv 2508.11016): the fork is drawn from the ``top_k`` highest-entropy positions; stage 1
    (branching) runs for the first ``stage1_fraction`` of the RL steps, stage 2 (plain DAPO sampling from the stage-1
    policy) for the rest (the paper: 300 stage-1 steps, then stage 2; 1.0 runs stage 1 only).

    ``max_prompt_tokens`` bounds a branch's prompt (the prompt plus the inherited prefix; the authors' buffer holds
    1500 tokens; None: only the model's window).  A longer one is never cut silently: ``truncate="error"`` raises,
    ``"skip"`` branches that fork from the prompt alone and counts it (``cure_truncated_frac``); ``compat="code"``
    reproduces the released cut (the first ``max_prompt_tokens`` tokens kept, so the branch restarts before ``c``)."""
    check_int("top_k", top_k, low=1)
    check_number("stage1_fraction", stage1_fraction, low=0.0, low_open=True, high=1.0)
    if max_prompt_tokens is not None:
        check_int("max_prompt_tokens", max_prompt_tokens, low=1)
    check_choice("truncate", truncate, ("error", "skip"))
    check_choice("compat", compat, ("paper", "code"))
    return {"top_k": top_k, "stage1_fraction": stage1_fraction, "max_prompt_tokens": max_prompt_tokens,
            "truncate": truncate, "compat": compat}  # fmt: skip


def aepo_knobs(*, target: float = 0.75) -> dict[str, Any]:
    """AEPO's rollout (arXiv 2510.08141): the entropy target as a fraction of the first step's mean token entropy
    (the paper sets an absolute 0.5-0.75 nats for its models)."""
    check_number("target", target, low=0.0, low_open=True, high=10.0, high_open=True)
    return {"target": target}


def spear_knobs(*, buffer_size: int = 64, schedule_fraction: float = 0.5, tool_bonus: bool = True) -> dict[str, Any]:
    """SPEAR (arXiv 2509.22601): replay the positive-advantage trajectories of the last steps through a Clip-Cov pass
    once the buffer holds more than 1.5 x ``buffer_size`` (the paper's 2048, scaled to the lab's 128-row batches);
    ``schedule_fraction`` of the run's RL steps is both ``S`` (replay-loss warm-up) and ``S_tool`` (tool-bonus decay;
    the paper: 100-200 steps); ``tool_bonus`` adds ``min(1, 0.1 n_calls) (cos(pi s / S) + 1) / 2`` to each reward on
    tool tasks."""
    check_int("buffer_size", buffer_size, low=1)
    check_number("schedule_fraction", schedule_fraction, low=0.0, low_open=True, high=1.0)
    check_bool("tool_bonus", tool_bonus)
    return {"buffer_size": buffer_size, "schedule_fraction": schedule_fraction, "tool_bonus": tool_bonus}


ROLLOUT_KNOBS: dict[str, Callable[..., dict[str, Any]]] = {
    "standard": no_knobs,
    "cure": cure_knobs,
    "aepo": aepo_knobs,
    "ettrl": no_knobs,
    "aepo_eb": no_knobs,
}
"""Each rollout's knob function: its keyword parameters are the valid ``rollout_kwargs``."""
REPLAY_KNOBS: dict[str, Callable[..., dict[str, Any]]] = {"none": no_knobs, "spear": spear_knobs}
"""Each replay's knob function: its keyword parameters are the valid ``replay_kwargs``."""


# Clip-Cov and KL-Cov act on a fraction of a batch's tokens sized for batches of millions of tokens; a lab step has
# about a thousand, of which only the few uncertain ones carry covariance.  The lab-scaled values were chosen on the
# training entropy and reward of validation seeds (100-109: never the demo's seeds, never its held-out prompts); the
# sweeps are in docs/lab.md.  Clip-Cov is bistable here: past about 20% of the tokens the detached
# positive-advantage tokens leave the negative ones to dominate and the policy unlearns (reward -> 0), so the preset
# keeps the largest ratio that never diverged on the validation seeds.
_CLIP_COV_LAB = {"ratio": 0.2, "cov_lb": 0.1}
_KL_COV_LAB = {"ratio": 0.1, "kl_coef": 2.0}

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
            "Clip-Cov: detach a random 20% (lab-scaled; paper 0.02%) of tokens with covariance in (0.1, 5) "
            "(paper (1, 5))",
            "arXiv 2505.22617",
            loss="clip_cov",
            loss_kwargs=dict(_CLIP_COV_LAB),
        ),
        Preset(
            "kl_cov",
            "KL-Cov: 2 |log r| penalty on the top 10% (lab-scaled; paper 1 x 0.2%) covariance tokens",
            "arXiv 2505.22617",
            loss="kl_cov",
            loss_kwargs=dict(_KL_COV_LAB),
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
            replay="spear",
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
_MOVED_FIELDS = {
    "cure_top_k": "rollout_kwargs.top_k",
    "cure_stage1_fraction": "rollout_kwargs.stage1_fraction",
    "aepo_target": "rollout_kwargs.target",
    "spear_buffer_size": 'replay = "spear" with replay_kwargs.buffer_size',
    "spear_tool_bonus": "replay_kwargs.tool_bonus",
    "spear_schedule_fraction": "replay_kwargs.schedule_fraction",
}


def preset_from_mapping(name: str, values: Mapping[str, Any], *, known: Mapping[str, Preset] | None = None) -> Preset:
    """A new preset ``name`` from a config-file table: ``base`` (default ``"grpo"``) plus overridden fields.

    ``loss_kwargs``, ``rollout_kwargs`` and ``replay_kwargs`` are merged into the base's while the loss (rollout,
    replay) is unchanged, replaced otherwise.  Fields of earlier releases that became stage knobs (``cure_top_k``,
    ``spear_buffer_size``, ...) are refused with their new place.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"preset {name!r} must be a table of fields, got {values!r}")
    values = dict(values)
    base = get_preset(values.pop("base", "grpo"), known)
    moved = sorted(set(values) & set(_MOVED_FIELDS))
    if moved:
        raise ValueError(f"preset {name!r}: field {moved[0]!r} is now {_MOVED_FIELDS[moved[0]]}")
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ValueError(f"preset {name!r}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(_FIELDS))}")
    merged = base.to_dict()
    for kwargs, stage in _KWARGS.items():  # knobs merge while the stage's choice is unchanged
        if values.get(stage, merged[stage]) != merged[stage]:
            merged[kwargs] = {}
        elif isinstance(values.get(kwargs), Mapping):
            values[kwargs] = {**merged[kwargs], **dict(values[kwargs])}
    merged.update(values)
    merged["name"] = name
    return Preset(**merged)
