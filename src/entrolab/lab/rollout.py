"""Batched, KV-cached sampling from the lab's policy, and the training-time forward that scores what was sampled.

:func:`generate` left-pads the prompts, runs the prompt once, then one token per step for the whole batch from the
KV cache, at a given temperature, with an explicit ``torch.Generator``.  :func:`score_completions` runs the full
sequences once more, with gradients, and returns the per-token log-probs and entropies of the completion tokens from
the final hidden states through :func:`entrolab.entropy.linear_logprob_and_entropy` (no ``(B, T, V)`` logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entrolab.entropy import linear_logprob_and_entropy
from entrolab.lab.policy import Policy, Tokenizer
from entrolab.lab.tasks import Task
from entrolab.sampling.functional import sample_categorical

__all__ = [
    "Rollout",
    "concat_rollouts",
    "generate",
    "left_pad",
    "sample_categorical",
    "score_completions",
    "subset_rollout",
    "tool_kwargs",
    "turn_index",
    "turn_means",
]


@dataclass
class Rollout:
    """Sampled completions for a batch of prompts.

    Shapes: ``prompt_ids``/``prompt_mask`` ``(B, P)`` (left-padded), ``completion_ids``/``completion_mask``
    ``(B, L)`` (the mask covers tokens up to and including ``<eos>``), ``sample_logp`` ``(B, L)`` (log-prob of each
    sampled token under the sampling distribution, 0 at padding) and ``sample_entropy`` ``(B, L)`` (the entropy of
    that distribution, 0 at padding).

    The sampling distribution is the policy's at the sampling temperature, computed by the same model code that
    training uses, so ``sample_logp`` and ``sample_entropy`` are the behaviour policy's log-probs and entropies
    (equal to a re-scoring up to float rounding, tested): the trainer uses them as ``old_logp`` instead of running
    the model once more.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    sample_logp: Tensor
    sample_entropy: Tensor | None = None
    tool_mask: Tensor | None = None
    """``(B, L)`` bool: tokens the environment wrote (tool outputs); never trained on (``completion_mask`` is False
    there) but part of the sequence the policy conditions on."""


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists as a left-padded ``(B, P)`` id tensor and its bool mask."""
    if not seqs:
        raise ValueError("at least one prompt is needed")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = True
    return ids, mask


@torch.no_grad()
def generate(
    model: Policy,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    processors: Sequence[Callable[[Tensor], Tensor]] = (),
    budgets: Tensor | None = None,
    tool: Callable[[int, list[int]], list[int]] | None = None,
    tool_call_end: int | None = None,
) -> Rollout:
    """Sample up to ``max_new_tokens`` tokens per prompt (stopping a row at ``<eos>``), KV-cached.

    ``temperature`` must be > 0.  ``processors`` (e.g. a Top-H or min-p filter from :mod:`entrolab.sampling`) map the
    temperature-scaled ``(B, V)`` logits of each step to filtered ones, in order, as transformers' warpers do.
    ``budgets`` ``(B,)`` optionally gives each row fewer new tokens than ``max_new_tokens`` (CURE's continuations keep
    the total answer length).  Rows that have finished keep producing ``pad_id`` (masked out).

    Multi-turn tool use: when a row samples ``tool_call_end``, ``tool(row, its completion ids so far)`` returns the
    environment's answer as token ids, which the row then takes over the next steps instead of sampling (they count
    against the budget, are marked in ``tool_mask`` and left out of ``completion_mask``, so no loss falls on them).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    ids, pmask = left_pad(prompts, pad_id)
    b = ids.shape[0]
    head = model.head.weight
    hidden, cache = model(ids, pmask)
    key_mask = pmask
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long)
    out_mask = torch.zeros((b, max_new_tokens), dtype=torch.bool)
    out_logp = torch.zeros((b, max_new_tokens))
    out_ent = torch.zeros((b, max_new_tokens))
    out_tool = torch.zeros((b, max_new_tokens), dtype=torch.bool)
    if (tool is None) != (tool_call_end is None):
        raise ValueError("tool and tool_call_end must be given together")
    if budgets is not None and (budgets.shape != (len(prompts),) or bool((budgets < 1).any())):
        raise ValueError(f"budgets must be a ({len(prompts)},) tensor of ints >= 1, got {budgets!r}")
    pending: list[list[int]] = [[] for _ in range(b)]  # environment tokens still to write, per row
    alive = torch.ones(b, dtype=torch.bool)
    last = hidden[:, -1]  # (B, d)
    for step in range(max_new_tokens):
        logits = (last @ head.T).float() / temperature  # (B, V)
        for proc in processors:
            logits = proc(logits)
        logp_all = torch.log_softmax(logits, -1)
        probs = logp_all.exp()
        tok = sample_categorical(probs, generator=generator)  # (B,)
        forced = torch.zeros(b, dtype=torch.bool)
        rows = [i for i in range(b) if pending[i]] if tool is not None else []
        if rows:  # the environment's tokens replace the draws (which are still made: the random stream stays aligned)
            forced[rows] = True
            tok[rows] = torch.tensor([pending[i].pop(0) for i in rows], dtype=tok.dtype)
        tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
        sampled = alive & ~forced
        out[:, step] = tok
        out_mask[:, step] = sampled
        out_tool[:, step] = alive & forced
        out_logp[:, step] = torch.where(sampled, logp_all.gather(1, tok.unsqueeze(1)).squeeze(1), 0.0)
        ent = -torch.where(probs > 0, probs * logp_all, 0.0).sum(-1)  # (B,) filtered tokens: no 0 * -inf
        out_ent[:, step] = torch.where(sampled, ent.clamp_min(0.0), 0.0)
        if tool is not None:
            for i in (sampled & (tok == tool_call_end)).nonzero().flatten().tolist():
                so_far = out[i, : step + 1][out_mask[i, : step + 1] | out_tool[i, : step + 1]].tolist()
                pending[i] = list(tool(i, so_far))
        alive = alive & (tok != eos_id)
        if budgets is not None:
            alive = alive & (budgets > step + 1)
        if not bool(alive.any()) or step == max_new_tokens - 1:
            break
        # finished rows stop taking positions (their later tokens are padding nobody reads): a long batch never
        # pushes a short row past the model's window
        key_mask = torch.cat([key_mask, alive.unsqueeze(1)], dim=1)
        hidden, cache = model(tok.unsqueeze(1), key_mask, cache=cache)
        last = hidden[:, -1]
    model.train(was_training)
    return Rollout(ids, pmask, out, out_mask, out_logp, out_ent, out_tool)


def concat_rollouts(parts: Sequence[Rollout], *, pad_id: int) -> Rollout:
    """Rollouts with different prompt and completion widths as one: prompts left-padded, completions right-padded."""
    width_p = max(r.prompt_ids.shape[1] for r in parts)
    width_c = max(r.completion_ids.shape[1] for r in parts)

    def left(t: Tensor, fill: float | bool) -> Tensor:
        return torch.nn.functional.pad(t, (width_p - t.shape[1], 0), value=fill)

    def right(t: Tensor, fill: float | bool) -> Tensor:
        return torch.nn.functional.pad(t, (0, width_c - t.shape[1]), value=fill)

    return Rollout(
        torch.cat([left(r.prompt_ids, pad_id) for r in parts]),
        torch.cat([left(r.prompt_mask, False) for r in parts]),
        torch.cat([right(r.completion_ids, pad_id) for r in parts]),
        torch.cat([right(r.completion_mask, False) for r in parts]),
        torch.cat([right(r.sample_logp, 0.0) for r in parts]),
        torch.cat(
            [
                right(r.sample_entropy if r.sample_entropy is not None else torch.zeros_like(r.sample_logp), 0.0)
                for r in parts
            ]
        ),
        torch.cat(
            [
                right(r.tool_mask if r.tool_mask is not None else torch.zeros_like(r.completion_mask), False)
                for r in parts
            ]
        ),
    )


def score_completions(
    model: Policy, rollout: Rollout, *, temperature: float = 1.0, with_logits: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-token ``(logp, entropy)`` ``(B, L)`` of the completion tokens under ``model`` (differentiable), 0 at
    padding; with ``with_logits`` also the completion logits ``(B, L, V)`` (SIREN needs them)."""
    full = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # (B, P + L)
    # the completion's real tokens (sampled, and the environment's tool replies); padding after the end takes no
    # position and is attended by no real token
    tokens = rollout.completion_mask if rollout.tool_mask is None else rollout.completion_mask | rollout.tool_mask
    key_mask = torch.cat([rollout.prompt_mask, tokens], dim=1)
    hidden, _ = model(full[:, :-1], key_mask[:, :-1])  # position i predicts token i + 1
    p = rollout.prompt_ids.shape[1]
    h = hidden[:, p - 1 :]  # (B, L, d): predictions of the completion tokens
    labels = torch.where(rollout.completion_mask, rollout.completion_ids, -100)
    b, length, d = h.shape
    logp, ent = linear_logprob_and_entropy(
        h.reshape(b * length, d), model.head.weight, labels.reshape(-1), temperature=temperature
    )
    assert logp is not None
    logits = model.head(h) / temperature if with_logits else None
    mf = rollout.completion_mask.to(logp.dtype)
    return logp.view(b, length), ent.view(b, length) * mf, logits


def turn_index(completion_mask: Tensor, tool_mask: Tensor | None) -> Tensor:
    """``(B, L)`` int64: the model turn of each completion token, the number of tool replies before it (0 for the
    first turn; a reply's own tokens count as the next turn's, they are never trained on)."""
    if tool_mask is None:
        return torch.zeros_like(completion_mask, dtype=torch.long)
    starts = tool_mask.clone()
    starts[:, 1:] &= ~tool_mask[:, :-1]
    return starts.long().cumsum(-1)


def turn_means(values: Tensor, mask: Tensor, turns: Tensor) -> tuple[Tensor, Tensor]:
    """Per-turn means of ``values`` ``(B, L)`` over the ``mask`` tokens of each turn: ``(B, J)`` and the ``(B, J)``
    bool mask of turns with tokens, a prefix of each row (``J`` = the batch's most turns; at least 1)."""
    j = int(turns[mask].max()) + 1 if bool(mask.any()) else 1
    idx = torch.where(mask, turns, 0).clamp_max(j - 1)
    w = mask.to(values.dtype)
    sums = torch.zeros(values.shape[0], j, dtype=values.dtype).scatter_add_(1, idx, values * w)
    counts = torch.zeros(values.shape[0], j, dtype=values.dtype).scatter_add_(1, idx, w)
    valid = (counts > 0).long().cummin(-1).values.bool()  # a turn without tokens ends the row's valid prefix
    return torch.where(valid, sums / counts.clamp_min(1), 0.0), valid


def subset_rollout(r: Rollout, idx: Tensor) -> Rollout:
    """The rows ``idx`` of a rollout."""
    ent = None if r.sample_entropy is None else r.sample_entropy[idx]
    tools = None if r.tool_mask is None else r.tool_mask[idx]
    return Rollout(
        r.prompt_ids[idx],
        r.prompt_mask[idx],
        r.completion_ids[idx],
        r.completion_mask[idx],
        r.sample_logp[idx],
        ent,
        tools,
    )


def tool_kwargs(task: Task, tok: Tokenizer, prefixes: list[list[int]] | None = None) -> dict[str, Any]:
    """``generate()``'s tool arguments for a task with a tool (``task.tool``: text -> reply), else ``{}``.  Row ``i``'s
    reply sees ``prefixes[i]`` (a branch's inherited response prefix) before its own tokens."""
    reply = getattr(task, "tool", None)
    if reply is None:
        return {}
    close = getattr(task, "tool_call_end", "]")
    end = tok.encode(close)
    if len(end) != 1:
        raise ValueError(f"task {task.name!r} needs a tokenizer that writes {close!r} as one token")

    def tool(row: int, ids: list[int]) -> list[int]:
        return tok.encode(reply(tok.decode((prefixes[row] if prefixes else []) + ids)))

    return {"tool": tool, "tool_call_end": end[0]}
