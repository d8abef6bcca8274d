"""The lab's multi-turn tool-use methods: agentic AEPO's entropy-balanced rollout and SPEAR's self-imitation replay.

Both run on a task with a tool (the built-in ``calculator``): the policy's response is a sequence of model turns
separated by the environment's tool replies (:func:`~entrolab.lab.rollout.turn_index`).

- :func:`aepo_eb_rollout` (preset ``aepo_agentic``): how many independent roots each question gets is decided by
  pre-monitoring the entropy at the root against the entropy after tool calls; the rest of the budget goes to
  branches made after tool calls, where the entropy rose since the path's first turn, damped when a question keeps
  branching round after round.
- :class:`SpearReplay` (preset ``spear``): positive-advantage trajectories are kept for a few steps; when the buffer
  fills it is replayed once, with advantages recalibrated against the median of past group means, through a Clip-Cov
  pass scaled by a warm-up schedule, then emptied.  Its state is part of the lab's checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from entrolab.advantages import empg_advantages, spear_recalibrate, spear_subsample
from entrolab.lab.policy import Policy, Tokenizer
from entrolab.lab.rollout import (
    Rollout,
    concat_rollouts,
    generate,
    subset_rollout,
    tool_kwargs,
    turn_index,
    turn_means,
)
from entrolab.lab.tasks import Example, Task
from entrolab.sampling import aepo_branch_probability, aepo_root_count, aepo_should_branch, aepo_step_entropy

__all__ = [
    "AEPO_BRANCH_PROBABILITY",
    "SpearReplay",
    "aepo_eb_rollout",
    "empg_turn_advantages",
    "spear_schedule_steps",
]

AEPO_BRANCH_PROBABILITY = 0.5
"""AEPO-EB: branch when the penalised probability is at least this (``branch_probability``)."""


@dataclass
class _Path:
    """One response of a question: ``ids`` is the whole response (inherited prefix, then this path's own
    continuation, which is row ``row`` of generation call ``call``), with per-token entropies and tool flags."""

    question: int
    ids: list[int]
    entropy: list[float]
    tool: list[bool]
    prefix_len: int
    call: int
    row: int
    turn_entropy: list[float] = field(default_factory=list)
    """Step entropy of each model turn (:func:`~entrolab.sampling.aepo_step_entropy`); 0 for a turn without
    sampled tokens."""
    cuts: list[int] = field(default_factory=list)
    """``cuts[r - 1]``: where turn ``r`` starts (just after the ``r``-th tool reply)."""


def _annotate(path: _Path, vocab_size: int) -> None:
    tool = torch.tensor(path.tool, dtype=torch.bool).unsqueeze(0)
    turns = turn_index(~tool, tool)[0]  # (n,)
    n_turns = int(turns.max()) + 1 if turns.numel() else 1
    sampled = ~tool[0]
    masks = (turns.unsqueeze(0) == torch.arange(n_turns).unsqueeze(1)) & sampled  # (J, n)
    ent = torch.tensor(path.entropy, dtype=torch.float64).expand(n_turns, -1)
    path.turn_entropy = aepo_step_entropy(ent, masks, vocab_size=vocab_size).tolist()
    path.cuts = []
    for r in range(1, n_turns):
        own = (masks[r]).nonzero()
        path.cuts.append(int(own[0]) if own.numel() else len(path.ids))


@dataclass
class _Forest:
    """The responses grown so far for a batch of questions (``paths[q]``) and the generation calls that made them."""

    model: Policy
    task: Task
    tok: Tokenizer
    base: list[list[int]]
    max_new: int
    temperature: float
    generator: torch.Generator
    paths: list[list[_Path]]
    calls: list[Rollout] = field(default_factory=list)

    def launch(self, questions: list[int], sources: list[_Path | None], cuts: list[int]) -> list[_Path]:
        """Generate one response per ``questions[i]``: a fresh root when ``sources[i]`` is None, else a copy of
        ``sources[i]`` up to ``cuts[i]`` that re-generates from there.  The new paths are appended and returned."""
        if not questions:
            return []
        prefixes = [s.ids[:c] if s is not None else [] for s, c in zip(sources, cuts)]
        out = generate(
            self.model,
            [self.base[q] + p for q, p in zip(questions, prefixes)],
            max_new_tokens=self.max_new,
            budgets=torch.tensor([self.max_new - len(p) for p in prefixes]),
            temperature=self.temperature,
            eos_id=self.tok.eos_id,
            pad_id=self.tok.pad_id,
            generator=self.generator,
            **tool_kwargs(self.task, self.tok, prefixes),  # type: ignore[arg-type]
        )
        assert out.sample_entropy is not None and out.tool_mask is not None
        self.calls.append(out)
        vocab = int(self.model.head.weight.shape[0])
        made = []
        for i, (q, s, c) in enumerate(zip(questions, sources, cuts)):
            n = int((out.completion_mask[i] | out.tool_mask[i]).sum())  # real tokens are a prefix of the row
            path = _Path(
                question=q,
                ids=prefixes[i] + out.completion_ids[i, :n].tolist(),
                entropy=(s.entropy[:c] if s is not None else []) + out.sample_entropy[i, :n].tolist(),
                tool=(s.tool[:c] if s is not None else []) + out.tool_mask[i, :n].tolist(),
                prefix_len=len(prefixes[i]),
                call=len(self.calls) - 1,
                row=i,
            )
            _annotate(path, vocab)
            if s is not None:  # a copy keeps its source's first turn
                path.turn_entropy[0] = s.turn_entropy[0]
            self.paths[q].append(path)
            made.append(path)
        return made


def _branch_round(
    grow: _Forest, r: int, consecutive: list[int], *, budget: int, weight: float, penalty: float
) -> tuple[list[_Path], bool]:
    """Round ``r`` of AEPO-EB's branching: every path with an ``r``-th tool reply and text after it may branch
    there while its question has budget left.  Updates ``consecutive`` in place; returns the new branches and
    whether any path was a candidate (no candidate ends the branching)."""
    todo_q: list[int] = []
    todo_src: list[_Path | None] = []
    todo_cut: list[int] = []
    any_candidate = False
    for q, question_paths in enumerate(grow.paths):
        branched = False
        for p in list(question_paths):
            if len(p.cuts) < r or p.cuts[r - 1] < p.prefix_len or p.cuts[r - 1] >= len(p.ids):
                continue  # no r-th reply of its own, or nothing generated after it
            any_candidate = True
            if len(question_paths) + todo_q.count(q) >= budget:
                break
            u = float(torch.rand((), generator=grow.generator, dtype=torch.float64))
            prob = aepo_branch_probability(
                u, p.turn_entropy[r], p.turn_entropy[0], consecutive=consecutive[q], weight=weight, penalty=penalty
            )
            if aepo_should_branch(prob, threshold=AEPO_BRANCH_PROBABILITY):
                todo_q.append(q)
                todo_src.append(p)
                todo_cut.append(p.cuts[r - 1])
                branched = True
        consecutive[q] = consecutive[q] + 1 if branched else 0
    return grow.launch(todo_q, todo_src, todo_cut), any_candidate


def aepo_eb_rollout(
    model: Policy,
    task: Task,
    examples: list[Example],
    tok: Tokenizer,
    *,
    group_size: int,
    max_new: int,
    temperature: float,
    generator: torch.Generator,
    weight: float = 0.2,
    penalty: float = 0.05,
    beta: float = 0.5,
) -> tuple[Rollout, list[str], dict[str, float]]:
    r"""Agentic AEPO's entropy-balanced rollout: ``group_size`` responses per question, as roots and branches.

    1. **Pre-monitoring.** One response per question: ``H_root`` is its first turn's step entropy, ``H_tool`` the
       mean step entropy of the turns after its tool replies (``H_root`` when it made no call).  The question gets
       ``m = aepo_root_count(H_root, H_tool, budget=group_size, beta)`` roots; the monitoring response is the first.
    2. **Branching.** Round ``r = 1, 2, ...``: every response that got an ``r``-th tool reply and went on draws
       ``U``; ``p = aepo_branch_probability(U, H_now, H_init, consecutive=l)`` with ``H_now`` the step entropy of the
       turn after that reply, ``H_init`` the path's first turn's; if ``p >= 0.5`` and the question has budget left,
       the path is copied there (``beam_size - 1 = 1`` branch) and the copy re-generates from just after the reply.
       ``l`` counts the consecutive rounds in which the question branched.
    3. **Filling.** Questions still short of ``group_size`` get fresh roots.

    A branch's inherited prefix is part of its prompt (no loss on it, as CURE); it is rewarded on prefix plus
    continuation.  Rows come grouped per question (``group_size`` contiguous rows).

    References
    ----------
    Dong et al., "Agentic Entropy-Balanced Policy Optimization", arXiv 2510.14545, section 3.1; the authors'
    ``vllm_rollout_with_tools.py``; ``shared/specs/llm_rl.md`` section 16.1, ``decoding.md`` 7.3.  Departures: the
    monitoring response is one of the question's roots (the code samples it separately and discards it); the step
    entropy is the exact entropy of the sampling distribution rather than of vLLM's top-10 log-probs; the code's
    separate 50-token root probe is the first turn of the monitoring response.

    Returns
    -------
    (Rollout, list[str], dict)
        The rollout, the texts to score (prefix + continuation) and metrics ``aepo_roots`` (mean roots per question),
        ``aepo_branches`` (mean branches per question), ``aepo_branch_rounds`` (rounds in which some question
        branched) and ``aepo_fresh`` (mean fill-in roots per question).
    """
    k = group_size
    grow = _Forest(
        model=model,
        task=task,
        tok=tok,
        base=[tok.prompt_ids(ex.prompt) for ex in examples],
        max_new=max_new,
        temperature=temperature,
        generator=generator,
        paths=[[] for _ in examples],
    )
    everyone = list(range(len(examples)))
    # 1. pre-monitoring: one response per question decides its number of roots
    roots_wanted = []
    for p in grow.launch(everyone, [None] * len(everyone), [0] * len(everyone)):
        after = [h for h, cut in zip(p.turn_entropy[1:], p.cuts) if cut < len(p.ids)]
        h_tool = sum(after) / len(after) if after else p.turn_entropy[0]
        roots_wanted.append(aepo_root_count(p.turn_entropy[0], h_tool, budget=k, beta=beta))
    more = [q for q, m in enumerate(roots_wanted) for _ in range(m - 1)]
    grow.launch(more, [None] * len(more), [0] * len(more))
    # 2. branching after tool replies, round by round
    consecutive = [0] * len(examples)
    branches = [0] * len(examples)
    rounds_with_branches = 0
    for r in range(1, max_new + 1):
        made, any_candidate = _branch_round(grow, r, consecutive, budget=k, weight=weight, penalty=penalty)
        for p in made:
            branches[p.question] += 1
        rounds_with_branches += bool(made)
        if not any_candidate:
            break
    # 3. fill every question up to its budget with fresh roots
    fill = [q for q in everyone for _ in range(k - len(grow.paths[q]))]
    grow.launch(fill, [None] * len(fill), [0] * len(fill))
    offsets = [0]
    for c in grow.calls:
        offsets.append(offsets[-1] + c.completion_ids.shape[0])
    both = concat_rollouts(grow.calls, pad_id=tok.pad_id)
    order = [offsets[p.call] + p.row for q in everyone for p in grow.paths[q]]
    texts = [tok.decode(p.ids) for q in everyone for p in grow.paths[q]]
    n = max(1, len(examples))
    metrics = {
        "aepo_roots": sum(roots_wanted) / n,
        "aepo_branches": sum(branches) / n,
        "aepo_branch_rounds": float(rounds_with_branches),
        "aepo_fresh": len(fill) / n,
    }
    return subset_rollout(both, torch.tensor(order)), texts, metrics


# -------------------------------------------------------------------------------------------------------------- SPEAR
class SpearReplay:
    """SPEAR's self-imitation buffers: positive-advantage trajectories and the baseline of past group rewards.

    ``add`` keeps the step's trajectories with advantage ``> 0`` (with their rewards and step) and the per-group
    reward means and stds (the last ``baseline_size`` groups), and drops trajectories more than ``tolerate_steps``
    steps older than the newest.  The buffer is ``full`` when it holds more than ``1.5 * buffer_size``
    trajectories; ``take`` then recalibrates their advantages (:func:`~entrolab.losses.spear_recalibrate`: reward
    minus the median group mean, no std normalisation, negatives dropped), keeps a random power-of-two subset
    (:func:`~entrolab.losses.spear_subsample`) and empties the trajectory buffer (the baseline stays).

    References
    ----------
    "Learn the Ropes, Then Trust the Wins: Self-imitation with Progressive Exploration for Agentic Reinforcement
    Learning", arXiv 2509.22601, section 3.2; the authors' ``TrajectoryBufferBatch``; ``shared/specs/llm_rl.md`` 17.
    """

    def __init__(self, *, buffer_size: int = 2048, tolerate_steps: int = 10, baseline_size: int = 10240) -> None:
        for name, v in (
            ("buffer_size", buffer_size),
            ("tolerate_steps", tolerate_steps),
            ("baseline_size", baseline_size),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.buffer_size = buffer_size
        self.tolerate_steps = min(tolerate_steps, 10)
        self.baseline_size = baseline_size
        self.chunks: list[dict[str, Any]] = []
        self.group_means: list[float] = []
        self.group_stds: list[float] = []

    def __len__(self) -> int:
        return sum(int(c["rewards"].numel()) for c in self.chunks)

    @property
    def full(self) -> bool:
        return len(self) > 1.5 * self.buffer_size

    def add(self, rollout: Rollout, rewards: Tensor, advantages: Tensor, *, group_size: int, step: int) -> None:
        """Store the step's trajectories with ``advantages > 0`` (``(B,)``) and the groups' reward statistics."""
        groups = rewards.view(-1, group_size)
        self.group_means = (self.group_means + groups.mean(-1).tolist())[-self.baseline_size :]
        self.group_stds = (self.group_stds + groups.std(-1, unbiased=False).tolist())[-self.baseline_size :]
        keep = (advantages > 0).nonzero().flatten()
        if keep.numel():
            part = subset_rollout(rollout, keep)
            self.chunks.append({"step": step, "rewards": rewards[keep].clone(), "rollout": dataclasses.asdict(part)})
        newest = max(c["step"] for c in self.chunks) if self.chunks else step
        self.chunks = [c for c in self.chunks if newest - c["step"] <= self.tolerate_steps]

    def take(self, *, pad_id: int, generator: torch.Generator | None = None) -> tuple[Rollout | None, Tensor, float]:
        """The replay batch, its recalibrated advantages ``(N,)`` and the baseline ``b``; empties the buffer.  ``None``
        when no trajectory beats the baseline."""
        parts = [Rollout(**c["rollout"]) for c in self.chunks]
        rewards = torch.cat([c["rewards"] for c in self.chunks]) if self.chunks else torch.zeros(0)
        self.chunks = []
        if not parts or not self.group_means:
            return None, torch.zeros(0), 0.0
        means = torch.tensor(self.group_means, dtype=torch.float32)
        adv, keep = spear_recalibrate(rewards, group_means=means)
        baseline = float(torch.quantile(means.double(), 0.5))
        idx = spear_subsample(keep, buffer_size=self.buffer_size, generator=generator)
        if idx.numel() == 0:
            return None, torch.zeros(0), baseline
        return subset_rollout(concat_rollouts(parts, pad_id=pad_id), idx), adv[idx], baseline

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer_size": self.buffer_size,
            "tolerate_steps": self.tolerate_steps,
            "baseline_size": self.baseline_size,
            "chunks": self.chunks,
            "group_means": list(self.group_means),
            "group_stds": list(self.group_stds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_size = int(state["buffer_size"])
        self.tolerate_steps = int(state["tolerate_steps"])
        self.baseline_size = int(state["baseline_size"])
        self.chunks = [dict(c) for c in state["chunks"]]
        self.group_means = [float(v) for v in state["group_means"]]
        self.group_stds = [float(v) for v in state["group_stds"]]


def spear_schedule_steps(total_steps: int, fraction: float) -> int:
    """The lab's ``S`` (replay warm-up) and ``S_tool`` (tool-bonus decay): ``fraction`` of the run's RL steps, >= 1."""
    return max(1, math.ceil(fraction * total_steps))


def empg_turn_advantages(entropy: Tensor, mask: Tensor, turns: Tensor, advantages: Tensor, **empg: Any) -> Tensor:
    """EMPG on a multi-turn rollout: each model turn is a step, its entropy the mean of its tokens' entropies
    (:func:`~entrolab.lab.rollout.turn_means`); :func:`~entrolab.losses.empg_advantages` over the batch's turns, and
    every token takes its turn's advantage.

    Shapes: ``entropy``, ``mask``, ``turns`` ``(B, L)`` (``turns`` from :func:`~entrolab.lab.rollout.turn_index`),
    ``advantages`` ``(B,)``; returns ``(B, L)``, 0 off the mask.
    """
    step_entropy, step_mask = turn_means(entropy, mask, turns)
    per_turn = empg_advantages(step_entropy, step_mask, advantages, **empg)  # (B, J)
    return per_turn.gather(1, turns.clamp_max(per_turn.shape[1] - 1)) * mask
