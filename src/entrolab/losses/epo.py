"""EPO: an entropy bonus with a band penalty around the historical entropy, smoothed per phase (arXiv 2509.22576)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab._validation import as_mask, check_choice, check_compat, check_number, debug_enabled, describe
from entrolab.losses.aggregation import Aggregation
from entrolab.losses.entropy_terms import _agg, _check_values, _checked

__all__ = ["EPO_PENALTIES", "EntropyHistory", "epo", "epo_phase_weight"]


def epo_phase_weight(epoch: int, *, total_epochs: int = 150) -> float:
    r"""EPO's phase weight ``beta_k`` as in the authors' code (``_calculate_epoch_based_entropy_weight``).

    ``w(e) = 1 - 0.2 (1 - exp(-2e / (E/2)))`` for ``e <= E/2``, else ``0.8 exp(-3 (e - E/2) / (E/2))``, with
    ``E = total_epochs`` (150 hard-coded in the code).  It **decreases** from 1 to about 0.04 and jumps from 0.827 to
    0.8 at ``E/2``; the v2 abstract's "from conservative exploration to strong stabilization" is not verified.

    Examples
    --------
    >>> [round(epo_phase_weight(e), 4) for e in (0, 10, 75, 76, 100, 150)]
    [1.0, 0.9532, 0.8271, 0.7686, 0.2943, 0.0398]
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 2:
        raise ValueError(f"total_epochs must be an int >= 2, got {total_epochs!r}")
    half = total_epochs / 2
    if epoch <= half:
        return 1 - 0.2 * (1 - math.exp(-2 * epoch / half))
    return 0.8 * math.exp(-3 * (epoch - half) / half)


class EntropyHistory:
    """EPO's per-turn entropy history: mean entropy at each turn index over past iterations.

    ``record(turn_entropies)`` appends one iteration's per-turn means (length ``<= max_steps``; shorter rows are
    zero-padded as in the code, longer ones left-truncated), ``reference()`` gives the per-turn mean over the
    iterations recorded so far (``None`` while empty).

    Examples
    --------
    >>> h = EntropyHistory(max_steps=3); h.record([1.0, 2.0]); h.record([3.0, 2.0, 1.0]); h.reference().tolist()
    [2.0, 2.0, 0.5]
    """

    def __init__(self, max_steps: int) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        self.max_steps = max_steps
        self._rows: list[list[float]] = []

    def record(self, turn_entropies: Any) -> None:
        row = [float(v) for v in torch.as_tensor(turn_entropies, dtype=torch.float64).reshape(-1).tolist()]
        if not all(math.isfinite(v) for v in row):
            raise ValueError("turn_entropies must be finite")
        row = row[-self.max_steps :] if len(row) > self.max_steps else row + [0.0] * (self.max_steps - len(row))
        self._rows.append(row)

    def reference(self) -> Tensor | None:
        if not self._rows:
            return None
        return torch.tensor(self._rows, dtype=torch.float64).mean(0)

    def state_dict(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "rows": [list(r) for r in self._rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.max_steps = int(state["max_steps"])
        self._rows = [list(map(float, r)) for r in state["rows"]]


EPO_PENALTIES = ("hinge", "squared")


def epo(
    entropy: Tensor,
    mask: Tensor,
    *,
    reference_entropy: float | Tensor | None,
    coef: float = 0.001,
    smooth_coef: float = 1.0,
    kappa_low: float = 0.8,
    kappa_high: float = 1.2,
    alpha: float = 0.1,
    phase_weight: float = 1.0,
    penalty: str = "hinge",
    compat: str = "paper",
    turn_index: Tensor | None = None,
    max_steps: int | None = None,
    agg: str | Aggregation = "token-mean",
    level: str = "token",
) -> LossOutput:
    r"""EPO: entropy bonus plus entropy smoothing in a band around a historical entropy, with a phase weight.

    ``loss = -coef * [agg(H) - smooth_coef * phase_weight * agg(P)]`` where, with the band
    ``[kappa_low Hbar, kappa_high Hbar]`` around the reference entropy ``Hbar``:

    - ``compat="paper"`` (default): a differentiable hinge
      ``P = alpha [relu(kappa_low Hbar - H) + relu(H - kappa_high Hbar)]`` (``penalty="squared"`` squares each
      hinge), so tokens outside the band are pulled back into it;
    - ``compat="code"``: the released code's ``P = 0`` strictly inside the band, else ``alpha`` (a constant: the
      smoothing term changes the reported loss but contributes **no gradient**), and the code's gate: no penalty
      unless some token has ``turn_index >= max_steps // 2``.

    Parameters
    ----------
    entropy : Tensor
        Token entropies ``(B, T)``, with gradient.
    mask : Tensor
        Valid tokens.
    reference_entropy : float or Tensor or None
        ``Hbar``: a number, or ``(B, T)`` per token (the historical mean entropy of each token's turn, e.g.
        ``EntropyHistory.reference()[turn_index]``).  ``None`` (empty history) gives no smoothing penalty.
    coef : float
        ``c_H >= 0``; 0.001.
    smooth_coef : float
        ``c_s >= 0``; 1.0.
    kappa_low, kappa_high : float
        Band factors, ``0 <= kappa_low <= kappa_high``; 0.8 / 1.2 (the yaml).
    alpha : float
        Penalty scale ``>= 0``; 0.1 (ALFWorld).
    phase_weight : float
        ``beta_k >= 0``, e.g. :func:`epo_phase_weight`.
    penalty : {"hinge", "squared"}
    compat : {"paper", "code"}
    turn_index : Tensor, optional
        ``(B, T)`` integer turn index per token, for the code's gate.
    max_steps : int, optional
        Required with ``turn_index`` under ``compat="code"``.
    agg : str or Aggregation
    level : {"token", "sequence"}
        What the band tests: each token's entropy (default), or each response's mean entropy (the code's sequence
        mode) against the response's mean reference, the penalty then carried by every token of the response.

    Returns
    -------
    LossOutput
        Metrics ``entropy``, ``epo_penalty`` (token mean of ``P``), ``epo_outside_band_frac``.

    References
    ----------
    Xu et al., "EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement Learning", arXiv
    2509.22576, eqs. (8)-(10); ``shared/specs/llm_rl.md`` section 14.  The paper's penalty shape is reconstructed
    (a hinge on the band); the default schedule is the code's decreasing ``w(e)``.
    """
    if not isinstance(entropy, Tensor):
        raise TypeError(f"entropy must be a floating tensor, got {describe(entropy)}")
    m = as_mask(mask, entropy.shape)
    _check_values("entropy", entropy, m)
    coef = check_number("coef", coef, low=0.0)
    smooth_coef = check_number("smooth_coef", smooth_coef, low=0.0)
    kappa_low = check_number("kappa_low", kappa_low, low=0.0)
    kappa_high = check_number("kappa_high", kappa_high, low=kappa_low)
    alpha = check_number("alpha", alpha, low=0.0)
    phase_weight = check_number("phase_weight", phase_weight, low=0.0)
    penalty = check_choice("penalty", penalty, EPO_PENALTIES)
    compat = check_compat(compat)
    level = check_choice("level", level, ("token", "sequence"))
    mf = m.to(torch.float64 if entropy.dtype == torch.float64 else torch.float32)
    h = torch.where(m, entropy.to(mf.dtype), 0)  # 0 at padding, whatever it held; gradient masked
    bonus = _agg(h, m, agg)
    n_valid = m.sum().clamp_min(1)
    metrics: dict[str, Tensor] = {"entropy": (h.detach().sum() / n_valid).to(torch.float32)}
    smooth = h.new_zeros(())
    p = torch.zeros_like(h)
    outside: Tensor = torch.zeros_like(h)
    if reference_entropy is not None:
        ref = torch.as_tensor(reference_entropy, dtype=h.dtype, device=h.device)
        if ref.ndim and ref.shape != h.shape:
            raise ValueError(f"reference_entropy must be a number or shaped {tuple(h.shape)}, got {describe(ref)}")
        if ref.ndim == 0:
            if not math.isfinite(float(ref)) or float(ref) < 0:
                raise ValueError("reference_entropy must be finite and >= 0")
        else:
            if debug_enabled() and (bool((m & ~torch.isfinite(ref)).any()) or bool((m & (ref < 0)).any())):
                raise ValueError("reference_entropy must be finite and >= 0")
            ref = torch.where(m, ref.detach(), 0)  # whatever padding held (NaN, inf) becomes 0 and drops out
        hb = h  # what the band tests: the token entropies, or each response's mean broadcast over its tokens
        if level == "sequence":
            count = mf.sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
            hb = ((h * mf).sum(-1, keepdim=True) / count).expand_as(h)
            if ref.ndim:
                ref = ((ref * mf).sum(-1, keepdim=True) / count).expand_as(h)
        lo, hi = kappa_low * ref.detach(), kappa_high * ref.detach()
        hd = hb.detach()
        outside = (m & ~((hd > lo) & (hd < hi))).to(mf.dtype)  # valid and not strictly inside the band
        if compat == "code":
            gate = True
            if turn_index is not None:
                if max_steps is None:
                    raise ValueError("compat='code' with turn_index needs max_steps (the code's gate)")
                if not isinstance(turn_index, Tensor) or turn_index.shape != h.shape:
                    raise ValueError(f"turn_index must be a tensor of shape {tuple(h.shape)}")
                gate = bool((m & (turn_index >= max_steps // 2)).any())
            p = alpha * outside if gate else p
        else:
            below, above = torch.relu(lo - hb), torch.relu(hb - hi)
            if penalty == "squared":
                below, above = below * below, above * above
            p = alpha * (below + above) * mf
        smooth = _agg(p, m, agg)
    loss = -coef * (bonus - smooth_coef * phase_weight * smooth)
    metrics.update(
        epo_penalty=(p.detach().sum() / n_valid).to(torch.float32),
        epo_outside_band_frac=(outside.sum() / n_valid).to(torch.float32),
    )
    return _checked(LossOutput(loss, metrics), m, entropy=entropy)
