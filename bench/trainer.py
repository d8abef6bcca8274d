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

The loss's share of a step: during the lab's Qwen2 runs every call of the policy loss records its inputs; after
the run each recorded call is replayed alone (forward and backward, the same tensors, the same hyper-parameters)
and its median time is divided by the median step time.  ``--losses`` picks the methods (default ``grpo``, the
``ppo`` loss, and ``clip_cov``, ``kl_cov``, ``steer``, ``hapo``, ``high_entropy_tokens``): the goal is at most 1% of
a step on CPU, where the loss is the largest part of a step it will ever be (on a GPU the model's matmuls shrink far
more than the loss's elementwise work, but both are small there).

Run: ``python bench/trainer.py [--quick] [--threads N]`` (TRL must be installed: ``make bench`` installs it).
Prints the table, writes ``bench/results/trainer.csv`` and ends with one JSON line (ratios and the roofline).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
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
from entrolab.lab import trainer as trainer_module
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


class LossRecorder:
    """Wraps the lab's ``get_policy_loss`` so that each call's inputs are kept for a later replay."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self._original = trainer_module.get_policy_loss

    def __enter__(self) -> LossRecorder:
        def patched(name: str) -> Any:
            fn = self._original(name)

            def recorded(*a: Any, **k: Any) -> Any:
                keep = tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x for x in a)
                kw = {n: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for n, v in k.items()}
                kw.pop("generator", None)
                self.calls.append((fn, keep, kw))
                return fn(*a, **k)

            return recorded

        trainer_module.get_policy_loss = patched
        return self

    def __exit__(self, *exc: Any) -> None:
        trainer_module.get_policy_loss = self._original

    def replay_seconds(self, repeats: int = 3) -> list[float]:
        """Forward + backward time of each recorded call, replayed alone (best of ``repeats``)."""
        times = []
        for fn, args, kw in self.calls:
            best = float("inf")
            for _ in range(repeats):
                logp = args[0].clone().requires_grad_(True)
                t0 = time.perf_counter()
                out = fn(logp, *args[1:], generator=torch.Generator().manual_seed(0), **kw)
                out.loss.backward()
                best = min(best, time.perf_counter() - t0)
            times.append(best)
        return times


def lab_steps(
    model: str, args: argparse.Namespace, out: Path, method: str = "grpo", recorder: LossRecorder | None = None
) -> list[float]:
    """Per-step wall times of the lab's recipe for ``method`` (``step_seconds`` of its metrics)."""
    cfg = LabConfig(
        methods=(method,),
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
        entropy_check_every=0,  # the mechanism check is the lab's own diagnostic; TRL does no such forwards
        threads=args.threads or 0,
        deterministic=False,
        out=str(out),
    )
    if recorder is not None:
        with recorder:
            run = run_lab(cfg, overwrite=True, progress=False, log=lambda s: None)
    else:
        run = run_lab(cfg, overwrite=True, progress=False, log=lambda s: None)
    lines = (run / "runs" / method / "seed0" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [r["step_seconds"] for r in rows if r["kind"] == "train"][args.warmup :]


def loss_shares(model: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Median replayed loss time (forward + backward) over the median lab step, per method."""
    rows = []
    for method in args.losses:
        recorder = LossRecorder()
        steps = lab_steps(model, args, out / method, method=method, recorder=recorder)
        loss_s = recorder.replay_seconds()
        step = statistics.median(steps)
        loss = statistics.median(loss_s)
        rows.append(
            {
                "method": method,
                "step_ms": 1e3 * step,
                "loss_ms": 1e3 * loss,
                "loss_share_pct": 100 * loss / step,
                "calls": len(loss_s),
                "tokens_per_call": int(recorder.calls[0][1][3].sum()) if recorder.calls else 0,
            }
        )
        print(f"  {method:12s} step {1e3 * step:8.1f} ms  loss {1e3 * loss:6.3f} ms  {rows[-1]['loss_share_pct']:.2f}%")
    return rows


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
    parser.add_argument(
        "--losses",
        default="grpo,clip_cov,kl_cov,steer,hapo,high_entropy_tokens",
        help="lab methods whose loss share to measure",
    )
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.quick else 20)
    args.losses = [m for m in str(args.losses).split(",") if m.strip()]
    args.vocabs = [int(v) for v in str(args.vocabs).split(",") if v.strip()]
    threads = set_threads(args.threads)
    args.threads = threads
    roof = roofline(quick=True)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows: list[dict[str, Any]] = []
    share_rows: list[dict[str, Any]] = []
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
            if args.losses:  # the lab's own size (characters) and a realistic LM head
                print(f"  {label} loss share of a lab step (Qwen2 checkpoint):", flush=True)
                for r in loss_shares(str(ckpt), args, Path(tmp) / "shares"):
                    share_rows.append({**r, "vocab": label})
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
    if share_rows:
        print()
        print("The policy loss's share of a lab step (forward + backward of the loss alone, replayed on the inputs of")
        print("every call of the run, over the median step; goal: at most 1%)")
        print(
            fmt_table(
                share_rows,
                [
                    ("vocab", "vocabulary"),
                    ("method", "lab method"),
                    ("tokens_per_call", "tokens/call"),
                    ("loss_ms", "median loss ms"),
                    ("step_ms", "median step ms"),
                    ("loss_share_pct", "share %"),
                ],
            )
        )
        write_csv("trainer_loss_share.csv", [{**r, "threads": threads} for r in share_rows])
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
        "loss_share_pct": {
            label: {r["method"]: round(r["loss_share_pct"], 3) for r in share_rows if r["vocab"] == label}
            for label in dict.fromkeys(r["vocab"] for r in share_rows)
        },
        "loss_share_goal_pct": 1.0,
        "roofline": roof,
        "machine": machine(),
        "csv": str(path),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
