"""Sequence layers from the entropy papers, in pure PyTorch (CPU references; GPU users can swap in fused kernels).

- :class:`SparseStateExpansion` (arXiv 2507.16577): linear attention with row-sparse top-k writes and routed state
  partitions, plus :func:`load_balance_loss`; its core :func:`gated_linear_attention` runs token by token or
  chunked-parallel.
- :class:`SelectiveSSM` (arXiv 2410.03292): a Mamba-style S6 block with the positive-semidefinite input-output
  constraint and SoftSort token reordering.
"""

from entrolab.nn.sse import SparseStateExpansion, SSEOutput, gated_linear_attention, load_balance_loss, row_topk_mask
from entrolab.nn.ssm import SelectiveSSM, SignConstrainedProjection, selective_scan, soft_sort, token_dynamics_mu

__all__ = [
    "SSEOutput",
    "SelectiveSSM",
    "SignConstrainedProjection",
    "SparseStateExpansion",
    "gated_linear_attention",
    "load_balance_loss",
    "row_topk_mask",
    "selective_scan",
    "soft_sort",
    "token_dynamics_mu",
]
