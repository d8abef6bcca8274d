"""8-bit optimizer states by block-wise dynamic quantisation: a float64 reference and bitsandbytes' optimizers.

entrolab does not reimplement 8-bit Adam: :func:`make_optimizer` builds bitsandbytes' (``bnb.optim.Adam8bit``,
``AdamW8bit``; CPU kernels from bitsandbytes 0.50.0).  What lives here is the reference that shows what is stored
and that the tests check bitsandbytes' own ``quantize_blockwise``/``dequantize_blockwise`` round trip against.  The
two rules differ: the reference rounds to the **nearest** code; bitsandbytes' CPU kernel rounds through a
65,536-entry lookup table, so on 0.1-25% of the elements of the tested distributions (66% has been seen on others)
it picks a code up to 4 codebook steps away, with a mean round-trip error up to 1.13x the nearest-code one (1.8x
seen elsewhere).  The tests assert the same absmax, at most 4 steps, and at most 1.5x mean / 2x worst error:

- :func:`dynamic_map`: the 256-entry dynamic tree codebook (a sign bit, a run of zero bits encoding the decimal
  exponent ``10^-k``, an indicator bit, then linear fraction bits; the unsigned map spends the sign bit on the
  fraction);
- :func:`quantize_blockwise` / :func:`dequantize_blockwise`: per block of ``block_size`` elements, the absmax
  ``N_b`` in fp32 and one uint8 index per element into the codebook (nearest entry of ``x / N_b``).

Block size: the paper uses 2048; bitsandbytes switched to 256 in 0.44 (better accuracy, 4 more bytes of absmax per
256 elements) and does not expose it on its optimizer classes.  Tensors with fewer than ``min_8bit_size`` (4096)
elements keep fp32 state.  For embeddings, the paper's Stable Embedding (``bnb.nn.StableEmbedding``: Xavier-uniform
initialisation, a LayerNorm on the output and 32-bit state for that layer) avoids the instability of 8-bit states on
sparse, rarely-updated rows.

References
----------
Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861
(sections 2.1-2.3); ``shared/specs/beyond_llm.md`` section 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OPTIMIZERS",
    "dequantize_blockwise",
    "dynamic_map",
    "make_optimizer",
    "optimizer_state_bytes",
    "quantize_blockwise",
    "require_bitsandbytes",
]

BNB_MIN_VERSION = (0, 50, 0)


def dynamic_map(*, signed: bool = True, exponent_bits: int = 7, total_bits: int = 8) -> Tensor:
    """The dynamic tree quantisation codebook ``(2**total_bits,)`` in float64, sorted, containing 0 and 1.

    For each decimal exponent ``10^(i - exponent_bits + 1)``, ``i = 0 .. exponent_bits - 1``, the fraction interval
    [0.1, 1] is split into ``2^(i + total_bits - 1 - exponent_bits)`` equal bins (twice as many unsigned) and their
    midpoints, scaled by the exponent, are codes (with their negatives when ``signed``); 0 and 1 complete the map.
    With the defaults: signed values in [-0.99297, 1], unsigned in [0, 1] (arXiv 2110.02861, section 2.2).
    """
    if not (isinstance(total_bits, int) and isinstance(exponent_bits, int) and 1 <= exponent_bits < total_bits <= 16):
        raise ValueError(f"need 1 <= exponent_bits < total_bits <= 16, got {exponent_bits!r}, {total_bits!r}")
    values: list[float] = [0.0, 1.0]
    extra = 0 if signed else 1
    for i in range(exponent_bits):
        bins = 2 ** (i + total_bits - 1 - exponent_bits + extra)
        edges = torch.linspace(0.1, 1.0, bins + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - exponent_bits + 1)).tolist()
        values += mids + ([-m for m in mids] if signed else [])
    leftover = 2 ** (total_bits - 1 - exponent_bits) - 1  # fraction codes beyond the exponent runs (0 at 8/7 bits)
    if leftover > 0:
        edges = torch.linspace(0.1, 1.0, leftover + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2).tolist()
        values += mids + ([-m for m in mids] if signed else [])
    values += [0.0] * (2**total_bits - len(values))
    return torch.tensor(sorted(values), dtype=torch.float64)


def _check_block(x: Tensor, block_size: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")


def quantize_blockwise(
    x: Tensor, *, block_size: int = 2048, code: Tensor | None = None, signed: bool = True
) -> tuple[Tensor, Tensor]:
    """``(codes, absmax)``: uint8 indices ``x.shape`` into ``code`` (default :func:`dynamic_map`) of
    ``x / absmax_b``, and the fp32 absmax ``(ceil(numel / block_size),)`` of each block of the flattened ``x``.

    An all-zero block has absmax 0 and every element maps to the code 0.  ``x`` must be finite; with
    ``signed=False`` it must be non-negative (Adam's second moment).
    """
    _check_block(x, block_size)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (no NaN or inf)")
    if not signed and bool((x < 0).any()):
        raise ValueError("x must be non-negative for the unsigned map (signed=False)")
    table = dynamic_map(signed=signed) if code is None else code.to(torch.float64)
    flat = x.detach().reshape(-1).to(torch.float64)
    n = flat.numel()
    blocks = math.ceil(n / block_size)
    padded = torch.cat([flat, flat.new_zeros(blocks * block_size - n)]).reshape(blocks, block_size)
    absmax = padded.abs().amax(1).to(torch.float32).to(torch.float64)  # quantise with the absmax that is stored
    normed = padded / torch.where(absmax > 0, absmax, 1.0).unsqueeze(1)
    # nearest codebook entry: the insertion point and its left neighbour, whichever is closer
    right = torch.searchsorted(table, normed.contiguous()).clamp(1, table.numel() - 1)
    left = right - 1
    pick = torch.where((normed - table[left]).abs() <= (table[right] - normed).abs(), left, right)
    codes = pick.reshape(-1)[:n].to(torch.uint8).reshape(x.shape)
    return codes, absmax.to(torch.float32)


def dequantize_blockwise(
    codes: Tensor, absmax: Tensor, *, block_size: int = 2048, code: Tensor | None = None, signed: bool = True
) -> Tensor:
    """``absmax_b * code[codes]`` in float64, shaped like ``codes`` (the inverse of :func:`quantize_blockwise` up to
    half the codebook's local gap times ``absmax_b``)."""
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    n = codes.numel()
    if absmax.shape != (math.ceil(n / block_size),):
        raise ValueError(
            f"absmax must have one entry per block ({math.ceil(n / block_size)}), got {tuple(absmax.shape)}"
        )
    table = dynamic_map(signed=signed) if code is None else code.to(torch.float64)
    values = table[codes.reshape(-1).long()]
    scale = absmax.to(torch.float64).repeat_interleave(block_size)[:n]
    return (values * scale).reshape(codes.shape)


# ----------------------------------------------------------------------------------------------- the registry
class _DropOptionalKernelWarning:
    def filter(self, record: Any) -> bool:
        return "kernels-community" not in record.getMessage()


def require_bitsandbytes() -> Any:
    """The ``bitsandbytes`` module, or ``ImportError`` naming the extra when it is missing or older than 0.50.0."""
    import logging

    ops_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    quiet = _DropOptionalKernelWarning()
    ops_log.addFilter(quiet)  # a warning about 4-bit matmul kernels from a package we do not use
    try:
        import bitsandbytes as bnb
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "8-bit optimizers need bitsandbytes >= 0.50 (CPU kernels from 0.50.0): pip install 'entrolab[optim]'"
        ) from err
    finally:
        ops_log.removeFilter(quiet)
    version = tuple(int(p) for p in bnb.__version__.split(".")[:3] if p.isdigit())
    if version < BNB_MIN_VERSION:
        raise ImportError(f"8-bit optimizers need bitsandbytes >= 0.50.0 on CPU, found {bnb.__version__}")
    return bnb


def _adam(params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, **kw)


def _adamw(params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, **kw)


def _adam8bit(params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    return require_bitsandbytes().optim.Adam8bit(params, **kw)


def _adamw8bit(params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    return require_bitsandbytes().optim.AdamW8bit(params, **kw)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "adam8bit": _adam8bit,
    "adamw8bit": _adamw8bit,
}
"""Name -> builder ``fn(params, *, lr, betas, eps, weight_decay)``: PyTorch's Adam/AdamW and bitsandbytes' 8-bit
versions (block size 256, ``min_8bit_size`` 4096, percentile clipping off: bitsandbytes' defaults)."""


def make_optimizer(
    name: str, params: Iterable[Any], *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:  # fmt: skip
    """The optimizer ``name`` of :data:`OPTIMIZERS` over ``params`` (unknown names raise ``ValueError`` listing the
    valid ones; an 8-bit name without bitsandbytes >= 0.50 raises ``ImportError`` naming the extra)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return OPTIMIZERS[name](params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in ``optimizer.state``: every tensor of every parameter's state (moments, 8-bit codes, absmax,
    codebooks), except the step counters.  :class:`entrolab.optim.SCALE` also counts its inner AdamW."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    own = getattr(optimizer, "state_bytes", None)
    if callable(own):
        return int(own())
    return sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for k, t in s.items()
        if isinstance(t, Tensor) and k != "step"
    )
