"""Per-token log-probability and entropy from materialised logits, with gradients through both.

Every entropy method in entrolab starts here: the log-probability of the sampled token (the policy-gradient term)
and the Shannon entropy of the next-token distribution (the quantity the methods measure and control).  The naive
way (``log_softmax`` + ``gather``, ``softmax * log_softmax``) makes six to nine passes over the ``(N, V)`` logits and
keeps two ``(N, V)`` float32 tensors for backward; at N = 8192 and V = 151936 that is 10 GB.  This path makes one
pass forward and one backward, keeps only the input and four length-N vectors, and writes the gradient directly.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from entrolab._validation import check_chunk_size, check_floating, check_labels, check_temperature
from entrolab.entropy import _rows

__all__ = ["token_logprob_and_entropy"]


class _LogprobEntropyFromLogits(torch.autograd.Function):
    """Custom autograd: forward keeps (lse, H) per row; backward recomputes p from the logits in one pass."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, inv_t: float, chunk: int | None, has_labels: bool):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        width = logits.shape[-1]
        m, s, d, bad = _rows.stats(logits, inv_t=inv_t, chunk=chunk)
        if bad.numel() and bool(bad.any()):
            raise ValueError(_rows.describe_bad_row(logits, bad, what="logits"))
        logs, ent = _rows.finish(s, d)
        cd = logs.dtype
        if has_labels:
            valid = labels != _rows.IGNORE_INDEX
            idx = torch.where(valid, labels, 0).view(*logits.shape[:-1], 1)
            picked = logits.gather(-1, idx).reshape(-1)  # (N,) one read per row, any layout
            logp = torch.where(valid, (picked.to(cd) - m) * inv_t - logs, 0.0)
        else:
            logp = torch.zeros_like(logs)
        lead = logits.shape[:-1]
        ctx.save_for_backward(logits, labels, m, logs, ent)
        ctx.inv_t, ctx.chunk, ctx.has_labels = inv_t, chunk, has_labels
        _rows.debug_assert(logp if has_labels else None, ent, width)
        return logp.view(lead), ent.view(lead)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp: Tensor | None, g_h: Tensor | None):  # type: ignore[override]
        logits, labels, m, logs, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_lp is None and g_h is None):
            return None, None, None, None, None
        cd = logs.dtype
        zeros = torch.zeros_like(logs)
        g_lp = zeros if (g_lp is None or not ctx.has_labels) else g_lp.reshape(-1).to(cd)
        g_h = zeros if g_h is None else g_h.reshape(-1).to(cd)
        valid = labels != _rows.IGNORE_INDEX
        g_lp = torch.where(valid, g_lp, 0.0)  # ignored positions have a constant log-prob of 0: no gradient
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        _rows.grad_into(
            logits,
            grad,
            inv_t=ctx.inv_t,
            mx=m,
            logs=logs,
            ent=ent,
            g_lp=g_lp,
            g_h=g_h,
            labels=torch.where(valid, labels, -1),
            chunk=ctx.chunk,
        )
        return grad, None, None, None, None


@overload
def token_logprob_and_entropy(
    logits: Tensor, labels: Tensor, *, temperature: float = ..., chunk_size: int | None = ...
) -> tuple[Tensor, Tensor]: ...
@overload
def token_logprob_and_entropy(
    logits: Tensor, labels: None = ..., *, temperature: float = ..., chunk_size: int | None = ...
) -> tuple[None, Tensor]: ...


def token_logprob_and_entropy(
    logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor | None, Tensor]:
    r"""Log-probability of ``labels`` and Shannon entropy (nats) of ``softmax(logits / temperature)``.

    Equivalent to ``log_softmax(z).gather(-1, labels)`` and ``-(softmax(z) * log_softmax(z)).sum(-1)`` with
    ``z = logits / temperature``, but in one pass over the logits, without ``(N, V)`` temporaries, and with a
    backward pass that recomputes the probabilities instead of storing them.

    Parameters
    ----------
    logits : Tensor
        Unnormalised scores, any floating dtype (float16, bfloat16, float32, float64).  ``-inf`` entries are
        allowed (masked vocabulary); NaN, ``+inf`` and rows that are entirely ``-inf`` raise ``ValueError``.
    labels : Tensor, optional
        Integer token ids; ``-100`` marks an ignored position (log-prob 0 there, and no gradient through it).
    temperature : float
        Divides the logits first (the sampling temperature of the rollout).  Must be > 0.
    chunk_size : int, optional
        Rows per unit of work.  ``None`` chooses from V and the machine (see Notes).

    Returns
    -------
    logp : Tensor or None
        ``log p(labels)``, ``None`` when ``labels`` is ``None``.
    entropy : Tensor
        ``H = -sum_v p_v log p_v`` in nats.

    Shapes
    ------
    logits ``(..., V)``, labels ``(...)``; both outputs ``(...)`` in float32 (float64 for float64 logits).

    Notes
    -----
    Gradients: ``d logp / dz = onehot - p`` and ``dH / dz = -p * (log p + H)``, each divided by the temperature.
    ``-inf`` logits receive exactly zero gradient.  The gradient has the logits' dtype.

    On CPU for float32/bfloat16/float16 the work is done by entrolab's native kernels (one online pass per row,
    no temporaries, rows split over ``torch.get_num_threads()`` threads); elsewhere, or when no C compiler is
    available, by a chunked PyTorch path that holds one ``(chunk, V)`` float32 temporary sized to the CPU's L2
    (256 MiB on accelerators).  ``entrolab._native.status()`` says which.  Statistics are float32 whatever the input
    dtype (log-sum-exp is never run in bfloat16).  Not twice differentiable.

    References
    ----------
    The one-pass formulation ``H = lse - sum p z`` and the two gradient identities follow
    ``shared/specs/performance.md`` sections 1-2 (as in verl's ``FusedLinearForPPO`` and TRL's chunked log-probs).

    Examples
    --------
    >>> import math, torch
    >>> logp, h = token_logprob_and_entropy(torch.zeros(2, 8), torch.tensor([3, -100]))
    >>> bool(torch.allclose(h, torch.full((2,), math.log(8))))  # uniform: H = log V
    True
    >>> [round(v, 6) for v in logp.tolist()]  # log(1/8), and 0 at the ignored position
    [-2.079442, 0.0]
    """
    check_floating("logits", logits, min_ndim=1)
    temperature = check_temperature("temperature", temperature, _rows.compute_dtype(logits.dtype))
    chunk_size = check_chunk_size("chunk_size", chunk_size)
    width = logits.shape[-1]
    if width == 0:
        raise ValueError(
            f"logits must have at least one category along the last dimension, got shape {tuple(logits.shape)}"
        )
    lead = logits.shape[:-1]
    has_labels = labels is not None
    if has_labels:
        flat_labels = check_labels("labels", labels, shape=lead, num_classes=width, device=logits.device)
    else:
        flat_labels = torch.full((lead.numel(),), _rows.IGNORE_INDEX, dtype=torch.int64, device=logits.device)
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    logp, ent = _LogprobEntropyFromLogits.apply(x, flat_labels, 1.0 / temperature, chunk_size, has_labels)
    return (logp if has_labels else None), ent
