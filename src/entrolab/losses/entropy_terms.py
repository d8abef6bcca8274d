"""Regularizers added to a policy loss: entropy bonus, KL penalties (k1/k2/k3) and SIREN (EPO is in :mod:`.epo`).

Each returns :class:`~entrolab._typing.LossOutput`; add its ``loss`` to the policy loss.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import check_choice, check_number, check_same_device, debug_enabled, describe
from entrolab.batch_stats import masked_mean
from entrolab.losses.aggregation import Aggregation, aggregate, as_mask

__all__ = [
    "KL_ESTIMATORS",
    "SirenAnchor",
    "entropy_bonus",
    "kl_estimate",
    "kl_penalty",
    "siren",
    "top_p_entropy",
]


@runtime_checkable
class _HasValue(Protocol):
    @property
    def value(self) -> float: ...


def _check_values(name: str, x: Tensor, m: Tensor) -> None:
    """A floating tensor on the mask's device; its values at valid positions are checked under ``debug_checks``."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {describe(x)}")
    check_same_device(x, mask=m)
    if debug_enabled() and bool((m & ~torch.isfinite(x)).any()):
        raise ValueError(f"{name} is not finite at a valid position")


def _checked(out: LossOutput, m: Tensor, **inputs: Any) -> LossOutput:
    """Under ``debug_checks``: a loss or metric that overflowed raises ``ValueError`` with the inputs' ranges."""
    if not debug_enabled():
        return out
    bad = [name for name, v in (("loss", out.loss), *out.metrics.items()) if not bool(torch.isfinite(v).all())]
    if bad:
        ranges = ", ".join(
            f"{name} in [{float(torch.where(m, t, 0).amin()):.3g}, {float(torch.where(m, t, 0).amax()):.3g}]"
            for name, t in inputs.items()
            if isinstance(t, Tensor) and t.numel()
        )
        raise ValueError(f"{', '.join(bad)} overflowed ({ranges}): the inputs are out of the representable range")
    return out


def _agg(values: Tensor, m: Tensor, agg: str | Aggregation) -> Tensor:
    return aggregate(values, m, Aggregation.of(agg))


# --------------------------------------------------------------------------------------------------- entropy bonus
def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    *,
    coef: float | _HasValue = 0.0,
    agg: str | Aggregation = "token-mean",
) -> LossOutput:
    r"""Entropy bonus ``-coef * agg(H)``: add it to the policy loss to keep entropy up.

    Parameters
    ----------
    entropy : Tensor
        Token entropies ``(B, T)``; they must carry gradient for the bonus to act (for example from
        :func:`entrolab.entropy.token_logprob_and_entropy`).
    mask : Tensor
        The tokens the policy loss acts on.
    coef : float or controller
        A fixed coefficient, or an object with a ``value`` (an :mod:`entrolab.control` controller such as
        :class:`~entrolab.control.AdaptiveEntropyCoefficient`), read at call time.  A negative value minimises
        entropy instead (entropy-minimisation methods); it must be finite.
    agg : str or Aggregation
        The aggregation; use the policy loss's (verl) or ``"token-mean"`` (TRL: one meaning for every loss type).

    Returns
    -------
    LossOutput
        ``loss = -coef * agg(H)``; metrics ``entropy`` (token mean) and ``entropy_coef``.

    References
    ----------
    Williams and Peng (1991), "Function optimization using connectionist reinforcement learning algorithms"; Mnih et
    al., arXiv 1602.01783, eq. (5) (A3C); ``shared/specs/llm_rl.md`` section 10.

    Examples
    --------
    >>> import torch
    >>> round(float(entropy_bonus(torch.tensor([[1.0, 3.0]]), torch.ones(1, 2), coef=0.01).loss), 6)
    -0.02
    """
    m = as_mask(mask, entropy.shape) if isinstance(entropy, Tensor) else None
    if m is None:
        raise TypeError(f"entropy must be a floating tensor, got {describe(entropy)}")
    _check_values("entropy", entropy, m)
    c = coef.value if isinstance(coef, _HasValue) and not isinstance(coef, int | float) else coef
    c = check_number("coef", c)
    if not math.isfinite(c):
        raise ValueError(f"coef must be finite, got {c}")
    h = _agg(entropy, m, agg)
    out = LossOutput(-c * h, {"entropy": masked_mean(entropy, m), "entropy_coef": torch.tensor(c)})
    return _checked(out, m, entropy=entropy)


# ---------------------------------------------------------------------------------------------------- KL penalties
KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "k1+", "k3+")
_KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def kl_estimate(logp: Tensor, ref_logp: Tensor, *, kind: str = "k3") -> Tensor:
    r"""Per-token KL estimates from sampled-token log-probs (samples drawn from the current policy).

    With ``d = ref_logp - logp``: ``k1 = -d``; ``abs = |d|``; ``k2 = d^2 / 2``; ``k3 = exp(d) - d - 1`` (always
    ``>= 0``; ``d`` clamped to ``[-20, 20]`` first).  ``k1+``/``k3+`` have the value of k1/k3 and the gradient of k2
    (straight-through).  Aliases: ``kl`` = k1, ``mse`` = k2, ``low_var_kl`` = k3 (verl's names).

    Gradients (in expectation on-policy): k1 gives none; k2 gives that of KL(pi_theta || pi_ref); k3 gives that of
    KL(pi_ref || pi_theta), the other direction from the one its value estimates.

    Shapes
    ------
    logp, ref_logp ``(B, T)`` (any matching shape); returns the same shape.

    References
    ----------
    J. Schulman, "Approximating KL divergence" (2020); used as a loss in DeepSeekMath, arXiv 2402.03300, eq. (4);
    ``shared/specs/llm_rl.md`` section 6.  Departure from verl: the k3 value is not clamped to ``[-10, 10]``.

    Examples
    --------
    >>> import torch
    >>> lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    >>> [[round(v, 4) for v in kl_estimate(lp, ref, kind=k).tolist()] for k in ("k1", "k2", "k3")]
    [[0.5, -1.0], [0.125, 0.5], [0.1065, 0.7183]]
    """
    kind = _KL_ALIASES.get(kind, kind)
    check_choice("kind", kind, KL_ESTIMATORS)
    if not isinstance(logp, Tensor) or not isinstance(ref_logp, Tensor) or logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must be tensors of one shape, got {describe(logp)}, {describe(ref_logp)}")
    d = ref_logp - logp
    if kind == "k1":
        return -d
    if kind == "abs":
        return d.abs()
    if kind == "k2":
        return 0.5 * d * d
    dc = d.clamp(-20.0, 20.0)
    k3 = torch.exp(dc) - dc - 1
    if kind == "k3":
        return k3
    k2 = 0.5 * d * d
    value = -d if kind == "k1+" else k3
    return k2 + (value - k2).detach()


def kl_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    kind: str = "k3",
    coef: float = 0.04,
    agg: str | Aggregation = "token-mean",
) -> LossOutput:
    r"""KL penalty to a reference policy: ``coef * agg(k(logp, ref_logp))`` with :func:`kl_estimate`.

    Parameters
    ----------
    logp, ref_logp : Tensor
        Current and reference log-probabilities of the sampled tokens ``(B, T)``.
    mask : Tensor
        Valid tokens; garbage at masked positions is ignored.
    kind : str
        ``k1``, ``k2``, ``k3`` (default, GRPO's), ``abs``, ``k1+``, ``k3+`` or verl's aliases.
    coef : float
        ``>= 0``; 0.04 is DeepSeekMath's beta (verl uses 0.001, DAPO and TRL's default 0).
    agg : str or Aggregation

    Returns
    -------
    LossOutput
        Metrics ``kl`` (token mean of the estimate) and ``kl_coef``.

    References
    ----------
    As :func:`kl_estimate`.
    """
    if not isinstance(logp, Tensor):
        raise TypeError(f"logp must be a floating tensor, got {describe(logp)}")
    m = as_mask(mask, logp.shape)
    _check_values("logp", logp, m)
    _check_values("ref_logp", ref_logp, m) if isinstance(ref_logp, Tensor) else None
    coef = check_number("coef", coef, low=0.0)
    est = kl_estimate(torch.where(m, logp, 0.0), torch.where(m, ref_logp, 0.0), kind=kind)
    out = LossOutput(coef * _agg(est, m, agg), {"kl": masked_mean(est, m), "kl_coef": torch.tensor(coef)})
    return _checked(out, m, logp=logp, ref_logp=ref_logp)


# ------------------------------------------------------------------------------------------------------------ SIREN
_TOP_P_SLACK = 1e-6


def top_p_entropy(
    logits: Tensor,
    *,
    top_p: float = 0.8,
    top_k: int = 10000,
    include_crossing_token: bool = False,
) -> Tensor:
    r"""Entropy of the renormalised top-p set of each distribution (SIREN's ``H^p``), differentiable.

    Take the ``min(top_k, V)`` largest logits, their probabilities under the **full** softmax, the cumulative sum
    ``c``, and ``cutoff`` = the first rank with ``c >= top_p``.  The released code keeps ranks ``< cutoff``: the
    crossing token is **excluded** (and when ``p_1 >= top_p`` nothing is kept and ``H^p = 0``);
    ``include_crossing_token=True`` keeps it as well (standard nucleus).  The kept probabilities are renormalised
    (``q = p / (sum p + 1e-12)``) and ``H^p = -sum q ln(q + 1e-12)``, as in the code.

    Parameters
    ----------
    logits : Tensor
        ``(..., V)``; ``-inf`` entries are allowed (probability 0).
    top_p : float
        In ``(0, 1]``; 0.8 at SIREN's call site (0.95 is the function default in the code).
    top_k : int
        ``>= 1``; 10000 at the call site.
    include_crossing_token : bool

    Returns
    -------
    Tensor
        ``(...)``, nats.

    Notes
    -----
    Tie rule: the comparison is ``c >= top_p - 1e-6`` on the float64 cumulative sum, so a boundary that is exact in
    real arithmetic (0.4 + 0.3 = 0.7 at ``top_p = 0.7``: the crossing token is the second, one token is kept)
    resolves the same way whether float32 rounding puts the sum a few ulps below or above ``top_p``.

    References
    ----------
    "Rethinking Entropy Regularization in Large Reasoning Models", arXiv 2509.25133, eq. (4) (the code's
    ``efficient_top_p_sampling``); ``shared/specs/llm_rl.md`` section 13.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64).log()
    >>> round(float(top_p_entropy(z)), 4), round(float(top_p_entropy(z, include_crossing_token=True)), 4)
    (0.6829, 1.0609)
    """
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point or logits.ndim < 1:
        raise TypeError(f"logits must be a floating tensor (..., V), got {describe(logits)}")
    if debug_enabled() and (bool(torch.isnan(logits).any()) or bool((logits == float("inf")).any())):
        raise ValueError("logits must not contain NaN or +inf")
    top_p = check_number("top_p", top_p, low=0.0, low_open=True, high=1.0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    v = logits.shape[-1]
    if v == 0:
        raise ValueError("logits has an empty vocabulary axis")
    k = min(top_k, v)
    logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)  # 1e-12 underflows in half
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    top = torch.topk(logits, k, dim=-1).values
    p = torch.exp(top - log_z)
    c = torch.cumsum(p.detach().to(torch.float64), dim=-1)
    ranks = torch.arange(k, device=logits.device)
    cutoff = (c < top_p - _TOP_P_SLACK).sum(-1, keepdim=True)  # first rank with c >= top_p (k if none)
    keep = ranks <= cutoff if include_crossing_token else ranks < cutoff
    kept = torch.where(keep, p, 0.0)
    q = kept / (kept.sum(-1, keepdim=True) + 1e-12)
    return -(q * torch.log(q + 1e-12)).sum(-1)


class SirenAnchor:
    """SIREN's self-anchor: an entropy value set once (at the first training step) and then frozen.

    Explicit state, never a hidden global; checkpoint it with ``state_dict()`` and restore with ``load_state_dict``.

    Examples
    --------
    >>> a = SirenAnchor(); a.set_once(0.7), a.set_once(0.2), a.value
    (True, False, 0.7)
    """

    def __init__(self, value: float | None = None) -> None:
        self._value: float | None = None
        if value is not None:
            self.set_once(value)

    @property
    def is_set(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> float:
        if self._value is None:
            raise ValueError("the SIREN anchor has not been set yet (it is set by the first siren() call)")
        return self._value

    def set_once(self, value: float | Tensor) -> bool:
        """Set the anchor if unset; returns whether it was set by this call."""
        if self._value is not None:
            return False
        v = float(value.detach()) if isinstance(value, Tensor) else float(value)
        if not math.isfinite(v):
            raise ValueError(f"the SIREN anchor must be finite, got {v}")
        self._value = v
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        v = state.get("value")
        self._value = None if v is None else float(v)

    def __repr__(self) -> str:
        return f"SirenAnchor(value={self._value!r})"


def _per_sequence_quantile(values: Tensor, m: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile of each row's valid values ``(B,)`` (NaN-padding semantics of nanquantile)."""
    x = torch.where(m, values.detach(), float("nan")).to(
        torch.float64 if values.dtype == torch.float64 else torch.float32
    )
    out = torch.nanquantile(x, q, dim=-1) if x.numel() else x.new_full(x.shape[:1], float("nan"))
    return out


def siren(
    logits: Tensor,
    mask: Tensor,
    *,
    anchor: SirenAnchor | float,
    coef: float = 0.005,
    top_p: float = 0.8,
    top_k: int = 10000,
    peak_quantile: float = 0.8,
    include_crossing_token: bool = False,
    agg: str | Aggregation = "seq-mean-token-mean",
    compat: str = "paper",
) -> LossOutput:
    r"""SIREN: a self-anchored quadratic on the top-p entropy of each response's peak-entropy tokens.

    1. ``H^p_t`` = :func:`top_p_entropy` of each position's logits.
    2. Peak mask: per sequence, keep ``H^p_t > q_i``, ``q_i`` the ``peak_quantile`` of that sequence's valid
       ``H^p`` (about its top 20%).
    3. ``H_bar = agg(H^p over the peak tokens)``; loss ``coef * (H_bar - H_anchor)^2``.

    The anchor is set, once, from the first call's ``H_bar`` (the authors compute it at global step 1 from the
    rollout and freeze it); that first call's loss is therefore 0.

    Parameters
    ----------
    logits : Tensor
        ``(B, T, V)`` response-position logits (after temperature).
    mask : Tensor
        ``(B, T)`` valid tokens.
    anchor : SirenAnchor or float
        The anchor state (set on first use) or a fixed value.
    coef : float
        ``lambda >= 0``; 0.005.
    top_p, top_k, include_crossing_token
        As in :func:`top_p_entropy` (0.8, 10000, crossing token excluded as in the released code).
    peak_quantile : float
        In ``[0, 1]``; 0.8.
    agg : str or Aggregation
        ``seq-mean-token-mean`` in the authors' script.
    compat : {"paper", "code"}
        ``"paper"``: ``agg`` over the peak tokens, so a response with no peak token is left out of the sequence
        mean.  ``"code"``: the released aggregation, ``seq-mean-token-mean`` where such a response contributes 0
        and still counts among the responses (the rows with at least one valid token): peak entropies ``[2, 4]`` in
        one response and none in another give ``H_bar = (3 + 0) / 2 = 1.5`` instead of 3 (spec 13, Correction).
        Requires the default ``agg``.

    Returns
    -------
    LossOutput
        Metrics ``siren_entropy`` (``H_bar``), ``siren_anchor``, ``siren_peak_frac``.

    References
    ----------
    "Rethinking Entropy Regularization in Large Reasoning Models", arXiv 2509.25133, eqs. (4)-(7);
    ``shared/specs/llm_rl.md`` section 13.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ValueError(f"logits must be a tensor (B, T, V), got {describe(logits)}")
    m = as_mask(mask, logits.shape[:2])
    coef = check_number("coef", coef, low=0.0)
    peak_quantile = check_number("peak_quantile", peak_quantile, low=0.0, high=1.0)
    if not isinstance(anchor, SirenAnchor):
        anchor = SirenAnchor(check_number("anchor", anchor))
    safe = torch.where(m.unsqueeze(-1), logits, 0.0)  # garbage at padding never reaches the loss
    hp = top_p_entropy(safe, top_p=top_p, top_k=top_k, include_crossing_token=include_crossing_token)
    thresh = _per_sequence_quantile(hp, m, peak_quantile)
    peak = m & (hp.detach() > thresh.unsqueeze(-1))
    compat = check_choice("compat", compat, ("paper", "code"))
    if compat == "code":
        if agg != "seq-mean-token-mean":
            raise ValueError(f"siren(compat='code') reproduces the released seq-mean-token-mean; got agg={agg!r}")
        per_response = (hp * peak).sum(-1) / peak.sum(-1).clamp_min(1)  # (B,) 0 for a response without peaks
        h_bar = per_response.sum() / m.any(-1).sum().clamp_min(1)  # over every response, peaks or not
    else:
        h_bar = _agg(hp, peak, agg)
    anchor.set_once(h_bar)
    target = torch.tensor(anchor.value, dtype=h_bar.dtype, device=h_bar.device)
    loss = coef * (h_bar - target) ** 2
    metrics = {
        "siren_entropy": h_bar.detach().float(),
        "siren_anchor": target.float(),
        "siren_peak_frac": masked_mean(peak, m),
    }
    return LossOutput(loss, metrics)
