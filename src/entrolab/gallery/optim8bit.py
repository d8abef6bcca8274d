"""Gallery entry ``optim8bit``: 8-bit Adam states against fp32 Adam on the lab's tiny policy.

The spec's comparison (``shared/specs/beyond_llm.md`` section 4) on the lab's own model: the warm start of
``entrolab lab`` (supervised fine-tuning of the built-in ``TinyGPT``, d_model 96, 2 layers, on countdown solutions,
AdamW lr 2e-3 with 20 warm-up steps and cosine decay, weight decay 0.01, gradient clip 1) run twice from the same
initialisation and batches: PyTorch's ``AdamW`` and bitsandbytes' ``AdamW8bit`` (through
:func:`entrolab.optim.make_optimizer`; block size 256, fp32 state for tensors under 4,096 elements).  Metrics: the
training-loss curve, the held-out loss on 256 held-out prompts, greedy-free pass@1 (8 samples at temperature 1 on 64
held-out prompts), optimizer-state bytes and wall time.  Then 60 GRPO steps of the lab (``entrolab lab
--optimizer adam`` or ``adam8bit``, the same kind of state as the warm start) from each fine-tuned model: the reward
curve, the final pass@1 and the RL optimizer's state bytes.
"""

from __future__ import annotations

import functools
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from entrolab.gallery._common import cell, column, plot_seed_curves, pyplot, run_variants, save_figure
from entrolab.lab.checkpoints import read_checkpoint
from entrolab.lab.presets import get_preset
from entrolab.lab.tasks import make_splits, resolve_task, sample_train
from entrolab.lab.trainer import LabConfig, _build_model, _tokenizer, evaluate, sft_loss, train_one
from entrolab.optim import make_optimizer, optimizer_state_bytes

TITLE = "8-bit optimizer states: bitsandbytes' AdamW8bit against fp32 AdamW on the lab's tiny policy"
PAPER = "arXiv 2110.02861"
CLAIM = (
    "Block-wise 8-bit quantisation of Adam's two moments (dynamic tree codebook, per-block absmax) matches 32-bit "
    "Adam's training curve while storing the optimizer state in about a quarter of the memory."
)
VARIANTS = ("adamw8bit", "adamw")
STEPS, QUICK_STEPS, BATCH, LR, HELD_OUT = 600, 12, 64, 2e-3, 256  # 600: the lab's sft_steps
RL_STEPS, QUICK_RL_STEPS = 60, 2


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"the lab's warm start: TinyGPT (d_model 96, 2 layers) fine-tuned on countdown solutions for {steps} steps "
        f"of batch {BATCH} (AdamW lr {LR}, warm-up 20, cosine, weight decay 0.01, clip 1), fp32 AdamW against "
        f"bitsandbytes' AdamW8bit from the same initialisation and batches; held-out loss on {HELD_OUT} prompts, "
        "pass@1 (8 samples) on 64."
    )


def train_variant(variant: str, *, seed: int, updates: int, rl_steps: int = RL_STEPS) -> dict[str, Any]:
    cfg = LabConfig(methods=("grpo",), seed=seed, task="countdown")  # the task its documented results used
    task = resolve_task(cfg.task)
    tok = _tokenizer(cfg, task)
    max_new = task.max_answer_chars + 2
    held_out, exclude = make_splits(task, seed=seed, num_eval=HELD_OUT)
    torch.manual_seed(seed)
    model = _build_model(cfg, task, tok, max_new)
    opt = make_optimizer(variant, model.parameters(), lr=LR, weight_decay=0.01)
    rng = random.Random(f"optim8bit-{seed}")
    curve = []
    t0 = time.perf_counter()
    for step in range(updates):
        lr = LR * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / updates))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = sft_loss(model, task, tok, [sample_train(task, rng, exclude) for _ in range(BATCH)], rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        held_loss = float(sft_loss(model, task, tok, held_out, random.Random(0)))
        scores = evaluate(model, task, tok, held_out[:64], samples=8, max_new=max_new,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    rl = _rl(variant, model, seed=seed, steps=rl_steps, task=task, tok=tok, held_out=held_out, exclude=exclude)
    return {
        **rl,
        "curve": curve,
        "final_loss": sum(curve[-20:]) / len(curve[-20:]),
        "held_out_loss": held_loss,
        "pass@1": scores["pass@1"],
        "state_bytes": optimizer_state_bytes(opt),
        "params": params,
        "train_seconds": seconds,
    }


def _rl(variant: str, model: Any, *, seed: int, steps: int, task: Any, tok: Any, held_out: list[Any],
        exclude: set[str]) -> dict[str, Any]:  # fmt: skip
    """GRPO from the fine-tuned ``model`` with the lab's ``adam`` or ``adam8bit`` (the variant's kind of state):
    the reward curve, the final held-out pass@1 and the optimizer-state bytes of the last checkpoint."""
    cfg = LabConfig(methods=("grpo",), seed=seed, task="countdown", steps=steps, workers=1,
                    optimizer="adam8bit" if "8bit" in variant else "adam",
                    eval_every=steps, eval_prompts=64, eval_samples=8, checkpoint_every=steps)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        last = train_one(cfg, get_preset("grpo"), seed, task=task, tok=tok, init_model=model,
                         eval_examples=held_out[:64], exclude=exclude, max_new=task.max_answer_chars + 2,
                         directory=Path(tmp))  # fmt: skip
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        state = read_checkpoint(Path(tmp) / "checkpoint.pt")["optimizer"]["state"]
    return {
        "rl_reward": [r["reward"] for r in rows if r["kind"] == "train"],
        "rl_pass@1": last["pass@1"],
        "rl_state_bytes": _tensor_bytes(state),
    }


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested state dict (bitsandbytes nests its states), step counters excluded."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for k, v in obj.items() if k != "step")
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    train = functools.partial(train_variant, rl_steps=QUICK_RL_STEPS if quick else RL_STEPS)
    return run_variants(train, VARIANTS, seed=seed, updates=QUICK_STEPS if quick else STEPS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    def pair(label: str, key: str, digits: int = 3) -> tuple[str, str, str]:
        return label, cell(results, "adamw8bit", key, digits), cell(results, "adamw", key, digits)

    rows = [
        pair("training loss, mean of the last 20 steps", "final_loss"),
        pair(f"held-out loss ({HELD_OUT} prompts)", "held_out_loss"),
        pair("pass@1 (64 prompts x 8 samples)", "pass@1"),
        pair("optimizer-state bytes", "state_bytes", 0),
        pair("training seconds", "train_seconds", 1),
        pair(f"GRPO ({RL_STEPS} steps, Adam8bit vs Adam): pass@1", "rl_pass@1"),
        pair("... RL optimizer-state bytes", "rl_state_bytes", 0),
    ]

    def mean(v: str, k: str) -> float:
        return sum(column(results, v, k)) / len(results)

    ratio = mean("adamw", "state_bytes") / mean("adamw8bit", "state_bytes")
    diff = mean("adamw8bit", "held_out_loss") - mean("adamw", "held_out_loss")
    rel = diff / mean("adamw", "held_out_loss")
    verdict = (
        f"AdamW8bit stores {ratio:.2f}x less optimizer state ({mean('adamw8bit', 'state_bytes') / 1e3:.0f} kB against "
        f"{mean('adamw', 'state_bytes') / 1e3:.0f} kB for {results[0]['adamw']['params']:,} parameters; the small "
        f"tensors keep fp32 state) and ends at held-out loss {mean('adamw8bit', 'held_out_loss'):.4f} against "
        f"{mean('adamw', 'held_out_loss'):.4f} ({rel:+.1%}); "
        + ("within the claimed parity" if abs(rel) <= 0.05 else "the losses differ by more than 5%")
        + f"; after {RL_STEPS} GRPO steps with Adam8bit against Adam, pass@1 is {mean('adamw8bit', 'rl_pass@1'):.3f} "
        f"against {mean('adamw', 'rl_pass@1'):.3f}."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (ax, rx, bx) = plt.subplots(1, 3, figsize=(15, 3.6))
    plot_seed_curves(ax, results, VARIANTS, lambda r: range(1, len(r["adamw"]["curve"]) + 1))
    ax.set(xlabel="step", ylabel="training loss (nats / token)", yscale="log", title="warm start of the tiny policy")
    plot_seed_curves(rx, results, VARIANTS, lambda r: range(1, len(r["adamw"]["rl_reward"]) + 1), key="rl_reward")
    rx.set(xlabel="GRPO step", ylabel="mean reward", title="then GRPO (Adam8bit vs Adam)")
    means = [sum(column(results, v, "state_bytes")) / len(results) / 1e3 for v in VARIANTS]
    bx.bar(range(len(VARIANTS)), means, color=["C0", "C1"])
    bx.set_xticks(range(len(VARIANTS)), list(VARIANTS))
    bx.set(ylabel="optimizer state (kB)", title="memory")
    save_figure(fig, [ax, rx, bx], path)
