"""Sparse State Expansion: linear attention whose state rows and state partitions are written sparsely.

Gated linear attention keeps a state ``S`` of ``c`` rows (key dimension) by ``d_v`` columns::

    S_t = Diag(alpha_t) S_{t-1} + k_t v_t^T          o_t = S_t^T q_t

SSE reads the write key ``k_t = softmax(W_k x_t)`` as a classifier over the rows and writes only its top-k rows
(**row-sparse update**), and expands the state into ``N`` partitions that share the base projections, differ by
low-rank deltas and are selected per token by a router (**state expansion**); an unselected partition is neither
written nor decayed, so what it stores lives longer.  A load-balancing loss ``(N / k) sum_n p_n f_n`` keeps the router
from sending every token to one partition.

Both forms of the recurrence are here: token by token (``chunk=None``) and chunked-parallel (within a chunk the
outputs are a masked, decay-weighted ``q k^T`` product; across chunks the state is carried), agreeing to rounding.
GPU users can swap in flash-linear-attention's Triton kernels (``fla.layers.SSEGLA``); entrolab's is the float64/fp32
CPU reference.

References
----------
Pan et al., "Scaling Linear Attention with Sparse State Expansion", arXiv 2507.16577 (sections 3.1-3.3; fla's
``fla/layers/sse.py`` at bf82e82 for the defaults); ``shared/specs/beyond_llm.md`` section 18.  Departures: the key
feature map (softmax) is applied to the partition key after its low-rank delta (``k2 = phi(W_k x + delta_k(x))``,
the spec writes ``k1 + delta``); the gate is GLA's (``log alpha = logsigmoid(W_a x) / 16``), shared by every branch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from entrolab._validation import describe

__all__ = [
    "SSEOutput",
    "SparseStateExpansion",
    "gated_linear_attention",
    "load_balance_loss",
    "row_topk_mask",
]


FACTORED_DECAY_LIMIT = 20.0
"""A chunk's decay-weighted ``q k^T`` is two matmuls while its summed log-decay stays above ``-20`` (every factor
within ``e^20``); a chunk with stronger decay is split in halves until it qualifies."""


def _check_gla(q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"need q, k (B, H, T, c) and v (B, H, T, d_v); got {describe(q)}, {describe(k)}, {describe(v)}"
        )
    if log_alpha is not None:
        if log_alpha.shape != q.shape:
            raise ValueError(f"log_alpha must have q's shape {tuple(q.shape)}, got {describe(log_alpha)}")
        if bool((log_alpha > 0).any()):
            raise ValueError("log_alpha must be <= 0 (decays alpha in (0, 1])")


def gated_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None = None, *, initial_state: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``o_t = S_t^T q_t`` with ``S_t = Diag(alpha_t) S_{t-1} + k_t v_t^T``.

    Shapes: ``q, k, log_alpha`` ``(B, H, T, c)``, ``v`` ``(B, H, T, d_v)``, ``initial_state`` ``(B, H, c, d_v)``
    (zeros by default).  Returns ``(o (B, H, T, d_v), final state (B, H, c, d_v))``.  ``log_alpha=None`` is plain
    linear attention (no decay).  ``chunk=None`` runs the recurrence token by token; an int runs the chunked form
    (the last chunk may be shorter): ``exp(b_t - b_s)`` factored into two matmul operands, a chunk whose total
    log-decay is below ``-FACTORED_DECAY_LIMIT`` split in halves until it is not, so no factor overflows however
    strong the decay.
    """
    _check_gla(q, k, v, log_alpha)
    b, h, t, c = q.shape
    state = q.new_zeros(b, h, c, v.shape[-1]) if initial_state is None else initial_state
    if state.shape != (b, h, c, v.shape[-1]):
        raise ValueError(f"initial_state must be {(b, h, c, v.shape[-1])}, got {describe(state)}")
    la = torch.zeros_like(q) if log_alpha is None else log_alpha
    if chunk is None:
        outs = []
        for i in range(t):
            state = state * la[:, :, i].exp().unsqueeze(-1) + k[:, :, i].unsqueeze(-1) * v[:, :, i].unsqueeze(-2)
            outs.append(torch.einsum("bhc,bhcd->bhd", q[:, :, i], state))
        o = torch.stack(outs, 2) if outs else v.new_zeros(b, h, 0, v.shape[-1])
        return o, state
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be None or an int >= 1, got {chunk!r}")
    outs = []
    for s0 in range(0, t, chunk):
        sl = slice(s0, s0 + chunk)
        out, state = _gla_chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], la[:, :, sl], state)
        outs.append(out)
    o = torch.cat(outs, 2) if outs else v.new_zeros(b, h, 0, v.shape[-1])
    return o, state


def _gla_chunk(q: Tensor, k: Tensor, v: Tensor, la: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of :func:`gated_linear_attention` from ``state``.  Within the chunk ``exp(b_t - b_s)`` is factored
    into ``exp(b'_t) exp(-b'_s)``, with ``b'`` the log-decay summed from the chunk's second step, so both factors stay
    within ``e^FACTORED_DECAY_LIMIT``; a chunk whose decay is stronger is split in halves (a single step always
    qualifies: ``b' = 0``)."""
    n = q.shape[2]
    cum = la.cumsum(2)  # b_t, from the state before the chunk: (B, H, n, c)
    inner = cum - la[:, :, :1]  # b'_t = b_t - b_first
    if n > 1 and float(inner[:, :, -1].detach().min()) <= -FACTORED_DECAY_LIMIT:
        half = n // 2
        first, state = _gla_chunk(q[:, :, :half], k[:, :, :half], v[:, :, :half], la[:, :, :half], state)
        second, state = _gla_chunk(q[:, :, half:], k[:, :, half:], v[:, :, half:], la[:, :, half:], state)
        return torch.cat([first, second], 2), state
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = ((q * inner.exp()) @ (k * (-inner).exp()).transpose(-1, -2)).masked_fill(~causal, 0.0)
    out = torch.einsum("bhtc,bhcd->bhtd", q * cum.exp(), state) + scores @ v
    last = cum[:, :, -1:]
    state = state * last.squeeze(2).exp().unsqueeze(-1) + torch.einsum("bhsc,bhsd->bhcd", k * (last - cum).exp(), v)
    return out, state


def row_topk_mask(scores: Tensor, top_k: int) -> Tensor:
    """A {0, 1} mask of ``scores``' shape with exactly ``top_k`` ones in the last dimension, at the largest scores
    (ties go to the lower index: a stable sort, so the choice is deterministic)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= scores.shape[-1]:
        raise ValueError(f"top_k must be an int in [1, {scores.shape[-1]}], got {top_k!r}")
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices[..., :top_k]
    return torch.zeros_like(scores).scatter(-1, order, 1.0)


def load_balance_loss(router_probs: Tensor, selected: Tensor) -> Tensor:
    """``(N / k) sum_n p_n f_n`` with ``p_n`` the mean router probability of partition ``n`` and ``f_n`` the share
    of tokens routed to it (``router_probs``, ``selected``: ``(..., N)``, ``selected`` {0, 1} with ``k`` ones per
    token).  1 under uniform routing for any ``N, k``; ``N`` when every token goes to one partition (``k = 1``)."""
    if router_probs.shape != selected.shape:
        raise ValueError(f"router_probs and selected must match, got {describe(router_probs)}, {describe(selected)}")
    n = router_probs.shape[-1]
    p = router_probs.reshape(-1, n).mean(0)
    sel = selected.reshape(-1, n)
    if sel.shape[0] == 0:
        return router_probs.new_zeros(())
    if bool(((sel != 0) & (sel != 1)).any()):
        raise ValueError("selected must hold only 0 and 1")
    counts = sel.sum(-1)
    if bool((counts != counts[0]).any()) or float(counts[0]) < 1:
        raise ValueError(
            f"selected must route every token to the same number k >= 1 of partitions, got {counts.unique().tolist()}"
        )
    k = counts[0]
    f = sel.mean(0)
    return (n / k) * (p * f).sum()


class SSEOutput(NamedTuple):
    output: Tensor
    """``(B, T, d_model)``."""
    aux_loss: Tensor
    """The router's load-balancing loss (0-d; 0 without partitions); add ``coef * aux_loss`` to the training loss."""


def _low_rank(d_model: int, rank: int) -> nn.Sequential:
    """``x -> U (V x)`` with ``U`` zero-initialised: a partition starts as a copy of the shared branch."""
    down, up = nn.Linear(d_model, rank, bias=False), nn.Linear(rank, d_model, bias=False)
    nn.init.zeros_(up.weight)
    return nn.Sequential(down, up)


class SparseStateExpansion(nn.Module):
    """One SSE token-mixing layer (multi-head gated linear attention with row-sparse writes and routed partitions).

    Parameters
    ----------
    d_model : int
    num_heads : int
        Heads; ``head_dim = d_model // num_heads`` is both the key dimension (state rows) and the value dimension.
    num_partitions : int
        ``N`` routed state partitions (0: the shared state only, i.e. gated linear attention).
    top_partitions : int
        Partitions each token writes to and reads from (fla: 1).
    row_top_k : int or None
        Rows of each state written per token (None: all, the dense update).
    low_rank : int
        Rank of the partition-specific deltas of q and k (0: partitions share q and k exactly).
    gate : bool
        GLA's data-dependent decay (``log alpha = logsigmoid(W_a x) / 16``); False: plain linear attention.
    key_softmax : bool
        The key feature map: softmax over the key dimension (SSE-GLA) or SiLU (False; SSE-GDN's).
    """

    def __init__(
        self, d_model: int, *, num_heads: int = 1, num_partitions: int = 4, top_partitions: int = 1,
        row_top_k: int | None = None, low_rank: int = 8, gate: bool = True, key_softmax: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        for name, value, low in (("d_model", d_model, 1), ("num_heads", num_heads, 1),
                                 ("num_partitions", num_partitions, 0), ("low_rank", low_rank, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.head_dim = d_model // num_heads
        if num_partitions and not 1 <= top_partitions <= num_partitions:
            raise ValueError(f"top_partitions must be in [1, num_partitions={num_partitions}], got {top_partitions!r}")
        if row_top_k is not None and not 1 <= row_top_k <= self.head_dim:
            raise ValueError(f"row_top_k must be None or in [1, head_dim={self.head_dim}], got {row_top_k!r}")
        self.d_model, self.num_heads, self.num_partitions = d_model, num_heads, num_partitions
        self.top_partitions, self.row_top_k, self.key_softmax = top_partitions, row_top_k, key_softmax
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.gate_proj = nn.Linear(d_model, d_model) if gate else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.q_delta: nn.ModuleList | None = None
        self.k_delta: nn.ModuleList | None = None
        if num_partitions:
            self.router = nn.Linear(d_model, num_partitions, bias=False)
            if low_rank:
                self.q_delta = nn.ModuleList(_low_rank(d_model, low_rank) for _ in range(num_partitions))
                self.k_delta = nn.ModuleList(_low_rank(d_model, low_rank) for _ in range(num_partitions))

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, c)

    def _key(self, pre: Tensor) -> Tensor:
        k = torch.softmax(pre, -1) if self.key_softmax else nn.functional.silu(pre)
        if self.row_top_k is not None:
            k = k * row_topk_mask(k, self.row_top_k)
        return k

    def forward(self, x: Tensor, *, chunk: int | None = 16) -> SSEOutput:
        """``x`` ``(B, T, d_model)`` -> :class:`SSEOutput`; ``chunk=None`` runs the token-by-token recurrence."""
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, {self.d_model}), got {describe(x)}")
        q = self._heads(self.q_proj(x))
        k_pre = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        la = None
        if self.gate_proj is not None:
            la = self._heads(nn.functional.logsigmoid(self.gate_proj(x)) / 16.0)
        o, _ = gated_linear_attention(q, self._key(k_pre), v, la, chunk=chunk)
        aux = x.new_zeros(())
        if self.num_partitions:
            probs = torch.softmax(self.router(x), -1)  # (B, T, N)
            selected = row_topk_mask(probs, self.top_partitions)
            aux = load_balance_loss(probs, selected)
            weight = probs * selected  # e_n on the selected partitions, 0 elsewhere
            for n in range(self.num_partitions):
                w = weight[..., n].unsqueeze(1).unsqueeze(-1)  # (B, 1, T, 1)
                on = selected[..., n].unsqueeze(1).unsqueeze(-1).bool()
                q2, k2_pre = q, k_pre
                if self.q_delta is not None and self.k_delta is not None:
                    q2 = q + self._heads(self.q_delta[n](x))
                    k2_pre = k_pre + self._heads(self.k_delta[n](x))
                # unselected tokens neither write (k = 0) nor decay (log alpha = 0) this partition
                k2 = torch.where(on, w * self._key(k2_pre), 0.0)
                la2 = None if la is None else torch.where(on, la, 0.0)
                o_n, _ = gated_linear_attention(w * q2, k2, v, la2, chunk=chunk)
                o = o + o_n
        b, h, t, c = o.shape
        return SSEOutput(self.out_proj(o.transpose(1, 2).reshape(b, t, h * c)), aux)
