"""Entropy-guided attention: a per-head band on attention entropy (against entropy collapse and overload).

For layer ``l``, head ``h``, row ``t``: ``E = -sum_j A_tj ln(A_tj + 1e-9)``, ``delta = E - theta_lh E_max``; the
penalty is ``delta^2`` outside the dead band ``|delta| <= gamma E_max`` and 0 inside; ``L = lam mean_l mean_h
sum_{b,t} penalty``.  ``theta`` are learnable thresholds, clamped to ``[0, 1]`` in the forward pass.

References
----------
Jha and Reagen, "Entropy-Guided Attention for Private LLMs", arXiv 2501.03489 (code
``Nandan91/entropy-guided-attention-llm`` at 8592b75); ``shared/specs/beyond_llm.md`` section 15.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from entrolab._typing import LossOutput
from entrolab._validation import describe

__all__ = ["EntropyBandRegularizer"]


class EntropyBandRegularizer(nn.Module):
    r"""The regulariser with thresholds per (layer, head) (the paper's design; ``share_thresholds_across_layers=True``
    reproduces the released code, which applies the first block's per-head vector to every layer).

    Parameters
    ----------
    layers, heads : int
        Shape of the threshold table.
    lam : float
        ``loss_coeff`` 1e-5.  The penalty is **summed** over batch and positions (as in the code), so ``lam``'s effect
        grows with batch size x sequence length.
    gamma : float
        Dead-band half-width as a fraction of ``E_max`` (``tolerance_margin_factor`` 0.2).
    init : float
        Initial thresholds (0.5: our choice; the paper's is unverified).
    max_entropy : {"context", "causal_row"}
        ``E_max = ln T`` for every row (the code), or ``ln(t + 1)`` for row ``t`` of a causal attention.
    share_thresholds_across_layers : bool

    Notes
    -----
    The penalty jumps from 0 to ``(gamma E_max)^2`` at the band edge (discontinuous, as in the code), and the
    thresholds receive gradient, so they drift toward the heads' entropies.

    Examples
    --------
    >>> import torch
    >>> reg = EntropyBandRegularizer(layers=1, heads=1, lam=1.0)
    >>> uniform = torch.full((1, 1, 1, 64), 1 / 64)  # (B, H, T, T'): one uniform row over 64 keys
    >>> round(float(reg([uniform]).loss.detach()), 4)  # delta = ln 64 - 0.5 ln 64 = 2.0794 > 0.8318: 2.0794^2
    4.3241
    """

    def __init__(
        self,
        *,
        layers: int,
        heads: int,
        lam: float = 1e-5,
        gamma: float = 0.2,
        init: float = 0.5,
        max_entropy: str = "context",
        share_thresholds_across_layers: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("layers", layers), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name, x in (("lam", lam), ("gamma", gamma)):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
        if not 0 <= init <= 1:
            raise ValueError(f"init must be in [0, 1], got {init!r}")
        if max_entropy not in ("context", "causal_row"):
            raise ValueError(f"max_entropy must be 'context' or 'causal_row', got {max_entropy!r}")
        self.layers, self.heads = layers, heads
        self.lam, self.gamma = float(lam), float(gamma)
        self.max_entropy, self.shared = max_entropy, bool(share_thresholds_across_layers)
        self.thresholds = nn.Parameter(torch.full((1 if self.shared else layers, heads), float(init)))

    def forward(self, attentions: Sequence[Tensor]) -> LossOutput:
        """``attentions``: one ``(B, H, T, T')`` attention-probability tensor per layer.  Metrics: the mean
        normalised entropy ``E / E_max`` and the share of rows outside the band."""
        if len(attentions) != self.layers:
            raise ValueError(f"expected {self.layers} attention tensors (one per layer), got {len(attentions)}")
        theta = self.thresholds.clamp(0.0, 1.0)
        total = torch.zeros(())
        norm, outside, rows = 0.0, 0.0, 0
        for layer, a in enumerate(attentions):
            if not isinstance(a, Tensor) or a.ndim != 4 or a.shape[1] != self.heads or not a.dtype.is_floating_point:
                raise ValueError(f"attention of layer {layer} must be (B, {self.heads}, T, T'), got {describe(a)}")
            e = -(a * torch.log(a + 1e-9)).sum(-1)  # (B, H, T)
            t, keys = a.shape[2], a.shape[3]
            if self.max_entropy == "causal_row":
                e_max = torch.log(torch.arange(1, t + 1, dtype=e.dtype) + (keys - t)).clamp_min(1e-9)  # (T,)
            else:
                e_max = torch.full((t,), math.log(keys), dtype=e.dtype)
            th = theta[0 if self.shared else layer].to(e.dtype).view(1, -1, 1)
            delta = e - th * e_max
            out_band = delta.abs() > self.gamma * e_max
            penalty = torch.where(out_band, delta.pow(2), 0.0)
            total = total + penalty.sum(dim=(0, 2)).mean()  # sum over batch and positions, mean over heads
            norm += float((e.detach() / e_max).sum())
            outside += float(out_band.sum())
            rows += e.numel()
        loss = self.lam * total / self.layers
        metrics = {
            "attention_entropy_normalized": torch.tensor(norm / max(rows, 1)),
            "attention_outside_band_frac": torch.tensor(outside / max(rows, 1)),
        }
        return LossOutput(loss, metrics)
