"""The stages of one RL step, as small dispatch tables of plain functions, and the run's state in one object.

:func:`entrolab.lab.trainer.train_one` reads as the recipe: sample prompts, ``ROLLOUTS[preset.rollout]``, score,
:func:`advantage_stage` (``GROUP_ADVANTAGES[preset.advantage]`` and the per-paper shaping), :func:`behaviour_stage`,
:func:`update_stage` (the policy loss plus the regularizer terms :func:`build_terms` built once from the preset),
:func:`after_update`, :func:`step_row`.  Everything a resumed run needs (model, optimizer, RNGs, controller, SIREN
anchor, EPO history, SPEAR buffer, AEPO's entropy) lives in :class:`RunState`, saved whole by ``state_dict()``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from entrolab.advantages import (
    dr_grpo_advantages,
    empg_advantages,
    ettrl_reshape,
    grpo_advantages,
    rloo_advantages,
    spear_tool_bonus,
)
from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.dynamics import dynamics_metrics
from entrolab.lab.agentic import SpearReplay, aepo_eb_rollout, empg_turn_advantages
from entrolab.lab.config import LabConfig, LabError
from entrolab.lab.method_rollouts import (
    aepo_mix_in,
    branched_rollout,
    cure_rollout,
    majority_rewards,
    prompt_ids,
    spear_replay,
)
from entrolab.lab.policy import Policy, Tokenizer
from entrolab.lab.presets import Preset
from entrolab.lab.rollout import (
    Rollout,
    generate,
    score_completions,
    subset_rollout,
    tool_kwargs,
    turn_index,
    turn_means,
)
from entrolab.lab.tasks import Example, Task
from entrolab.losses import (
    OLD_ENTROPY_LOSSES,
    Aggregation,
    LossOutput,
    SirenAnchor,
    entropy_bonus,
    epo,
    kl_estimate,
    kl_penalty,
    siren,
)
from entrolab.losses.epo import EntropyHistory
from entrolab.optim import make_optimizer

__all__ = [
    "GROUP_ADVANTAGES",
    "MAX_TURNS",
    "ROLLOUTS",
    "Batch",
    "RunContext",
    "RunState",
    "advantage_stage",
    "after_update",
    "behaviour_stage",
    "build_terms",
    "step_row",
    "update_stage",
]

MAX_TURNS = 8
"""Tool tasks: EPO keeps a reference entropy for the first ``MAX_TURNS`` model turns (later turns share the last)."""


@dataclass(frozen=True)
class RunContext:
    """What every stage reads and nothing changes during a run."""

    cfg: LabConfig
    preset: Preset
    task: Task
    tok: Tokenizer
    max_new: int
    loss_fn: Callable[..., LossOutput]
    agg: str | Aggregation
    spear_steps: int

    @property
    def has_tool(self) -> bool:
        return getattr(self.task, "tool", None) is not None


class RunState:
    """Everything of one run that changes from step to step, with ``state_dict()``/``load_state_dict()``.

    ``ref`` (the initial policy, for the KL) is constant and not saved.  The RNGs: ``rng`` (prompts), ``gen``
    (sampling and the losses' random choices) and torch's global one.
    """

    def __init__(self, cfg: LabConfig, preset: Preset, seed: int, init_model: Policy, *, has_tool: bool) -> None:
        self.model = copy.deepcopy(init_model)
        self.ref = copy.deepcopy(init_model).requires_grad_(False)
        self.opt = make_optimizer(cfg.optimizer, self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        self.rng = random.Random(f"train-{cfg.seed}-{seed}")
        self.gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + cfg.seed)
        self.controller: AdaptiveEntropyCoefficient | None = None
        self.anchor = SirenAnchor()
        # EPO's reference entropy: one per RL step on single-turn tasks, one per model turn on tool tasks
        self.history = EntropyHistory(max_steps=MAX_TURNS if has_tool else 1)
        spear = preset.replay_knobs if preset.replay == "spear" else None
        self.spear = SpearReplay(buffer_size=spear["buffer_size"]) if spear else None
        self.aepo: dict[str, float | None] = {"prev_entropy": 0.0, "target": None}  # the code starts from entropy 0
        self.step = 0
        self.metric_rows = 0

    def state_dict(self) -> dict[str, Any]:
        py = json.dumps(self.rng.getstate())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": {"python": py, "torch_gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "controller": None if self.controller is None else json.dumps(self.controller.state_dict()),
            "anchor": json.dumps(self.anchor.state_dict()),
            "history": json.dumps(self.history.state_dict()),
            "aepo": json.dumps(self.aepo),
            "spear": None if self.spear is None else self.spear.state_dict(),
            "step": self.step,
            "metric_rows": self.metric_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        py = json.loads(state["rng"]["python"])
        self.rng.setstate((py[0], tuple(py[1]), py[2]))
        self.gen.set_state(state["rng"]["torch_gen"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["controller"] is not None:
            self.controller = AdaptiveEntropyCoefficient(target=1.0)
            self.controller.load_state_dict(json.loads(state["controller"]))
        self.anchor.load_state_dict(json.loads(state["anchor"]))
        self.history.load_state_dict(json.loads(state["history"]))
        self.aepo.update(json.loads(state.get("aepo", "{}")))
        if self.spear is not None:
            self.spear.load_state_dict(state["spear"])
        self.step, self.metric_rows = int(state["step"]), int(state["metric_rows"])


@dataclass
class Batch:
    """One step's samples and what the stages derive from them (filled in order)."""

    examples: list[Example]
    rollout: Rollout
    texts: list[str]
    metrics: dict[str, float]
    """Rollout and shaping metrics of this step (added to its row)."""
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``(B,)`` the task's rewards (the ``reward`` metric)."""
    shaped: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``(B,)`` the rewards the advantages see."""
    turns: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``(B, T)`` model turn of each token."""
    adv_seq: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``(B,)`` sequence advantages."""
    adv: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``(B,)`` or ``(B, T)`` the advantages the loss sees."""
    ref_logp: torch.Tensor | None = None
    mean_entropy: float = 0.0
    reference_entropy: float | torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------- rollouts
RolloutFn = Callable[[RunContext, RunState, list[Example], int], tuple[Rollout, list[str], dict[str, float]]]


def standard_rollout(
    ctx: RunContext, state: RunState, examples: list[Example], step: int
) -> tuple[Rollout, list[str], dict[str, float]]:
    """``group_size`` independent samples per prompt (also AEPO's base batch, mixed into after the advantages)."""
    prompts = [ids for ex in examples for ids in [prompt_ids(ctx.tok, ex)] * ctx.cfg.group_size]
    rollout = generate(
        state.model, prompts, max_new_tokens=ctx.max_new, temperature=ctx.preset.temperature, eos_id=ctx.tok.eos_id,
        pad_id=ctx.tok.pad_id, generator=state.gen, **tool_kwargs(ctx.task, ctx.tok),
    )  # fmt: skip
    return rollout, [ctx.tok.decode(row.tolist()) for row in rollout.completion_ids], {}


def cure_stage(
    ctx: RunContext, state: RunState, examples: list[Example], step: int
) -> tuple[Rollout, list[str], dict[str, float]]:
    """CURE: stage 1 (critical-token branching) for the first ``stage1_fraction`` of the steps, then plain
    sampling from the stage-1 policy (knobs: :func:`~entrolab.lab.presets.cure_knobs`)."""
    knobs = ctx.preset.rollout_knobs
    if step < round(knobs["stage1_fraction"] * ctx.cfg.steps):
        return cure_rollout(
            state.model, ctx.task, examples, ctx.tok, group_size=ctx.cfg.group_size, max_new=ctx.max_new,
            temperature=ctx.preset.temperature, top_k=knobs["top_k"], generator=state.gen,
            max_prompt_tokens=knobs["max_prompt_tokens"], truncate=knobs["truncate"], compat=knobs["compat"],
        )  # fmt: skip
    rollout, texts, _ = standard_rollout(ctx, state, examples, step)
    return rollout, texts, {"cure_stage": 2.0}


def ettrl_stage(
    ctx: RunContext, state: RunState, examples: list[Example], step: int
) -> tuple[Rollout, list[str], dict[str, float]]:
    """ETTRL: one entropy-fork tree per chain, branched at the top-entropy token into 3 continuations."""
    rollout, texts, tree = branched_rollout(
        state.model, ctx.task, examples, ctx.tok, group_size=ctx.cfg.group_size, max_new=ctx.max_new,
        temperature=ctx.preset.temperature, strategy="top", top_k=1, generator=state.gen,
    )  # fmt: skip
    return rollout, texts, {f"ettrl_{k}": v for k, v in tree.items()}


def aepo_eb_stage(
    ctx: RunContext, state: RunState, examples: list[Example], step: int
) -> tuple[Rollout, list[str], dict[str, float]]:
    """Agentic AEPO's entropy-balanced roots and branches at tool replies."""
    return aepo_eb_rollout(
        state.model, ctx.task, examples, ctx.tok, group_size=ctx.cfg.group_size, max_new=ctx.max_new,
        temperature=ctx.preset.temperature, generator=state.gen,
    )  # fmt: skip


ROLLOUTS: dict[str, RolloutFn] = {
    "standard": standard_rollout,
    "aepo": standard_rollout,
    "cure": cure_stage,
    "ettrl": ettrl_stage,
    "aepo_eb": aepo_eb_stage,
}


# -------------------------------------------------------------------------------------------------- advantages
GROUP_ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "empg": grpo_advantages,  # EMPG modulates GRPO's advantages per token (below)
}


def score_batch(ctx: RunContext, b: Batch) -> None:
    """The task's rewards and every token's model turn."""
    owners = [ex for ex in b.examples for _ in range(ctx.cfg.group_size)]
    b.rewards = torch.tensor([ctx.task.score(ex, t) for ex, t in zip(owners, b.texts)], dtype=torch.float32)
    b.turns = turn_index(b.rollout.completion_mask, b.rollout.tool_mask if ctx.has_tool else None)  # (B, L)


def advantage_stage(ctx: RunContext, state: RunState, b: Batch, step: int) -> None:
    """Rewards -> ``GROUP_ADVANTAGES[preset.advantage]``, with the per-paper shaping around it: SPEAR's tool bonus,
    ETTRL's majority-vote pseudo-rewards and entropy reshaping, AEPO's tempered mix-in, EMPG's per-token
    modulation."""
    preset, g = ctx.preset, ctx.cfg.group_size
    group_advantages = GROUP_ADVANTAGES[preset.advantage]
    b.shaped = b.rewards
    if preset.replay == "spear" and preset.replay_knobs["tool_bonus"] and ctx.has_tool:
        assert b.rollout.tool_mask is not None
        calls = b.turns.masked_fill(~(b.rollout.completion_mask | b.rollout.tool_mask), 0).amax(-1)
        bonus = spear_tool_bonus(calls, step, max_steps=ctx.spear_steps)
        b.shaped = b.rewards + bonus
        b.metrics["spear_tool_bonus"] = float(bonus.mean())
    if preset.rollout == "ettrl":  # test-time RL: train on majority-vote pseudo-rewards, never on the labels
        owners = [ex for ex in b.examples for _ in range(g)]
        pseudo, vote_accuracy = majority_rewards(ctx.task, owners, b.texts, g)
        assert b.rollout.sample_entropy is not None
        m_f = b.rollout.completion_mask.float()
        response_entropy = (b.rollout.sample_entropy * m_f).sum(-1) / m_f.sum(-1).clamp_min(1)
        b.adv_seq = ettrl_reshape(group_advantages(pseudo, group_size=g), response_entropy, group_size=g)
        b.metrics.update(ettrl_pseudo_reward=float(pseudo.mean()), ettrl_vote_accuracy=vote_accuracy)
    else:
        b.adv_seq = group_advantages(b.shaped, group_size=g)  # (B,)
    if preset.rollout == "aepo":
        if state.aepo["target"] is None:  # a fraction of the first step's mean entropy, as adaptive_entropy
            assert b.rollout.sample_entropy is not None
            first = float(b.rollout.sample_entropy[b.rollout.completion_mask].mean())
            state.aepo["target"] = preset.rollout_knobs["target"] * max(first, 1e-6)
        b.rollout, b.adv_seq, mixed = aepo_mix_in(
            state.model, ctx.task, ctx.tok, b.examples, b.rollout, b.adv_seq, group_size=g,
            temperature=preset.temperature, max_new=ctx.max_new, prev_entropy=state.aepo["prev_entropy"],
            target=state.aepo["target"], generator=state.gen,
        )  # fmt: skip
        b.metrics.update(mixed)
    b.adv = b.adv_seq
    if preset.advantage == "empg":
        old_ent, mask = b.rollout.sample_entropy, b.rollout.completion_mask
        assert old_ent is not None
        if ctx.has_tool:  # EMPG's steps are the model turns between tool replies
            b.adv = empg_turn_advantages(old_ent, mask, b.turns, b.adv_seq)
        else:  # single-turn tasks: every token is a step
            b.adv = empg_advantages(old_ent, mask, b.adv_seq)


def behaviour_stage(ctx: RunContext, state: RunState, b: Batch, step: int) -> None:
    """The reference policy's log-probs when a KL is wanted, the rollout's mean entropy, the adaptive controller (set
    up from the first step's entropy) and EPO's reference entropy from the history."""
    want_kl = ctx.preset.kl_coef > 0 or (ctx.cfg.kl_metric_every > 0 and (step + 1) % ctx.cfg.kl_metric_every == 0)
    if want_kl:
        with torch.no_grad():
            b.ref_logp, _, _ = score_completions(state.ref, b.rollout, temperature=ctx.preset.temperature)
    old_ent = b.rollout.sample_entropy
    assert old_ent is not None
    valid = old_ent[b.rollout.completion_mask]
    b.mean_entropy = float(valid.mean()) if valid.numel() else 0.0
    target = ctx.preset.adaptive_entropy_target
    if target is not None and state.controller is None:
        state.controller = AdaptiveEntropyCoefficient(target=target * max(b.mean_entropy, 1e-6))
    past = state.history.reference()
    if past is not None:  # per token: its turn's historical mean entropy
        if ctx.has_tool:
            b.reference_entropy = past.float()[b.turns.clamp_max(state.history.max_steps - 1)]
        else:
            b.reference_entropy = float(past[0])


# -------------------------------------------------------------------------------------------- loss and update
@dataclass
class Minibatch:
    """One minibatch as the loss terms see it: the current policy's scores of rows ``idx``."""

    idx: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    logits: torch.Tensor | None
    mask: torch.Tensor


Term = Callable[[RunContext, RunState, Batch, Minibatch], LossOutput]


def _entropy_bonus(ctx: RunContext, state: RunState, b: Batch, mb: Minibatch) -> LossOutput:
    out = entropy_bonus(mb.entropy, mb.mask, coef=ctx.preset.entropy_coef, agg=ctx.agg)
    return LossOutput(out.loss, {})  # the loss already reports the entropy


def _adaptive_entropy(ctx: RunContext, state: RunState, b: Batch, mb: Minibatch) -> LossOutput:
    assert state.controller is not None
    out = entropy_bonus(mb.entropy, mb.mask, coef=state.controller, agg=ctx.agg)
    return LossOutput(out.loss, {"entropy_coef": torch.tensor(state.controller.value)})


def _siren(ctx: RunContext, state: RunState, b: Batch, mb: Minibatch) -> LossOutput:
    assert mb.logits is not None
    return siren(mb.logits, mb.mask, anchor=state.anchor, coef=ctx.preset.siren_coef)


def _epo(ctx: RunContext, state: RunState, b: Batch, mb: Minibatch) -> LossOutput:
    ref = b.reference_entropy[mb.idx] if isinstance(b.reference_entropy, torch.Tensor) else b.reference_entropy
    return epo(mb.entropy, mb.mask, reference_entropy=ref, coef=ctx.preset.epo_coef)


def _kl(ctx: RunContext, state: RunState, b: Batch, mb: Minibatch) -> LossOutput:
    assert b.ref_logp is not None
    out = kl_penalty(mb.logp, b.ref_logp[mb.idx], mb.mask, kind="k3", coef=ctx.preset.kl_coef)
    return LossOutput(out.loss, {})  # the KL to the initial policy is reported per step as kl_to_init


def build_terms(preset: Preset) -> list[Term]:
    """The regularizer terms a preset adds to its policy loss, in a fixed order."""
    terms: list[Term] = []
    if preset.entropy_coef > 0:
        terms.append(_entropy_bonus)
    if preset.adaptive_entropy_target is not None:
        terms.append(_adaptive_entropy)
    if preset.siren_coef > 0:
        terms.append(_siren)
    if preset.epo_coef > 0:
        terms.append(_epo)
    if preset.kl_coef > 0:
        terms.append(_kl)
    return terms


def update_stage(
    ctx: RunContext, state: RunState, b: Batch, terms: list[Term], *, seed: int, step: int, ckpt: Any
) -> dict[str, float]:
    """``ppo_epochs`` passes of ``minibatches`` optimizer steps on the policy loss plus the terms; the last update's
    metrics."""
    cfg, preset, r = ctx.cfg, ctx.preset, b.rollout
    old_logp = r.sample_logp  # the behaviour policy's, from the sampling pass itself: no second forward
    rows = (cfg.prompts_per_step // cfg.minibatches) * cfg.group_size
    out_metrics: dict[str, float] = {}
    for _epoch in range(cfg.ppo_epochs):
        for k in range(cfg.minibatches):
            idx = torch.arange(k * rows, (k + 1) * rows)
            sub = subset_rollout(r, idx)
            logp, ent, logits = score_completions(
                state.model, sub, temperature=preset.temperature, with_logits=preset.siren_coef > 0
            )
            mb = Minibatch(idx, logp, ent, logits, sub.completion_mask)
            # STEER weights with the sampling policy's entropy; the other losses with the current forward's
            old_ent = r.sample_entropy[idx] if r.sample_entropy is not None else None
            loss_ent = old_ent if preset.loss in OLD_ENTROPY_LOSSES and old_ent is not None else ent
            out = ctx.loss_fn(
                logp, old_logp[idx], b.adv[idx], mb.mask, entropy=loss_ent, agg=ctx.agg, generator=state.gen,
                **preset.loss_kwargs,
            )  # fmt: skip
            loss, extra = out.loss, dict(out.metrics)
            for term in terms:
                t = term(ctx, state, b, mb)
                loss = loss + t.loss
                extra.update(t.metrics)
            if not torch.isfinite(loss):
                raise LabError(
                    f"{preset.name} seed {seed}: the loss is {float(loss.detach())} at step {step + 1}; stopping. "
                    f"The last good checkpoint is {ckpt} (resume with --resume after changing the settings)"
                )
            state.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
            state.opt.step()
            out_metrics = {key: float(v) for key, v in extra.items()}
            out_metrics.update(loss=float(loss.detach()), grad_norm=float(grad_norm))
    return out_metrics


@torch.no_grad()
def batch_entropy(ctx: RunContext, state: RunState, b: Batch) -> float:
    """The current policy's mean token entropy over this step's completion tokens (at the method's temperature).

    Evaluated just after :func:`update_stage`; minus the batch's entropy before it (the rollout's own entropies: the
    sampling pass scores the batch with the same model and temperature, so no second forward is needed), it is the
    *observed* entropy change of the step, which the report sets against the covariance prediction
    ``-Cov(log pi, A)`` (``predicted_entropy_change``; Cui et al., arXiv 2505.22617, section 3)."""
    _, ent, _ = score_completions(state.model, b.rollout, temperature=ctx.preset.temperature)
    mask = b.rollout.completion_mask
    return float(ent[mask].double().mean()) if bool(mask.any()) else 0.0


def after_update(ctx: RunContext, state: RunState, b: Batch, loss_metrics: dict[str, float], step: int) -> None:
    """What the next steps carry: AEPO's entropy, the controller's observation, EPO's history, SPEAR's buffer and
    replay."""
    old_ent, mask = b.rollout.sample_entropy, b.rollout.completion_mask
    assert old_ent is not None
    if ctx.preset.rollout == "aepo":  # the update's mean entropy (the code's actor/entropy_loss) steers the next
        state.aepo["prev_entropy"] = float(loss_metrics.get("entropy", b.mean_entropy))
    if state.controller is not None:
        state.controller.observe(old_ent, mask)
    if ctx.has_tool:  # per-turn batch means; turns nobody reached this step take the step's mean
        n = state.history.max_steps
        t_ent, t_mask = turn_means(old_ent, mask, b.turns)
        t_sum, t_cnt = (t_ent * t_mask).sum(0)[:n], t_mask.sum(0)[:n]
        row = torch.full((n,), b.mean_entropy, dtype=torch.float64)
        row[: t_sum.numel()] = torch.where(t_cnt > 0, t_sum.double() / t_cnt.clamp_min(1), b.mean_entropy)
        state.history.record(row)
    else:
        state.history.record([b.mean_entropy])
    if state.spear is not None:
        state.spear.add(b.rollout, b.shaped, b.adv_seq, group_size=ctx.cfg.group_size, step=step)
        b.metrics["spear_buffer"] = float(len(state.spear))
        if state.spear.full:
            replayed = spear_replay(
                state.model, state.opt, state.spear, grad_clip=ctx.cfg.grad_clip,
                temperature=ctx.preset.temperature, agg=ctx.agg, step=step, max_steps=ctx.spear_steps,
                pad_id=ctx.tok.pad_id, generator=state.gen,
            )  # fmt: skip
            b.metrics.update(replayed)


def step_row(ctx: RunContext, b: Batch, loss_metrics: dict[str, float], *, t0: float, t_gen: float) -> dict[str, Any]:
    """The step's metrics row: rewards, entropy percentiles, the covariance behind collapse, timings, and the
    rollout's and the loss's own metrics (the loss's ``entropy`` is the last minibatch's after the earlier updates,
    so the rollout's mean entropy keeps the name)."""
    r, mask = b.rollout, b.rollout.completion_mask
    assert r.sample_entropy is not None
    dyn = {k: float(v) for k, v in dynamics_metrics(r.sample_logp, b.adv_seq, mask, entropy=r.sample_entropy).items()}
    n_tok = int(mask.sum())
    groups = b.rewards.view(-1, ctx.cfg.group_size)  # [prompts, group_size]
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "reward": float(b.rewards.mean()),
        "accuracy": float((b.rewards > 0.5).float().mean()),
        "entropy": b.mean_entropy,
        **{k: dyn[k] for k in ("entropy_p10", "entropy_p50", "entropy_p90")},
        **{k: dyn[k] for k in ("cov_mean", "cov_std", "cov_positive_frac", "predicted_entropy_change")},
    }
    if b.ref_logp is not None:
        kl = kl_estimate(r.sample_logp, b.ref_logp, kind="k3")
        row["kl_to_init"] = float((kl * mask).sum() / max(n_tok, 1))
    row.update(
        response_length=float(mask.sum(-1).float().mean()),
        zero_variance_groups=float((groups.std(-1) == 0).float().mean()),
        solve_none=float((groups <= 0.5).all(-1).float().mean()),  # 1 - pass@group_size on this step's prompts
        solve_all=float((groups > 0.5).all(-1).float().mean()),
        tokens_per_s=n_tok / max(seconds, 1e-9),
        generation_seconds=t_gen,
        step_seconds=seconds,
    )
    if r.tool_mask is not None and ctx.has_tool:
        starts = r.tool_mask.clone()
        starts[:, 1:] &= ~r.tool_mask[:, :-1]  # the first token of each tool reply
        row["tool_calls"] = float(starts.sum(-1).float().mean())
    row.update(b.metrics)
    row.update({k: v for k, v in loss_metrics.items() if k not in row})
    return row
