"""Batch statistics over the whole data-parallel batch through ``torch.distributed`` (not public).

Every function here takes ``group``: ``None`` means "this process only" (the statistic of the tensors given, the
default of every loss), anything else is a process group (``torch.distributed.group.WORLD`` for all ranks).  Ranks
are ordered by their rank in the group, so "the whole batch" is rank 0's rows, then rank 1's, and so on: the global
statistic on two halves equals the local statistic of a single process holding the concatenation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["all_max", "all_min", "all_sum", "broadcast_from_first", "gather_concat", "rank_offset", "resolve_group"]


def resolve_group(global_stats: object, process_group: Any = None) -> Any:
    """``None`` for local statistics, else the process group to reduce over (checked to be initialised)."""
    if not isinstance(global_stats, bool):
        raise TypeError(f"global_stats must be a bool, got {type(global_stats).__name__}")
    if not global_stats:
        if process_group is not None:
            raise ValueError("process_group was given but global_stats=False; pass global_stats=True to use it")
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("global_stats=True needs an initialised torch.distributed process group")
    return process_group if process_group is not None else dist.group.WORLD


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _all_reduce(t: Tensor, group: Any, op: str) -> Tensor:
    if group is None:
        return t
    out = t.detach().clone()  # never in place on the input
    _dist().all_reduce(out, op=getattr(_dist().ReduceOp, op), group=group)
    return out


def all_sum(t: Tensor, group: Any) -> Tensor:
    """Sum of ``t`` over the ranks of ``group`` (``t`` itself when local)."""
    return _all_reduce(t, group, "SUM")


def all_max(t: Tensor, group: Any) -> Tensor:
    return _all_reduce(t, group, "MAX")


def all_min(t: Tensor, group: Any) -> Tensor:
    return _all_reduce(t, group, "MIN")


def _counts(n: int, device: torch.device, group: Any) -> list[int]:
    dist = _dist()
    size = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(size)]
    dist.all_gather(every, mine, group=group)
    return [int(c) for c in every]


def rank_offset(n: int, device: torch.device, group: Any) -> tuple[int, int]:
    """``(offset, total)``: the number of items on lower ranks, and on all ranks together."""
    if group is None:
        return 0, n
    counts = _counts(n, device, group)
    rank = _dist().get_rank(group)
    return sum(counts[:rank]), sum(counts)


def gather_concat(values: Tensor, group: Any) -> Tensor:
    """Concatenate 1-D ``values`` of every rank in rank order (sizes may differ); detached."""
    if group is None:
        return values.detach()
    dist = _dist()
    counts = _counts(values.numel(), values.device, group)
    width = max(counts) if counts else 0
    padded = values.detach().new_zeros(width)
    padded[: values.numel()] = values.detach()
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def broadcast_from_first(t: Tensor, group: Any) -> Tensor:
    """``t`` as held by the group's first rank (in place on a private copy)."""
    if group is None:
        return t
    dist = _dist()
    out = t.detach().clone()
    dist.broadcast(out, src=dist.get_global_rank(group, 0), group=group)
    return out
