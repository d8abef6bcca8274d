"""The one place that divides by counts.

Every policy loss produces a per-token matrix ``values`` (B, T) and hands it, with the response mask, to
:func:`aggregate`.  Global normalisers (valid tokens or sequences of the whole optimizer step, across micro-batches
and data-parallel ranks) make the per-call losses *add up* to the loss of the whole batch, so that gradient
accumulation and data parallelism give the same gradient as one big batch, whatever the split.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from entrolab._validation import as_mask, describe

__all__ = ["AGG_MODES", "Aggregation", "aggregate", "as_mask"]

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class Aggregation:
    """An aggregation mode with its optional global normalisers, passed to losses as ``agg=``.

    Attributes
    ----------
    mode : str
        One of :data:`AGG_MODES`.
    num_tokens : float, optional
        Valid tokens in the whole optimizer step (all micro-batches, all ranks); ``token-mean`` divides by it.
    num_sequences : float, optional
        Sequences with at least one valid token in the whole step; the ``seq-mean-*`` modes divide by it.
    max_length : float, optional
        Dr. GRPO's constant K for ``seq-mean-token-sum-norm`` (required there; use the maximum generation length,
        not the padded length of the current tensor).
    dp_size : int
        Data-parallel world size.  DDP/FSDP *average* gradients over ranks, so with global normalisers each rank's
        loss is multiplied by ``dp_size`` to make the average equal the global loss.  1 (default) for a single
        process or when the caller sums over ranks itself.
    """

    mode: str = "token-mean"
    num_tokens: float | None = None
    num_sequences: float | None = None
    max_length: float | None = None
    dp_size: int = 1

    def __post_init__(self) -> None:
        if self.mode not in AGG_MODES:
            raise ValueError(f"agg mode must be one of {', '.join(AGG_MODES)}; got {self.mode!r}")
        for name in ("num_tokens", "num_sequences", "max_length"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
                raise ValueError(f"{name} must be None or a number > 0, got {describe(value)}")
        if isinstance(self.dp_size, bool) or not isinstance(self.dp_size, numbers.Integral) or self.dp_size < 1:
            raise ValueError(f"dp_size must be an int >= 1, got {describe(self.dp_size)}")
        if self.mode == "seq-mean-token-sum-norm" and self.max_length is None:
            raise ValueError(
                "agg mode 'seq-mean-token-sum-norm' (Dr. GRPO) needs max_length (the constant K, e.g. the maximum "
                "generation length)"
            )

    @classmethod
    def of(cls, agg: str | Aggregation) -> Aggregation:
        """``agg`` as an :class:`Aggregation` (a mode string means local normalisers)."""
        if isinstance(agg, Aggregation):
            return agg
        if isinstance(agg, str):
            return cls(agg)
        raise TypeError(f"agg must be a mode string or an Aggregation, got {describe(agg)}")


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str | Aggregation = "token-mean",
    *,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
    max_length: float | None = None,
    dp_size: int = 1,
) -> Tensor:
    r"""Reduce per-token values to a scalar loss, dividing by the right count.

    With ``S_i = sum_t values_it m_it`` and ``n_i = sum_t m_it``:

    ===========================  ===================================================  ===========================
    mode                         local formula                                        global normaliser
    ===========================  ===================================================  ===========================
    ``token-mean``               ``sum_i S_i / sum_i n_i``                            ``num_tokens``
    ``token-sum``                ``sum_i S_i``                                        --
    ``seq-mean-token-mean``      mean over sequences with ``n_i > 0`` of ``S_i/n_i``  ``num_sequences``
    ``seq-mean-token-sum``       mean over sequences with ``n_i > 0`` of ``S_i``      ``num_sequences``
    ``seq-mean-token-sum-norm``  ``seq-mean-token-sum / max_length`` (Dr. GRPO)       ``num_sequences``
    ===========================  ===================================================  ===========================

    Parameters
    ----------
    values : Tensor
        Per-token values (losses); NaN or inf at masked positions are ignored (``where``, not multiplication).
    mask : Tensor
        Valid tokens: bool, or numbers that are exactly 0 or 1.
    mode : str or Aggregation
        The mode, or an :class:`Aggregation` carrying it with its normalisers (then the keywords must be unset).
    num_tokens, num_sequences, max_length, dp_size
        Global normalisers, see :class:`Aggregation`.  When given, the losses of any split of the step into
        micro-batches and ranks add up (after DDP's average, with ``dp_size``) to the loss of the whole step.

    Returns
    -------
    Tensor
        A 0-d tensor.  An empty or all-masked input gives exactly 0 (with zero, finite gradients).

    Shapes
    ------
    values ``(B, T)`` (or any shape whose last dimension is the token axis), mask the same.

    Notes
    -----
    Follows verl's ``agg_loss`` (``shared/specs/llm_rl.md`` section 4) with two departures: sequences with no valid
    token are not counted in the local sequence means, and ``seq-mean-token-sum-norm`` requires an explicit
    ``max_length`` instead of defaulting to the padded length of the current tensor (which changes per batch).

    References
    ----------
    Dr. GRPO: "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783, eq. (3); DAPO's
    token-level loss: arXiv 2503.14476, eq. (8).

    Examples
    --------
    >>> import torch
    >>> values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    >>> [float(aggregate(values, mask, m)) for m in ("token-mean", "token-sum", "seq-mean-token-mean")]
    [2.5, 10.0, 3.0]
    >>> float(aggregate(values, mask, "seq-mean-token-sum-norm", max_length=4))
    1.25
    """
    if isinstance(mode, Aggregation):
        if any(v is not None for v in (num_tokens, num_sequences, max_length)) or dp_size != 1:
            raise ValueError("give the normalisers either in the Aggregation or as keywords, not both")
        spec = mode
    else:
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a string or an Aggregation, got {describe(mode)}")
        spec = Aggregation(mode, num_tokens, num_sequences, max_length, dp_size)
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
        raise TypeError(f"values must be a floating torch.Tensor, got {describe(values)}")
    if values.ndim < 1:
        raise ValueError(f"values must have at least one (token) dimension, got shape {tuple(values.shape)}")
    m = as_mask(mask, values.shape)
    return aggregate_zero_masked(torch.where(m, values, 0.0), m, spec)


def aggregate_zero_masked(masked: Tensor, m: Tensor, spec: Aggregation) -> Tensor:
    """:func:`aggregate` for values already exactly 0 at masked positions (the losses' fast path; not public)."""
    values = masked
    per_seq = masked.sum(-1)  # (B,) S_i
    counts = m.sum(-1)  # (B,) n_i
    zero = values.new_zeros(())
    if spec.mode == "token-sum":
        loss = per_seq.sum()
    elif spec.mode == "token-mean":
        denom = spec.num_tokens if spec.num_tokens is not None else counts.sum().clamp_min(1)
        loss = per_seq.sum() / denom
    else:
        has = counts > 0
        if spec.mode == "seq-mean-token-mean":
            seq_values = torch.where(has, per_seq / counts.clamp_min(1), 0.0)
        else:
            seq_values = per_seq
        denom = spec.num_sequences if spec.num_sequences is not None else has.sum().clamp_min(1)
        loss = seq_values.sum() / denom
        if spec.mode == "seq-mean-token-sum-norm":
            assert spec.max_length is not None  # Aggregation.__post_init__ requires it for this mode
            loss = loss / spec.max_length
    loss = loss * spec.dp_size if spec.dp_size != 1 else loss
    return loss + zero  # keeps a 0-d tensor of values' dtype on every path
