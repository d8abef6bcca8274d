"""Information-shaped Koopman representations: Koopman prediction, temporal InfoNCE and the von Neumann entropy of the
latent covariance (kept high against collapse).

Per batch of ``B`` trajectories of length ``T``: ``z_t = Enc(x_t)``; ``K`` = the ridge least-squares Koopman operator
from ``z_t`` to ``z_{t+1}`` (no gradient through it);
``L = sum_t MSE(Dec(z_t K), x_{t+1}) + lam_id sum_t MSE(Dec(z_t), x_t) + alpha L_NCE - beta S_VN``.

References
----------
Cheng et al., "Information Shapes Koopman Representation", ICLR 2026, arXiv 2510.13025 (code
``Wenxuan52/InformationKoopman`` at 32f52a1); ``shared/specs/beyond_llm.md`` section 9.  The code **adds**
``+beta S_VN`` to the minimised loss (lowering the entropy) against the paper's argument: ``vn_sign=+1``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.estimators import von_neumann_entropy

__all__ = ["koopman_loss", "ridge_koopman", "temporal_info_nce"]


def ridge_koopman(z: Tensor, z_next: Tensor, *, ridge: float = 0.1) -> Tensor:
    """``K = mean_b (Z_b^T Z_b + ridge I)^{-1} Z_b^T Z'_b`` over trajectories ``(B, T, d)``; ``(d, d)``, detached."""
    if not isinstance(z, Tensor) or z.ndim != 3 or not isinstance(z_next, Tensor) or z_next.shape != z.shape:
        raise ValueError(f"z and z_next must be (B, T, d) of one shape, got {describe(z)}, {describe(z_next)}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    z, zn = z.detach(), z_next.detach()
    gram = z.transpose(1, 2) @ z + ridge * torch.eye(z.shape[-1], dtype=z.dtype)
    return torch.linalg.solve(gram, z.transpose(1, 2) @ zn).mean(0)


def temporal_info_nce(z: Tensor, *, k: int = 3, tau: float = 0.1) -> Tensor:
    r"""Temporal InfoNCE of each trajectory: anchors ``t in [k, T - k)``, positives ``z_{t +- 1..k}``, negatives the
    other time steps of the same trajectory, cosine similarity over ``tau``;
    ``-log(sum_pos e^s / sum_{pos + neg} e^s)`` averaged.  ``>= 0``; equals ``ln(#candidates / #positives)`` when
    all similarities are equal.  ``z`` ``(B, T, d)`` with ``T > 2k``."""
    if not isinstance(z, Tensor) or z.ndim != 3:
        raise ValueError(f"z must be (B, T, d), got {describe(z)}")
    t = z.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or t <= 2 * k:
        raise ValueError(f"need an int k >= 1 with T > 2k, got k={k!r}, T={t}")
    zn = nn.functional.normalize(z, dim=-1)
    sim = zn @ zn.transpose(1, 2) / tau  # (B, T, T)
    idx = torch.arange(t)
    gap = (idx.unsqueeze(0) - idx.unsqueeze(1)).abs()
    anchors = idx[k : t - k]
    s = sim[:, anchors]  # (B, A, T)
    cand = (gap[anchors] > 0).unsqueeze(0)
    pos = ((gap[anchors] >= 1) & (gap[anchors] <= k)).unsqueeze(0)
    lse_all = torch.logsumexp(s.masked_fill(~cand, -torch.inf), -1)
    lse_pos = torch.logsumexp(s.masked_fill(~pos, -torch.inf), -1)
    return (lse_all - lse_pos).mean()


def koopman_loss(
    encoder: nn.Module,
    decoder: nn.Module,
    x: Tensor,
    *,
    lam_id: float = 0.3,
    alpha: float = 0.1,
    beta: float = 0.1,
    k: int = 3,
    tau: float = 0.1,
    ridge: float = 0.1,
    vn_sign: int = -1,
) -> LossOutput:
    """The information-shaped Koopman loss on trajectories ``x`` ``(B, T + 1, D)``; ``vn_sign=-1`` (the paper:
    sustain the entropy) or ``+1`` (the authors' code).  Metrics: ``vn_entropy``, ``effective_rank``,
    ``prediction_mse``, ``infonce``."""
    if vn_sign not in (-1, 1):
        raise ValueError(f"vn_sign must be -1 (the paper) or +1 (the authors' code), got {vn_sign!r}")
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"x must be (B, T + 1, D) trajectories with T >= 1, got {describe(x)}")
    z_all = encoder(x)  # (B, T + 1, d)
    z, z_next = z_all[:, :-1], z_all[:, 1:]
    kop = ridge_koopman(z, z_next, ridge=ridge)
    pred = nn.functional.mse_loss(decoder(z @ kop), x[:, 1:])
    recon = nn.functional.mse_loss(decoder(z), x[:, :-1])
    nce = temporal_info_nce(z, k=k, tau=tau) if alpha > 0 else torch.zeros((), dtype=z.dtype)
    flat = z.reshape(-1, z.shape[-1])
    centred = flat - flat.mean(0)
    cov = centred.T @ centred / max(flat.shape[0] - 1, 1) + 1e-8 * torch.eye(flat.shape[-1], dtype=z.dtype)
    s_vn = von_neumann_entropy(cov)
    loss = pred + lam_id * recon + alpha * nce + vn_sign * beta * s_vn
    metrics = {
        "vn_entropy": s_vn.detach(),
        "effective_rank": s_vn.detach().exp(),
        "prediction_mse": pred.detach(),
        "infonce": nce.detach(),
    }
    return LossOutput(loss, metrics)
