"""The lab's recipe, read top to bottom: warm-start a small policy, then RL with one method, one seed.

``run_lab(config)`` does, for the configured task and policy:

1. **Held-out split**: ``eval_prompts`` distinct prompts; training never samples them.
2. **Warm start** (:func:`warm_start`): supervised fine-tuning on generated solutions, cached in ``out/sft`` and
   reused by every method and seed (and by later runs with the same settings).
3. **RL** (:func:`train_one`) per method and seed: each step samples ``prompts_per_step`` prompts, ``group_size``
   completions each (batched, KV-cached), scores them, computes advantages, then ``ppo_epochs`` passes over
   ``minibatches`` with the method's policy loss and regularizers from :mod:`entrolab.losses`.  Token log-probs and
   entropies come from :func:`entrolab.entropy.linear_logprob_and_entropy` on the final hidden states.
4. **Metrics** every step (JSONL, and TensorBoard event files when ``tensorboard`` is installed) and every
   ``eval_every`` steps on the held-out prompts: pass@1 ... pass@k (unbiased estimator) and distinct correct answers.
5. **Checkpoints** every ``checkpoint_every`` steps, written atomically, holding everything a resumed run needs
   (model, optimizer, RNG states, controller/anchor/history states, the number of metric rows written).

Everything is seeded: with ``deterministic=True`` a resumed run reproduces the uninterrupted run's metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entrolab.advantages import (
    aepo_mix,
    aepo_temperature,
    dr_grpo_advantages,
    empg_advantages,
    ettrl_reshape,
    grpo_advantages,
    rloo_advantages,
    spear_replay_weight,
    spear_tool_bonus,
)
from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.dynamics import entropy_dynamics
from entrolab.lab.agentic import SpearReplay, aepo_eb_rollout, empg_turn_advantages, spear_schedule_steps
from entrolab.lab.policy import (
    CharTokenizer,
    Policy,
    TinyGPT,
    TinyGPTConfig,
    Tokenizer,
    load_hf_policy,
    load_hf_tokenizer,
)
from entrolab.lab.presets import Preset, get_preset
from entrolab.lab.rollout import (
    Rollout,
    concat_rollouts,
    generate,
    left_pad,
    score_completions,
    subset_rollout,
    tool_kwargs,
    turn_index,
    turn_means,
)
from entrolab.lab.task_files import VERIFIERS, FileTask
from entrolab.lab.tasks import Example, Task, make_splits, resolve_task, sample_train
from entrolab.losses import (
    Aggregation,
    SirenAnchor,
    entropy_bonus,
    epo,
    get_policy_loss,
    kl_estimate,
    kl_penalty,
    siren,
)
from entrolab.losses.entropy_terms import EntropyHistory
from entrolab.optim import make_optimizer, require_bitsandbytes
from entrolab.sampling import select_fork_points

__all__ = ["LAB_OPTIMIZERS", "LabConfig", "LabError", "pass_at_k", "run_lab", "sft_loss", "train_one", "warm_start"]


class LabError(RuntimeError):
    """A lab run cannot continue (NaN loss, an existing run directory, a bad resume)."""


LAB_OPTIMIZERS = ("adam", "adam8bit")
"""Optimizers of the lab's RL updates (``--optimizer``)."""


@dataclass
class LabConfig:
    """Everything a lab run depends on.  Every field is a command-line option of ``entrolab lab``."""

    methods: tuple[str, ...] = ("grpo", "dapo", "clip_cov", "kl_cov", "entropy_bonus")
    """Methods (presets) to compare, run one after another."""
    seeds: int = 3
    """Seeds per method (0 .. seeds-1, offset by ``seed``)."""
    seed: int = 0
    """Base seed: the held-out split, the warm start and every run derive from it."""
    steps: int = 120
    """RL steps per run."""
    task: str = "countdown"
    """Built-in task: ``countdown`` (many correct answers) or ``arithmetic`` (one); or a ``.jsonl`` file of
    ``{"prompt", "answer"}`` rows, scored by ``verifier``."""
    verifier: str = "exact"
    """How a task file's answers are checked: ``exact``, ``numeric``, ``regex`` (the answer is a pattern; then set
    ``sft_steps`` to 0) or ``math`` (needs the math-verify package).  Ignored by the built-in tasks."""
    model: str = "tiny"
    """``tiny`` (the built-in transformer), or a local Hugging Face causal-LM checkpoint directory with its
    tokenizer (needs transformers; nothing is downloaded)."""
    prompts_per_step: int = 16
    """Prompts per RL step."""
    group_size: int = 8
    """Completions per prompt (the group of GRPO)."""
    max_new_tokens: int = 0
    """Completion budget in tokens; 0 means the task's longest answer plus 2."""
    lr: float = 3e-4
    """Adam learning rate of the RL updates."""
    optimizer: str = "adam"
    """Optimizer of the RL updates (betas (0.9, 0.99)): ``adam`` (PyTorch) or ``adam8bit`` (bitsandbytes' block-wise
    8-bit states, block size 256, fp32 state for tensors under 4,096 elements; needs the ``optim`` extra).  See
    :func:`entrolab.optim.make_optimizer`."""
    ppo_epochs: int = 2
    """Passes over each step's samples.  With ``ppo_epochs = minibatches = 1`` every update is on-policy (ratio 1),
    where PPO's clip, DAPO's clip-higher and KL-Cov's penalty are all inactive; the default 2 x 2 updates per step
    make the later ones off-policy, as in real RL post-training."""
    minibatches: int = 2
    """Optimizer steps per pass (the step's groups are split evenly)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    eval_every: int = 20
    """Held-out evaluation every this many steps (and at the first and last step)."""
    eval_prompts: int = 64
    """Held-out prompts."""
    eval_samples: int = 16
    """Samples per held-out prompt: pass@k is reported for k = 1, 2, 4, ... up to this."""
    sft_steps: int = 600
    """Warm-start steps (supervised, on generated solutions)."""
    sft_batch: int = 64
    """Warm-start batch size."""
    sft_lr: float = 2e-3
    """Warm-start learning rate."""
    d_model: int = 96
    """Width of the built-in model."""
    n_layer: int = 2
    """Layers of the built-in model."""
    kl_metric_every: int = 1
    """Measure the KL to the initial policy (one extra forward of the initial model) every this many steps when the
    method has no KL term (the other steps' rows have no ``kl_to_init``); 0 never.  Methods with a KL term compute it at
    every step anyway."""
    checkpoint_every: int = 20
    """Checkpoint every this many RL steps (and at the end)."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    out: str = "lab-runs/default"
    """Run directory."""
    deterministic: bool = True
    """Deterministic torch algorithms (a resumed run then reproduces an uninterrupted one exactly)."""
    presets: dict[str, Preset] = field(default_factory=dict)
    """Extra presets defined in a config file (``[presets.NAME]`` tables)."""

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = tuple(m.strip() for m in self.methods.split(",") if m.strip())
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for name in self.methods:
            get_preset(name, self.presets)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must not repeat a name, got {','.join(self.methods)}")
        for name in (
            "seeds",
            "steps",
            "prompts_per_step",
            "group_size",
            "ppo_epochs",
            "minibatches",
            "eval_every",
            "eval_prompts",
            "eval_samples",
            "sft_batch",
            "d_model",
            "n_layer",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("sft_steps", "max_new_tokens", "threads", "seed", "kl_metric_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "sft_lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in self.methods:
            if get_preset(name, self.presets).rollout in ("cure", "ettrl") and self.group_size % (1 + 3):
                raise ValueError(
                    f"group_size must be a multiple of 4 for {name!r} (group_size / 4 originals, each with 3 "
                    f"branches), got {self.group_size}"
                )
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group advantages need two samples), got {self.group_size}")
        if self.prompts_per_step % self.minibatches:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be divisible by minibatches ({self.minibatches})"
            )
        if self.optimizer not in LAB_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(LAB_OPTIMIZERS)}; got {self.optimizer!r}")
        if self.optimizer.endswith("8bit"):
            require_bitsandbytes()
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}; got {self.verifier!r}")
        task = resolve_task(self.task, verifier=self.verifier)
        if self.sft_steps and not task.has_solutions:
            raise ValueError(
                f"task {self.task!r} with verifier {self.verifier!r} has no reference completions for the warm start; "
                "set sft_steps to 0"
            )
        for name in self.methods:
            if get_preset(name, self.presets).rollout == "aepo_eb" and getattr(task, "tool", None) is None:
                raise ValueError(
                    f"method {name!r} branches at tool replies and needs a task with a tool (e.g. task='calculator'); "
                    f"task {self.task!r} has none"
                )
        if self.model != "tiny" and not (Path(self.model) / "config.json").is_file():
            raise ValueError(
                f"model must be 'tiny' (the built-in policy) or a local Hugging Face checkpoint directory with a "
                f"config.json, got {self.model!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "presets"}
        d["methods"] = list(self.methods)
        d["presets"] = {k: v.to_dict() for k, v in self.presets.items()}
        return d


# ------------------------------------------------------------------------------------------------------ helpers
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n - c, k) / C(n, k)`` (Chen et al., arXiv
    2107.03374, eq. 1), computed as a stable product.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(5, 0, 2)
    (0.25, 1.0, 0.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prompt_ids(tok: Tokenizer, ex: Example) -> list[int]:
    return tok.prompt_ids(ex.prompt)


def _tokenizer(cfg: LabConfig, task: Task) -> Tokenizer:
    """The built-in model's character tokenizer over the task's alphabet, or the checkpoint's own tokenizer."""
    return CharTokenizer(task.alphabet) if cfg.model == "tiny" else load_hf_tokenizer(cfg.model)


def _build_model(cfg: LabConfig, task: Task, tok: Tokenizer, max_new: int) -> Policy:
    if cfg.model != "tiny":
        return load_hf_policy(cfg.model)
    # the built-in tasks' prompts are at most ~12 characters; a task file's longest prompt sets it otherwise
    longest_prompt = max(24, getattr(task, "max_prompt_chars", 0) + 2)
    return TinyGPT(
        TinyGPTConfig(
            vocab_size=tok.vocab_size,
            d_model=cfg.d_model,
            n_layer=cfg.n_layer,
            n_head=4,
            max_len=longest_prompt + max_new + 2,
        )
    )


# ------------------------------------------------------------------------------------------------- warm start
def _sft_key(cfg: LabConfig, task: Task, model_cfg: dict) -> str:
    keys = {k: getattr(cfg, k) for k in ("task", "model", "seed", "sft_steps", "sft_batch", "sft_lr", "eval_prompts")}
    if isinstance(task, FileTask):  # the file's content and verifier, not only its name
        keys["task_rows"] = hashlib.sha256(json.dumps([task.rows, task.verifier]).encode()).hexdigest()
    return hashlib.sha256(json.dumps({**keys, "model_cfg": model_cfg}, sort_keys=True).encode()).hexdigest()[:16]


def sft_loss(model: Policy, task: Task, tok: Tokenizer, examples: list[Example], rng: random.Random) -> torch.Tensor:
    """The warm start's loss: mean negative log-likelihood per completion token of ``task.solution`` completions (with
    their end-of-sequence token) of ``examples``, teacher-forced after their prompts."""
    prompts = [_prompt_ids(tok, ex) for ex in examples]
    answers = [[*tok.encode(task.solution(ex, rng)), tok.eos_id] for ex in examples]
    width = max(len(a) for a in answers)
    comp = torch.full((len(answers), width), tok.pad_id, dtype=torch.long)
    cmask = torch.zeros((len(answers), width), dtype=torch.bool)
    for i, a in enumerate(answers):
        comp[i, : len(a)] = torch.tensor(a)
        cmask[i, : len(a)] = True
    pids, pmask = left_pad(prompts, tok.pad_id)
    logp, _, _ = score_completions(model, Rollout(pids, pmask, comp, cmask, torch.zeros(comp.shape)))
    return -(logp * cmask).sum() / cmask.sum()


def warm_start(
    cfg: LabConfig, task: Task, tok: Tokenizer, exclude: set[str], max_new: int, directory: Path
) -> tuple[Policy, dict[str, Any]]:
    """The warm-started policy: loaded from ``directory`` when a previous run used the same settings, else trained
    by supervised fine-tuning on ``task.solution`` completions and saved there (atomically)."""
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, task, tok, max_new)
    key = _sft_key(cfg, task, model.config_dict())
    if cfg.sft_steps == 0:  # RL straight from the given weights (nothing to cache)
        return model, {"key": key, "sft_loss": None, "sft_seconds": 0.0}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sft-{key}.pt"
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model, json.loads(state["meta"])
    rng = random.Random(f"sft-{cfg.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.01)
    t0 = time.perf_counter()
    losses = []
    for step in range(cfg.sft_steps):
        lr = cfg.sft_lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.sft_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        examples = [sample_train(task, rng, exclude) for _ in range(cfg.sft_batch)]
        loss = sft_loss(model, task, tok, examples, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    meta = {"key": key, "sft_loss": losses[-1] if losses else None, "sft_seconds": time.perf_counter() - t0}
    atomic_torch_save({"model": model.state_dict(), "meta": json.dumps(meta)}, path)
    return model, meta


# ---------------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(
    model: Policy,
    task: Task,
    tok: Tokenizer,
    examples: list[Example],
    *,
    samples: int,
    max_new: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    processors: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> dict[str, float]:
    """pass@k (k = 1, 2, 4, ... <= samples) at ``temperature`` (1 by default) after ``processors``, mean accuracy
    and mean distinct correct answers."""
    prompts = [ids for ex in examples for ids in [_prompt_ids(tok, ex)] * samples]
    r = generate(
        model,
        prompts,
        max_new_tokens=max_new,
        temperature=temperature,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=generator,
        processors=processors,
        **tool_kwargs(task, tok),
    )
    texts = [tok.decode(row.tolist()) for row in r.completion_ids]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples]
    totals = dict.fromkeys(ks, 0.0)
    correct_total, distinct_total = 0, 0
    for i, ex in enumerate(examples):
        keys = [task.answer_key(ex, t) for t in texts[i * samples : (i + 1) * samples]]
        c = sum(k is not None for k in keys)
        correct_total += c
        distinct_total += len({k for k in keys if k is not None})
        for k in ks:
            totals[k] += pass_at_k(samples, c, k)
    n = len(examples)
    out = {f"pass@{k}": totals[k] / n for k in ks}
    out["accuracy"] = correct_total / (n * samples)
    out["distinct_correct"] = distinct_total / n
    return out


# --------------------------------------------------------------------------------------------------------- RL
def _advantages(preset: Preset, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if preset.advantage == "dr_grpo":
        return dr_grpo_advantages(rewards, group_size=group_size)
    if preset.advantage == "rloo":
        return rloo_advantages(rewards, group_size=group_size)
    return grpo_advantages(rewards, group_size=group_size)


CURE_BRANCHES = 3
"""Continuations per fork in CURE stage 1 (the paper's n2)."""


def _cure_rollout(
    model: Policy,
    task: Task,
    examples: list[Example],
    tok: Tokenizer,
    *,
    group_size: int,
    max_new: int,
    preset: Preset,
    generator: torch.Generator,
) -> tuple[Rollout, list[str], dict[str, float]]:
    """CURE stage 1 (arXiv 2508.11016, section 3; ``shared/specs/llm_rl.md`` section 19): per prompt,
    ``n1 = group_size / 4`` originals; each is cut before a critical token drawn uniformly from its
    ``cure_top_k`` highest-entropy positions (position 0 and the end-of-sequence token excluded) and continued
    ``CURE_BRANCHES`` times from ``prompt + response[:c]``, within the original answer budget.  The group is the
    originals and their branches, contiguous per prompt; a branch's prefix is part of its prompt, so the loss covers
    only the regenerated tokens, and it is rewarded on ``prefix + continuation``.

    Departure: the paper also skips tokens whose text is at most one character (sub-word pieces of punctuation); with
    the built-in character tokenizer every token is one character, so only whitespace-only tokens are skipped.
    """
    rollout, texts, metrics = _branched_rollout(
        model, task, examples, tok, group_size=group_size, max_new=max_new, temperature=preset.temperature,
        strategy="random_of_top", top_k=preset.cure_top_k, generator=generator,
    )  # fmt: skip
    return rollout, texts, {"cure_stage": 1.0, **{f"cure_{k}": v for k, v in metrics.items()}}


def _branched_rollout(
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
) -> tuple[Rollout, list[str], dict[str, float]]:
    """``group_size / 4`` originals per prompt, each forked once (``select_fork_points`` with ``strategy`` over its
    ``top_k`` highest-entropy positions) into ``CURE_BRANCHES`` continuations of ``prompt + response[:c]``; one
    contiguous group per prompt (originals, then branches) and the texts to score (``prefix + continuation``)."""
    n1 = group_size // (1 + CURE_BRANCHES)
    orig_prompts = [ids for ex in examples for ids in [_prompt_ids(tok, ex)] * n1]
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
    branch_prompts = [orig_prompts[j // CURE_BRANCHES] + p for j, p in enumerate(prefixes)]
    budgets = [max_new - len(p) for p in prefixes]
    tools = tool_kwargs(task, tok, prefixes)  # a call opened in the inherited prefix closes in the continuation
    branch = generate(
        model,
        branch_prompts,
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
    }
    return rollout, texts, metrics


def _majority_rewards(
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


def _aepo_mix_in(
    model: Policy,
    task: Task,
    tok: Tokenizer,
    examples: list[Example],
    rollout: Rollout,
    adv_seq: torch.Tensor,
    *,
    cfg: LabConfig,
    preset: Preset,
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
    prompts = [ids for ex in quarter for ids in [_prompt_ids(tok, ex)] * cfg.group_size]
    tempered = generate(
        model, prompts, max_new_tokens=max_new, temperature=t, eos_id=tok.eos_id, pad_id=tok.pad_id,
        generator=generator, **tool_kwargs(task, tok),
    )  # fmt: skip
    owners = [ex for ex in quarter for _ in range(cfg.group_size)]
    texts = [tok.decode(row.tolist()) for row in tempered.completion_ids]
    t_rewards = torch.tensor([task.score(ex, x) for ex, x in zip(owners, texts)], dtype=torch.float32)
    t_adv = grpo_advantages(t_rewards, group_size=cfg.group_size)
    b = rollout.completion_ids.shape[0]
    taken, rows = aepo_mix(
        t_adv, k_max=max(1, round(AEPO_K_FRACTION * b)), below_target=prev_entropy <= target, batch_size=b
    )
    metrics = {"aepo_temperature": t, "aepo_mixed": float(taken.numel()), "aepo_target": target}
    if taken.numel() == 0:
        return rollout, adv_seq, metrics
    chosen = subset_rollout(tempered, taken)
    with torch.no_grad():  # the behaviour policy at the training temperature, not the tempered one
        logp, ent, _ = score_completions(model, chosen, temperature=preset.temperature)
    chosen.sample_logp, chosen.sample_entropy = logp * chosen.completion_mask, ent
    both = concat_rollouts([rollout, chosen], pad_id=tok.pad_id)
    order = list(range(b))
    for j, r in enumerate(rows.tolist()):
        order[r] = b + j
    adv = adv_seq.clone()
    adv[rows] = 1.0
    return subset_rollout(both, torch.tensor(order)), adv, metrics


MAX_TURNS = 8
"""Tool tasks: EPO keeps a reference entropy for the first ``MAX_TURNS`` model turns (later turns share the last)."""

SPEAR_REPLAY_LOSS = {"ratio": 0.02, "cov_lb": 1.0, "cov_ub": 40.0}
"""SPEAR's replay pass: Clip-Cov with ratio 0.02 and bounds [1, 40] (the README's)."""


def _spear_replay(
    model: Policy,
    opt: torch.optim.Optimizer,
    spear: SpearReplay,
    *,
    cfg: LabConfig,
    preset: Preset,
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
        old_logp, _, _ = score_completions(model, replay, temperature=preset.temperature)
    logp, ent, _ = score_completions(model, replay, temperature=preset.temperature)
    res = get_policy_loss("clip_cov")(
        logp, old_logp, adv, replay.completion_mask, entropy=ent, agg=agg, generator=generator, **SPEAR_REPLAY_LOSS
    )
    loss = weight * res.loss
    if not torch.isfinite(loss):
        raise LabError(f"{preset.name}: the SPEAR replay loss is {float(loss.detach())} at step {step + 1}")
    if weight > 0:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    out.update(spear_replayed=float(adv.numel()), spear_replay_weight=weight, spear_replay_loss=float(loss.detach()))
    return out


class _Metrics:
    """Appends JSON rows to ``metrics.jsonl`` (flushed per row) and mirrors scalars to TensorBoard when available."""

    def __init__(self, directory: Path, keep_rows: int | None) -> None:
        self.path = directory / "metrics.jsonl"
        rows = self.path.read_text().splitlines() if self.path.exists() else []
        if keep_rows is not None:  # resume: drop rows written after the checkpoint (they will be written again)
            rows = rows[:keep_rows]
            _atomic_write_bytes(self.path, "".join(r + "\n" for r in rows).encode())
        elif rows:
            self.path.unlink()
            rows = []
        self.rows = len(rows)
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self.tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(directory / "tb"))
        except Exception:  # tensorboard is an optional extra
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.rows += 1
        if self.tb is not None:
            prefix = "eval/" if row.get("kind") == "eval" else "train/"
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "seed"):
                    self.tb.add_scalar(prefix + k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _rng_state(rng: random.Random, gen: torch.Generator) -> dict[str, Any]:
    return {"python": json.dumps(rng.getstate()), "torch_gen": gen.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any], rng: random.Random, gen: torch.Generator) -> None:
    py = json.loads(state["python"])
    rng.setstate((py[0], tuple(py[1]), py[2]))
    gen.set_state(state["torch_gen"])
    torch.set_rng_state(state["torch"])


def train_one(
    cfg: LabConfig,
    preset: Preset,
    seed: int,
    *,
    task: Task,
    tok: Tokenizer,
    init_model: Policy,
    eval_examples: list[Example],
    exclude: set[str],
    max_new: int,
    directory: Path,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One RL run of ``preset`` with ``seed``; metrics in ``directory/metrics.jsonl``; returns the last eval row."""
    directory.mkdir(parents=True, exist_ok=True)
    ckpt_path = directory / "checkpoint.pt"
    model = copy.deepcopy(init_model)
    ref = copy.deepcopy(init_model).requires_grad_(False)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    rng = random.Random(f"train-{cfg.seed}-{seed}")
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + cfg.seed)
    eval_gen_seed = 7_919 * (seed + 1) + cfg.seed
    controller: AdaptiveEntropyCoefficient | None = None
    anchor = SirenAnchor()
    has_tool = getattr(task, "tool", None) is not None
    # EPO's reference entropy: one per RL step on single-turn tasks, one per model turn on tool tasks
    history = EntropyHistory(max_steps=MAX_TURNS if has_tool else 1)
    spear = SpearReplay(buffer_size=preset.spear_buffer_size) if preset.spear_buffer_size > 0 else None
    spear_steps = spear_schedule_steps(cfg.steps, preset.spear_schedule_fraction)
    aepo: dict[str, float | None] = {"prev_entropy": 0.0, "target": None}  # AEPO: the code starts from entropy 0
    loss_fn = get_policy_loss(preset.loss)
    agg = Aggregation(preset.agg, max_length=max_new) if preset.agg == "seq-mean-token-sum-norm" else preset.agg
    start, keep_rows = 0, None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], rng, gen)
        if state["controller"] is not None:
            controller = AdaptiveEntropyCoefficient(target=1.0)
            controller.load_state_dict(json.loads(state["controller"]))
        anchor.load_state_dict(json.loads(state["anchor"]))
        history.load_state_dict(json.loads(state["history"]))
        aepo.update(json.loads(state.get("aepo", "{}")))
        if spear is not None:
            spear.load_state_dict(state["spear"])
        start, keep_rows = int(state["step"]), int(state["metric_rows"])
    elif resume:
        keep_rows = 0
    metrics = _Metrics(directory, keep_rows)
    base = {"method": preset.name, "seed": seed}
    last_eval: dict[str, Any] = {}

    def run_eval(step: int) -> None:
        nonlocal last_eval
        g = torch.Generator().manual_seed(eval_gen_seed + step)
        t0 = time.perf_counter()
        res = evaluate(model, task, tok, eval_examples, samples=cfg.eval_samples, max_new=max_new, generator=g)
        last_eval = {"kind": "eval", **base, "step": step, **res, "eval_seconds": time.perf_counter() - t0}
        metrics.write(last_eval)

    def save(step: int) -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": _rng_state(rng, gen),
                "controller": None if controller is None else json.dumps(controller.state_dict()),
                "anchor": json.dumps(anchor.state_dict()),
                "history": json.dumps(history.state_dict()),
                "aepo": json.dumps(aepo),
                "spear": None if spear is None else spear.state_dict(),
                "step": step,
                "metric_rows": metrics.rows,
            },
            ckpt_path,
        )

    if start == 0:
        run_eval(0)
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            examples = [sample_train(task, rng, exclude) for _ in range(cfg.prompts_per_step)]
            rollout_metrics: dict[str, float] = {}
            if preset.rollout == "cure" and step < round(preset.cure_stage1_fraction * cfg.steps):
                rollout, texts, rollout_metrics = _cure_rollout(
                    model, task, examples, tok, group_size=cfg.group_size, max_new=max_new, preset=preset,
                    generator=gen,
                )  # fmt: skip
            elif preset.rollout == "ettrl":  # one entropy-fork tree per chain: the top-entropy token, 3 branches
                rollout, texts, tree = _branched_rollout(
                    model, task, examples, tok, group_size=cfg.group_size, max_new=max_new,
                    temperature=preset.temperature, strategy="top", top_k=1, generator=gen,
                )  # fmt: skip
                rollout_metrics = {f"ettrl_{k}": v for k, v in tree.items()}
            elif preset.rollout == "aepo_eb":
                rollout, texts, rollout_metrics = aepo_eb_rollout(
                    model, task, examples, tok, group_size=cfg.group_size, max_new=max_new,
                    temperature=preset.temperature, generator=gen,
                )  # fmt: skip
            else:
                prompts = [ids for ex in examples for ids in [_prompt_ids(tok, ex)] * cfg.group_size]
                rollout = generate(
                    model,
                    prompts,
                    max_new_tokens=max_new,
                    temperature=preset.temperature,
                    eos_id=tok.eos_id,
                    pad_id=tok.pad_id,
                    generator=gen,
                    **tool_kwargs(task, tok),
                )
                texts = [tok.decode(row.tolist()) for row in rollout.completion_ids]
                if preset.rollout == "cure":  # CURE stage 2: plain sampling from the stage-1 policy
                    rollout_metrics = {"cure_stage": 2.0}
            t_gen = time.perf_counter() - t0
            owners = [ex for ex in examples for _ in range(cfg.group_size)]
            rewards = torch.tensor([task.score(ex, t) for ex, t in zip(owners, texts)], dtype=torch.float32)
            turns = turn_index(rollout.completion_mask, rollout.tool_mask if has_tool else None)  # (B, L)
            shaped = rewards  # the rewards the advantages see; the "reward" metric stays the task's
            if preset.spear_tool_bonus and has_tool:
                assert rollout.tool_mask is not None
                calls = turns.masked_fill(~(rollout.completion_mask | rollout.tool_mask), 0).amax(-1)
                bonus = spear_tool_bonus(calls, step, max_steps=spear_steps)
                shaped = rewards + bonus
                rollout_metrics["spear_tool_bonus"] = float(bonus.mean())
            if preset.rollout == "ettrl":  # test-time RL: train on majority-vote pseudo-rewards, never on the labels
                pseudo, vote_accuracy = _majority_rewards(task, owners, texts, cfg.group_size)
                adv_seq = _advantages(preset, pseudo, cfg.group_size)
                assert rollout.sample_entropy is not None
                m_f = rollout.completion_mask.float()
                response_entropy = (rollout.sample_entropy * m_f).sum(-1) / m_f.sum(-1).clamp_min(1)
                adv_seq = ettrl_reshape(adv_seq, response_entropy, group_size=cfg.group_size)
                rollout_metrics.update(ettrl_pseudo_reward=float(pseudo.mean()), ettrl_vote_accuracy=vote_accuracy)
            else:
                adv_seq = _advantages(preset, shaped, cfg.group_size)  # (B,)
            if preset.rollout == "aepo":
                if aepo["target"] is None:  # a fraction of the first step's mean entropy, as adaptive_entropy
                    assert rollout.sample_entropy is not None
                    first = float(rollout.sample_entropy[rollout.completion_mask].mean())
                    aepo["target"] = preset.aepo_target * max(first, 1e-6)
                rollout, adv_seq, mixed = _aepo_mix_in(
                    model, task, tok, examples, rollout, adv_seq, cfg=cfg, preset=preset, max_new=max_new,
                    prev_entropy=aepo["prev_entropy"], target=aepo["target"], generator=gen,
                )  # fmt: skip
                rollout_metrics.update(mixed)
            mask = rollout.completion_mask
            # the behaviour policy's log-probs and entropies come from the sampling pass itself (same model code,
            # same temperature): no second forward over the rollout
            old_logp, old_ent = rollout.sample_logp, rollout.sample_entropy
            assert old_ent is not None
            want_kl = preset.kl_coef > 0 or (cfg.kl_metric_every > 0 and (step + 1) % cfg.kl_metric_every == 0)
            ref_logp = None
            if want_kl:
                with torch.no_grad():
                    ref_logp, _, _ = score_completions(ref, rollout, temperature=preset.temperature)
            adv: torch.Tensor = adv_seq
            if preset.advantage == "empg":
                if has_tool:  # EMPG's steps are the model turns between tool replies
                    adv = empg_turn_advantages(old_ent, mask, turns, adv_seq)
                else:  # single-turn tasks: every token is a step
                    adv = empg_advantages(old_ent, mask, adv_seq)
            valid_ent = old_ent[mask]
            mean_ent = float(valid_ent.mean()) if valid_ent.numel() else 0.0
            if preset.adaptive_entropy_target is not None and controller is None:
                controller = AdaptiveEntropyCoefficient(target=preset.adaptive_entropy_target * max(mean_ent, 1e-6))
            past = history.reference()
            reference_entropy: float | torch.Tensor | None = None
            if past is not None:  # per token: its turn's historical mean entropy
                reference_entropy = past.float()[turns.clamp_max(history.max_steps - 1)] if has_tool else float(past[0])
            loss_metrics: dict[str, float] = {}
            num_groups = cfg.prompts_per_step // cfg.minibatches
            for _epoch in range(cfg.ppo_epochs):
                for mb in range(cfg.minibatches):
                    idx = torch.arange(mb * num_groups * cfg.group_size, (mb + 1) * num_groups * cfg.group_size)
                    sub = subset_rollout(rollout, idx)
                    logp, ent, logits = score_completions(
                        model, sub, temperature=preset.temperature, with_logits=preset.siren_coef > 0
                    )
                    m = sub.completion_mask
                    out = loss_fn(
                        logp, old_logp[idx], adv[idx], m, entropy=ent, agg=agg, generator=gen, **preset.loss_kwargs
                    )
                    loss = out.loss
                    extra: dict[str, torch.Tensor] = dict(out.metrics)
                    if preset.entropy_coef > 0:
                        loss = loss + entropy_bonus(ent, m, coef=preset.entropy_coef, agg=agg).loss
                    if controller is not None:
                        loss = loss + entropy_bonus(ent, m, coef=controller, agg=agg).loss
                        extra["entropy_coef"] = torch.tensor(controller.value)
                    if preset.siren_coef > 0:
                        assert logits is not None
                        s = siren(logits, m, anchor=anchor, coef=preset.siren_coef)
                        loss = loss + s.loss
                        extra.update(s.metrics)
                    if preset.epo_coef > 0:
                        ref_e = (
                            reference_entropy[idx] if isinstance(reference_entropy, torch.Tensor) else reference_entropy
                        )
                        e = epo(ent, m, reference_entropy=ref_e, coef=preset.epo_coef)
                        loss = loss + e.loss
                        extra.update(e.metrics)
                    if preset.kl_coef > 0:
                        assert ref_logp is not None
                        k = kl_penalty(logp, ref_logp[idx], m, kind="k3", coef=preset.kl_coef)
                        loss = loss + k.loss
                    if not torch.isfinite(loss):
                        raise LabError(
                            f"{preset.name} seed {seed}: the loss is {float(loss.detach())} at step {step + 1}; "
                            f"stopping. The last good checkpoint is {ckpt_path} (resume with --resume after changing "
                            "the settings)"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    loss_metrics = {k: float(v) for k, v in extra.items()}
                    loss_metrics["loss"] = float(loss.detach())
                    loss_metrics["grad_norm"] = float(grad_norm)
            if preset.rollout == "aepo":  # the update's mean entropy (the code's actor/entropy_loss) steers the next
                aepo["prev_entropy"] = float(loss_metrics.get("entropy", mean_ent))
            if controller is not None:
                controller.observe(old_ent, mask)
            if has_tool:  # per-turn batch means; turns nobody reached this step take the step's mean
                t_ent, t_mask = turn_means(old_ent, mask, turns)
                t_sum = (t_ent * t_mask).sum(0)[: history.max_steps]
                t_cnt = t_mask.sum(0)[: history.max_steps]
                row_h = torch.full((history.max_steps,), mean_ent, dtype=torch.float64)
                row_h[: t_sum.numel()] = torch.where(t_cnt > 0, t_sum.double() / t_cnt.clamp_min(1), mean_ent)
                history.record(row_h)
            else:
                history.record([mean_ent])
            if spear is not None:
                spear.add(rollout, shaped, adv_seq, group_size=cfg.group_size, step=step)
                rollout_metrics["spear_buffer"] = float(len(spear))
                if spear.full:
                    rollout_metrics.update(_spear_replay(model, opt, spear, cfg=cfg, preset=preset, agg=agg,
                                                         step=step, max_steps=spear_steps, pad_id=tok.pad_id,
                                                         generator=gen))  # fmt: skip
            dyn = entropy_dynamics(old_logp, adv_seq, mask, entropy=old_ent)
            ent_np = valid_ent.numpy()
            n_tok = int(mask.sum())
            measured: dict[str, float] = {}
            if ref_logp is not None:
                kl = kl_estimate(old_logp, ref_logp, kind="k3")
                measured["kl_to_init"] = float((kl * mask).sum() / max(n_tok, 1))
            seconds = time.perf_counter() - t0
            row = {
                "kind": "train",
                **base,
                "step": step + 1,
                "reward": float(rewards.mean()),
                "accuracy": float((rewards > 0.5).float().mean()),
                "entropy": mean_ent,
                "entropy_p10": float(np.percentile(ent_np, 10)) if ent_np.size else 0.0,
                "entropy_p50": float(np.percentile(ent_np, 50)) if ent_np.size else 0.0,
                "entropy_p90": float(np.percentile(ent_np, 90)) if ent_np.size else 0.0,
                "cov_mean": float(dyn.cov_mean),
                "cov_std": float(dyn.cov_std),
                "cov_positive_frac": float(dyn.cov_positive_frac),
                "predicted_entropy_change": float(dyn.predicted_entropy_change),
                **measured,
                "response_length": float(mask.sum(-1).float().mean()),
                "zero_variance_groups": float((rewards.view(-1, cfg.group_size).std(-1) == 0).float().mean()),
                "tokens_per_s": n_tok / max(seconds, 1e-9),
                "generation_seconds": t_gen,
                "step_seconds": seconds,
            }
            # the loss's own metrics (clip and selection fractions, ...); its "entropy" is the last minibatch's after
            # the earlier updates, so the rollout's mean entropy above keeps the name
            if rollout.tool_mask is not None and getattr(task, "tool", None) is not None:
                starts = rollout.tool_mask.clone()
                starts[:, 1:] &= ~rollout.tool_mask[:, :-1]  # the first token of each tool reply
                row["tool_calls"] = float(starts.sum(-1).float().mean())
            row.update(rollout_metrics)
            row.update({k: v for k, v in loss_metrics.items() if k not in row})
            metrics.write(row)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                run_eval(done)
            if on_step is not None:
                on_step(row)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
    finally:
        metrics.close()
    return last_eval


# ------------------------------------------------------------------------------------------------------- driver
def run_lab(
    cfg: LabConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run every method and seed of ``cfg``; returns the run directory (the report is built by the caller)."""
    out = Path(cfg.out)
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    config_path = out / "config.json"
    if resume:
        if not config_path.exists():
            raise LabError(f"--resume {out}: no config.json there (not a lab run directory)")
        saved = json.loads(config_path.read_text())
        if saved != json.loads(json.dumps(cfg.to_dict())):
            raise LabError(f"--resume {out}: the settings differ from the saved config.json; resume with the same ones")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LabError(f"run directory {out} exists and is not empty; pass --overwrite or choose another --out")
        for sub in (out / "runs",):
            if sub.exists():
                import shutil

                shutil.rmtree(sub)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(config_path, json.dumps(cfg.to_dict(), indent=1).encode())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        task = resolve_task(cfg.task, verifier=cfg.verifier)
        tok = _tokenizer(cfg, task)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    max_new = cfg.max_new_tokens or task.max_answer_chars + 2
    try:
        eval_examples, exclude = make_splits(task, seed=cfg.seed, num_eval=cfg.eval_prompts)
        sample_train(task, random.Random(0), exclude)  # fails now, not mid-run, when every prompt is held out
    except ValueError as exc:
        raise LabError(str(exc)) from None
    say(f"entrolab lab: task {task.name}, methods {', '.join(cfg.methods)}, {cfg.seeds} seed(s), {cfg.steps} steps")
    t0 = time.perf_counter()
    try:
        init_model, sft_meta = warm_start(cfg, task, tok, exclude, max_new, out / "sft")
    except ValueError as exc:  # a checkpoint that cannot be loaded or used, a prompt that does not tokenize
        raise LabError(str(exc)) from None
    g = torch.Generator().manual_seed(cfg.seed)
    init_eval = evaluate(init_model, task, tok, eval_examples, samples=cfg.eval_samples, max_new=max_new, generator=g)
    sft_meta = {**sft_meta, "eval": init_eval}
    (out / "sft").mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out / "sft" / "summary.json", json.dumps(sft_meta, indent=1).encode())
    say(f"warm start: pass@1 {init_eval['pass@1']:.3f} ({time.perf_counter() - t0:.1f} s)")
    runs = [(name, cfg.seed + s) for name in cfg.methods for s in range(cfg.seeds)]
    show = sys.stderr.isatty() if progress is None else progress
    bar = _progress(len(runs) * cfg.steps, show)
    for name, seed in runs:
        preset = get_preset(name, cfg.presets)
        directory = out / "runs" / name / f"seed{seed}"
        done_marker = directory / "done.json"
        if resume and done_marker.exists():
            bar.update(cfg.steps)
            continue

        def on_step(row: dict[str, Any], _name: str = name, _seed: int = seed) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{_name} s{_seed} step {row['step']} H {row['entropy']:.3f} acc {row['accuracy']:.2f}")

        t_run = time.perf_counter()
        last = train_one(
            cfg,
            preset,
            seed,
            task=task,
            tok=tok,
            init_model=init_model,
            eval_examples=eval_examples,
            exclude=exclude,
            max_new=max_new,
            directory=directory,
            resume=resume,
            on_step=on_step,
        )
        _atomic_write_bytes(
            done_marker, json.dumps({"last_eval": last, "seconds": time.perf_counter() - t_run}).encode()
        )
    bar.close()
    return out


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool) -> Any:
    """A tqdm bar on a terminal (step, ETA, entropy, accuracy); nothing otherwise."""
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
