"""The per-paper rollouts of the lab: CURE's and ETTRL's entropy-fork branching, ETTRL's majority-vote rewards,
AEPO's tempered mix-in and SPEAR's self-imitation replay (AEPO-EB's agentic rollout is in :mod:`.agentic`).

Each is a plain function of the policy, the task and explicit knobs; :mod:`entrolab.lab.stages` dispatches to them
by the preset's ``rollout``.
"""

from __future__ import annotations

from collections import Counter

import torch

from entrolab.advantages import aepo_mix, aepo_temperature, grpo_advantages, spear_replay_weight
from entrolab.lab.agentic import SpearReplay
from entrolab.lab.config import LabError
from entrolab.lab.policy import Policy, Tokenizer
from entrolab.lab.rollout import Rollout, concat_rollouts, generate, score_completions, subset_rollout, tool_kwargs
from entrolab.lab.tasks import Example, Task
from entrolab.losses import Aggregation, get_policy_loss
from entrolab.sampling import select_fork_points

__all__ = [
    "AEPO_K_FRACTION",
    "CURE_BRANCHES",
    "SPEAR_REPLAY_LOSS",
    "aepo_mix_in",
    "branched_rollout",
    "cure_rollout",
    "majority_rewards",
    "prompt_ids",
    "spear_replay",
]


def prompt_ids(tok: Tokenizer, ex: Example) -> list[int]:
    """The token ids of an example's prompt."""
    return tok.prompt_ids(ex.prompt)


CURE_BRANCHES = 3
"""Continuations per fork in CURE stage 1 (the paper's n2)."""


def cure_rollout(
    model: Policy,
    task: Task,
    examples: list[Example],
    tok: Tokenizer,
    *,
    group_size: int,
    max_new: int,
    temperature: float,
    top_k: int,
    generator: torch.Generator,
    max_prompt_tokens: int | None = None,
    truncate: str = "error",
    compat: str = "paper",
) -> tuple[Rollout, list[str], dict[str, float]]:
    """CURE stage 1 (arXiv 2508.11016, section 3; ``shared/specs/llm_rl.md`` section 19): per prompt,
    ``n1 = group_size / 4`` originals; each is cut before a critical token drawn uniformly from its
    ``top_k`` highest-entropy positions (position 0 and the end-of-sequence token excluded) and continued
    ``CURE_BRANCHES`` times from ``prompt + response[:c]``, within the original answer budget.  The group is the
    originals and their branches, contiguous per prompt; a branch's prefix is part of its prompt, so the loss covers
    only the regenerated tokens, and it is rewarded on ``prefix + continuation``.

    Departure: the paper also skips tokens whose text is at most one character (sub-word pieces of punctuation); with
    the built-in character tokenizer every token is one character, so only whitespace-only tokens are skipped.
    """
    rollout, texts, metrics = branched_rollout(
        model, task, examples, tok, group_size=group_size, max_new=max_new, temperature=temperature,
        strategy="random_of_top", top_k=top_k, generator=generator, max_prompt_tokens=max_prompt_tokens,
        truncate=truncate, compat=compat,
    )  # fmt: skip
    return rollout, texts, {"cure_stage": 1.0, **{f"cure_{k}": v for k, v in metrics.items()}}


def branch_prompts(
    prompts: list[list[int]],
    prefixes: list[list[int]],
    *,
    max_prompt_tokens: int | None,
    truncate: str = "error",
    compat: str = "paper",
) -> tuple[list[list[int]], list[list[int]], int]:
    """Each branch's prompt ``prompt + prefix`` within ``max_prompt_tokens``; returns the prompts, the prefixes they
    actually carry, and how many were too long.  Too long: ``compat="code"`` keeps the first ``max_prompt_tokens``
    tokens (the released cut: the prefix loses its end, so the branch restarts earlier than its fork);
    otherwise ``truncate="error"`` raises ``ValueError`` and ``"skip"`` branches from the prompt alone."""
    out_prompts, out_prefixes, too_long = [], [], 0
    for i, (p, pre) in enumerate(zip(prompts, prefixes, strict=True)):
        full = p + pre
        if max_prompt_tokens is None or len(full) <= max_prompt_tokens:
            out_prompts.append(full)
            out_prefixes.append(pre)
            continue
        too_long += 1
        if compat == "code":
            cut = full[:max_prompt_tokens]
            out_prompts.append(cut)
            out_prefixes.append(cut[len(p) :])
        elif truncate == "error":
            raise ValueError(
                f"CURE branch {i}: prompt ({len(p)} tokens) + prefix ({len(pre)}) exceeds max_prompt_tokens "
                f"{max_prompt_tokens}; raise it, or set truncate='skip' (branch from the prompt) or compat='code'"
            )
        else:
            out_prompts.append(list(p))
            out_prefixes.append([])
    return out_prompts, out_prefixes, too_long


def branched_rollout(
    model: Policy,
    task: Task,
    examples: list[Example],
    tok: Tokenizer,
    *,
    group_size: int,
    max_new: int,
    temperature: float,
    strategy: str,
    top_k: int,
    generator: torch.Generator,
    max_prompt_tokens: int | None = None,
    truncate: str = "error",
    compat: str = "paper",
) -> tuple[Rollout, list[str], dict[str, float]]:
    """``group_size / 4`` originals per prompt, each forked once (``select_fork_points`` with ``strategy`` over its
    ``top_k`` highest-entropy positions) into ``CURE_BRANCHES`` continuations of ``prompt + response[:c]``; one
    contiguous group per prompt (originals, then branches) and the texts to score (``prefix + continuation``)."""
    n1 = group_size // (1 + CURE_BRANCHES)
    orig_prompts = [ids for ex in examples for ids in [prompt_ids(tok, ex)] * n1]
    common = {"temperature": temperature, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "generator": generator}
    orig = generate(model, orig_prompts, max_new_tokens=max_new, **common, **tool_kwargs(task, tok))  # type: ignore[arg-type]
    assert orig.sample_entropy is not None
    blank = [i for i in orig.completion_ids.unique().tolist() if not tok.decode([i]).strip()]  # the ids present only
    exclude = (orig.completion_ids == tok.eos_id) | torch.isin(
        orig.completion_ids, torch.tensor(blank, dtype=torch.long)
    )
    forks = select_fork_points(
        orig.sample_entropy, orig.completion_mask, top_k, strategy=strategy, exclude=exclude, generator=generator
    )[:, 0]
    found = forks >= 0
    cuts = forks.clamp_min(0).tolist()  # no valid position: branch from the prompt itself (CURE's c = 0)
    # per branch row: the parent's response prefix (part of its prompt), its prompt and its remaining budget
    prefixes = [orig.completion_ids[j, :c].tolist() for j, c in enumerate(cuts) for _ in range(CURE_BRANCHES)]
    parents = [orig_prompts[j // CURE_BRANCHES] for j in range(len(prefixes))]
    branch_prompts_, prefixes, too_long = branch_prompts(
        parents, prefixes, max_prompt_tokens=max_prompt_tokens, truncate=truncate, compat=compat
    )
    budgets = [max_new - len(p) for p in prefixes]
    tools = tool_kwargs(task, tok, prefixes)  # a call opened in the inherited prefix closes in the continuation
    branch = generate(
        model,
        branch_prompts_,
        max_new_tokens=max_new,
        budgets=torch.tensor(budgets),
        **common,  # type: ignore[arg-type]
        **tools,
    )
    orig_texts = [tok.decode(row.tolist()) for row in orig.completion_ids]
    branch_texts = [tok.decode(p + row.tolist()) for p, row in zip(prefixes, branch.completion_ids)]
    # one group per prompt: its n1 originals, then their n1 * CURE_BRANCHES branches
    n_orig, order = len(orig_prompts), []
    for i in range(len(examples)):
        order += list(range(i * n1, (i + 1) * n1))
        order += [n_orig + b for b in range(i * n1 * CURE_BRANCHES, (i + 1) * n1 * CURE_BRANCHES)]
    both = concat_rollouts([orig, branch], pad_id=tok.pad_id)
    rollout = subset_rollout(both, torch.tensor(order))
    all_texts = orig_texts + branch_texts
    texts = [all_texts[k] for k in order]
    metrics = {
        "fork_found_frac": float(found.float().mean()),
        "fork_position": float(forks[found].float().mean()) if bool(found.any()) else 0.0,
        "truncated_frac": too_long / max(len(prefixes), 1),
    }
    return rollout, texts, metrics


def majority_rewards(
    task: Task, owners: list[Example], texts: list[str], group_size: int
) -> tuple[torch.Tensor, float]:
    """ETTRL's label-free rewards: 1 where a completion's answer equals its group's majority answer
    (``task.vote_key``; ties to the smallest key, unanswerable completions never win), and the share of groups whose
    majority answer is actually correct (the pseudo-labels' accuracy, a metric only)."""
    keys = [task.vote_key(ex, t) for ex, t in zip(owners, texts)]
    rewards, right = [], 0
    for g in range(0, len(keys), group_size):
        votes = Counter(k for k in keys[g : g + group_size] if k is not None)
        winner = min(votes, key=lambda k: (-votes[k], k)) if votes else None
        rewards += [1.0 if k is not None and k == winner else 0.0 for k in keys[g : g + group_size]]
        if winner is not None:
            first = next(i for i in range(g, g + group_size) if keys[i] == winner)
            right += task.score(owners[first], texts[first]) > 0.5
    return torch.tensor(rewards, dtype=torch.float32), right / max(1, len(keys) // group_size)


AEPO_K_FRACTION = 60 / 2560
"""AEPO: tempered positives mixed in per step, as a fraction of the batch (the authors' 60 of 2560 samples)."""


def aepo_mix_in(
    model: Policy,
    task: Task,
    tok: Tokenizer,
    examples: list[Example],
    rollout: Rollout,
    adv_seq: torch.Tensor,
    *,
    group_size: int,
    temperature: float,
    max_new: int,
    prev_entropy: float | None,
    target: float | None,
    generator: torch.Generator,
) -> tuple[Rollout, torch.Tensor, dict[str, float]]:
    """AEPO (arXiv 2510.08141; ``shared/specs/llm_rl.md`` section 15): sample the first quarter of the step's prompts
    again at 1.2 (previous entropy at or below the target) or 0.8, keep the answers with advantage > 0.05 and put up
    to ``AEPO_K_FRACTION`` of the batch of them (half as many above the target) in place of the first rows, with
    advantage 1 at every token; their old log-probs are re-scored at the training temperature.  The batch size and
    the on-policy reward metrics are unchanged."""
    assert prev_entropy is not None and target is not None
    t = aepo_temperature(prev_entropy, target=target)
    quarter = examples[: max(1, len(examples) // 4)]
    prompts = [ids for ex in quarter for ids in [prompt_ids(tok, ex)] * group_size]
    tempered = generate(
        model, prompts, max_new_tokens=max_new, temperature=t, eos_id=tok.eos_id, pad_id=tok.pad_id,
        generator=generator, **tool_kwargs(task, tok),
    )  # fmt: skip
    owners = [ex for ex in quarter for _ in range(group_size)]
    texts = [tok.decode(row.tolist()) for row in tempered.completion_ids]
    t_rewards = torch.tensor([task.score(ex, x) for ex, x in zip(owners, texts)], dtype=torch.float32)
    t_adv = grpo_advantages(t_rewards, group_size=group_size)
    b = rollout.completion_ids.shape[0]
    taken, rows = aepo_mix(
        t_adv, k_max=max(1, round(AEPO_K_FRACTION * b)), below_target=prev_entropy <= target, batch_size=b
    )
    metrics = {"aepo_temperature": t, "aepo_mixed": float(taken.numel()), "aepo_target": target}
    if taken.numel() == 0:
        return rollout, adv_seq, metrics
    chosen = subset_rollout(tempered, taken)
    with torch.no_grad():  # the behaviour policy at the training temperature, not the tempered one
        logp, ent, _ = score_completions(model, chosen, temperature=temperature)
    chosen.sample_logp, chosen.sample_entropy = logp * chosen.completion_mask, ent
    both = concat_rollouts([rollout, chosen], pad_id=tok.pad_id)
    order = list(range(b))
    for j, r in enumerate(rows.tolist()):
        order[r] = b + j
    adv = adv_seq.clone()
    adv[rows] = 1.0
    return subset_rollout(both, torch.tensor(order)), adv, metrics


SPEAR_REPLAY_LOSS = {"ratio": 0.02, "cov_lb": 1.0, "cov_ub": 40.0}
"""SPEAR's replay pass: Clip-Cov with ratio 0.02 and bounds [1, 40] (the README's)."""


def spear_replay(
    model: Policy,
    opt: torch.optim.Optimizer,
    spear: SpearReplay,
    *,
    grad_clip: float,
    temperature: float,
    agg: str | Aggregation,
    step: int,
    max_steps: int,
    pad_id: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """SPEAR's self-imitation pass (arXiv 2509.22601, section 3.2): once the buffer is full, one optimizer step of
    Clip-Cov on the replayed trajectories with recalibrated advantages, scaled by ``spear_replay_weight``.  As in
    verl, the old log-probs are re-computed by the current policy just before the pass (the importance ratio starts
    at 1); the buffer is then empty."""
    replay, adv, baseline = spear.take(pad_id=pad_id, generator=generator)
    out = {"spear_baseline": baseline, "spear_replayed": 0.0, "spear_replay_weight": 0.0}
    if replay is None:
        return out
    weight = spear_replay_weight(step, max_steps=max_steps)
    with torch.no_grad():
        old_logp, _, _ = score_completions(model, replay, temperature=temperature)
    logp, ent, _ = score_completions(model, replay, temperature=temperature)
    res = get_policy_loss("clip_cov")(
        logp, old_logp, adv, replay.completion_mask, entropy=ent, agg=agg, generator=generator, **SPEAR_REPLAY_LOSS
    )
    loss = weight * res.loss
    if not torch.isfinite(loss):
        raise LabError(f"the SPEAR replay loss is {float(loss.detach())} at step {step + 1}")
    if weight > 0:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
    out.update(spear_replayed=float(adv.numel()), spear_replay_weight=weight, spear_replay_loss=float(loss.detach()))
    return out
