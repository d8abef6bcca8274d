"""The TRL plug-in's overhead: ``EntropyGRPOTrainer(policy_loss="ppo")`` against TRL's own ``GRPOTrainer``.

Both train the same random Qwen2 checkpoint (``bench/trainer.py``'s: one token per character, the vocabulary padded
to ``--vocab``) on the arithmetic task with the same ``GRPOConfig`` (``--prompts`` x ``--group`` completions, at most
``--max-new`` new tokens, ``loss_type="dapo"``, one optimizer step per generation batch, no KL).  Two measurements,
each interleaved (TRL, plug-in, TRL, plug-in, ...) so that machine noise hits both alike:

- **step**: the wall time of a whole TRL step (generation, rewards, advantages, loss, backward, optimizer) over
  ``--rounds`` fresh pairs of trainers, ``--warmup`` untimed steps each;
- **loss**: ``compute_loss`` forward + backward alone on one fixed batch (the part the plug-in replaces: the
  log-prob/entropy head and the policy loss), ``--reps`` alternating calls.

Target: the plug-in's step within 10% of TRL's (``ratio <= 1.10``).

Run: ``python bench/integrations.py [--quick] [--threads N]`` (``make bench`` installs TRL).  Prints the table, writes
``bench/results/integrations.csv`` and ends with one JSON line (ratios and the roofline).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _common import fmt_table, machine, percentiles, roofline, set_threads, write_csv
from entrolab.lab.tasks import ArithmeticTask, Example, make_splits, sample_train
from trainer import save_checkpoint

TARGET = 1.10


def _trainer(kind: str, ckpt: Path, args: argparse.Namespace, out: Path, steps: int, times: list[float]) -> Any:
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from entrolab.integrations.trl import EntropyGRPOTrainer

    task = ArithmeticTask()
    _, exclude = make_splits(task, seed=0, num_eval=8)
    rng = random.Random(0)
    examples = [sample_train(task, rng, exclude) for _ in range(args.prompts * steps)]
    data = datasets.Dataset.from_dict({"prompt": [e.prompt for e in examples], "answer": [e.answer for e in examples]})

    def reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [task.score(Example(p, a, {"value": int(a)}), c) for p, c, a in zip(prompts, completions, answer)]

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, max_completion_length=args.max_new,
        loss_type="dapo", beta=0.0, learning_rate=3e-4, max_steps=steps, logging_steps=10**6, save_strategy="no",
        report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False,
        seed=0,
    )  # fmt: skip
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), local_files_only=True).float()
    cls = EntropyGRPOTrainer if kind == "plugin" else GRPOTrainer
    extra = {"policy_loss": "ppo"} if kind == "plugin" else {}
    return cls(model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tok,
               callbacks=[StepTimer()], **extra)  # fmt: skip


def _loss_batch(trainer: Any, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, p, t = args.prompts * args.group, 8, args.max_new
    v = trainer.model.config.vocab_size
    cm = torch.ones(b, t, dtype=torch.long)
    cm[::3, t // 2 :] = 0
    return {
        "prompt_ids": torch.randint(3, v, (b, p), generator=g), "prompt_mask": torch.ones(b, p, dtype=torch.long),
        "completion_ids": torch.randint(3, v, (b, t), generator=g), "completion_mask": cm,
        "advantages": torch.randn(b, generator=g), "num_items_in_batch": cm.sum(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per trainer per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=None, help="alternating loss-only calls per side")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.steps = args.steps or (3 if args.quick else 6)
    args.reps = args.reps or (6 if args.quick else 20)
    threads = set_threads(args.threads)
    roof = roofline(quick=True)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    step_times: dict[str, list[float]] = {"trl": [], "plugin": []}
    loss_times: dict[str, list[float]] = {"trl": [], "plugin": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "qwen2", hidden=args.hidden, layers=args.layers, vocab_size=args.vocab)
        for r in range(args.rounds):
            for kind in ("trl", "plugin") if r % 2 == 0 else ("plugin", "trl"):
                times: list[float] = []
                trainer = _trainer(kind, ckpt, args, Path(tmp) / f"{kind}{r}", args.warmup + args.steps, times)
                trainer.train()
                step_times[kind] += times[args.warmup :]
                median = percentiles(times[args.warmup :])["p50"]
                print(f"  round {r} {kind:6s} {1e3 * median:8.1f} ms/step", flush=True)
        pair = {k: _trainer(k, ckpt, args, Path(tmp) / f"loss-{k}", 1, []) for k in ("trl", "plugin")}
        batch = _loss_batch(pair["trl"], args)
        for tr in pair.values():
            tr.model.train()
            tr.current_gradient_accumulation_steps = 1
        for i in range(args.reps + 2):
            for kind in ("trl", "plugin") if i % 2 == 0 else ("plugin", "trl"):
                tr = pair[kind]
                tr.model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                tr.compute_loss(tr.model, dict(batch)).backward()
                if i >= 2:
                    loss_times[kind].append(time.perf_counter() - t0)
    rows = []
    res = {}
    for what, table in (("RL step", step_times), ("loss fwd+bwd", loss_times)):
        for kind in ("trl", "plugin"):
            t = percentiles(table[kind])
            res[(what, kind)] = t
            rows.append(
                {
                    "measure": what,
                    "runner": "TRL GRPOTrainer" if kind == "trl" else "EntropyGRPOTrainer(policy_loss='ppo')",
                    "p50_ms": 1e3 * t["p50"],
                    "p20_ms": 1e3 * t["p20"],
                    "p80_ms": 1e3 * t["p80"],
                    "x_trl_time": t["p50"] / res[(what, "trl")]["p50"],
                }
            )
    step_ratio = res[("RL step", "plugin")]["p50"] / res[("RL step", "trl")]["p50"]
    loss_ratio = res[("loss fwd+bwd", "plugin")]["p50"] / res[("loss fwd+bwd", "trl")]["p50"]
    print()
    print(
        f"GRPO (loss_type dapo) on arithmetic: {args.prompts} prompts x {args.group} completions, "
        f"<= {args.max_new} new tokens, Qwen2 {args.layers} x {args.hidden}, V = {args.vocab}, {threads} threads"
    )
    print(
        fmt_table(
            rows,
            [
                ("measure", "measure"),
                ("runner", "runner"),
                ("p50_ms", "median ms"),
                ("p20_ms", "p20"),
                ("p80_ms", "p80"),
                ("x_trl_time", "time / TRL"),
            ],
        )
    )
    path = write_csv("integrations.csv", [{**r, "threads": threads, "vocab": args.vocab} for r in rows])
    print(
        json.dumps(
            {
                "bench": "integrations",
                "plugin_over_trl_step_time": round(step_ratio, 4),
                "plugin_over_trl_loss_time": round(loss_ratio, 4),
                "target_step_time_ratio": TARGET,
                "meets_target": step_ratio <= TARGET,
                "threads": threads,
                "vocab": args.vocab,
                "roofline": roof,
                "machine": machine(),
                "csv": str(path),
            }
        )
    )


if __name__ == "__main__":
    main()
