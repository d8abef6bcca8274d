"""InfoPower's representation terms: a contrastive (InfoNCE) latent model and the empowerment bound.

LOW CONFIDENCE (``shared/specs/beyond_llm.md`` section 16): no official code; the formulas combine the abstract, the
project page and third-party summaries.

- :func:`info_nce`: ``I(X; Y) >= ln B - L_NCE`` with in-batch negatives.
- :func:`inverse_dynamics_bound`: ``I(A_{t-1}; Z_t | Z_{t-1}) >= H(A_{t-1} | Z_{t-1}) + E[log q(a_{t-1} | z_t,
  z_{t-1})]``, the empowerment-inspired term that makes the latent keep what the agent controls.
- :class:`PointMassWithDistractors`: a 2-D point mass the agent moves, observed together with uncontrollable,
  temporally correlated AR(1) "video" dimensions (the gallery's ``infopower`` entry).

The posterior/prior KL constraint of the paper is enforced with :class:`entrolab.control.DualAscentMultiplier`.

References
----------
Bharadhwaj, Babaeizadeh, Erhan, Levine, "INFOrmation Prioritization through EmPOWERment in Visual Model-Based RL",
ICLR 2022, arXiv 2204.08585.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entrolab._validation import describe

__all__ = ["PointMassWithDistractors", "info_nce", "inverse_dynamics_bound"]


def info_nce(query: Tensor, keys: Tensor, *, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""InfoNCE with in-batch negatives: row ``i`` of ``query`` must pick row ``i`` of ``keys`` among all ``B``.

    Returns ``(loss, bound)``: the cross-entropy of ``softmax(query keys^T / temperature)`` on the diagonal (mean over
    the batch), and the mutual-information lower bound ``ln B - loss`` (at most ``ln B``).

    Shapes: ``query``, ``keys`` ``(B, d)``.

    Examples
    --------
    >>> import torch
    >>> loss, bound = info_nce(torch.eye(4) * 50, torch.eye(4))
    >>> round(float(bound), 4), round(math.log(4), 4)
    (1.3863, 1.3863)
    """
    if not isinstance(query, Tensor) or not isinstance(keys, Tensor) or query.ndim != 2 or query.shape != keys.shape:
        raise ValueError(f"query and keys must be (B, d) tensors of one shape, got {describe(query)}, {describe(keys)}")
    if query.shape[0] < 2:
        raise ValueError("InfoNCE needs a batch of at least 2 (one positive and a negative)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logits = query @ keys.T / temperature  # (B, B)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
    return loss, math.log(query.shape[0]) - loss.detach()


def inverse_dynamics_bound(action_logits: Tensor, actions: Tensor, *, action_entropy: float) -> Tensor:
    r"""The empowerment lower bound ``H(A | Z_{t-1}) + E[log q(a | z_t, z_{t-1})]`` for discrete actions.

    Parameters
    ----------
    action_logits : Tensor
        ``(B, A)`` logits of the inverse model ``q(a | z_t, z_{t-1})``.
    actions : Tensor
        ``(B,)`` int64 actions taken.
    action_entropy : float
        ``H(A | Z_{t-1})`` of the behaviour policy (``ln A`` for uniform random actions).

    Examples
    --------
    >>> import torch
    >>> exact = torch.full((3, 4), -1e9).scatter(1, torch.tensor([[0], [2], [3]]), 0.0)  # q = 1 on the taken action
    >>> round(float(inverse_dynamics_bound(exact, torch.tensor([0, 2, 3]), action_entropy=math.log(4))), 4)
    1.3863
    """
    if not isinstance(action_logits, Tensor) or action_logits.ndim != 2:
        raise ValueError(f"action_logits must be (B, A), got {describe(action_logits)}")
    if not isinstance(actions, Tensor) or actions.dtype != torch.long or actions.shape != action_logits.shape[:1]:
        raise ValueError(f"actions must be int64 of shape ({action_logits.shape[0]},), got {describe(actions)}")
    if bool((actions < 0).any() | (actions >= action_logits.shape[1]).any()):
        raise ValueError(f"actions must be in [0, {action_logits.shape[1]})")
    log_q = torch.log_softmax(action_logits, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
    return action_entropy + log_q.mean()


class PointMassWithDistractors:
    """A point in ``[-1, 1]^2`` moved by 9 discrete actions (stay and 8 directions, step ``speed``), observed with
    ``noise_dims`` AR(1) distractors ``x' = rho x + sqrt(1 - rho^2) eps`` the agent cannot influence; the observation
    ``[p, x]`` is mixed by a fixed random orthogonal matrix, so no coordinate is the position by itself.  Batched.
    """

    MOVES = torch.tensor(
        [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float32
    )

    def __init__(self, *, noise_dims: int = 20, rho: float = 0.95, speed: float = 0.1, seed: int = 0) -> None:
        if isinstance(noise_dims, bool) or not isinstance(noise_dims, int) or noise_dims < 0:
            raise ValueError(f"noise_dims must be an int >= 0, got {noise_dims!r}")
        if not 0 <= rho < 1:
            raise ValueError(f"rho must be in [0, 1), got {rho!r}")
        self.noise_dims, self.rho, self.speed = noise_dims, rho, speed
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.linalg.qr(torch.randn(2 + noise_dims, 2 + noise_dims, generator=g))[0]

    @property
    def num_actions(self) -> int:
        return int(self.MOVES.shape[0])

    def reset(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        pos = torch.rand(n, 2, generator=generator) * 2 - 1
        noise = torch.randn(n, self.noise_dims, generator=generator)
        return pos, noise

    def step(self, pos: Tensor, noise: Tensor, actions: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        pos = (pos + self.speed * self.MOVES[actions]).clamp(-1, 1)
        eps = torch.randn(noise.shape, generator=generator)
        return pos, self.rho * noise + math.sqrt(1 - self.rho**2) * eps

    def observe(self, pos: Tensor, noise: Tensor) -> Tensor:
        return torch.cat([pos, noise], -1) @ self.mix.T
