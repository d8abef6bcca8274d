"""Native fast paths for the entropy interventions' per-token statistics (CPU, float32; not public).

The losses call ``_fast.native_for(...)`` with their input tensors: it returns the bound kernels of
``_native/losses.c`` when every tensor is a float32 CPU tensor and the native library is loaded, else ``None``, and
the loss then runs its PyTorch path, which computes the same quantities (the tests run every loss test both ways by
patching ``native_for``).  Each wrapper takes already validated tensors and returns new tensors; inputs are never
written.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch
from torch import Tensor

from entrolab import _native

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_S = ctypes.c_int32

_SIGNATURES: dict[str, list[Any]] = {
    "entrolab_steer_f32": [_P, _P, _P, _I, _I, _P, _P, _P, _I, _I, _S, _F, _F, _S, _F, _F, _P, _P, _P],
    "entrolab_hapo_log_entropy_f32": [_P, _P, _I, _I, _P, _I, _P, _P],
    "entrolab_sq_dev_f32": [_P, _P, _I, _I, _F, _P],
    "entrolab_masked_sums_f32": [_P, _P, _I, _I, _P],
    "entrolab_cov_sums_f32": [_P, _P, _I, _I, _P, _P, _I, _I, _P],
    "entrolab_cov_pack_f32": [_P, _P, _I, _I, _P, _P, _I, _I, _F, _F, _P, _P, _P],
    "entrolab_cov_top_f32": [_P, _P, _I, _I, _P, _P, _I, _I, _F, _F, _F, _I, _P, _P],
    "entrolab_cov_candidates_f32": [_P, _P, _P, _I, _I, _P, _P, _I, _I, _S, *[_F] * 4, _P, _P, _P],
    "entrolab_flag_ranks_u8": [_P, _P, _I, _I, _P, _I, _P],
    "entrolab_pack_valid_f32": [_P, _P, _I, _I, _P, _P],
    "entrolab_ge_mask_f32": [_P, _P, _I, _I, _F, _P],
    "entrolab_cov_topk_f32": [_P, _P, _I, _I, _P, _P, _I, _I, _S, _F, _F, ctypes.c_double, _I, _P, _P, _P, _P],
    "entrolab_hapo_ppo_f32": [_P, _P, _P, _P, _I, _I, _P, _P, _I, _I, *[_F] * 9, _P, _P, _P],
    "entrolab_balanced_ppo_f32": [_P, _P, _P, _P, _I, _I, _P, _P, _I, _I, *[_F] * 6, _P, _P, _P],
}
_RETURNS_COUNT = {
    "entrolab_cov_topk_f32",
    "entrolab_cov_top_f32",
    "entrolab_cov_candidates_f32",
    "entrolab_ge_mask_f32",
}


class LossKernels:
    """ctypes bindings of ``losses.c``; every method reads contiguous float32 ``(B, T)`` tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = _I if name in _RETURNS_COUNT else None
            setattr(self, name.removeprefix("entrolab_").removesuffix("_f32"), fn)


_bound: dict[int, LossKernels | None] = {}


def native_for(*tensors: Tensor | None) -> LossKernels | None:
    """The bound kernels when every given tensor is a float32 CPU tensor and the native library is loaded."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            return None
    lib = _native.get()
    if lib is None:
        return None
    key = id(lib)
    if key not in _bound:
        try:
            _bound[key] = LossKernels(lib.lib)
        except AttributeError:  # a library built before losses.c existed
            _bound[key] = None
    return _bound[key]


_SCRATCH_MAX = 1 << 20  # elements: larger scratch is allocated per call rather than kept
_local = threading.local()


def _scratch(name: str, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A per-thread scratch buffer of ``n`` elements, reused from call to call: the kernels' row-sized buffers (one
    row of ``T``, ``B`` row counts, a size-``k`` heap).

    Buffers the size of the batch (packed values, flags, weights) are allocated per call instead: in a process whose
    heap is warm, a block just freed by the previous operation comes back cache-hot, while a kept buffer was last
    touched by another loss many calls ago (measured in ``bench/losses.py``: the 80/20 mask at 1.46-1.53x ``ppo``
    with kept buffers, 1.40-1.42x with fresh ones).  Nothing returned to a caller, or saved for backward, may alias a
    scratch buffer.
    """
    if n > _SCRATCH_MAX:
        return torch.empty(n, dtype=dtype)
    cache: dict[str, Tensor] | None = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    buf = cache.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = cache[name] = torch.empty(max(n, 1024), dtype=dtype)
    return buf[:n]


def _c(t: Tensor) -> Tensor:
    """Detached and contiguous (a view when it already is)."""
    return t.detach().contiguous()


def _adv(advantages: Tensor, shape: torch.Size) -> tuple[Tensor, int, int, Tensor | None]:
    """The advantages as stored ``(B,)`` or ``(B, T)``, the strides that address token ``(i, t)``, and, for
    per-sequence advantages, the scratch row the kernels fill with a sequence's advantage."""
    a = _c(advantages)
    if a.ndim == 1:
        return a, 1, 0, _scratch("abuf", max(1, shape[1]))
    return a, shape[1], 1, None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _stats(n: int) -> Any:
    return (ctypes.c_double * n)()


def steer(
    k: LossKernels,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    entropy: Tensor,
    *,
    mode: int,
    lambda_min: float,
    lambda_max: float,
    omega_range: tuple[float, float] | None,
) -> tuple[Tensor, list[float]]:
    """STEER's weighted advantages ``A w`` (0 at padding) and ``[sum w, min w, lo, hi, count]`` over valid tokens."""
    b, t = logp.shape
    lp, old, ent, mask = _c(logp), _c(old_logp), _c(entropy), _c(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    mag, aw = torch.empty(b, t), torch.empty(b, t)  # mag: |Omega| between the kernel's two passes
    st = _stats(5)
    lo, hi = omega_range if omega_range is not None else (0.0, 0.0)
    k.steer(  # type: ignore[attr-defined]
        lp.data_ptr(), old.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), ent.data_ptr(), mask.data_ptr(), b, t, mode,
        lambda_min, lambda_max, int(omega_range is not None), lo, hi, mag.data_ptr(), aw.data_ptr(), st,
    )  # fmt: skip
    return aw, list(st)


def hapo_log_entropy(k: LossKernels, entropy: Tensor, m: Tensor) -> tuple[Tensor, list[float]]:
    """The valid ``ell = log(max(H, 1e-8))`` packed row-major, and ``[n, sum, sum^2, max, min, #H<0]``."""
    b, t = entropy.shape
    ent, mask = _c(entropy), _c(m)
    row, packed = _scratch("row", max(t, 1)), torch.empty(b * t + 1)
    st = _stats(6)
    k.hapo_log_entropy(ent.data_ptr(), mask.data_ptr(), b, t, row.data_ptr(), 0, packed.data_ptr(), st)  # type: ignore[attr-defined]
    return packed[: int(st[0])], list(st)


def sq_dev(k: LossKernels, entropy: Tensor, m: Tensor, center: float) -> list[float]:
    """``[sum (ell - c)^2, max (ell - c), min (ell - c)]`` over valid tokens, ``ell = log(max(H, 1e-8))``."""
    st = _stats(3)
    ent = _c(entropy)
    k.sq_dev(ent.data_ptr(), _c(m).data_ptr(), ent.shape[0], ent.shape[1], center, st)  # type: ignore[attr-defined]
    return list(st)


def masked_sums(k: LossKernels, x: Tensor, m: Tensor) -> list[float]:
    """``[count, sum x, sum x^2]`` over valid tokens."""
    b, t = x.shape
    xc, mask = _c(x), _c(m)
    st = _stats(3)
    k.masked_sums(xc.data_ptr(), mask.data_ptr(), b, t, st)  # type: ignore[attr-defined]
    return list(st)


def _mask_bytes(m: Tensor) -> Tensor:
    """The bool mask as contiguous bytes (a view of a contiguous bool tensor)."""
    return _c(m)


def cov_center(k: LossKernels, logp: Tensor, advantages: Tensor, m: Tensor) -> tuple[float, float, float]:
    """``(count, mean A, mean logp)`` over valid tokens, the means cast to float32 as the PyTorch path's are."""
    b, t = logp.shape
    lp, mask = _c(logp), _mask_bytes(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    st = _stats(3)
    k.cov_sums(lp.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, st)  # type: ignore[attr-defined]
    n = max(st[0], 1.0)
    return st[0], _f32(st[1] / n), _f32(st[2] / n)


def _f32(x: float) -> float:
    return float(ctypes.c_float(x).value)


def cov_pack(
    k: LossKernels, logp: Tensor, advantages: Tensor, m: Tensor, *, mean_a: float, mean_lp: float, n: int
) -> tuple[Tensor, float]:
    """The valid ``Cov_t`` packed row-major ``(n,)`` and their sum."""
    b, t = logp.shape
    lp, mask = _c(logp), _mask_bytes(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    packed, row = torch.empty(n + 1), _scratch("row", max(t, 1))  # compaction stores one past the last entry
    st = _stats(1)
    k.cov_pack(  # type: ignore[attr-defined]
        lp.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, mean_a, mean_lp, row.data_ptr(),
        packed.data_ptr(), st,
    )  # fmt: skip
    return packed[:n], st[0]


def cov_top(
    k: LossKernels,
    logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    *,
    mean_a: float,
    mean_lp: float,
    kth: float,
    count: int,
) -> Tensor:
    """Flat indices ``(<= count,)`` of the valid tokens with ``Cov_t > kth``, then ``== kth`` (row-major each)."""
    b, t = logp.shape
    lp, mask = _c(logp), _mask_bytes(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    idx, row = torch.empty(max(count, 1), dtype=torch.int64), _scratch("row", max(t, 1))
    got = k.cov_top(  # type: ignore[attr-defined]
        lp.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, mean_a, mean_lp, kth, count,
        row.data_ptr(), idx.data_ptr(),
    )  # fmt: skip
    return idx[:got]


class Candidates:
    """Clip-Cov's candidates as one flag byte per token and per-row counts (scratch: valid until the next kernel
    call); :meth:`flat_indices` maps candidate ranks (row-major order) to flat token indices."""

    def __init__(self, k: LossKernels, flags: Tensor, rows: Tensor, shape: torch.Size, total: int) -> None:
        self._k, self._flags, self._rows, self._shape, self.total = k, flags, rows, shape, total

    def flat_indices(self, ranks: Tensor) -> Tensor:
        """``(len(ranks),)`` int64 flat indices of the candidates of rank ``ranks`` (each in ``[0, total)``)."""
        r = ranks if ranks.dtype == torch.int64 and ranks.is_contiguous() else ranks.to(torch.int64).contiguous()
        out = torch.empty(r.numel(), dtype=torch.int64)
        b, t = self._shape
        self._k.flag_ranks_u8(  # type: ignore[attr-defined]
            self._flags.data_ptr(), self._rows.data_ptr(), b, t, r.data_ptr(), r.numel(), out.data_ptr()
        )
        return out


def cov_candidates(
    k: LossKernels,
    logp: Tensor,
    clipped: Tensor,
    advantages: Tensor,
    m: Tensor,
    *,
    center: tuple[float, float] | None,
    cov_lb: float,
    cov_ub: float,
) -> tuple[Candidates, int, float]:
    """Clip-Cov's candidates, the valid count and the sum of ``Cov_t`` over valid tokens (the centre computed in the
    same call unless given).  ``clipped`` is the surrogate's float 0/1 indicator (:class:`~entrolab.losses.ppo.
    PPOTerms`), 0 at padding."""
    b, t = logp.shape
    lp, cl, mask = _c(logp), _c(clipped), _mask_bytes(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    flags = torch.empty(b * t, dtype=torch.uint8)
    rows = _scratch("rows", max(b, 1), torch.int64)
    st = _stats(2)
    ma, ml = center if center is not None else (0.0, 0.0)
    total = k.cov_candidates(  # type: ignore[attr-defined]
        lp.data_ptr(), cl.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t,
        int(center is not None), ma, ml, cov_lb, cov_ub, flags.data_ptr(), rows.data_ptr(), st,
    )  # fmt: skip
    return Candidates(k, flags, rows, logp.shape, int(total)), int(st[0]), st[1]


def pack_valid(k: LossKernels, x: Tensor, m: Tensor) -> tuple[Tensor, int, float]:
    """The valid entries of ``x`` packed row-major ``(n,)``, the number of them that are not finite, and the sum of
    the finite ones."""
    b, t = x.shape
    xc, mask = _c(x), _mask_bytes(m)
    packed = torch.empty(b * t + 1)  # the compaction stores one past the last valid entry
    st = _stats(3)
    k.pack_valid(xc.data_ptr(), mask.data_ptr(), b, t, packed.data_ptr(), st)  # type: ignore[attr-defined]
    return packed[: int(st[0])], int(st[1]), st[2]


def ge_mask(k: LossKernels, x: Tensor, m: Tensor, tau: float) -> tuple[Tensor, int]:
    """``m & (x >= tau)`` as a bool tensor, and its count."""
    b, t = x.shape
    xc, mask = _c(x), _mask_bytes(m)
    keep = torch.empty(b, t, dtype=torch.bool)
    got = k.ge_mask(xc.data_ptr(), mask.data_ptr(), b, t, tau, keep.data_ptr())  # type: ignore[attr-defined]
    return keep, int(got)


def hapo_ppo(
    k: LossKernels,
    entropy: Tensor,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    *,
    pivot: float,
    scale: float,
    pos_max: float,
    neg_scale: float,
    eps_low: float,
    eps_high: float,
    clip_alpha: float,
    adv_beta: float,
    dual_clip: float | None,
) -> tuple[Tensor, Tensor, list[float]]:
    """HAPO's fused surrogate: per-token losses and ``d loss / d logp`` ``(B, T)``, and ``[clipped, log-ratio, ratio,
    lower, h_hat, h_hat > 0, changed]`` sums over valid tokens."""
    b, t = logp.shape
    ent, lp, old, mask = _c(entropy), _c(logp), _c(old_logp), _c(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    loss, coef = torch.empty(b, t), torch.empty(b, t)
    st = _stats(7)
    k.hapo_ppo(  # type: ignore[attr-defined]
        ent.data_ptr(), lp.data_ptr(), old.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, pivot,
        scale, pos_max, neg_scale, eps_low, eps_high, clip_alpha, adv_beta, dual_clip or 0.0, loss.data_ptr(),
        coef.data_ptr(), st,
    )  # fmt: skip
    return loss, coef, list(st)


def balanced_ppo(
    k: LossKernels,
    entropy: Tensor | None,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    *,
    mean: float,
    std: float,
    coef: float,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> tuple[Tensor, Tensor, list[float]]:
    """AEPO-EB's fused surrogate (``coef = 0`` or no entropy: the advantages as given): per-token losses and
    ``d loss / d logp``, and ``[clipped, log-ratio, ratio, lower, top, A']`` sums over valid tokens."""
    b, t = logp.shape
    lp, old, mask = _c(logp), _c(old_logp), _c(m)
    ent = lp if entropy is None else _c(entropy)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    loss, grad = torch.empty(b, t), torch.empty(b, t)
    st = _stats(6)
    k.balanced_ppo(  # type: ignore[attr-defined]
        ent.data_ptr(), lp.data_ptr(), old.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, mean,
        std, coef if entropy is not None else 0.0, eps_low, eps_high, dual_clip or 0.0, loss.data_ptr(),
        grad.data_ptr(), st,
    )  # fmt: skip
    return loss, grad, list(st)


def cov_topk(
    k: LossKernels,
    logp: Tensor,
    advantages: Tensor,
    m: Tensor,
    *,
    center: tuple[float, float] | None,
    ratio: float,
    kmax: int,
) -> tuple[Tensor, int, float]:
    """KL-Cov's selection in one call (centre, ``k`` from ``ratio`` and the valid count, a size-``k`` heap): the
    chosen flat indices, the valid count and the sum of ``Cov_t`` over valid tokens.  ``kmax`` bounds ``k``."""
    b, t = logp.shape
    lp, mask = _c(logp), _mask_bytes(m)
    a, ars, ats, abuf = _adv(advantages, logp.shape)
    row, hv = _scratch("row", max(t, 1)), _scratch("heap", max(kmax, 1))
    idx = torch.empty(max(kmax, 1), dtype=torch.int64)
    st = _stats(4)
    ma, ml = center if center is not None else (0.0, 0.0)
    got = k.cov_topk(  # type: ignore[attr-defined]
        lp.data_ptr(), a.data_ptr(), ars, ats, _ptr(abuf), mask.data_ptr(), b, t, int(center is not None), ma, ml,
        ratio, kmax, row.data_ptr(), hv.data_ptr(), idx.data_ptr(), st,
    )  # fmt: skip
    return idx[:got], int(st[0]), st[1]
