"""AEM: attention-entropy maximisation for attention-based multiple-instance learning (MIL).

``L = CE(y_hat, y) + lam * sum_i a_i ln a_i = CE - lam H(a)`` with ``a = softmax(s)`` the instance attention of a bag:
a bag classifier that spreads its attention over more instances is pushed away from over-concentrating on one
sub-cluster of the training bags' positive instances.

References
----------
Zhang et al., "AEM: Attention Entropy Maximization for Multiple Instance Learning based Whole Slide Image
Classification", arXiv 2406.15303 (code ``dazhangyu123/AEM`` at 42c8dbe); ``shared/specs/beyond_llm.md`` section 1.
The gated-attention model is ABMIL (Ilse, Tomczak, Welling, ICML 2018).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from entrolab._typing import LossOutput
from entrolab._validation import describe

__all__ = ["ABMIL", "aem_lambda", "aem_loss"]


def aem_loss(
    attention_logits: Tensor, mask: Tensor | None = None, *, lam: float = 0.1, top_k: int | None = None
) -> LossOutput:
    r"""The AEM penalty ``lam * mean_heads sum_i a_i ln a_i`` (add it to the classification loss; it is ``-lam H``).

    Parameters
    ----------
    attention_logits : Tensor
        ``(N,)``, ``(B, N)`` or ``(B, K, N)`` attention logits of ``B`` bags, ``K`` heads, ``N`` instances; ``-inf``
        marks padding.
    mask : Tensor, optional
        ``(N,)`` / ``(B, N)`` bool valid instances (padding can also be given as ``-inf`` logits).
    lam : float
        ``lambda >= 0`` (0.1, the repository's default; 0 is plain ABMIL).
    top_k : int, optional
        The repository's optional variant: renormalise the ``k`` largest weights and penalise their negative entropy
        (``None``: all instances; ``k >= N`` equals the full penalty).

    Returns
    -------
    LossOutput
        The penalty (mean over bags) and metrics ``attention_entropy`` and ``normalized_attention_entropy``
        (``H / ln N``, 1 for uniform attention).

    Examples
    --------
    >>> import torch
    >>> round(float(aem_loss(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), lam=1.0).loss), 4)
    -0.8324
    """
    if not isinstance(attention_logits, Tensor) or not attention_logits.dtype.is_floating_point:
        raise TypeError(f"attention_logits must be a floating tensor, got {describe(attention_logits)}")
    if attention_logits.ndim not in (1, 2, 3) or attention_logits.shape[-1] == 0:
        raise ValueError(
            f"attention_logits must be (N,), (B, N) or (B, K, N) with N >= 1, got {describe(attention_logits)}"
        )
    if bool(torch.isnan(attention_logits).any() | torch.isposinf(attention_logits).any()):
        raise ValueError("attention_logits must not be NaN or +inf (-inf marks padding)")
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    s = attention_logits
    if s.ndim == 1:
        s = s.unsqueeze(0)
    if s.ndim == 2:
        s = s.unsqueeze(1)  # (B, K, N)
    valid = ~torch.isneginf(s)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {describe(mask)}")
        m = mask.reshape(s.shape[0], 1, s.shape[-1]) if mask.numel() == s.shape[0] * s.shape[-1] else None
        if m is None:
            raise ValueError(f"mask must have the bags x instances shape of attention_logits, got {describe(mask)}")
        valid = valid & m
    if not bool(valid.any(-1).all()):
        raise ValueError("every bag needs at least one valid instance")
    s = torch.where(valid, s, -math.inf)
    n_valid = valid.sum(-1)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        k = min(top_k, s.shape[-1])
        kth = torch.topk(s, k, dim=-1).values[..., -1:]
        s = torch.where(s >= kth, s, -math.inf)  # ties at the k-th value are all kept
    logp = torch.log_softmax(s, dim=-1)
    a = logp.exp()
    neg_h = torch.where(a > 0, a * logp, 0.0).sum(-1)  # (B, K): sum a ln a
    penalty = lam * neg_h.mean(-1).mean()
    entropy = -neg_h.detach()
    norm = torch.where(n_valid > 1, entropy / n_valid.clamp_min(2).to(entropy.dtype).log(), 1.0)
    return LossOutput(penalty, {"attention_entropy": entropy.mean(), "normalized_attention_entropy": norm.mean()})


def aem_lambda(step: int, total: int, *, lam: float = 0.1, schedule: str = "constant") -> float:
    r"""The AEM coefficient at ``step`` of ``total``: ``"constant"`` (the released code) or ``"cosine"``
    (``lam (1 + cos(pi t / T)) / 2``, the paper's v3 "cosine weight annealing" as we read it; the exact form is
    unverified).

    Examples
    --------
    >>> aem_lambda(5, 10, lam=0.2, schedule="cosine"), aem_lambda(5, 10, lam=0.2)
    (0.1, 0.2)
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1 or not 0 <= step <= total:
        raise ValueError(f"need 0 <= step <= total with total >= 1, got step={step!r}, total={total!r}")
    if schedule == "constant":
        return float(lam)
    return round(float(lam) * (1 + math.cos(math.pi * step / total)) / 2, 15)


class ABMIL(nn.Module):
    """Gated-attention MIL: ``h = ReLU(W_r x)``, ``s = w^T(tanh(V h) * sigmoid(U h))``, ``a = softmax(s)``,
    ``z = sum a h``, ``logits = W_c z``.  ``forward(x, mask)`` on ``(B, N, D)`` bags (``mask`` ``(B, N)`` valid
    instances) returns ``(logits (B, C), attention_logits (B, N))`` with ``-inf`` at padding."""

    def __init__(self, in_dim: int, *, hidden: int = 64, gate: int = 32, num_classes: int = 2) -> None:
        super().__init__()
        self.reduce = nn.Linear(in_dim, hidden, bias=False)
        self.v, self.u = nn.Linear(hidden, gate), nn.Linear(hidden, gate)
        self.w = nn.Linear(gate, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.reduce(x))  # (B, N, H)
        s = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)  # (B, N)
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf)
        a = torch.softmax(s, dim=-1)
        z = (a.unsqueeze(-1) * h).sum(1)
        return self.classifier(z), s
