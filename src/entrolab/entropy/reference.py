"""Float64 reference implementations: the obviously correct versions that every fast path is tested against.

Each is one or two lines of plain autograd PyTorch in float64.  They materialise everything and are slow on
purpose; only tests and benchmarks call them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "entropy_reference",
    "linear_logprob_and_entropy_reference",
    "token_logprob_and_entropy_reference",
    "varentropy_reference",
]


def _safe_logp(logits: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """(p, log p with 0 where p == 0): -inf entries contribute exactly 0 to every sum, with zero gradient."""
    logp = torch.log_softmax(logits, dim)
    p = logp.exp()
    return p, torch.where(p > 0, logp, 0.0)


def token_logprob_and_entropy_reference(
    logits: Tensor, labels: Tensor | None = None, *, temperature: float = 1.0
) -> tuple[Tensor | None, Tensor]:
    """Reference for :func:`entrolab.entropy.token_logprob_and_entropy`, in float64."""
    z = logits.double() / temperature
    p, logp_all = _safe_logp(z)
    ent = -(p * logp_all).sum(-1)
    if labels is None:
        return None, ent
    valid = labels != -100
    picked = torch.log_softmax(z, -1).gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, 0.0), ent


def linear_logprob_and_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor | None = None,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor | None, Tensor]:
    """Reference for :func:`entrolab.entropy.linear_logprob_and_entropy`: materialise the logits in float64."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    return token_logprob_and_entropy_reference(logits, labels, temperature=temperature)


def entropy_reference(
    logits: Tensor | None = None, *, probs: Tensor | None = None, dim: int = -1, base: float | None = None
) -> Tensor:
    """Reference Shannon entropy ``-sum p log p`` in float64."""
    if probs is None:
        assert logits is not None
        p, logp = _safe_logp(logits.double(), dim)
    else:
        p = probs.double()
        logp = torch.where(p > 0, p.log(), 0.0)
    h = -(p * logp).sum(dim)
    return h / math.log(base) if base is not None else h


def varentropy_reference(
    logits: Tensor | None = None, *, probs: Tensor | None = None, dim: int = -1, base: float | None = None
) -> Tensor:
    """Reference variance of the surprisal ``sum p (log p + H)^2`` in float64."""
    if probs is None:
        assert logits is not None
        p, logp = _safe_logp(logits.double(), dim)
    else:
        p = probs.double()
        logp = torch.where(p > 0, p.log(), 0.0)
    h = -(p * logp).sum(dim, keepdim=True)
    v = (p * (logp + h) ** 2).sum(dim)
    return v / math.log(base) ** 2 if base is not None else v
