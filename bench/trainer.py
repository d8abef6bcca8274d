"""The lab's RL step against TRL's ``GRPOTrainer``: same tiny model, task, batch, group, completion length, threads.

Both sides train the same randomly initialised Qwen2 checkpoint (written here with ``save_pretrained``, a
one-token-per-character tokenizer, nothing downloaded) with GRPO on the built-in ``arithmetic`` task: ``--prompts``
prompts x ``--group`` completions per step, at most ``--max-new`` new tokens, temperature 1, one optimizer step per
RL step (the lab with ``ppo_epochs = minibatches = 1``; TRL with ``num_iterations = 1``, one generation batch per
step), no KL term, no evaluation inside the timed steps.  A step is everything RL does once: sample the group
completions, score them, advantages, the policy loss, backward and the optimizer step.  The lab's built-in
``TinyGPT`` of the same width is timed too, for reference.

The floor column is the matmul work of one training forward+backward (``6 x parameters x tokens``, LM head
included, at the machine's measured fp32 matmul rate): no trainer's step can be shorter, so ``TRL / floor`` bounds
the speed-up any trainer could show over TRL at that size.

Timing: the wall time of each step after ``--warmup`` untimed ones (the lab's own ``step_seconds``; a
``TrainerCallback`` around TRL's ``training_step``-driven step); median and p20/p80 over the rest.

Run: ``python bench/trainer.py [--quick] [--threads N]`` (TRL must be installed: ``make bench`` installs it).
Prints the table, writes ``bench/results/trainer.csv`` and ends with one JSON line (ratios and the roofline).
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
from entrolab.lab import LabConfig, run_lab
from entrolab.lab.tasks import ArithmeticTask, Example, make_splits, sample_train

TARGET = 3.0


def save_checkpoint(directory: Path, *, hidden: int, layers: int, vocab_size: int = 0, seed: int = 0) -> Path:
    """A random Qwen2 causal LM and a character tokenizer, saved as a local HF checkpoint; ``vocab_size`` > 0 pads
    the vocabulary with unused tokens to that size (the shape of a real tokenizer's LM head)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set(ArithmeticTask().alphabet))
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.save_pretrained(str(directory))
    cfg = transformers.Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(directory))
    return directory


def training_flops(model_dir: str, tokens: int) -> float:
    """Matmul FLOPs of one training forward+backward over ``tokens`` positions: ``6 x (non-embedding parameters +
    LM head) x tokens`` (the attention-score matmuls are negligible at these lengths)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    embed = model.get_input_embeddings().weight.numel()
    return 6.0 * (sum(p.numel() for p in model.parameters()) - embed) * tokens


def lab_steps(model: str, args: argparse.Namespace, out: Path) -> list[float]:
    """Per-step wall times of the lab's GRPO recipe (``step_seconds`` of its metrics)."""
    cfg = LabConfig(
        methods=("grpo",),
        seeds=1,
        steps=args.warmup + args.steps,
        task="arithmetic",
        model=model,
        prompts_per_step=args.prompts,
        group_size=args.group,
        max_new_tokens=args.max_new,
        ppo_epochs=1,
        minibatches=1,
        eval_every=10**6,
        eval_prompts=8,
        eval_samples=2,
        sft_steps=0,
        d_model=args.hidden,
        n_layer=args.layers,
        checkpoint_every=10**6,
        kl_metric_every=0,  # no KL term (beta = 0 in TRL): no forward of the initial model
        threads=args.threads or 0,
        deterministic=False,
        out=str(out),
    )
    run = run_lab(cfg, overwrite=True, progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (run / "runs" / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    return [r["step_seconds"] for r in rows if r["kind"] == "train"][args.warmup :]


def trl_steps(model: str, args: argparse.Namespace, out: Path) -> list[float]:
    """Per-step wall times of TRL's ``GRPOTrainer`` on the same checkpoint, task and batch."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    task = ArithmeticTask()
    _, exclude = make_splits(task, seed=0, num_eval=8)
    rng = random.Random(0)
    n_steps = args.warmup + args.steps
    examples = [sample_train(task, rng, exclude) for _ in range(args.prompts * n_steps)]
    data = datasets.Dataset.from_dict({"prompt": [e.prompt for e in examples], "answer": [e.answer for e in examples]})

    def reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        """The lab's own verifier, on TRL's decoded completions."""
        return [task.score(Example(p, a, {"value": int(a)}), c) for p, c, a in zip(prompts, completions, answer)]

    times: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_generations=args.group,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=args.max_new,
        temperature=1.0,
        beta=0.0,
        learning_rate=3e-4,
        max_grad_norm=1.0,
        max_steps=n_steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,
        seed=0,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model, local_files_only=True)
    policy = transformers.AutoModelForCausalLM.from_pretrained(model, local_files_only=True).float()
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    trainer.train()
    return times[args.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per RL step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new", type=int, default=8, help="completion budget in tokens")
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--vocabs",
        default="0,32768",
        help="comma-separated LM-head sizes to run; 0 = the character vocabulary (about 25 tokens)",
    )
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.quick else 20)
    args.vocabs = [int(v) for v in str(args.vocabs).split(",") if v.strip()]
    threads = set_threads(args.threads)
    args.threads = threads
    roof = roofline(quick=True)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows: list[dict[str, Any]] = []
    speedups: dict[str, float] = {}
    for vocab in args.vocabs:
        label = f"V={vocab}" if vocab else "V=chars"
        results: dict[str, dict[str, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / "qwen2", hidden=args.hidden, layers=args.layers, vocab_size=vocab)
            runs = {
                "entrolab lab (Qwen2 checkpoint)": lambda c=ckpt, t=tmp: lab_steps(str(c), args, Path(t) / "lab-hf"),
                "TRL GRPOTrainer (Qwen2 checkpoint)": lambda c=ckpt, t=tmp: trl_steps(str(c), args, Path(t) / "trl"),
            }
            if not vocab:  # the built-in model has the character vocabulary
                runs["entrolab lab (built-in TinyGPT)"] = lambda t=tmp: lab_steps("tiny", args, Path(t) / "lab-tiny")
            for name, fn in runs.items():
                try:
                    times = fn()
                except ImportError as exc:
                    print(f"  {label} {name}: skipped ({exc})", flush=True)
                    continue
                results[name] = percentiles(times)
                print(f"  {label:8s} {name:36s} {1e3 * results[name]['p50']:8.1f} ms/step", flush=True)
            # each completion is scored with its prompt: about (prompt + max_new) positions per completion
            prompt_len = 1 + max(len(ArithmeticTask().sample(random.Random(i)).prompt) for i in range(50))
            floor_s = training_flops(str(ckpt), args.prompts * args.group * (prompt_len + args.max_new)) / max(
                roof["flops_fp32"], 1.0
            )
        trl = results.get("TRL GRPOTrainer (Qwen2 checkpoint)")
        ours = results.get("entrolab lab (Qwen2 checkpoint)")
        if ours and trl:
            speedups[label] = trl["p50"] / ours["p50"]
        for name, t in results.items():
            rows.append(
                {
                    "vocab": label,
                    "runner": name,
                    "p50_ms": 1e3 * t["p50"],
                    "p20_ms": 1e3 * t["p20"],
                    "p80_ms": 1e3 * t["p80"],
                    "steps_per_s": 1 / t["p50"],
                    "x_trl": (trl["p50"] / t["p50"]) if trl else None,
                    "train_floor_ms": 1e3 * floor_s,
                    "max_x_trl": (trl["p50"] / floor_s) if trl else None,
                }
            )
    completions = args.prompts * args.group
    print()
    print(
        f"GRPO on arithmetic: {args.prompts} prompts x {args.group} completions, <= {args.max_new} new tokens, "
        f"Qwen2 {args.layers} layers x {args.hidden}, {threads} threads, {args.steps} timed steps"
    )
    print(
        fmt_table(
            rows,
            [
                ("vocab", "vocabulary"),
                ("runner", "runner"),
                ("p50_ms", "median ms/step"),
                ("p20_ms", "p20"),
                ("p80_ms", "p80"),
                ("steps_per_s", "steps/s"),
                ("x_trl", "x TRL steps/s"),
                ("train_floor_ms", "train matmul floor ms"),
                ("max_x_trl", "TRL / floor"),
            ],
        )
    )
    path = write_csv("trainer.csv", [{**r, "completions": completions, "threads": threads} for r in rows])
    summary = {
        "bench": "trainer",
        "completions_per_step": completions,
        "max_new_tokens": args.max_new,
        "threads": threads,
        "ms_per_step": {f"{r['vocab']} {r['runner']}": round(r["p50_ms"], 2) for r in rows},
        "lab_over_trl_steps_per_s": {k: round(v, 3) for k, v in speedups.items()},
        "target": TARGET,
        "meets_target": {k: v >= TARGET for k, v in speedups.items()},
        "train_floor_ms": {r["vocab"]: round(r["train_floor_ms"], 2) for r in rows},
        "roofline": roof,
        "machine": machine(),
        "csv": str(path),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
