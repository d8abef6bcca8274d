"""The lab's configuration: :class:`LabConfig` (every field is a command-line option of ``entrolab lab``) and
:class:`LabError`, what a run that cannot continue raises."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from entrolab._cpus import available_cpus
from entrolab._validation import check_choice, check_int, check_positive_float
from entrolab.lab.presets import Preset, get_preset
from entrolab.lab.task_files import VERIFIERS
from entrolab.lab.tasks import resolve_task
from entrolab.optim import require_bitsandbytes

__all__ = ["LAB_OPTIMIZERS", "LabConfig", "LabError"]

_POSITIVE_INTS = (
    "seeds", "steps", "prompts_per_step", "group_size", "ppo_epochs", "minibatches", "eval_every", "eval_prompts",
    "eval_samples", "sft_batch", "d_model", "n_layer", "checkpoint_every",
)  # fmt: skip


class LabError(RuntimeError):
    """A lab run cannot continue (NaN loss, an existing run directory, a bad resume)."""


LAB_OPTIMIZERS = ("adam", "adam8bit")
"""Optimizers of the lab's RL updates (``--optimizer``)."""


@dataclass
class LabConfig:
    """Everything a lab run depends on.  Every field is a command-line option of ``entrolab lab``."""

    methods: tuple[str, ...] = ("grpo", "clip_cov", "kl_cov")
    """Methods (presets) to compare.  The default is the comparison of Cui et al. (arXiv 2505.22617): the baseline whose
    entropy collapses and the two covariance interventions; any preset can be added (``--methods``)."""
    seeds: int = 10
    """Seeds per method (0 .. seeds-1, offset by ``seed``).  Ten by default: on validation seeds GRPO's pass@16 falls
    0.061 below the warm start's (sd 0.064 over 15 seeds), which 5 seeds detect at p < 0.05 less than half of the
    time and 10 about 80% of the time (docs/lab.md, "How the default was chosen")."""
    seed: int = 0
    """Base seed: the held-out split, the warm start and every run derive from it."""
    steps: int = 60
    """RL steps per run."""
    task: str = "sort"
    """Built-in task: ``sort`` (sort digits; one correct answer; the default), ``countdown`` (many correct answers),
    ``arithmetic`` (one) or ``calculator`` (multi-turn, with a tool); or a ``.jsonl`` file of
    ``{"prompt", "answer"}`` rows, scored by ``verifier``."""
    verifier: str = "exact"
    """How a task file's answers are checked: ``exact``, ``numeric``, ``regex`` (the answer is a pattern; then set
    ``sft_steps`` to 0) or ``math`` (needs the math-verify package).  Ignored by the built-in tasks."""
    model: str = "tiny"
    """``tiny`` (the built-in transformer), or a local Hugging Face causal-LM checkpoint directory with its
    tokenizer (needs transformers; nothing is downloaded)."""
    prompts_per_step: int = 32
    """Prompts per RL step."""
    group_size: int = 4
    """Completions per prompt (the group of GRPO).  32 x 4 rather than 16 x 8 (the same 128 samples a step): with
    more prompts the step's reward varies less from prompt to prompt, so the entropy law's fit over a run measures
    the trend, not the draw (validation runs, seeds 100-104: GRPO's median R² 0.90 against 0.56)."""
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
    eval_every: int = 15
    """Held-out evaluation every this many steps (and at the first and last step)."""
    eval_prompts: int = 64
    """Held-out prompts."""
    eval_samples: int = 16
    """Samples per held-out prompt: pass@k is reported for k = 1, 2, 4, ... up to this."""
    sft_steps: int = 600
    """Warm-start steps (supervised, on generated solutions)."""
    sft_correct: float | None = None
    """Fraction of warm-start demonstrations that are correct; the rest are the task's near misses (needs a task
    with ``near_miss``, e.g. ``sort``).  Below 1 the warm start imitates an imperfect demonstrator: a policy that can
    solve the task but spreads over near misses, the regime RL sharpens.  ``None``: the task's own
    ``demonstrator_accuracy`` (``sort``: 0.25), else 1."""
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
    entropy_check_every: int = 1
    """Every this many steps, measure the policy's entropy on the step's own completions just after its updates (one
    extra forward without gradient; before them it is the rollout's own entropy): the observed entropy change the
    report checks against the covariance prediction.  0 never."""
    checkpoint_every: int = 20
    """Checkpoint every this many RL steps (and at the end)."""
    threads: int = 0
    """torch threads per run (0: leave torch's default when runs are serial; with ``workers`` > 1, the machine's
    cores divided among the workers)."""
    ray: str = ""
    """Run the (method, seed) runs as Ray tasks on the cluster at this address (``auto``: the running cluster;
    ``local``: start one on this machine), each task writing its own run directory, so the run directory must be
    on storage every node sees; needs the ``ray`` package.  Empty: local processes (``workers``).  A resume may use
    either."""
    workers: int = 0
    """Runs (method x seed) trained at once, each in its own process; 0: as many as the machine's cores allow (one
    per core, at most the number of runs).  Results are identical to a serial run with the same threads per run:
    every run is seeded on its own and shares only the cached warm start."""
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
        try:
            for name in _POSITIVE_INTS:
                check_int(name, getattr(self, name), low=1)
            for name in (
                "sft_steps",
                "max_new_tokens",
                "threads",
                "seed",
                "kl_metric_every",
                "entropy_check_every",
                "workers",
            ):
                check_int(name, getattr(self, name), low=0)
            for name in ("lr", "sft_lr", "grad_clip"):
                check_positive_float(name, getattr(self, name))
            check_choice("optimizer", self.optimizer, LAB_OPTIMIZERS)
            check_choice("verifier", self.verifier, VERIFIERS)
        except TypeError as exc:  # a command-line or config value: a ValueError either way
            raise ValueError(str(exc)) from None
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
        if self.sft_correct is not None and (
            isinstance(self.sft_correct, bool)
            or not isinstance(self.sft_correct, int | float)
            or not 0.0 < self.sft_correct <= 1.0
        ):
            raise ValueError(f"sft_correct must be a number in (0, 1], got {self.sft_correct!r}")
        if self.optimizer.endswith("8bit"):
            require_bitsandbytes()
        task = resolve_task(self.task, verifier=self.verifier)
        if self.sft_steps and not task.has_solutions:
            raise ValueError(
                f"task {self.task!r} with verifier {self.verifier!r} has no reference completions for the warm start; "
                "set sft_steps to 0"
            )
        if self.sft_correct_for(task) < 1.0 and self.sft_steps and not callable(getattr(task, "near_miss", None)):
            raise ValueError(
                f"sft_correct={self.sft_correct} needs near misses for the warm start, and task {self.task!r} has "
                "none (the built-in 'sort' has); set sft_correct to 1"
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

    def sft_correct_for(self, task: Any) -> float:
        """The warm start's fraction of correct demonstrations for ``task`` (see ``sft_correct``)."""
        if self.sft_correct is not None:
            return float(self.sft_correct)
        return float(getattr(task, "demonstrator_accuracy", 1.0))

    def run_workers(self, runs: int) -> int:
        """How many runs train at once for ``runs`` runs (``workers``, or the CPUs available to this process when 0:
        its affinity, capped by a cgroup quota)."""
        want = self.workers or available_cpus()
        return max(1, min(want, runs))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "presets"}
        d["methods"] = list(self.methods)
        d["presets"] = {k: v.to_dict() for k, v in self.presets.items()}
        return d
