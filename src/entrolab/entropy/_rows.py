"""Row primitives shared by the from-logits and fused-linear paths.

A "row" is one categorical distribution over V entries, contiguous along V.  For a raw row ``x`` and
``inv_t = 1 / temperature`` the statistics are, in float32 (float64 for float64 input)::

    m = max_j x_j (raw),   t_j = (x_j - m) * inv_t,   s = sum_j exp(t_j),   d = sum_j exp(t_j) * t_j
    log p_j = t_j - log s,   lse = m * inv_t + log s,   H = log s - d / s

Subtracting the raw maximum before scaling keeps float32 precision for shifted or large logits.  The gradient of
``g_lp * log p_y + g_h * H`` with respect to the raw logits is
``inv_t * (g_lp * onehot(y) - p * (g_lp + g_h * (log p + H)))``.

Two interchangeable implementations: the native CPU kernels (:mod:`entrolab._native`, one pass, no temporaries)
and a chunked PyTorch one (any device, one ``(chunk, V)`` temporary).  Both produce the same numbers up to float32
rounding and are tested against :mod:`entrolab.entropy.reference`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from entrolab import _native
from entrolab._validation import debug_checks as debug_checks  # the documented name is entrolab.entropy.debug_checks
from entrolab._validation import debug_enabled

IGNORE_INDEX = -100
# exp(CLAMP_LO) is exactly 0 in the compute dtype: clamping log-space values there removes -inf (and so the
# 0 * -inf = NaN products) without changing any sum.
_CLAMP_LO = {torch.float32: -200.0, torch.float64: -1000.0}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def debug_assert(logp: Tensor | None, ent: Tensor, num_classes: int) -> None:
    if not debug_enabled():
        return
    tol = 1e-4
    if logp is not None and logp.numel() and float(logp.max()) > tol:
        raise AssertionError(f"debug check: log-prob > 0 (max {float(logp.max())})")
    if ent.numel():
        lo, hi = float(ent.min()), float(ent.max())
        if lo < -tol or hi > math.log(num_classes) + tol * max(1.0, math.log(max(num_classes, 2))):
            raise AssertionError(f"debug check: entropy outside [0, log V = {math.log(num_classes):.6g}]: [{lo}, {hi}]")


@lru_cache(maxsize=1)
def _cpu_cache_bytes() -> int:
    """Per-core L2 size in bytes from sysfs (1 MiB when unknown)."""
    for index in range(4):
        base = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}")
        try:
            if (base / "level").read_text().strip() != "2":
                continue
            text = (base / "size").read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return 1 << 20


def auto_row_chunk(num_rows: int, width: int, device: torch.device, *, native: bool) -> int:
    """Rows per chunk when the caller gives none.

    Native CPU kernels hold no temporaries, so a chunk is only a unit of work per thread.  The PyTorch path holds a
    ``(chunk, V)`` float32 temporary: on CPU it is sized to stay in the cores' L2 (the rows are reread from cache,
    not memory); on accelerators to 256 MiB.
    """
    if native:
        threads = max(1, torch.get_num_threads())
        return max(1, -(-num_rows // threads))
    budget = _cpu_cache_bytes() * max(1, torch.get_num_threads()) if device.type == "cpu" else 256 << 20
    return int(max(1, min(max(num_rows, 1), budget // (4 * max(width, 1)))))


def row_offsets(x: Tensor) -> Tensor:
    """Element offsets (int64, shape ``(N,)``) of every row of ``x`` (``stride(-1) == 1``) from ``x.data_ptr()``."""
    lead = x.shape[:-1]
    off = torch.zeros(lead, dtype=torch.int64)
    for k, (n, st) in enumerate(zip(lead, x.stride()[:-1])):
        shape = [1] * len(lead)
        shape[k] = n
        off = off + (torch.arange(n, dtype=torch.int64) * st).view(shape)
    return off.reshape(-1).contiguous()


def native_for(x: Tensor) -> _native.NativeKernels | None:
    """The native kernels if they can handle ``x`` (CPU, float32/bfloat16/float16, rows contiguous)."""
    if x.device.type != "cpu" or x.dtype == torch.float64:
        return None
    kernels = _native.get()
    return kernels if kernels is not None and kernels.supports(x) else None


def rows_view(x: Tensor) -> Tensor | None:
    """``x`` as an ``(N, V)`` view without copying, or ``None`` when its layout does not allow one."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return None


def gather_rows(x: Tensor, x2: Tensor | None, off: Tensor | None, a: int, b: int) -> Tensor:
    """Rows ``a:b`` of ``x`` as an ``(b - a, V)`` tensor: a view when possible, else a gathered copy."""
    if x2 is not None:
        return x2[a:b]
    assert off is not None
    flat = x.as_strided((x.untyped_storage().nbytes() // x.element_size() - x.storage_offset(),), (1,))
    cols = torch.arange(x.shape[-1], device=x.device)
    return flat[off[a:b].to(x.device).unsqueeze(1) + cols]  # (b - a, V)


def torch_stats(xc: Tensor, inv_t: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(m, s, d, bad) for the rows of ``xc`` (C, V) with one ``(C, V)`` temporary in the compute dtype."""
    cd = compute_dtype(xc.dtype)
    t = xc.to(cd, copy=True)  # (C, V) the one temporary
    m = t.amax(-1, keepdim=True)  # NaN propagates; +inf and all -inf rows give a non-finite max
    bad = ~torch.isfinite(m.squeeze(-1))
    t.sub_(m)
    if inv_t != 1.0:
        t.mul_(inv_t)
    t.clamp_min_(_CLAMP_LO[cd])
    t.exp_()
    s = t.sum(-1)
    # sum e * (x - m) = sum e * log e = -sum entr(e); entr(0) = 0, so -inf entries contribute exactly 0.
    torch.special.entr(t, out=t)
    d = -t.sum(-1)
    return m.squeeze(-1), s, d, bad


def stats(x: Tensor, *, inv_t: float, chunk: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row statistics ``(m, s, d, bad)`` of every row of ``x`` (..., V), flattened to ``(N,)`` each.

    ``bad`` is True for rows holding NaN or +inf, or that are entirely -inf.
    """
    width = x.shape[-1]
    num_rows = x.numel() // width if width else 0
    cd = compute_dtype(x.dtype)
    kernels = native_for(x)
    if chunk is None:
        chunk = auto_row_chunk(num_rows, width, x.device, native=kernels is not None)
    if kernels is not None:
        m, s, d, bad_count = kernels.stats(x, row_offsets(x), inv_t, chunk)
        return m, s, d, (bad_count > 0) | ~torch.isfinite(m)
    out = [torch.empty(num_rows, dtype=cd, device=x.device) for _ in range(3)]
    bad_all = torch.empty(num_rows, dtype=torch.bool, device=x.device)
    x2 = rows_view(x)
    offsets = row_offsets(x) if x2 is None else None
    for a in range(0, num_rows, chunk):
        b = min(a + chunk, num_rows)
        m, s, d, bad = torch_stats(gather_rows(x, x2, offsets, a, b), inv_t)
        out[0][a:b], out[1][a:b], out[2][a:b], bad_all[a:b] = m, s, d, bad
    return out[0], out[1], out[2], bad_all


def finish(s: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """(log s, H) from the row statistics; H is clamped at 0 from below (rounding can give -1e-8)."""
    log_s = s.log()
    return log_s, (log_s - d / s).clamp_min(0.0)


def merge(
    m: Tensor, s: Tensor, d: Tensor, mb: Tensor, sb: Tensor, db: Tensor, inv_t: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine the statistics of two disjoint column blocks of the same rows (the online log-sum-exp step)."""
    big = torch.maximum(m, mb)
    has_a, has_b = s > 0, sb > 0  # a block whose entries are all -inf has s = 0 and contributes nothing
    ka = torch.where(has_a, (m - big) * inv_t, 0.0)
    kb = torch.where(has_b, (mb - big) * inv_t, 0.0)
    ra = torch.where(has_a, torch.exp(ka), 0.0)
    rb = torch.where(has_b, torch.exp(kb), 0.0)
    return big, ra * s + rb * sb, ra * (d + s * ka) + rb * (db + sb * kb)


def torch_grad_rows(
    xc: Tensor, inv_t: float, mx: Tensor, logs: Tensor, ent: Tensor, g_lp: Tensor, g_h: Tensor, labels: Tensor
) -> Tensor:
    """Gradient rows (C, V) in the compute dtype for the rows ``xc``; ``labels < 0`` means no log-prob term."""
    cd = compute_dtype(xc.dtype)
    logp = xc.to(cd, copy=True)  # (C, V)
    logp.sub_(mx.unsqueeze(1))
    if inv_t != 1.0:
        logp.mul_(inv_t)
    logp.sub_(logs.unsqueeze(1)).clamp_min_(_CLAMP_LO[cd])
    p = logp.exp()  # (C, V)
    grad = logp.add_(ent.unsqueeze(1)).mul_(g_h.unsqueeze(1)).add_(g_lp.unsqueeze(1)).mul_(p).mul_(-inv_t)
    has = labels >= 0
    idx = torch.where(has, labels, 0).unsqueeze(1)
    grad.scatter_add_(1, idx, torch.where(has, g_lp * inv_t, 0.0).unsqueeze(1).to(cd))
    return grad


def grad_into(
    x: Tensor,
    out: Tensor,
    *,
    inv_t: float,
    mx: Tensor,
    logs: Tensor,
    ent: Tensor,
    g_lp: Tensor,
    g_h: Tensor,
    labels: Tensor,
    chunk: int | None,
) -> None:
    """Write the gradient for every row of ``x`` (..., V) into the contiguous ``out`` of the same shape.

    ``out`` may be ``x`` itself (a scratch tile).  Row vectors are ``(N,)`` in the compute dtype; labels int64.
    """
    width = x.shape[-1]
    num_rows = x.numel() // width if width else 0
    kernels = native_for(x)
    if chunk is None:
        chunk = auto_row_chunk(num_rows, width, x.device, native=kernels is not None)
    if kernels is not None and out.dtype == x.dtype and out.is_contiguous():
        mx32, logs32, ent32, g_lp32, g_h32 = (t.to(torch.float32).contiguous() for t in (mx, logs, ent, g_lp, g_h))
        off_x = row_offsets(x)
        off_o = off_x if out.data_ptr() == x.data_ptr() else row_offsets(out)
        kernels.grad(x, off_x, out, off_o, inv_t, mx32, logs32, ent32, g_lp32, g_h32, labels.contiguous(), chunk)
        return
    out2 = out.view(-1, width)
    x2 = rows_view(x)
    off = row_offsets(x) if x2 is None else None
    # Two (C, V) temporaries per step, so each step takes half a chunk: at most one chunk's worth is held.
    step = max(1, chunk // 2)
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        xc = gather_rows(x, x2, off, a, b)
        out2[a:b] = torch_grad_rows(xc, inv_t, mx[a:b], logs[a:b], ent[a:b], g_lp[a:b], g_h[a:b], labels[a:b])


def describe_bad_row(x: Tensor, bad: Tensor, *, what: str) -> str:
    """A precise message for the first row flagged ``bad``: NaN, +inf, or all -inf."""
    i = int(bad.nonzero()[0, 0])
    row = x.reshape(-1, x.shape[-1])[i] if x.shape[-1] else x.reshape(-1)
    if bool(torch.isnan(row).any()):
        problem = "contains NaN"
    elif bool(torch.isposinf(row).any()):
        problem = "contains +inf"
    elif bool(torch.isneginf(row).all()):
        problem = "is entirely -inf (no category has positive probability)"
    else:  # not reached: stats() flags only the three cases above; kept so a future flag cannot raise a blank message
        problem = "is not a valid distribution"
    return f"{what}: row {i} (flattened over the leading dimensions) {problem}"
