"""MEE: a nearest-neighbour entropy term over a replay buffer of discriminator codes, against GAN mode collapse.

``term = -lam_t log(mean_i min_{b in buffer} |c_i - b|^2 / d)`` (a Kozachenko-Leonenko-type surrogate: minimising it
pushes each code away from its most similar stored code), with ``lam_t = entropy_lr min(epoch / 100, 1)``.

References
----------
Liu et al., "Combating Mode Collapse in GANs via Manifold Entropy Estimation", AAAI 2023, arXiv 2208.12055 (code
``HaozheLiu-ST/MEE`` at f7d3d33); ``shared/specs/beyond_llm.md`` section 12.  The code compares sample ``j`` only
with buffer column ``j`` and its FIFO shrinks to one past batch after a few updates (``nn_search="columnwise"``
reproduces both); entrolab's default is the nearest neighbour among all stored codes of a true FIFO.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = ["CodeBuffer", "disomap_loss", "dlle_loss", "mee_entropy_term", "mee_lambda"]


class CodeBuffer:
    """A FIFO of past (detached) codes.

    ``nn_search="knn"`` (default): ``capacity`` vectors; ``push(codes)`` appends a batch and drops the oldest beyond
    the capacity.  ``"columnwise"`` (the authors' code): rows of whole batches ``(rows, batch, d)``, initialised
    ``U(-1, 1)``; each push drops ``batch`` rows from the front and appends one row, so the buffer shrinks.
    """

    def __init__(self, *, dim: int, capacity: int = 65_536, nn_search: str = "knn", batch: int | None = None,
                 rows: int = 1024, generator: torch.Generator | None = None) -> None:  # fmt: skip
        if nn_search not in ("knn", "columnwise"):
            raise ValueError(f"nn_search must be 'knn' or 'columnwise', got {nn_search!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.nn_search, self.dim = nn_search, dim
        if nn_search == "knn":
            if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
                raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
            self.capacity = capacity
            self.codes = torch.rand(0, dim)
        else:
            if batch is None or batch < 1:
                raise ValueError("nn_search='columnwise' needs the batch size")
            self.batch = batch
            self.codes = torch.rand(rows, batch, dim, generator=generator) * 2 - 1

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def push(self, codes: Tensor) -> None:
        c = codes.detach().to(torch.float32)
        if self.nn_search == "knn":
            self.codes = torch.cat([self.codes, c.reshape(-1, self.dim)])[-self.capacity :]
        else:
            self.codes = torch.cat([self.codes[self.batch :], c.reshape(1, self.batch, self.dim)])


def mee_entropy_term(codes: Tensor, buffer: CodeBuffer, *, lam: float = 1.0, chunk: int = 4096) -> Tensor:
    r"""``-lam log(mean_i min_b |c_i - b|^2 / d)`` of ``codes`` ``(B, d)`` against the buffer (gradient through the
    codes only).  Scaling codes and buffer by ``s`` changes it by ``-2 lam ln s``.  An empty buffer raises."""
    if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.shape[1] != buffer.dim:
        raise ValueError(f"codes must be (B, {buffer.dim}), got {describe(codes)}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if len(buffer) == 0:
        raise ValueError("the code buffer is empty: push at least one batch first")
    stored = buffer.codes.to(codes.dtype)
    d = codes.shape[1]
    if buffer.nn_search == "columnwise":
        if codes.shape[0] != buffer.batch:
            raise ValueError(f"columnwise search needs batches of {buffer.batch}, got {codes.shape[0]}")
        nn_sq = (codes.unsqueeze(0) - stored).pow(2).sum(-1).amin(0)  # (B,): sample j vs column j only
    else:
        parts = [torch.cdist(codes, stored[s : s + chunk]).pow(2).amin(1) for s in range(0, stored.shape[0], chunk)]
        nn_sq = torch.stack(parts, 1).amin(1)
    return -lam * torch.log(nn_sq.mean() / d)


def mee_lambda(epoch: int, *, entropy_lr: float = 5e-4, ramp_epochs: int = 100) -> float:
    """``entropy_lr * min(epoch / ramp_epochs, 1)``: 0 at epoch 0, ``entropy_lr`` from ``ramp_epochs`` on."""
    if epoch < 0 or ramp_epochs < 1:
        raise ValueError(f"need epoch >= 0 and ramp_epochs >= 1, got {epoch!r}, {ramp_epochs!r}")
    return entropy_lr * min(epoch / ramp_epochs, 1.0)


def dlle_loss(discriminator: Callable[[Tensor], Tensor], x: Tensor, augment: Callable[[Tensor], Tensor]) -> Tensor:
    """MEE's DLLE consistency: ``MSE(D(x), sg D(augment(x)))`` (codes of an input and of its augmentation agree)."""
    with torch.no_grad():
        target = discriminator(augment(x))
    return torch.nn.functional.mse_loss(discriminator(x), target)


def disomap_loss(
    discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, *, generator: torch.Generator | None = None,
    noise: float = 0.05,
) -> Tensor:  # fmt: skip
    """MEE's DIsoMap: with ``a ~ N(0, 1)`` per sample, the code of ``a x + (1 - a) g`` should be ``a D(x) + (1 - a)
    D(g)`` (plus ``N(0, noise^2)``, stop-gradient): the discriminator maps straight lines to straight lines."""
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have one shape, got {describe(real)}, {describe(fake)}")
    a = torch.randn((real.shape[0],) + (1,) * (real.ndim - 1), generator=generator, dtype=real.dtype)
    mixed = a * real + (1 - a) * fake
    with torch.no_grad():
        ac = a.reshape(real.shape[0], 1)
        dr, df = discriminator(real), discriminator(fake)
        target = ac * dr + (1 - ac) * df
        target = target + noise * torch.randn(target.shape, generator=generator, dtype=target.dtype)
    return torch.nn.functional.mse_loss(discriminator(mixed), target)
