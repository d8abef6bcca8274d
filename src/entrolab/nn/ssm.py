"""A pure-PyTorch selective state-space block (Mamba's S6) with the two refinements of the token-dynamics paper.

The block: ``in_proj -> (u, z)``; a causal depthwise convolution and SiLU on ``u``; ``x_proj`` maps ``u`` to the
step-size rank, ``B_t`` and ``C_t``; ``Delta_t = softplus(dt_proj(.))``; per channel ``d`` and state ``n``::

    h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t u_t          y_t = C_t . h_t + D u_t

then ``y * SiLU(z)`` and ``out_proj``.  The selective scan (:func:`selective_scan`) runs token by token
(``chunk=None``) or chunk-parallel by cumulative sums, and the two agree; it is gated linear attention with one head
per channel (query ``C_t``, key ``Delta_t B_t``, value ``u_t``, log-decay ``Delta_t A``), and the tests check it
against :func:`entrolab.nn.gated_linear_attention` too.

Refinements (arXiv 2410.03292):

1. ``constraint="psd"``: ``x_proj``'s B and C blocks are reparametrised so that ``mu = S_C^T S_B = S_C^T D S_C``
   is positive semidefinite (``S_C``: the strictly upper-triangular part of the raw B block with ones on the leading
   diagonal; ``D = diag(softplus(d) + 0.7)``, ``d`` the first column of the raw C block).  This excludes the scenario
   in which all tokens converge to zero.  ``"nsd"`` (``S_B = -D S_C``) is the ablation's negative control.
2. ``reorder=True``: a learned linear importance score per token and a SoftSort permutation
   ``P = softmax_j(-|sort(s)_i - s_j| / tau)`` applied to the tokens before the block (use it in the first layer
   only, and only where causality does not matter, e.g. classification).

References
----------
Vo, Pham, Tong, Nguyen, "Demystifying the Token Dynamics of Deep Selective State Space Models", ICLR 2025, arXiv
2410.03292 (code ``Fsoft-AIC/Mamba-token-dynamic`` at 05608f4, ``mamba_llm_pos.py``); Gu and Dao, "Mamba", arXiv
2312.00752 (the S6 block); Prillo and Eisenschlos, "SoftSort", arXiv 2006.16038; ``shared/specs/beyond_llm.md``
section 14.  Departures: the score head of the reordering is a plain linear map of the block's input (the code's
exact head and sort direction are unverified); descending order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from entrolab._validation import describe
from entrolab.nn import sse as _sse

__all__ = ["SelectiveSSM", "SignConstrainedProjection", "selective_scan", "soft_sort", "token_dynamics_mu"]

CONSTRAINT_OFFSET = 0.7
"""The code's lower bound on the diagonal of ``D`` (``softplus(d) + 0.7``)."""


class SignConstrainedProjection(nn.Module):
    """The parametrisation of ``x_proj.weight`` ``(dt_rank + 2 d_state, d_inner)`` that makes
    ``S_C^T S_B`` positive (``sign=+1``) or negative (``sign=-1``) semidefinite."""

    def __init__(self, dt_rank: int, d_state: int, *, sign: int = 1) -> None:
        super().__init__()
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {sign!r}")
        self.dt_rank, self.d_state, self.sign = dt_rank, d_state, sign

    def forward(self, raw: Tensor) -> Tensor:
        r, n = self.dt_rank, self.d_state
        dt_rows, p, c_raw = raw[:r], raw[r : r + n], raw[r + n : r + 2 * n]
        upper = torch.triu(p, diagonal=1)
        s_c = upper + torch.eye(n, p.shape[1], dtype=raw.dtype, device=raw.device)
        d = nn.functional.softplus(c_raw[:, 0]) + CONSTRAINT_OFFSET
        s_b = self.sign * d.unsqueeze(1) * s_c
        return torch.cat([dt_rows, s_b, s_c], 0)


def token_dynamics_mu(x_proj_weight: Tensor, *, dt_rank: int, d_state: int) -> Tensor:
    """``mu = S_C^T S_B`` ``(d_inner, d_inner)`` of an (effective) ``x_proj`` weight: the input-output matrix whose
    definiteness decides whether tokens converge (negative) or diverge (positive) in the continuous-time limit."""
    if not isinstance(x_proj_weight, Tensor) or x_proj_weight.ndim != 2:
        raise ValueError(f"x_proj_weight must be a 2-D tensor, got {describe(x_proj_weight)}")
    if dt_rank < 0 or d_state < 1 or x_proj_weight.shape[0] != dt_rank + 2 * d_state:
        raise ValueError(
            f"x_proj_weight must have dt_rank + 2 d_state = {dt_rank + 2 * d_state} rows (dt_rank={dt_rank}, "
            f"d_state={d_state}), got {tuple(x_proj_weight.shape)}"
        )
    s_b = x_proj_weight[dt_rank : dt_rank + d_state]
    s_c = x_proj_weight[dt_rank + d_state : dt_rank + 2 * d_state]
    return s_c.T @ s_b


def soft_sort(scores: Tensor, *, tau: float = 1.0) -> Tensor:
    """SoftSort's relaxed permutation ``(..., T, T)`` of ``scores`` ``(..., T)``: row ``i`` is
    ``softmax_j(-|sort(s)_i - s_j| / tau)`` with ``sort`` descending.  Rows sum to 1; as ``tau -> 0``, ``P @ x``
    becomes ``x`` gathered by ``argsort(scores, descending=True)``."""
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    ordered = torch.sort(scores, dim=-1, descending=True).values
    return torch.softmax(-(ordered.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau, -1)


def selective_scan(inputs: Tensor, log_decay: Tensor, readout: Tensor, *, chunk: int | None = 16) -> Tensor:
    """``y_t = C_t . h_t`` with ``h_t = exp(log_decay_t) * h_{t-1} + inputs_t`` (elementwise per channel and state).

    Shapes: ``inputs`` and ``log_decay`` (``<= 0``) ``(B, T, D, N)``, ``readout`` ``C`` ``(B, T, N)``; returns
    ``(B, T, D)``.  ``chunk=None`` loops over the tokens; an int scans each chunk in parallel as
    ``h_t = exp(L_t) h_0 + exp(L'_t) cumsum_s(exp(-L'_s) inputs_s)`` (``L'``: the log-decay summed from the chunk's
    second step), splitting a chunk in halves while its decay is below ``-FACTORED_DECAY_LIMIT``.  This is
    :func:`entrolab.nn.gated_linear_attention` with one head per channel and a 1-wide value, without its
    ``T x T`` scores.
    """
    if inputs.ndim != 4 or log_decay.shape != inputs.shape or readout.shape != (*inputs.shape[:2], inputs.shape[3]):
        raise ValueError(
            f"need inputs, log_decay (B, T, D, N) and readout (B, T, N); got {describe(inputs)}, "
            f"{describe(log_decay)}, {describe(readout)}"
        )
    b, t, d, n = inputs.shape
    h = inputs.new_zeros(b, d, n)
    if chunk is None:
        ys = []
        for i in range(t):
            h = log_decay[:, i].exp() * h + inputs[:, i]
            ys.append(torch.einsum("bdn,bn->bd", h, readout[:, i]))
        return torch.stack(ys, 1) if ys else inputs.new_zeros(b, 0, d)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be None or an int >= 1, got {chunk!r}")
    states = []
    for s0 in range(0, t, chunk):
        hs, h = _scan_chunk(inputs[:, s0 : s0 + chunk], log_decay[:, s0 : s0 + chunk], h)
        states.append(hs)
    if not states:
        return inputs.new_zeros(b, 0, d)
    return torch.einsum("btdn,btn->btd", torch.cat(states, 1), readout)


def _scan_chunk(inputs: Tensor, log_decay: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """The states ``(B, n, D, N)`` of one chunk from ``h`` ``(B, D, N)``, and the last one."""
    cum = log_decay.cumsum(1)
    inner = cum - log_decay[:, :1]
    n = inputs.shape[1]
    if n > 1 and float(inner[:, -1].detach().min()) <= -_sse.FACTORED_DECAY_LIMIT:
        first, h = _scan_chunk(inputs[:, : n // 2], log_decay[:, : n // 2], h)
        second, h = _scan_chunk(inputs[:, n // 2 :], log_decay[:, n // 2 :], h)
        return torch.cat([first, second], 1), h
    states = cum.exp() * h.unsqueeze(1) + inner.exp() * ((-inner).exp() * inputs).cumsum(1)
    return states, states[:, -1]


class SelectiveSSM(nn.Module):
    """A Mamba-style S6 block ``(B, T, d_model) -> (B, T, d_model)``.

    Parameters
    ----------
    d_model : int
    d_state : int
        State size per channel (``N``).
    expand : int
        ``d_inner = expand * d_model``.
    d_conv : int
        Width of the causal depthwise convolution.
    dt_rank : int or None
        Rank of the step-size projection (``ceil(d_model / 16)`` by default, Mamba's).
    constraint : {"none", "psd", "nsd"}
        Refinement 1 (``"psd"``) or its negative control.
    reorder : bool
        Refinement 2: SoftSort token reordering before the block, with temperature ``tau``.
    """

    def __init__(
        self, d_model: int, *, d_state: int = 8, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
        constraint: str = "none", reorder: bool = False, tau: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("expand", expand), ("d_conv", d_conv)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if constraint not in ("none", "psd", "nsd"):
            raise ValueError(f"constraint must be 'none', 'psd' or 'nsd', got {constraint!r}")
        d_inner = expand * d_model
        if constraint != "none" and d_state > d_inner:
            raise ValueError(f"the constraint needs d_state <= d_inner ({d_inner}), got {d_state}")
        self.d_model, self.d_state, self.d_inner = d_model, d_state, d_inner
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.constraint, self.reorder, self.tau = constraint, reorder, tau
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        # Mamba's initialisation: A = -(1 .. N) per channel; dt in [1e-3, 1e-1] log-uniformly through the bias
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.score = nn.Linear(d_model, 1) if reorder else None
        if constraint != "none":
            sign = 1 if constraint == "psd" else -1
            parametrize.register_parametrization(
                self.x_proj, "weight", SignConstrainedProjection(self.dt_rank, d_state, sign=sign)
            )

    def mu(self) -> Tensor:
        """``S_C^T S_B`` of the current (effective) ``x_proj`` weight."""
        return token_dynamics_mu(self.x_proj.weight, dt_rank=self.dt_rank, d_state=self.d_state)

    def forward(self, x: Tensor, *, chunk: int | None = 16) -> Tensor:
        """``x`` ``(B, T, d_model)``; ``chunk=None`` runs the scan token by token, an int chunked-parallel."""
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, {self.d_model}), got {describe(x)}")
        if self.score is not None:
            x = soft_sort(self.score(x).squeeze(-1), tau=self.tau) @ x
        t = x.shape[1]
        u, z = self.in_proj(x).chunk(2, -1)
        u = nn.functional.silu(self.conv(u.transpose(1, 2))[..., :t].transpose(1, 2))  # causal: trim the right pad
        proj = self.x_proj(u)
        dt_in, b_t, c_t = proj.split([self.dt_rank, self.d_state, self.d_state], -1)
        delta = nn.functional.softplus(self.dt_proj(dt_in))  # (B, T, d_inner)
        a = -torch.exp(self.A_log)  # (d_inner, N)
        inputs = (delta * u).unsqueeze(-1) * b_t.unsqueeze(2)  # Delta_t B_t u_t: (B, T, d_inner, N)
        y = selective_scan(inputs, delta.unsqueeze(-1) * a, c_t, chunk=chunk) + self.D * u
        return self.out_proj(y * nn.functional.silu(z))
