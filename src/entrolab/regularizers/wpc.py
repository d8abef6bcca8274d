"""Wasserstein Predictive Coding (WPC): the contrastive (InfoNCE) objective with a Lipschitz critic.

``I_W(X; Y) = W_1(p(x, y), p(x) p(y))`` replaces KL by the 1-Wasserstein distance; its estimator keeps CPC's form
with a bilinear critic ``f(x, y) = g(x)^T W h(y)`` kept 1-Lipschitz by a gradient penalty (``lipschitz="gp"``,
``lambda_GP = 10`` at interpolates between positive and negative pairs) or spectral normalisation of ``g``, ``h``
and ``W`` (``lipschitz="spectral"``).  KL bounds such as InfoNCE cap at ``ln B`` and capture few of many independent
factors; the Lipschitz constraint makes the critic spread its capacity.

References
----------
Ozair et al., "Wasserstein Dependency Measure for Representation Learning", NeurIPS 2019, arXiv 1903.11780 (no
official code; the penalty's form and weight are our choices, ``shared/specs/beyond_llm.md`` section 5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from entrolab._typing import LossOutput
from entrolab._validation import describe
from entrolab.exploration.empowerment import info_nce

__all__ = ["BilinearCritic", "gradient_penalty", "wpc_loss"]


class BilinearCritic(nn.Module):
    """``f(x, y) = g(x)^T W h(y)`` with encoders ``g``, ``h`` to ``dim`` features; ``spectral=True`` wraps every
    ``nn.Linear`` of ``g``, ``h`` and ``W`` in spectral normalisation."""

    def __init__(self, g: nn.Module, h: nn.Module, dim: int, *, spectral: bool = False) -> None:
        super().__init__()
        self.g, self.h = g, h
        self.w = nn.Linear(dim, dim, bias=False)
        if spectral:  # in place: each Linear's weight becomes W / sigma_max(W) (power iteration)
            for module in [m for m in self.modules() if isinstance(m, nn.Linear)]:
                torch.nn.utils.parametrizations.spectral_norm(module)

    def embed(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x) W^T, h(y))``: the query and key of InfoNCE, ``(B, dim)`` each."""
        return self.w(self.g(x)), self.h(y)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``f(x_i, y_i)`` for aligned rows, ``(B,)``."""
        q, k = self.embed(x, y)
        return (q * k).sum(-1)


def gradient_penalty(
    critic: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *, one_sided: bool = False
) -> Tensor:
    """``E[(|grad_{(x, y)} f(x, y)| - 1)^2]`` at the given pairs (``max(0, |grad| - 1)^2`` when ``one_sided``);
    differentiable (create_graph), for the critic's loss."""
    x = x.detach().requires_grad_(True)
    y = y.detach().requires_grad_(True)
    gx, gy = torch.autograd.grad(critic(x, y).sum(), (x, y), create_graph=True)
    norm = torch.cat([gx.flatten(1), gy.flatten(1)], 1).norm(dim=1)
    excess = (norm - 1).clamp_min(0) if one_sided else norm - 1
    return excess.pow(2).mean()


def wpc_loss(
    critic: BilinearCritic,
    x: Tensor,
    y: Tensor,
    *,
    lipschitz: str = "gp",
    gp_weight: float = 10.0,
    generator: torch.Generator | None = None,
) -> LossOutput:
    r"""WPC's loss on a batch of positive pairs ``(x_i, y_i)``: InfoNCE with in-batch negatives, plus
    ``gp_weight`` times the gradient penalty at random interpolates ``(x_i, e y_i + (1 - e) y_j)`` between each
    positive pair and a negative one (``lipschitz="gp"``); with ``"spectral"`` (a spectrally normalised critic) or
    ``"none"`` (plain CPC) no penalty.

    Metrics: ``wpc_dual`` (``mean f(positive) - mean f(negatives)``, the Wasserstein dual estimate when the critic is
    1-Lipschitz), ``infonce_bound`` (``ln B - L``) and ``gradient_penalty``.
    """
    if lipschitz not in ("gp", "spectral", "none"):
        raise ValueError(f"lipschitz must be 'gp', 'spectral' or 'none', got {lipschitz!r}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"x and y must be batches of the same size >= 2, got {describe(x)}, {describe(y)}")
    if not gp_weight >= 0:
        raise ValueError(f"gp_weight must be >= 0, got {gp_weight!r}")
    q, k = critic.embed(x, y)
    loss, bound = info_nce(q, k)
    scores = q @ k.T  # (B, B): f(x_i, y_j)
    b = scores.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=scores.device)
    dual = scores.diagonal().mean() - scores[off].mean()
    gp = torch.zeros((), dtype=loss.dtype, device=loss.device)
    if lipschitz == "gp" and gp_weight > 0:
        perm = torch.randperm(b, generator=generator)
        eps = torch.rand((b,) + (1,) * (y.ndim - 1), generator=generator, dtype=y.dtype)
        gp = gradient_penalty(critic, x, eps * y + (1 - eps) * y[perm])
        loss = loss + gp_weight * gp
    metrics = {"wpc_dual": dual.detach(), "infonce_bound": bound, "gradient_penalty": gp.detach()}
    return LossOutput(loss, metrics)
