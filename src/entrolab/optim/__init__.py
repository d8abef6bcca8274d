"""Optimizers from the entropy papers: SCALE (memory-lean column-normalised SGD) and 8-bit optimizer states.

- :mod:`entrolab.optim.scale`: :class:`SCALE`, :func:`scale_param_groups`, :func:`normalize_rows` (arXiv 2506.16659).
- :mod:`entrolab.optim.quant`: the block-wise dynamic quantisation reference (:func:`dynamic_map`,
  :func:`quantize_blockwise`, :func:`dequantize_blockwise`) and :func:`make_optimizer`, whose ``adam8bit`` and
  ``adamw8bit`` are bitsandbytes' optimizers (arXiv 2110.02861; the ``optim`` extra).
"""

from entrolab.optim.quant import (
    OPTIMIZERS,
    dequantize_blockwise,
    dynamic_map,
    make_optimizer,
    optimizer_state_bytes,
    quantize_blockwise,
    require_bitsandbytes,
)
from entrolab.optim.scale import SCALE, normalize_rows, scale_param_groups

__all__ = [
    "OPTIMIZERS",
    "SCALE",
    "dequantize_blockwise",
    "dynamic_map",
    "make_optimizer",
    "normalize_rows",
    "optimizer_state_bytes",
    "quantize_blockwise",
    "require_bitsandbytes",
    "scale_param_groups",
]
