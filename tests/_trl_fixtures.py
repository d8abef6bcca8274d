"""A tiny random Qwen2, a local character tokenizer, prompts and a fixed GRPO batch for the TRL tests (no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import tokenizers
import torch
import transformers
from trl import GRPOConfig

CHARS = sorted(set("0123456789+-*= abcdefghijklmnopqrstuvwxyz"))
CUT = 3  # in the 2-process tests rank 0 holds rows [0, 3) of fixed_batch, rank 1 rows [3, 8)
GRAD_CASES = (
    ("ppo", {}),
    ("clip_cov", {"ratio": 0.3, "cov_lb": 0.0, "global_stats": True}),
    ("kl_cov", {"ratio": 0.3, "global_stats": True}),
)
"""The losses whose DDP-averaged gradient on a split batch must equal one process on the whole batch."""


def tokenizer() -> Any:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def model(tok: Any, seed: int = 0) -> Any:
    cfg = transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(cfg)


def data(n: int = 16) -> Any:
    return datasets.Dataset.from_dict({"prompt": [f"{i % 7}+{i % 5}=" for i in range(n)]})


def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [float(len(c)) / 8 + (1.0 if c[:1].isdigit() else 0.0) for c in completions]


def config(out: Path, loss_type: str = "dapo", **kw: Any) -> GRPOConfig:
    base = {
        "output_dir": str(out), "per_device_train_batch_size": 4, "num_generations": 4,
        "max_completion_length": 6, "loss_type": loss_type, "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0,
        "learning_rate": 1e-3, "max_steps": 3, "logging_steps": 1, "save_strategy": "no", "report_to": [],
        "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "disable_tqdm": True, "seed": 0,
        "dataloader_num_workers": 0,
    }  # fmt: skip
    base.update(kw)
    return GRPOConfig(**base)


def fixed_batch(tok: Any, rows: slice | None = None, *, b: int = 8, seed: int = 0) -> dict[str, Any]:
    """A GRPO batch as TRL's generation step hands it to the loss: left-padded prompts, right-padded completions,
    old log-probs away from the current policy (both clip branches), ``num_items_in_batch`` over all ``b`` rows."""
    g = torch.Generator().manual_seed(seed)
    p, t = 5, 6
    v = len(tok)
    prompt_ids = torch.randint(3, v, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, :2] = 0
    prompt_ids[0, :2] = 0
    completion_ids = torch.randint(3, v, (b, t), generator=g)
    completion_mask = torch.ones(b, t, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[2, 5:] = 0
    if b > 5:
        completion_mask[5, 1:] = 0
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.randn(b, generator=g),
        "old_per_token_logps": -3.8 + 0.3 * torch.randn(b, t, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }  # fmt: skip
    if rows is None:
        return batch
    return {k: (v[rows] if k != "num_items_in_batch" else v) for k, v in batch.items()}


def grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
