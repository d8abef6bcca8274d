"""SCALE: column-normalised SGD with momentum only on the last layer (a memory-lean LLM pre-training optimizer).

For a 2-D weight ``W`` (PyTorch's ``(out, in)`` layout) with gradient ``G``: the LM head keeps an EMA momentum
``m = beta m + (1 - beta) G`` and uses ``G = m``; ``U`` divides each output row of ``G`` by its RMS over the input
dimension (``normalization="rms"``, the code's form, default) or by its L2 norm (``"l2"``, the paper's formula: lr
must then be multiplied by ``sqrt(fan_in)`` to match); the token embedding ``(vocab, d)`` is normalised along dim 0
instead; ``W <- W (1 - lr wd) - lr U``.  1-D parameters (norm gains, biases) use AdamW at ``vector_lr`` (scaled by the
same schedule ratio as ``lr``).  Only the head's momentum and the 1-D AdamW moments are state.

References
----------
Glentis, Li, Han, Hong, "A Minimalist Optimizer Design for LLM Pretraining", arXiv 2506.16659 (code
``OptimAI-Lab/Minimalist_LLM_Pretraining`` at 9c487e7); ``shared/specs/beyond_llm.md`` section 8.  The default is the
code's RMS normalisation, an exception to "paper by default": only that form has tuned learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SCALE", "normalize_rows", "scale_param_groups"]

KINDS = ("matrix", "head", "embedding", "vector")


def normalize_rows(g: Tensor, *, normalization: str = "rms", dim: int = 1) -> Tensor:
    """``g`` divided by its RMS (or L2 norm) along ``dim`` (1: over the input dimension of an ``(out, in)`` weight;
    0: along the vocabulary of an embedding), clamped at 1e-8 so an all-zero row stays zero."""
    if normalization not in ("rms", "l2"):
        raise ValueError(f"normalization must be 'rms' or 'l2', got {normalization!r}")
    sq = g.pow(2)
    norm = (sq.mean(dim, keepdim=True) if normalization == "rms" else sq.sum(dim, keepdim=True)).sqrt()
    return g / norm.clamp_min(1e-8)


def scale_param_groups(
    model: nn.Module, *, head: nn.Module | None = None, embedding: nn.Module | None = None
) -> list[dict]:
    """Parameter groups for :class:`SCALE`: the ``head``'s 2-D weight (momentum), the ``embedding``'s weight (dim-0
    normalisation), every other 2-D weight (normalisation, no state) and the 1-D parameters (AdamW)."""
    head_ids = {id(p) for p in head.parameters() if p.ndim == 2} if head is not None else set()
    emb_ids = {id(p) for p in embedding.parameters() if p.ndim == 2} if embedding is not None else set()
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in KINDS}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        kind = (
            "head" if id(p) in head_ids else "embedding" if id(p) in emb_ids else "matrix" if p.ndim >= 2 else "vector"
        )
        groups[kind].append(p)
    return [{"params": ps, "kind": k} for k, ps in groups.items() if ps]


class SCALE(torch.optim.Optimizer):
    """The SCALE optimizer over parameter groups carrying ``kind`` (:func:`scale_param_groups`; a plain parameter
    list is treated by shape: 2-D -> ``"matrix"``, 1-D -> ``"vector"``).

    Parameters
    ----------
    lr : float
        Learning rate of the 2-D weights (1e-3 for 60M-350M models).
    momentum : float
        EMA coefficient of the head's momentum (0.9).
    weight_decay : float
        Decoupled weight decay (0).
    vector_lr : float
        AdamW learning rate of the 1-D parameters (3e-3 in the spec's run; the repository's default is 2e-2).
    betas, eps : AdamW's, for the 1-D parameters.
    normalization : {"rms", "l2"}
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        vector_lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        normalization: str = "rms",
    ) -> None:
        for name, v in (("lr", lr), ("vector_lr", vector_lr)):
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if normalization not in ("rms", "l2"):
            raise ValueError(f"normalization must be 'rms' or 'l2', got {normalization!r}")
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": [p for p in params if p.ndim >= 2], "kind": "matrix"},
                      {"params": [p for p in params if p.ndim < 2], "kind": "vector"}]  # fmt: skip
            params = [g for g in params if g["params"]]
        for g in params:
            if g.get("kind") not in KINDS:
                raise ValueError(f"every parameter group needs a kind in {KINDS}, got {g.get('kind')!r}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "normalization": normalization}
        super().__init__(params, defaults)
        self.base_lr = lr
        vectors = [p for g in self.param_groups if g["kind"] == "vector" for p in g["params"]]
        self.vector_opt = (
            torch.optim.AdamW(vectors, lr=vector_lr, betas=betas, eps=eps, weight_decay=0.0) if vectors else None
        )
        self.vector_lr = vector_lr

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ratio = 1.0
        for group in self.param_groups:
            if group["kind"] == "vector":
                continue
            ratio = group["lr"] / self.base_lr
            lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["kind"] == "head":
                    state = self.state[p]
                    if "momentum" not in state:
                        state["momentum"] = torch.zeros_like(p)
                    m = state["momentum"]
                    m.mul_(beta).add_(g, alpha=1 - beta)
                    g = m
                u = normalize_rows(
                    g, normalization=group["normalization"], dim=0 if group["kind"] == "embedding" else 1
                )
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(u, alpha=-lr)
        if self.vector_opt is not None:
            for vg in self.vector_opt.param_groups:
                vg["lr"] = self.vector_lr * ratio  # the same schedule ratio as the matrices'
            self.vector_opt.step()
        return loss

    def state_bytes(self) -> int:
        """Bytes of optimizer state: the head's momentum plus the 1-D parameters' AdamW moments."""
        total = sum(
            t.numel() * t.element_size() for s in self.state.values() for t in s.values() if isinstance(t, Tensor)
        )
        if self.vector_opt is not None:
            total += sum(t.numel() * t.element_size() for s in self.vector_opt.state.values()
                         for k, t in s.items() if isinstance(t, Tensor) and k != "step")  # fmt: skip
        return total
