"""Gallery entry ``koopman``: does sustaining the latent's von Neumann entropy keep a Koopman representation from
collapsing?

The spec's demo (``shared/specs/beyond_llm.md`` section 9): a pendulum (``theta'' = -sin theta``) observed as
``(sin theta, cos theta, omega)``; 200 training and 50 test trajectories of 64 steps (dt 0.1); MLP encoder and
decoder (64-64 tanh), a 16-d latent; ``lam_id`` 0.1, ``alpha`` 2.0, ``k`` 3, ``tau`` 0.1; Adam 1e-3, batch 32,
gradient clip 1.  Three variants of the VN term: ``beta = 0``, the paper's ``-0.1 S_VN`` and the authors' code's
``+0.1 S_VN``.  Metrics: the effective rank ``exp(S_VN)`` of the test latents and the 30-step latent-rollout MSE
(``K`` refitted on the training latents).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.estimators import von_neumann_entropy
from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure
from entrolab.regularizers.koopman import koopman_loss, ridge_koopman

TITLE = "Information-shaped Koopman representations: the von Neumann entropy term"
PAPER = "arXiv 2510.13025"
CLAIM = (
    "Latent mutual information alone collapses a Koopman latent onto a few dominant modes; sustaining the von "
    "Neumann entropy of the latent covariance keeps it expressive without hurting prediction."
)
VARIANTS = ("paper_sign", "no_vn", "code_sign")
SIGN = {"paper_sign": (-1, 0.1), "no_vn": (-1, 0.0), "code_sign": (1, 0.1)}
LATENT, STEPS, EPOCHS, QUICK_EPOCHS = 16, 64, 150, 2


def setup(quick: bool) -> str:
    epochs = QUICK_EPOCHS if quick else EPOCHS
    return (
        f"pendulum, 200 training and 50 test trajectories of {STEPS} steps, {LATENT}-d latent, {epochs} epochs of "
        "batch 32; the VN term with the paper's sign (-0.1 S_VN), none, and the code's (+0.1 S_VN)."
    )


def _pendulum(n: int, gen: torch.Generator) -> torch.Tensor:
    theta = (torch.rand(n, generator=gen) * 2 - 1) * 2.5
    omega = (torch.rand(n, generator=gen) * 2 - 1) * 1.0
    out = []
    for _ in range(STEPS + 1):  # symplectic Euler, dt = 0.1 in 10 sub-steps
        out.append(torch.stack([theta.sin(), theta.cos(), omega], -1))
        for _ in range(10):
            omega = omega - 0.01 * theta.sin()
            theta = theta + 0.01 * omega
    return torch.stack(out, 1)  # (n, T + 1, 3)


def _mlp(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, o))


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, test = _pendulum(200, gen), _pendulum(50, gen)
    enc, dec = _mlp(3, LATENT), _mlp(LATENT, 3)
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sign, beta = SIGN[variant]
    for _ in range(updates):
        for idx in torch.randperm(200, generator=gen).split(32):
            out = koopman_loss(enc, dec, train[idx], lam_id=0.1, alpha=2.0, beta=beta, k=3, tau=0.1, vn_sign=sign)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    with torch.no_grad():
        z_train = enc(train)
        kop = ridge_koopman(z_train[:, :-1], z_train[:, 1:])
        z_test = enc(test)
        flat = z_test.reshape(-1, LATENT)
        centred = flat - flat.mean(0)
        rank = float(von_neumann_entropy(centred.T @ centred / flat.shape[0] + 1e-8 * torch.eye(LATENT)).exp())
        z = z_test[:, 0]
        errs = []
        for t in range(1, 31):
            z = z @ kop
            errs.append(float(((dec(z) - test[:, t]) ** 2).mean()))
    return {"effective_rank": rank, "rollout_mse": sum(errs) / len(errs)}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_EPOCHS if quick else EPOCHS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    col = functools.partial(column, results)

    f = functools.partial(cell, results)

    pairs = [
        (f"effective rank (of {LATENT}): paper sign vs no VN term", "effective_rank", "no_vn", 2),
        ("effective rank: paper sign vs the code's sign", "effective_rank", "code_sign", 2),
        ("30-step rollout MSE: paper sign vs no VN term", "rollout_mse", "no_vn", 3),
        ("30-step rollout MSE: paper sign vs the code's sign", "rollout_mse", "code_sign", 3),
    ]
    rows = [(label, f("paper_sign", key, d), f(base, key, d)) for label, key, base, d in pairs]
    n = len(results)
    rp, r0, rc = (sum(col(v, "effective_rank")) / n for v in VARIANTS)
    mp, m0, mc = (sum(col(v, "rollout_mse")) / n for v in VARIANTS)
    verdict = (
        f"Effective rank {rp:.2f} with the paper's sign, {r0:.2f} without the term and {rc:.2f} with the code's; "
        f"rollout MSE {mp:.3f}, {m0:.3f} and {mc:.3f}: sustaining the entropy "
        f"{'widens' if rp > r0 else 'does not widen'} the latent spectrum here."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"paper_sign": "-0.1 S_VN (paper)", "no_vn": "no VN term", "code_sign": "+0.1 S_VN (code)"}
    for k, v in enumerate(VARIANTS):
        ax.scatter([r[v]["effective_rank"] for r in results], [r[v]["rollout_mse"] for r in results],
                   color=f"C{k}", label=labels[v])  # fmt: skip
    ax.set(xlabel="effective rank of the test latents", ylabel="30-step rollout MSE", title="one point per seed")
    save_figure(fig, [ax], path)
