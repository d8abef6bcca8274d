"""Input checks and small helpers shared by the policy losses (not public)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.losses.aggregation import Aggregation, aggregate_zero_masked, as_mask

LOG_RATIO_CLAMP = 20.0  # verl's convention: exp(+-20) bounds the ratio; the gradient is zero beyond it


def check_policy_inputs(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, entropy: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Validate the uniform loss inputs; return ``(mask as bool (B, T), advantages broadcast to (B, T))``.

    Values at masked positions may be anything (padding often holds garbage); NaN or inf at valid positions raise.
    """
    for name, t in (("logp", logp), ("old_logp", old_logp), ("advantages", advantages)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating torch.Tensor, got {describe(t)}")
    if logp.ndim != 2:
        raise ValueError(f"logp must have shape (B, T), got {tuple(logp.shape)}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must have logp's shape {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    m = as_mask(mask, logp.shape)
    if advantages.shape == logp.shape[:1]:
        adv = advantages.unsqueeze(1).expand(logp.shape)  # (B,) -> (B, T)
    elif advantages.shape == logp.shape:
        adv = advantages
    else:
        raise ValueError(
            f"advantages must have shape (B,) = {tuple(logp.shape[:1])} or (B, T) = {tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    tensors = [("logp", logp), ("old_logp", old_logp), ("advantages", adv)]
    if entropy is not None:
        if not isinstance(entropy, Tensor) or entropy.shape != logp.shape:
            raise ValueError(f"entropy must be a tensor of shape {tuple(logp.shape)}, got {describe(entropy)}")
        tensors.append(("entropy", entropy))
    # Fast path: the sum of the inputs is finite wherever all of them are (inf - inf is NaN).  nan_to_num maps every
    # non-finite value to the dtype's max, the float mask zeroes padding, and one amax finds any valid culprit (a
    # legitimate value at the dtype's max would only trigger the exact search below, which then passes).
    with torch.no_grad():
        total = logp + old_logp + (advantages.unsqueeze(1) if advantages.ndim == 1 else advantages)
        if entropy is not None:
            total = total + entropy
        big = torch.finfo(total.dtype).max
        flagged = torch.nan_to_num(total, nan=big, posinf=big, neginf=big).abs_() * m
        ok = total.numel() == 0 or bool(flagged.amax() < big)
    if not ok:
        for name, t in tensors:
            bad = m & ~torch.isfinite(t)
            if bool(bad.any()):
                i, j = (int(k) for k in bad.nonzero()[0])
                raise ValueError(f"{name} is not finite at valid position ({i}, {j}): {float(t[i, j])}")
    return m, adv


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real number within the given bounds, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    v = float(value)
    ok = v == v
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(
            f"{name} must be in {lo}{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}{hi}, got {v!r}"
        )
    return v


class _ZeroMasked(torch.autograd.Function):
    """``x`` with masked positions set to exactly 0 (whatever they held), gradient ``grad * mask``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mf: Tensor) -> Tensor:
        ctx.save_for_backward(mf)
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) * mf

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (mf,) = ctx.saved_tensors
        return grad * mf, None


def zero_masked(x: Tensor, mf: Tensor) -> Tensor:
    """``where(mask, x, 0)`` for a float mask ``mf`` (1 valid, 0 padding), as two fast elementwise ops.

    ``torch.where`` with a bool condition is several times slower than a multiply on CPU builds; this is the
    losses' way of discarding padding garbage (NaN, inf) so that everything downstream can use arithmetic.
    """
    if x.requires_grad:
        return _ZeroMasked.apply(x, mf)  # type: ignore[no-any-return]
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) * mf


def positive(x: Tensor) -> Tensor:
    """``(x > 0)`` as 0/1 in ``x``'s dtype (``x`` NaN-free), from two float ops.

    On CPU builds a comparison (bool result), a bool-to-float conversion and ``torch.where`` each cost 5-20x a float
    multiply over the same elements; the losses build their indicators with this instead.
    """
    return torch.sign(x.clamp_min(0.0))


def order_statistics(values: Tensor, ks: list[int], *, scratch: bool = False) -> Tensor:
    """The ``k``-th smallest entries (0-based ``ks``) of a 1-D tensor, ``(len(ks),)``, detached.

    On the CPU this is one ``numpy.partition`` call (introselect: about 8x faster than ``torch.kthvalue`` there, and
    both order statistics of a linear quantile come from one pass); elsewhere ``torch.kthvalue`` per ``k``.  With
    ``scratch=True`` the caller owns ``values`` (a buffer of its own) and lets it be reordered in place: no copy.
    """
    x = values.detach()
    if x.device.type == "cpu":
        inplace = scratch and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
        arr = (x if x.dtype in (torch.float32, torch.float64) else x.float()).numpy()
        return torch.from_numpy(_select_numpy(arr, ks, inplace=inplace)).to(x.dtype)
    return torch.stack([torch.kthvalue(x, k + 1).values for k in ks])


def valid_values(x: Tensor, m: Tensor) -> Tensor:
    """``x[m]`` (row-major), detached: the entries an order statistic is taken over.

    On the CPU through numpy's boolean indexing, about 10x faster there than ``torch``'s.  Selecting among the valid
    entries only (rather than pushing padding to an extreme value) also keeps ``numpy.partition`` fast: runs of
    equal padding values at row ends drive its introselect into its slow fallback (50x slower on a 64k batch).
    """
    x = x.detach()
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(x.numpy()[m.numpy()])
    return x[m]


def _select_numpy(arr: np.ndarray, ks: list[int], *, inplace: bool = False) -> np.ndarray:
    """``np.sort(arr)[ks]`` by nested single-``k`` partitions, largest ``k`` first.

    ``np.partition`` with a list of ``k`` is an order of magnitude slower than with one ``k`` on random data; after
    partitioning at ``k`` every smaller order statistic lies in the prefix ``[:k]``, and the ``(k-1)``-th is its max.
    """
    found: dict[int, Any] = {}
    work, top = arr, len(arr)
    for k in sorted(set(ks), reverse=True):
        if k == top - 1 and top < len(arr):
            found[k] = work[:top].max()
        elif inplace:
            work[:top].partition(k)
            found[k] = work[k]
        else:
            work = np.partition(work[:top], k)
            found[k] = work[k]
        top = k
    return np.array([found[k] for k in ks], dtype=arr.dtype)


def zero_masked_means(m: Tensor, *values: Tensor) -> list[Tensor]:
    """Detached float32 means over valid tokens of tensors that are **already 0 at masked positions**: one stacked
    reduction instead of a ``where`` per metric."""
    with torch.no_grad():
        n = m.sum().clamp_min(1).to(torch.float32)
        sums = torch.stack([v.sum().to(torch.float32) for v in values])
        return list((sums / n).unbind())


def masked_mean(x: Tensor, m: Tensor) -> Tensor:
    """Detached mean of ``x`` over valid positions (0 when there are none): a metric."""
    x = x.detach()
    if x.dtype == torch.bool:  # a count: no float copy, no where
        return ((x & m).sum() / m.sum().clamp_min(1)).to(torch.float32)
    total = torch.where(m, x, 0.0).sum()
    return (total / m.sum().clamp_min(1)).to(torch.float32)


def check_clip(eps_low: object, eps_high: object, dual_clip: object) -> tuple[float, float, float | None]:
    """PPO's clip knobs: ``eps_low`` in [0, 1], ``eps_high >= 0``, ``dual_clip`` None or > 1."""
    low = check_number("eps_low", eps_low, low=0.0, high=1.0)
    high = check_number("eps_high", eps_high, low=0.0)
    dual = None if dual_clip is None else check_number("dual_clip", dual_clip, low=1.0, low_open=True)
    return low, high, dual


COMPAT = ("paper", "code")


def check_compat(compat: object) -> str:
    """``"paper"`` (the paper's intent, the default everywhere) or ``"code"`` (the authors' released code)."""
    if compat not in COMPAT:
        raise ValueError(f"compat must be 'paper' or 'code', got {compat!r}")
    return compat  # type: ignore[return-value]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_token_weights(token_weights: Tensor | None, m: Tensor) -> Tensor | None:
    """Optional per-token multipliers ``(B, T)`` of the per-token losses, finite at valid positions."""
    if token_weights is None:
        return None
    if not isinstance(token_weights, Tensor) or token_weights.shape != m.shape:
        raise ValueError(f"token_weights must be a tensor of shape {tuple(m.shape)}, got {describe(token_weights)}")
    if token_weights.dtype == torch.bool:
        return token_weights
    if not token_weights.dtype.is_floating_point:
        raise TypeError(f"token_weights must be bool or floating, got {token_weights.dtype}")
    if bool((m & ~torch.isfinite(token_weights)).any()):
        raise ValueError("token_weights is not finite at a valid position")
    return token_weights


def check_local_stat(name: str, value: object) -> Tensor | None:
    """A precomputed batch statistic (number or 0-d tensor), finite; ``None`` passes through."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise ValueError(f"{name} must be a number or a one-element floating tensor, got {describe(value)}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value}")
        return value.detach().reshape(())
    v = check_number(name, value, low=-float("inf"), low_open=True, high=float("inf"), high_open=True)
    return torch.tensor(v, dtype=torch.float64)  # float64 so that a Python float keeps its precision


def finish_loss(
    per_token: Tensor,
    m: Tensor,
    agg: object,
    metrics: dict[str, Tensor],
    entropy: Tensor | None,
    token_weights: Tensor | None = None,
    *,
    coef: Tensor | None = None,
) -> LossOutput:
    """Aggregate per-token losses that are **exactly 0 at masked positions** (times ``token_weights``, with the
    counts of ``m``); add the entropy metric.

    ``coef``: when ``per_token`` is the output of :func:`~entrolab.losses.ppo.ppo_core` (edited only through
    :func:`~entrolab.losses.ppo.adjust_tokens`), its gradient coefficient; bool ``token_weights`` (the 80/20 mask)
    are then applied in place to the loss and to that coefficient, with no new ``(B, T)`` tensor or autograd node.
    """
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, m)
    if token_weights is not None and token_weights.dtype == torch.bool:
        # a float tensor times uint8 is about 3x faster than times bool on CPU builds (same 0/1 bytes, a free view)
        w = token_weights.view(torch.uint8) if token_weights.is_contiguous() else token_weights
        if coef is not None:
            with torch.no_grad():
                per_token.mul_(w)
                coef.data.mul_(w)  # .data: the surrogate saved coef for its backward, whose version check stays
        else:
            per_token = per_token * w
    elif token_weights is not None:
        per_token = per_token * zero_masked(token_weights, m.to(per_token.dtype))
    spec = Aggregation.of(agg)  # type: ignore[arg-type]
    return LossOutput(aggregate_zero_masked(per_token, m, spec), metrics)
