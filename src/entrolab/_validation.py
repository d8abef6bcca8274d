"""Argument checks shared by entrolab's public functions: each raises a ``TypeError``/``ValueError`` that names the
argument and the offending value, so that bad input never turns into a silent NaN deep inside the maths.

This is the one validation module: the losses, the controllers, the presets and the lab configuration all check
their numbers, choices and tensors through it.  It imports nothing from entrolab (a leaf of the import graph).

Shape, dtype and device checks are always on; they read only metadata and never synchronise with an accelerator.
Checks that must read tensor *values* (finiteness at valid positions, outputs that overflowed) cost a host sync, so
the hot paths run them only inside :func:`debug_checks`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import torch

__all__ = [
    "COMPAT",
    "all_finite",
    "as_mask",
    "check_bool",
    "check_choice",
    "check_chunk_size",
    "check_compat",
    "check_floating",
    "check_int",
    "check_labels",
    "check_number",
    "check_positive_float",
    "check_representable",
    "check_same_device",
    "check_temperature",
    "debug_checks",
    "debug_enabled",
    "describe",
    "guard_gradient",
]

COMPAT = ("paper", "code")
_debug = {"enabled": False}


@contextlib.contextmanager
def debug_checks(enabled: bool = True) -> Iterator[None]:
    """Within this context entrolab also checks tensor *values*, at the cost of a pass and a host sync each.

    - The policy losses, advantages and regularizers check that every input is finite at valid positions and that
      the loss they return is finite (an overflow names the inputs' ranges), raising ``ValueError``.
    - The entropy kernels assert ``logp <= 0`` and ``0 <= H <= log V`` on every output (a fused-kernel bug such as
      verl issue #2656, log-probs above 0, is caught the moment it happens).

    Outside the context only shapes, dtypes, devices and hyperparameters are checked, with no host sync; NaN or
    inf *values* in the inputs then propagate to the outputs.

    Examples
    --------
    >>> import torch
    >>> from entrolab.losses import ppo
    >>> lp = torch.tensor([[float("nan")]])
    >>> with debug_checks():
    ...     ppo(lp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), agg="token-mean")
    Traceback (most recent call last):
    ...
    ValueError: logp is not finite at valid position (0, 0): nan
    """
    previous = _debug["enabled"]
    _debug["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _debug["enabled"] = previous


def debug_enabled() -> bool:
    """Whether :func:`debug_checks` is active."""
    return _debug["enabled"]


def guard_gradient(x: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` through an identity node whose backward hook, under :func:`debug_checks` only, raises ``ValueError``
    naming ``name`` when the gradient is not finite in ``dtype`` (default ``x``'s).  Outside debug mode, ``x``."""
    if not (debug_enabled() and x.requires_grad):
        return x
    limit = torch.finfo(dtype or x.dtype).max
    y = x.view_as(x)

    def hook(grad: torch.Tensor) -> None:
        if grad.numel() and not bool(grad.abs().amax() <= limit):
            raise ValueError(f"the gradient with respect to {name} overflows {dtype or x.dtype} (inputs too large)")

    y.register_hook(hook)
    return y


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """A real number within the given bounds (finite unless ``finite=False``), else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    try:
        v = float(value)
    except OverflowError:  # a Python int beyond float range
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    ok = v == v and (math.isfinite(v) or not finite)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open or low is None else "["
        hi = ")" if high_open or high is None else "]"
        what = " and finite" if finite and (low is None or high is None) else ""
        raise ValueError(
            f"{name} must be in {lo}{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}{hi}{what}, got {v!r}"
        )
    return v


def check_int(name: str, value: object, *, low: int | None = None) -> int:
    """An ``int`` (not a bool) at least ``low``, else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{f' >= {low}' if low is not None else ''}, got {describe(value)}")
    if low is not None and int(value) < low:
        raise ValueError(f"{name} must be an int >= {low}, got {int(value)}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """A ``bool`` (``true`` or ``false`` in a config file), else an error naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {describe(value)}")
    return value


def check_representable(name: str, value: float, dtype: torch.dtype, *, factor: float = 1.0) -> float:
    """``value * factor`` must be finite in ``dtype`` (a float32 loss cannot use ``dual_clip=1e39``)."""
    if dtype.is_floating_point and abs(value) * factor > torch.finfo(dtype).max:
        raise ValueError(f"{name}={value!r} overflows the compute dtype {dtype} (max {torch.finfo(dtype).max:.3g})")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` must be one of ``choices`` (strings); the error lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_compat(compat: object) -> str:
    """``"paper"`` (the paper's intent, the default everywhere) or ``"code"`` (the authors' released code)."""
    return check_choice("compat", compat, COMPAT)


def check_same_device(reference: torch.Tensor, **tensors: object) -> None:
    """Every tensor among ``tensors`` must be on ``reference``'s device (``None`` and non-tensors are skipped)."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on {reference.device}")


def describe(x: object) -> str:
    """A short description of a value for error messages (tensors by dtype and shape, not contents)."""
    if isinstance(x, torch.Tensor):
        return f"Tensor(dtype={x.dtype}, shape={tuple(x.shape)}, device={x.device.type})"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def check_floating(name: str, x: object, *, min_ndim: int = 0) -> torch.Tensor:
    """``x`` must be a floating-point tensor with at least ``min_ndim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def all_finite(x: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or +-inf, in one pass and without a full-size temporary.

    ``torch.isfinite(x).all()`` materialises an ``x``-sized boolean (and ``abs``) tensor, 1.4 GB for a 7B model's
    LM head; the min and max propagate NaN and expose infinities with no allocation.
    """
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_positive_float(name: str, value: object) -> float:
    """``value`` must be a finite real number > 0 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_temperature(name: str, value: object, dtype: torch.dtype) -> float:
    """A finite temperature > 0 whose reciprocal is finite in the compute dtype ``dtype`` (logits are scaled by it)."""
    t = check_positive_float(name, value)
    limit = torch.finfo(dtype).max
    if 1.0 / t > limit:
        raise ValueError(f"{name}={t!r} is too small: 1/{name} overflows {dtype} (needs {name} >= {1 / limit:.3g})")
    return t


def check_chunk_size(name: str, value: object) -> int | None:
    """``value`` must be ``None`` or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None or an int, got {describe(value)}")
    if int(value) <= 0:
        raise ValueError(f"{name} must be >= 1 (or None to choose automatically), got {int(value)}")
    return int(value)


def check_labels(
    name: str, labels: object, *, shape: torch.Size, num_classes: int, device: torch.device, ignore_index: int = -100
) -> torch.Tensor:
    """Integer ``labels`` of the given shape with values in ``[0, num_classes)`` or ``ignore_index``.

    Returns the labels as a contiguous int64 tensor (a new tensor; the input is never modified).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integers, got {describe(labels)}")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != shape:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (the logits' shape without V), got {tuple(labels.shape)}"
        )
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the logits are on {device}")
    out = labels.to(torch.int64).reshape(-1)
    if out.numel():
        bad = ((out < 0) | (out >= num_classes)) & (out != ignore_index)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{name} must be in [0, {num_classes}) or {ignore_index} (ignored); got {int(out[i])} at flat "
                f"position {i}"
            )
    return out.contiguous()


def as_mask(mask: torch.Tensor, shape: torch.Size, *, name: str = "mask") -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape``: bool, or numbers that are all exactly 0 or 1."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(mask)}")
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool or 0/1 numbers, got {mask.dtype}")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1; got other values (e.g. {_first_bad(mask)})")
    return mask != 0


def _first_bad(mask: torch.Tensor) -> float:
    bad = ~((mask == 0) | (mask == 1))
    return float(mask[bad].flatten()[0])
