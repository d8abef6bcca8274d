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

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entrolab._cpus import available_cpus
from entrolab.lab.agentic import spear_schedule_steps
from entrolab.lab.checkpoints import CheckpointError, read_checkpoint, resume_point, write_checkpoint
from entrolab.lab.config import LAB_OPTIMIZERS, LabConfig, LabError
from entrolab.lab.method_rollouts import prompt_ids
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
from entrolab.lab.progress import progress_bar
from entrolab.lab.rollout import Rollout, generate, left_pad, score_completions, tool_kwargs
from entrolab.lab.stages import (
    ROLLOUTS,
    Batch,
    RunContext,
    RunState,
    advantage_stage,
    after_update,
    batch_entropy,
    behaviour_stage,
    build_terms,
    score_batch,
    step_row,
    update_stage,
)
from entrolab.lab.sweep import run_in_processes, run_on_ray
from entrolab.lab.task_files import FileTask
from entrolab.lab.tasks import TASKS, Example, Task, get_task, make_splits, resolve_task, sample_train
from entrolab.losses import Aggregation, get_policy_loss

__all__ = ["LAB_OPTIMIZERS", "LabConfig", "LabError", "pass_at_k", "run_lab", "sft_loss", "train_one", "warm_start"]


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
    """Write ``data`` to a temporary file beside ``path``, fsync, rename; on failure (a full disk) the temporary
    file is removed and a :class:`LabError` names ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LabError(f"could not write {path}: {exc.strerror}; free space and resume with --resume") from None


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
    if cfg.sft_correct_for(task) != 1.0:  # (absent at 1: caches of earlier releases stay valid)
        keys["sft_correct"] = cfg.sft_correct_for(task)
    if isinstance(task, FileTask):  # the file's content and verifier, not only its name
        keys["task_rows"] = hashlib.sha256(json.dumps([task.rows, task.verifier]).encode()).hexdigest()
    return hashlib.sha256(json.dumps({**keys, "model_cfg": model_cfg}, sort_keys=True).encode()).hexdigest()[:16]


def demonstration(task: Task, example: Example, rng: random.Random, *, correct: float = 1.0) -> str:
    """One warm-start completion: ``task.solution`` with probability ``correct``, else ``task.near_miss`` (an
    imperfect demonstrator that knows the task but slips)."""
    if correct < 1.0 and rng.random() >= correct:
        return task.near_miss(example, rng)  # type: ignore[attr-defined]
    return task.solution(example, rng)


def sft_loss(
    model: Policy, task: Task, tok: Tokenizer, examples: list[Example], rng: random.Random, *, correct: float = 1.0
) -> torch.Tensor:
    """The warm start's loss: mean negative log-likelihood per completion token of :func:`demonstration` completions
    (with their end-of-sequence token) of ``examples``, teacher-forced after their prompts."""
    prompts = [prompt_ids(tok, ex) for ex in examples]
    answers = [[*tok.encode(demonstration(task, ex, rng, correct=correct)), tok.eos_id] for ex in examples]
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
    cfg: LabConfig,
    task: Task,
    tok: Tokenizer,
    exclude: set[str],
    max_new: int,
    directory: Path,
    *,
    say: Callable[[str], None] | None = None,
    progress: bool | None = False,
) -> tuple[Policy, dict[str, Any]]:
    """The warm-started policy: loaded from ``directory`` when a previous run used the same settings, else trained
    by supervised fine-tuning on :func:`demonstration` completions and saved there (atomically, with a checksum); a
    damaged cache is reported and rebuilt."""
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, task, tok, max_new)
    key = _sft_key(cfg, task, model.config_dict())
    if cfg.sft_steps == 0:  # RL straight from the given weights (nothing to cache)
        return model, {"key": key, "sft_loss": None, "sft_seconds": 0.0}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sft-{key}.pt"
    if path.exists():
        try:
            state = read_checkpoint(path)
            model.load_state_dict(state["model"])
            return model, json.loads(state["meta"])
        except (CheckpointError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
            (say or _stderr)(f"warm-start cache {path} is unusable ({exc}); training it again")
            torch.manual_seed(cfg.seed)
            model = _build_model(cfg, task, tok, max_new)
    rng = random.Random(f"sft-{cfg.seed}")
    correct = cfg.sft_correct_for(task)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.01)
    t0 = time.perf_counter()
    losses = []
    ticker = progress_bar(cfg.sft_steps, mode=progress, tty=sys.stderr.isatty(), say=say or _stderr,
                          label="warm start steps")  # fmt: skip
    for step in range(cfg.sft_steps):
        lr = cfg.sft_lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.sft_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        examples = [sample_train(task, rng, exclude) for _ in range(cfg.sft_batch)]
        loss = sft_loss(model, task, tok, examples, rng, correct=correct)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ticker.update(1, f"loss {losses[-1]:.3f}")
    ticker.close()
    meta = {"key": key, "sft_loss": losses[-1] if losses else None, "sft_seconds": time.perf_counter() - t0}
    write_checkpoint({"model": model.state_dict(), "meta": json.dumps(meta)}, path, keep_previous=False)
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
    """pass@k (k = 1, 2, 4, ... <= samples) at ``temperature`` (1 by default) after ``processors`` with its standard
    error over the prompts (``pass@k_se``), mean accuracy and mean distinct correct answers."""
    prompts = [ids for ex in examples for ids in [prompt_ids(tok, ex)] * samples]
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
    per_prompt: dict[int, list[float]] = {k: [] for k in ks}
    correct_total, distinct_total = 0, 0
    for i, ex in enumerate(examples):
        keys = [task.answer_key(ex, t) for t in texts[i * samples : (i + 1) * samples]]
        c = sum(k is not None for k in keys)
        correct_total += c
        distinct_total += len({k for k in keys if k is not None})
        for k in ks:
            per_prompt[k].append(pass_at_k(samples, c, k))
    n = len(examples)
    out = {f"pass@{k}": float(np.mean(per_prompt[k])) for k in ks}
    # standard error of each pass@k over the held-out prompts (the prompts are the sample, n samples each)
    out.update({f"pass@{k}_se": float(np.std(per_prompt[k], ddof=1) / math.sqrt(n)) if n > 1 else 0.0 for k in ks})
    out["accuracy"] = correct_total / (n * samples)
    out["distinct_correct"] = distinct_total / n
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
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk: the resume truncates the partial row
            why = f"could not write {self.path}: {exc.strerror}"
            raise LabError(f"{why}; free space and resume with --resume") from None
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
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One RL run of ``preset`` with ``seed``; metrics in ``directory/metrics.jsonl``; returns the last eval row.

    The recipe, one call per stage (:mod:`entrolab.lab.stages`): sample prompts, roll out, score, advantages,
    behaviour statistics, ``ppo_epochs x minibatches`` updates, what the next step carries, the metrics row, then
    evaluation and an atomic checkpoint of the whole :class:`~entrolab.lab.stages.RunState`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ckpt_path = directory / "checkpoint.pt"
    agg = Aggregation(preset.agg, max_length=max_new) if preset.agg == "seq-mean-token-sum-norm" else preset.agg
    ctx = RunContext(
        cfg, preset, task, tok, max_new, loss_fn=get_policy_loss(preset.loss), agg=agg,
        spear_steps=spear_schedule_steps(cfg.steps, preset.replay_knobs.get("schedule_fraction", 1.0)),
    )  # fmt: skip
    state = RunState(cfg, preset, seed, init_model, has_tool=ctx.has_tool)
    terms = build_terms(preset)
    keep_rows = _restore(state, ckpt_path, directory / "metrics.jsonl", steps=cfg.steps, say=say) if resume else None
    metrics = _Metrics(directory, keep_rows)
    base = {"method": preset.name, "seed": seed}
    last_eval: dict[str, Any] = {}

    def run_eval(step: int) -> None:
        nonlocal last_eval
        g = torch.Generator().manual_seed(7_919 * (seed + 1) + cfg.seed + step)
        t0 = time.perf_counter()
        res = evaluate(state.model, task, tok, eval_examples, samples=cfg.eval_samples, max_new=max_new, generator=g)
        last_eval = {"kind": "eval", **base, "step": step, **res, "eval_seconds": time.perf_counter() - t0}
        metrics.write(last_eval)

    if state.step == 0:
        run_eval(0)
    try:
        for step in range(state.step, cfg.steps):
            t0 = time.perf_counter()
            examples = [sample_train(task, state.rng, exclude) for _ in range(cfg.prompts_per_step)]
            b = Batch(examples, *ROLLOUTS[preset.rollout](ctx, state, examples, step))
            t_gen = time.perf_counter() - t0
            score_batch(ctx, b)
            advantage_stage(ctx, state, b, step)
            behaviour_stage(ctx, state, b, step)
            loss_metrics = update_stage(ctx, state, b, terms, seed=seed, step=step, ckpt=ckpt_path)
            if cfg.entropy_check_every > 0 and step % cfg.entropy_check_every == 0:
                # the step's observed entropy change on its own batch (the report's mechanism check); before the
                # update it is the rollout's own mean entropy (the behaviour policy is the policy before the update)
                h_before = b.mean_entropy
                h_after = batch_entropy(ctx, state, b)
                b.metrics.update(entropy_before_update=h_before, observed_entropy_change=h_after - h_before)
            after_update(ctx, state, b, loss_metrics, step)
            row = {"kind": "train", **base, "step": step + 1, **step_row(ctx, b, loss_metrics, t0=t0, t_gen=t_gen)}
            metrics.write(row)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                run_eval(done)
            if on_step is not None:
                on_step(row)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                state.step, state.metric_rows = done, metrics.rows
                try:
                    write_checkpoint(state.state_dict(), ckpt_path)
                except OSError as exc:
                    raise LabError(f"{exc}; free space and resume with --resume") from None
    finally:
        metrics.close()
    return last_eval


def _restore(state: RunState, ckpt: Path, metrics: Path, *, steps: int, say: Callable[[str], None] | None) -> int:
    """Load the run's resume point into ``state``; the metric rows to keep (0: the run starts over)."""
    try:
        found = resume_point(ckpt, metrics, steps=steps, say=say or _stderr)
    except CheckpointError as exc:
        raise LabError(f"{exc}. Start this run over with --overwrite, or restore the files") from None
    if found is None:
        return 0
    state.load_state_dict(found)
    return state.metric_rows


# ------------------------------------------------------------------------------------------------------- driver
@contextlib.contextmanager
def run_directory_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``out`` (``out/.lock``, ``flock``): a second process that opens
    the same directory fails at once with a :class:`LabError` naming it and the holder (process id and host, which
    the lock file records), instead of interleaving its writes.  The lock goes with the process, so a killed run
    leaves nothing to clean up."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    with open(out / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another lab process"
            raise LabError(f"run directory {out} is in use by {holder}; wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_FREE = ("workers", "ray", "out")
"""Settings that change no result: where runs execute, and where the directory is (a moved directory is the same
run)."""


def task_spec(cfg: LabConfig) -> str:
    """The built-in task's parameters as this version runs it (``SortTask(length=10, ...)``); a task file's path.

    Saved in ``config.json`` (``"task_spec"``) so that a run made by a version whose task differed (the default
    ``sort`` had 6 digits before it had 10) is never resumed or continued as if it were this one."""
    return cfg.task if cfg.task not in TASKS else repr(get_task(cfg.task))


def saved_settings(cfg: LabConfig) -> dict[str, Any]:
    """What ``config.json`` holds: ``cfg.to_dict()`` and the :func:`task_spec`."""
    return {**cfg.to_dict(), "task_spec": task_spec(cfg)}


def same_settings(cfg: LabConfig, out: Path) -> bool:
    """Whether ``out`` holds a lab run (its ``config.json``) with exactly ``cfg``'s result-changing settings."""
    path = out / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    mine = json.loads(json.dumps({k: v for k, v in saved_settings(cfg).items() if k not in _FREE}))
    return isinstance(saved, dict) and {k: v for k, v in saved.items() if k not in _FREE} == mine


def _prepare_directory(cfg: LabConfig, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check ``out`` against ``resume``/``overwrite`` and write ``config.json``."""
    config_path = out / "config.json"
    if resume:
        if not config_path.exists():
            raise LabError(f"--resume {out}: no config.json there (not a lab run directory)")
        if not same_settings(cfg, out):
            saved = json.loads(config_path.read_text()).get("task_spec")
            if saved != task_spec(cfg):
                raise LabError(
                    f"--resume {out}: the run was made with task {saved or 'of an earlier version'}, this version "
                    f"runs {task_spec(cfg)}; start it afresh (--overwrite) or resume it with the version that made it"
                )
            raise LabError(f"--resume {out}: the settings differ from the saved config.json; resume with the same ones")
    elif any(p.name != ".lock" for p in out.iterdir()):
        if not overwrite:
            raise LabError(f"run directory {out} exists and is not empty; pass --overwrite or choose another --out")
        if (out / "runs").exists():
            shutil.rmtree(out / "runs")
    _atomic_write_bytes(config_path, json.dumps(saved_settings(cfg), indent=1).encode())


def _task_and_splits(cfg: LabConfig) -> tuple[Task, Tokenizer, int, list[Example], set[str]]:
    """The task, its tokenizer, the answer budget and the held-out prompts; bad settings raise :class:`LabError`."""
    try:
        task = resolve_task(cfg.task, verifier=cfg.verifier)
        tok = _tokenizer(cfg, task)
        max_new = cfg.max_new_tokens or task.max_answer_chars + 2
        eval_examples, exclude = make_splits(task, seed=cfg.seed, num_eval=cfg.eval_prompts)
        sample_train(task, random.Random(0), exclude)  # fails now, not mid-run, when every prompt is held out
    except ValueError as exc:
        raise LabError(str(exc)) from None
    return task, tok, max_new, eval_examples, exclude


def run_lab(
    cfg: LabConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run every method and seed of ``cfg``; returns the run directory (the report is built by the caller).  The
    directory is locked for the whole run (:func:`run_directory_lock`)."""
    out = Path(cfg.out)
    with run_directory_lock(out):
        _prepare_directory(cfg, out, resume=resume, overwrite=overwrite)
        _run_all(cfg, out, resume=resume, progress=progress, say=log or _stderr)
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_all(cfg: LabConfig, out: Path, *, resume: bool, progress: bool | None, say: Callable[[str], None]) -> None:
    """The warm start, its evaluation, then every (method, seed) run not already marked done."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif not os.environ.get("ENTROLAB_NO_THREAD_POLICY"):  # bench/contention.py measures the old default with it
        torch.set_num_threads(available_cpus())  # not the machine's core count: a quota or an affinity mask
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    task, tok, max_new, eval_examples, exclude = _task_and_splits(cfg)
    say(f"entrolab lab: task {task.name}, methods {', '.join(cfg.methods)}, {cfg.seeds} seed(s), {cfg.steps} steps")
    t0 = time.perf_counter()
    try:
        init_model, sft_meta = warm_start(cfg, task, tok, exclude, max_new, out / "sft", say=say, progress=progress)
    except ValueError as exc:  # a checkpoint that cannot be loaded or used, a prompt that does not tokenize
        raise LabError(str(exc)) from None
    g = torch.Generator().manual_seed(cfg.seed)
    init_eval = evaluate(init_model, task, tok, eval_examples, samples=cfg.eval_samples, max_new=max_new, generator=g)
    (out / "sft").mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out / "sft" / "summary.json", json.dumps({**sft_meta, "eval": init_eval}, indent=1).encode())
    say(f"warm start: pass@1 {init_eval['pass@1']:.3f} ({time.perf_counter() - t0:.1f} s)")
    runs = [(name, cfg.seed + s) for name in cfg.methods for s in range(cfg.seeds)]
    todo = [(n, s) for n, s in runs if not (resume and (out / "runs" / n / f"seed{s}" / "done.json").exists())]
    workers = cfg.run_workers(len(todo))
    if cfg.ray and todo:
        threads = cfg.threads or 1
        calls = [(cfg, n, s, str(out), resume, threads) for n, s in todo]
        run_on_ray(_worker_run, calls, address=cfg.ray, cpus=threads, say=say)
        return
    if workers > 1:
        threads = cfg.threads or max(1, available_cpus() // workers)
        say(f"{len(todo)} runs on {workers} worker processes, {threads} thread(s) each")
        calls = [(cfg, n, s, str(out), resume, threads) for n, s in todo]
        run_in_processes(_worker_run, calls, workers=workers, say=say)
        return
    bar = progress_bar(len(runs) * cfg.steps, mode=progress, tty=sys.stderr.isatty(), say=say, label="RL steps")
    bar.skip((len(runs) - len(todo)) * cfg.steps)
    for name, seed in todo:

        def on_step(row: dict[str, Any], _name: str = name, _seed: int = seed) -> None:
            bar.update(1, f"{_name} seed {_seed} step {row['step']}, entropy {row['entropy']:.3f}, "
                          f"accuracy {row['accuracy']:.2f}")  # fmt: skip

        _train_and_mark(
            cfg, name, seed, out, task=task, tok=tok, init_model=init_model, eval_examples=eval_examples,
            exclude=exclude, max_new=max_new, resume=resume, on_step=on_step, say=say,
        )  # fmt: skip
    bar.close()


def _train_and_mark(cfg: LabConfig, name: str, seed: int, out: Path, **kwargs: Any) -> dict[str, Any]:
    """One (method, seed) run, then its ``done.json`` (the last evaluation and the run's wall and CPU seconds)."""
    directory = out / "runs" / name / f"seed{seed}"
    t_run, c_run = time.perf_counter(), time.process_time()
    last = train_one(cfg, get_preset(name, cfg.presets), seed, directory=directory, **kwargs)
    if not last:  # resumed a run whose last checkpoint is its end: its last evaluation is in the metrics file
        rows = [json.loads(x) for x in (directory / "metrics.jsonl").read_text().splitlines() if x.strip()]
        last = next((r for r in reversed(rows) if r.get("kind") == "eval"), {})
    done = {"last_eval": last, "seconds": time.perf_counter() - t_run, "cpu_seconds": time.process_time() - c_run}
    _atomic_write_bytes(directory / "done.json", json.dumps(done).encode())
    return last


def _worker_run(cfg: LabConfig, name: str, seed: int, out: str, resume: bool, threads: int) -> tuple[str, int, float]:
    """A worker process's run: the task, splits and cached warm start rebuilt from ``cfg`` (bit-identical to the
    parent's), then :func:`_train_and_mark`.  Returns ``(name, seed, held-out pass@1)``."""
    torch.set_num_threads(threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    task, tok, max_new, eval_examples, exclude = _task_and_splits(cfg)
    init_model, _ = warm_start(cfg, task, tok, exclude, max_new, Path(out) / "sft")
    last = _train_and_mark(
        cfg, name, seed, Path(out), task=task, tok=tok, init_model=init_model, eval_examples=eval_examples,
        exclude=exclude, max_new=max_new, resume=resume,
    )  # fmt: skip
    return name, seed, float(last.get("pass@1", math.nan))
