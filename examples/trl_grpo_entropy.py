"""GRPO with an entrolab entropy method inside TRL: ``EntropyGRPOTrainer`` on a local model and a JSONL prompt file.

One GPU or CPU::

    python examples/trl_grpo_entropy.py --model /path/to/Qwen2.5-0.5B-Instruct --data prompts.jsonl \\
        --policy-loss clip_cov --loss-kwargs '{"ratio": 2e-4}'

Many GPUs (accelerate, DDP or DeepSpeed ZeRO; the plug-in's loss is per micro-batch and TRL's normalisers make it
exact under any split)::

    accelerate launch --num_processes 8 examples/trl_grpo_entropy.py --model Qwen/Qwen2.5-7B-Instruct \\
        --data prompts.jsonl --policy-loss steer --bf16

``--data`` is a JSONL file with ``{"prompt": ..., "answer": ...}`` rows; the reward is 1 when the last number in a
completion equals the answer (swap in your verifier).  ``--model`` may be a hub id when the machine has network
access; nothing in this script downloads anything by itself.  ``--smoke`` builds a tiny random Qwen2 and a
character tokenizer locally and trains a few steps on CPU (what the test suite runs).

Every ``GRPOConfig`` option keeps TRL's meaning; ``--loss-type`` only chooses the aggregation (grpo, bnpo, dr_grpo,
dapo, luspo).  entrolab's metrics appear in TRL's logs as ``entrolab/<name>`` (clip fractions, covariance
selections, STEER/HAPO statistics).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any


def last_number_reward(prompts: list[str], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the last number in the completion equals the answer, else 0.0."""
    out = []
    for completion, target in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        numbers = re.findall(r"-?\d+(?:\.\d+)?", text[:2048])
        out.append(1.0 if numbers and numbers[-1] == str(target).strip() else 0.0)
    return out


def smoke_setup(directory: Path) -> tuple[str, str]:
    """A tiny random Qwen2 with a character tokenizer and a small arithmetic JSONL file, written locally."""
    import tokenizers
    import torch
    import transformers

    chars = sorted(set("0123456789+-*= "))
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    cfg = transformers.Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model_dir = directory / "model"
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    data = directory / "prompts.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(1, 9) for b in range(1, 5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(model_dir), str(data)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (or hub id with network access)")
    parser.add_argument("--data", help="JSONL file of {prompt, answer} rows")
    parser.add_argument("--policy-loss", default="clip_cov", help="an entrolab policy loss (entrolab.losses)")
    parser.add_argument("--loss-kwargs", default="{}", help="JSON object of the loss's hyperparameters")
    parser.add_argument("--loss-type", default="dapo", help="TRL aggregation: grpo, bnpo, dr_grpo, dapo, luspo")
    parser.add_argument("--output-dir", default="trl-entropy-run")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=512)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--epsilon-high", type=float, default=0.28)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny local model, a few CPU steps")
    args = parser.parse_args(argv)
    try:
        import datasets
        from transformers import AutoTokenizer
        from trl import GRPOConfig

        from entrolab.integrations.trl import EntropyGRPOTrainer
    except ImportError as exc:
        parser.exit(2, f"{parser.prog}: this example needs the trl extra: pip install 'entrolab[trl]' ({exc})\n")

    tmp = tempfile.TemporaryDirectory() if args.smoke else None
    if tmp is not None:
        args.model, args.data = smoke_setup(Path(tmp.name))
        args.output_dir = str(Path(tmp.name) / "out")
        args.num_generations, args.per_device_batch, args.max_completion_length, args.max_steps = 4, 4, 6, 3
        args.learning_rate = 1e-3
    if not args.model or not args.data:
        parser.error("--model and --data are required (or --smoke)")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    data = datasets.Dataset.from_list(rows)
    config = GRPOConfig(
        output_dir=args.output_dir,
        loss_type=args.loss_type,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_batch,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        epsilon_high=args.epsilon_high,
        beta=0.0,
        bf16=args.bf16,
        use_cpu=args.smoke,
        gradient_checkpointing=not args.smoke,
        logging_steps=1 if args.smoke else 10,
        save_strategy="no" if args.smoke else "steps",
        report_to=[] if args.smoke else ["tensorboard"],
        disable_tqdm=args.smoke,
    )
    trainer = EntropyGRPOTrainer(
        model=args.model,
        reward_funcs=[last_number_reward],
        args=config,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(args.model),
        policy_loss=args.policy_loss,
        loss_kwargs=json.loads(args.loss_kwargs),
    )
    trainer.train()
    last = [row for row in trainer.state.log_history if "loss" in row]
    if tmp is not None:
        tmp.cleanup()
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun: tear the group down before the interpreter exits
        dist.barrier()  # (left to shutdown, gloo/NCCL threads can abort it: pytorch/pytorch#190489)
        dist.destroy_process_group()
    return last[-1] if last else {}


if __name__ == "__main__":
    print(json.dumps(main()))
