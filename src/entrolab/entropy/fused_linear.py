"""Per-token log-probability and entropy straight from hidden states and the LM head, never holding ``(N, V)``.

In RL post-training the logits of a whole batch (N = 8192 tokens x V = 151936) are 5 GB in float32 and exist only
to be reduced to two numbers per token.  This path tiles the product ``hidden @ weight.T`` into
``(token chunk, vocabulary block)`` pieces, reduces each piece to per-row statistics with an online log-sum-exp, and
recomputes the pieces in backward; the largest temporary is one tile.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from entrolab._validation import (
    all_finite,
    check_chunk_size,
    check_floating,
    check_labels,
    check_temperature,
    describe,
)
from entrolab.entropy import _rows

__all__ = ["linear_logprob_and_entropy"]

# Elements of one float32 logits tile on CPU: big enough for efficient matmuls, small enough to stay in cache.
_CPU_TILE_ELEMENTS = 1 << 22
_ACCEL_TILE_ELEMENTS = 1 << 26


def _plan(num_rows: int, vocab: int, device: torch.device, chunk: int | None) -> tuple[int, int]:
    """(token chunk, vocabulary block) sizes.  A token chunk covers all rows when it fits the tile budget."""
    budget = _CPU_TILE_ELEMENTS if device.type == "cpu" else _ACCEL_TILE_ELEMENTS
    if chunk is None:
        chunk = max(1, min(num_rows, 2048 if device.type == "cpu" else 8192))
    block = max(256, min(vocab, budget // max(chunk, 1)))
    return chunk, min(block, vocab)


def _auto_matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float32 matmuls for low-precision inputs on CPU, the input dtype elsewhere.

    On CPUs without AMX, bfloat16 matmuls run slower than float32 ones (``bench/roofline.py`` measures both),
    and half-precision tiles of the gradient lose the small probabilities; upcasting one vocabulary block of the
    weight at a time is cheap next to the matmul.  On accelerators the low-precision matmul (with float32
    accumulation inside) is the fast path, and the softmax statistics are float32 either way.
    """
    if dtype == torch.float64:
        return torch.float64
    if device.type == "cpu":
        return torch.float32
    return dtype


class _FusedLinearLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_t, chunk, mm_dtype, has_labels):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        num_rows, vocab = hidden.shape[0], weight.shape[0]
        cd = _rows.compute_dtype(hidden.dtype)
        chunk, block = _plan(num_rows, vocab, hidden.device, chunk)
        h = hidden.to(mm_dtype)
        m = torch.full((num_rows,), float("-inf"), dtype=cd, device=hidden.device)
        s = torch.zeros(num_rows, dtype=cd, device=hidden.device)
        d = torch.zeros(num_rows, dtype=cd, device=hidden.device)
        picked = torch.zeros(num_rows, dtype=cd, device=hidden.device)
        bad = torch.zeros(num_rows, dtype=torch.bool, device=hidden.device)
        buf = torch.empty(min(chunk, num_rows) * block, dtype=mm_dtype, device=hidden.device)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            w_blk = weight[v0:v1].to(mm_dtype)  # (Vb, H)
            b_blk = None if bias is None else bias[v0:v1].to(mm_dtype)
            in_blk = (labels >= v0) & (labels < v1)
            for r0 in range(0, num_rows, chunk):
                r1 = min(r0 + chunk, num_rows)
                tile = buf[: (r1 - r0) * (v1 - v0)].view(r1 - r0, v1 - v0)  # (C, Vb) contiguous
                if b_blk is None:
                    torch.mm(h[r0:r1], w_blk.T, out=tile)
                else:
                    torch.addmm(b_blk, h[r0:r1], w_blk.T, out=tile)
                mb, sb, db, badb = _rows.stats(tile, inv_t=inv_t, chunk=None)
                m[r0:r1], s[r0:r1], d[r0:r1] = _rows.merge(
                    m[r0:r1], s[r0:r1], d[r0:r1], mb.to(cd), sb.to(cd), db.to(cd), inv_t
                )
                bad[r0:r1] |= badb
                if has_labels:
                    here = in_blk[r0:r1]
                    idx = torch.where(here, labels[r0:r1] - v0, 0).unsqueeze(1)
                    picked[r0:r1] = torch.where(here, tile.gather(1, idx).squeeze(1).to(cd), picked[r0:r1])
        bad |= ~torch.isfinite(m)
        if num_rows and bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"the logits hidden @ weight.T{' + bias' if bias is not None else ''} of row {i} are not a valid "
                "distribution: they overflow to inf or NaN, or every entry is -inf (check hidden, weight, bias and "
                "temperature)"
            )
        logs, ent = _rows.finish(s, d)
        valid = labels != _rows.IGNORE_INDEX
        logp = torch.where(valid, (picked - m) * inv_t - logs, 0.0) if has_labels else torch.zeros_like(logs)
        ctx.save_for_backward(hidden, weight, bias, labels, m, logs, ent)
        ctx.inv_t, ctx.chunk, ctx.block, ctx.mm_dtype, ctx.has_labels = inv_t, chunk, block, mm_dtype, has_labels
        _rows.debug_assert(logp if has_labels else None, ent, vocab)
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_h):  # type: ignore[override]
        hidden, weight, bias, labels, m, logs, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (g_lp is None and g_h is None) or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None, None
        num_rows, vocab = hidden.shape[0], weight.shape[0]
        cd, mm = logs.dtype, ctx.mm_dtype
        chunk, block, inv_t = ctx.chunk, ctx.block, ctx.inv_t
        zeros = torch.zeros_like(logs)
        valid = labels != _rows.IGNORE_INDEX
        g_lp = zeros if (g_lp is None or not ctx.has_labels) else torch.where(valid, g_lp.to(cd), 0.0)
        g_h = zeros if g_h is None else g_h.to(cd)
        h = hidden.to(mm)
        acc = torch.float64 if mm == torch.float64 else torch.float32  # gradients accumulate in float32 or wider
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_w else None
        grad_b = torch.empty(vocab, dtype=bias.dtype, device=bias.device) if need_b else None
        buf = torch.empty(min(chunk, num_rows) * block, dtype=mm, device=hidden.device)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            w_blk = weight[v0:v1].to(mm)  # (Vb, H)
            b_blk = None if bias is None else bias[v0:v1].to(mm)
            gw_blk = torch.zeros((v1 - v0, weight.shape[1]), dtype=acc, device=weight.device) if need_w else None
            gb_blk = torch.zeros(v1 - v0, dtype=acc, device=weight.device) if need_b else None
            lab_blk = torch.where(valid & (labels >= v0) & (labels < v1), labels - v0, -1)
            for r0 in range(0, num_rows, chunk):
                r1 = min(r0 + chunk, num_rows)
                tile = buf[: (r1 - r0) * (v1 - v0)].view(r1 - r0, v1 - v0)  # (C, Vb)
                if b_blk is None:
                    torch.mm(h[r0:r1], w_blk.T, out=tile)
                else:
                    torch.addmm(b_blk, h[r0:r1], w_blk.T, out=tile)
                _rows.grad_into(  # the tile now holds dL/dlogits for these rows and columns
                    tile,
                    tile,
                    inv_t=inv_t,
                    mx=m[r0:r1],
                    logs=logs[r0:r1],
                    ent=ent[r0:r1],
                    g_lp=g_lp[r0:r1],
                    g_h=g_h[r0:r1],
                    labels=lab_blk[r0:r1],
                    chunk=None,
                )
                if mm == acc:  # accumulate in place, no product temporaries
                    if grad_h is not None:
                        grad_h[r0:r1].addmm_(tile, w_blk)  # (C, H)
                    if gw_blk is not None:
                        gw_blk.addmm_(tile.T, h[r0:r1])  # (Vb, H)
                else:  # low-precision GEMMs (float32 inside), summed in float32 across chunks
                    if grad_h is not None:
                        grad_h[r0:r1].add_(tile @ w_blk)
                    if gw_blk is not None:
                        gw_blk.add_(tile.T @ h[r0:r1])
                if gb_blk is not None:
                    gb_blk.add_(tile.sum(0, dtype=acc))
            if grad_w is not None:
                grad_w[v0:v1] = gw_blk
            if grad_b is not None:
                grad_b[v0:v1] = gb_blk
        if grad_h is not None:
            grad_h = grad_h.to(hidden.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


@overload
def linear_logprob_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = ...,
    temperature: float = ...,
    chunk_size: int | None = ...,
    matmul_dtype: torch.dtype | None = ...,
) -> tuple[Tensor, Tensor]: ...
@overload
def linear_logprob_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: None = ...,
    *,
    bias: Tensor | None = ...,
    temperature: float = ...,
    chunk_size: int | None = ...,
    matmul_dtype: torch.dtype | None = ...,
) -> tuple[None, Tensor]: ...


def linear_logprob_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor | None = None,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor]:
    r"""Log-probability and entropy of ``softmax((hidden @ weight.T + bias) / temperature)`` without the logits.

    The same outputs as :func:`token_logprob_and_entropy` on ``hidden @ weight.T + bias``, computed tile by tile:
    token chunks x vocabulary blocks, an online log-sum-exp across blocks, and the tiles recomputed in backward.  No
    ``(N, V)`` tensor is ever allocated; the largest temporary is one ``(chunk, block)`` tile.

    Parameters
    ----------
    hidden : Tensor
        Final hidden states.
    weight : Tensor
        The LM head (``nn.Linear(H, V).weight``), same dtype and device as ``hidden``.
    labels : Tensor, optional
        Integer token ids; ``-100`` marks ignored positions (log-prob 0, no gradient through it).
    bias : Tensor, optional
        LM-head bias; ``-inf`` entries mask vocabulary items.
    temperature : float
        Divides the logits first.  Must be > 0.
    chunk_size : int, optional
        Tokens per chunk; ``None`` uses up to 2048 on CPU (8192 on accelerators).  The vocabulary block is then
        chosen so that one float32 tile holds about 4M elements on CPU (64M on accelerators).
    matmul_dtype : torch.dtype, optional
        dtype of the tile matmuls.  ``None``: the input dtype, except that bfloat16/float16 inputs on CPU use float32
        matmuls of upcast blocks (faster on CPUs without AMX, and more accurate).  On accelerators low-precision
        matmuls accumulate in float32 inside the GEMM; the softmax statistics and the gradient accumulators are
        float32 in every case.

    Returns
    -------
    logp : Tensor or None
        ``log p(labels)``, ``None`` when ``labels`` is ``None``.
    entropy : Tensor
        Entropy in nats.

    Shapes
    ------
    hidden ``(..., H)``, weight ``(V, H)``, bias ``(V,)``, labels ``(...)``; outputs ``(...)`` in float32
    (float64 for float64 input).

    Notes
    -----
    Gradients flow to ``hidden``, ``weight`` and ``bias`` through both outputs.  FLOPs: ``2 N H V`` forward,
    ``6 N H V`` backward (the tile is recomputed, then multiplied into the hidden and weight gradients), the floor
    that ``bench/entropy.py`` reports against.  Gradients of the weight are accumulated in float32 per vocabulary
    block and cast once, so low-precision weights do not lose small per-chunk contributions (unlike accumulating
    per-chunk products in bfloat16, which TRL 1.16's chunked log-prob notes biases entropy down).

    References
    ----------
    Fused linear log-prob/entropy as in verl's ``FusedLinearForPPO`` and Liger's fused linear cross-entropy
    (``shared/specs/performance.md`` section 3); here with vocabulary tiling and an online log-sum-exp.

    Examples
    --------
    >>> import math, torch
    >>> hidden, weight = torch.randn(3, 4), torch.zeros(10, 4)  # zero head: uniform over 10 tokens
    >>> logp, h = linear_logprob_and_entropy(hidden, weight, torch.tensor([1, 2, 3]))
    >>> bool(torch.allclose(h, torch.full((3,), math.log(10)))), bool(torch.allclose(logp, -h))
    (True, True)
    """
    check_floating("hidden", hidden, min_ndim=1)
    check_floating("weight", weight, min_ndim=2)
    temperature = check_temperature("temperature", temperature, _rows.compute_dtype(hidden.dtype))
    chunk_size = check_chunk_size("chunk_size", chunk_size)
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (V, H), got {tuple(weight.shape)}")
    vocab, width = weight.shape
    if vocab == 0:
        raise ValueError(f"weight must have at least one row (V >= 1), got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != width:
        raise ValueError(
            f"hidden's last dimension ({hidden.shape[-1]}) must equal weight's second dimension H = {width}; "
            f"got hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if bias is not None:
        check_floating("bias", bias, min_ndim=1)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise TypeError(f"bias must match hidden's dtype and device, got {describe(bias)}")
        if bias.numel() and (bool(torch.isnan(bias).any()) or bool(torch.isposinf(bias).any())):
            raise ValueError("bias must not contain NaN or +inf (-inf entries mask vocabulary items)")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not all_finite(t):
            raise ValueError(f"{name} contains NaN or inf")
    if matmul_dtype is None:
        matmul_dtype = _auto_matmul_dtype(hidden.dtype, hidden.device)
    elif not isinstance(matmul_dtype, torch.dtype) or not matmul_dtype.is_floating_point:
        raise TypeError(f"matmul_dtype must be None or a floating torch.dtype, got {describe(matmul_dtype)}")
    lead = hidden.shape[:-1]
    has_labels = labels is not None
    if has_labels:
        flat_labels = check_labels("labels", labels, shape=lead, num_classes=vocab, device=hidden.device)
    else:
        flat_labels = torch.full((lead.numel(),), _rows.IGNORE_INDEX, dtype=torch.int64, device=hidden.device)
    h2 = hidden.reshape(-1, width)
    logp, ent = _FusedLinearLogprobEntropy.apply(
        h2, weight, bias, flat_labels, 1.0 / temperature, chunk_size, matmul_dtype, has_labels
    )
    return (logp.view(lead) if has_labels else None), ent.view(lead)
