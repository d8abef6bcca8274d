"""The lab's policies: a built-in tiny decoder-only transformer with a KV cache, and its character tokenizer.

The built-in model is a small GPT (pre-LayerNorm blocks, causal multi-head attention through
``scaled_dot_product_attention``, GELU MLP, learned positions) sized to train in seconds on a laptop CPU.  It
returns final hidden states, so the lab computes token log-probs and entropies with
:func:`entrolab.entropy.linear_logprob_and_entropy` straight from them and the LM head, never materialising logits.

Left padding is handled by an explicit key mask and per-row positions, so a batch of prompts of different lengths
generates exactly what each prompt would generate alone (tested).

Instead of the built-in model a user can give a local Hugging Face causal-LM checkpoint directory (``--model PATH``):
:func:`load_hf_policy` wraps it in :class:`HFPolicy`, which has the built-in model's interface (hidden states of the
new tokens plus a KV cache, and the LM head as ``head``), and its tokenizer in :class:`HFTokenizer`.  Nothing is ever
downloaded (``local_files_only``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CharTokenizer",
    "HFPolicy",
    "HFTokenizer",
    "KVCache",
    "Policy",
    "TinyGPT",
    "TinyGPTConfig",
    "Tokenizer",
    "load_hf_policy",
    "load_hf_tokenizer",
]


class CharTokenizer:
    """One token per character of a fixed alphabet, plus ``<pad>`` (0), ``<bos>`` (1) and ``<eos>`` (2)."""

    specials = ("<pad>", "<bos>", "<eos>")

    def __init__(self, alphabet: str) -> None:
        chars = sorted(set(alphabet))
        if not chars:
            raise ValueError("alphabet must not be empty")
        self.alphabet = "".join(chars)
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._to_id = {c: i + len(self.specials) for i, c in enumerate(chars)}
        self._to_char = {i: c for c, i in self._to_id.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.specials) + len(self._to_id)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._to_id[c] for c in text]
        except KeyError as exc:
            raise ValueError(
                f"character {exc.args[0]!r} is not in the tokenizer's alphabet {self.alphabet!r}"
            ) from None

    def prompt_ids(self, text: str) -> list[int]:
        """``<bos>`` then the characters of ``text``."""
        return [self.bos_id, *self.encode(text)]

    def decode(self, ids: list[int]) -> str:
        """Characters up to the first ``<eos>``; other special tokens are dropped."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            c = self._to_char.get(int(i))
            if c is not None:
                out.append(c)
        return "".join(out)


@dataclass(frozen=True)
class TinyGPTConfig:
    """Size of the built-in policy (defaults: about 0.1M parameters)."""

    vocab_size: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 96
    max_len: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


def _positions(ids: Tensor, key_mask: Tensor, max_len: int, what: str) -> Tensor:
    """Positions ``(B, T)`` of the new tokens ``ids`` ``(B, T)`` under ``key_mask`` ``(B, S)`` (cached and new
    positions; left padding does not advance them), after checking the shapes and the model's length limit."""
    b, t = ids.shape
    s = key_mask.shape[1]
    if key_mask.shape[0] != b or s < t:
        raise ValueError(f"key_mask must have shape (B, S >= T) = ({b}, >={t}), got {tuple(key_mask.shape)}")
    counts = key_mask.long().cumsum(1)  # (B, S) valid positions so far; left padding does not count
    longest = int(counts[:, -1].max()) if counts.numel() else 0
    if longest > max_len:  # padding may make S longer than the model's window: only real tokens take positions
        raise ValueError(f"sequence length {longest} exceeds the model's {what} {max_len}")
    return (counts - 1).clamp_min(0)[:, s - t :]


KVCache = list[tuple[Tensor, Tensor]]
"""Per layer, keys and values ``(B, n_head, S, d_head)`` of every position seen so far."""


class _Block(nn.Module):
    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: Tensor, bias: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, dh)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, S, dh)
            v = torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # bias (B, 1, T, S) additive
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.ln2(x))
        return x, (k, v)


class TinyGPT(nn.Module):
    """A small GPT that returns final hidden states; ``head`` is the LM head ``(V, d_model)``."""

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def forward(
        self,
        ids: Tensor,
        key_mask: Tensor,
        *,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Hidden states of the new tokens and the updated cache.

        Parameters
        ----------
        ids : Tensor
            New token ids ``(B, T)``.
        key_mask : Tensor
            ``(B, S)`` bool over **all** positions (cached and new, ``S = cached + T``); False marks left padding,
            which no query attends to and which does not advance the positions.
        cache : KVCache, optional
            Keys and values of the first ``S - T`` positions.

        Returns
        -------
        hidden ``(B, T, d_model)`` and the cache over all ``S`` positions.
        """
        positions = _positions(ids, key_mask, self.cfg.max_len, "max_len")  # (B, T)
        t, s = ids.shape[1], key_mask.shape[1]
        km = key_mask.to(torch.bool)
        x = self.tok(ids) + self.pos(positions)
        causal = torch.ones(t, s, dtype=torch.bool, device=ids.device).tril(s - t)  # (T, S)
        allowed = causal.unsqueeze(0) & km.unsqueeze(1)  # (B, T, S)
        # a padding query may see nothing; let it see itself so that softmax stays finite (its output is unused)
        own = torch.zeros(t, s, dtype=torch.bool, device=ids.device)
        own[torch.arange(t), torch.arange(s - t, s)] = True  # (T, S) each query's own position
        allowed = allowed | own.unsqueeze(0)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=ids.device).masked_fill_(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)  # (B, 1, T, S)
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, bias, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.ln_f(x), new_cache


# ---------------------------------------------------------------------------------------- local HF checkpoints
class HFTokenizer:
    """A Hugging Face tokenizer behind :class:`CharTokenizer`'s interface (``encode``, ``prompt_ids``, ``decode``,
    ``bos_id``/``eos_id``/``pad_id``).  Prompts get the tokenizer's BOS token when it has one; no chat template."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; the lab needs one to end completions")
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        self.pad_id = self.eos_id if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.encode(text)
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def decode(self, ids: list[int]) -> str:
        """Text up to the first eos token, special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (as TRL's ``disable_dropout``): the lab's rollouts double as the behaviour policy's
    log-probs, which a training-mode forward with dropout would not reproduce."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout", "attn_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


@dataclass(frozen=True)
class _HFConfig:
    max_len: int


class HFPolicy(nn.Module):
    """A ``transformers`` causal LM with :class:`TinyGPT`'s interface: ``forward(ids, key_mask, cache=...)`` returns
    the final hidden states of the new tokens (after the model's final norm) and the KV cache; ``head`` is the LM head.

    Left padding works as in :class:`TinyGPT`: ``key_mask`` is the attention mask and positions count valid tokens
    only.  Dropout is switched off.  Models whose logits are not ``hidden @ head.weight.T`` (an LM-head bias, logit
    soft-capping or scaling) are refused, since the lab computes log-probs and entropies from hidden states and the
    head's weight.
    """

    def __init__(self, model: Any, *, source: str = "") -> None:
        super().__init__()
        head = model.get_output_embeddings()
        if head is None or not isinstance(getattr(head, "weight", None), Tensor):
            raise ValueError(f"{type(model).__name__} has no linear LM head; the lab needs a causal LM")
        if getattr(head, "bias", None) is not None:
            raise ValueError(f"{type(model).__name__}'s LM head has a bias, which the lab's fused scoring does not add")
        for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            value = getattr(model.config, attr, None)
            if value not in (None, 1, 1.0):
                raise ValueError(f"{type(model).__name__} rescales its logits ({attr}={value}); not supported")
        _disable_dropout(model)
        self.model = model
        self.head = head
        self.source = source
        self.cfg = _HFConfig(max_len=int(getattr(model.config, "max_position_embeddings", 1 << 30)))
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def config_dict(self) -> dict:
        return {"hf": self.source, "config": self.model.config.to_dict(), "max_len": self.cfg.max_len}

    def forward(self, ids: Tensor, key_mask: Tensor, *, cache: Any = None) -> tuple[Tensor, Any]:
        """Hidden states ``(B, T, d)`` of the new tokens ``ids`` ``(B, T)`` and the updated cache; ``key_mask``
        ``(B, S)`` covers cached and new positions, as in :meth:`TinyGPT.forward`."""
        positions = _positions(ids, key_mask, self.cfg.max_len, "max_position_embeddings")  # (B, T)
        km = key_mask.to(torch.long)
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self.model.base_model(
            input_ids=ids, attention_mask=km, position_ids=positions, use_cache=True, return_dict=True, **kwargs
        )
        # transformers >= 5 names the output "cache" (reading "past_key_values" warns); 4.x "past_key_values"
        new_cache = getattr(out, "cache", None) if self._cache_kw == "cache" else None
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.last_hidden_state, new_cache


Policy = TinyGPT | HFPolicy
"""What the lab trains: the built-in model or a wrapped local HF checkpoint."""
Tokenizer = CharTokenizer | HFTokenizer


def _checkpoint_fingerprint(directory: Path) -> str:
    """A hash of the checkpoint's files (names, sizes, modification times): the warm-start cache key."""
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _hf_directory(path: str | Path) -> Path:
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ValueError(f"model {str(path)!r}: not a local Hugging Face checkpoint directory (no config.json)")
    return directory


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("--model PATH needs the transformers package (pip install 'entrolab[hf]')") from None
    return transformers


def load_hf_policy(path: str | Path) -> HFPolicy:
    """A local HF causal-LM checkpoint as an :class:`HFPolicy`, in float32 on the CPU (``transformers`` needed;
    nothing is downloaded).  ``path`` is a directory written by ``save_pretrained`` (``config.json``, weights)."""
    directory = _hf_directory(path)
    transformers = _transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model {str(path)!r}: could not load it: {exc}") from None
    source = json.dumps({"path": str(directory.resolve()), "files": _checkpoint_fingerprint(directory)})
    return HFPolicy(model.float(), source=source)


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer saved with a local HF checkpoint, as an :class:`HFTokenizer` (nothing is downloaded)."""
    directory = _hf_directory(path)
    transformers = _transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model {str(path)!r}: could not load its tokenizer: {exc}") from None
    return HFTokenizer(tokenizer)
