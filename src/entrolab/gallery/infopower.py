"""Gallery entry ``infopower``: does the empowerment term make a small latent keep what the agent controls?

A 2-D point mass moved by 9 discrete actions, observed through a fixed random rotation together with 20 AR(1)
distractor dimensions (rho 0.95) it cannot influence (:class:`~entrolab.exploration.empowerment.
PointMassWithDistractors`).  An encoder maps the 22-D observation to a 4-D latent.  Both variants train the same
contrastive latent model, InfoNCE between the predicted next latent ``g(z_t, a_t)`` and the encoded next observation
(in-batch negatives); ``+ empowerment`` adds the inverse-dynamics bound ``ln 9 + E log q(a_t | z_t, z_{t+1})`` (weight
1).  Random behaviour actions, 256 transitions per update, Adam 1e-3.

Metrics on held-out transitions: the R^2 of a linear probe from ``z`` to the point's position (controllable) and the
mean R^2 of probes to the distractor dimensions (uncontrollable).  LOW CONFIDENCE reconstruction of the paper (no
official code); the paper's sparse-reward control experiment is not reproduced.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab._stats import format_interval, mean_interval
from entrolab.exploration.empowerment import PointMassWithDistractors, info_nce, inverse_dynamics_bound
from entrolab.gallery._common import column, pyplot, run_variants, save_figure

TITLE = "InfoPower: empowerment puts controllable factors first in the latent"
PAPER = "arXiv 2204.08585"
CLAIM = (
    "Adding an empowerment term (an inverse-dynamics bound on I(A; Z_t | Z_t-1)) to a contrastive latent model makes "
    "the representation prioritise what the agent controls over distractors such as background video."
)
VARIANTS = ("empowerment", "contrastive")
LATENT, UPDATES, QUICK_UPDATES, BATCH = 4, 2000, 60, 256


def setup(quick: bool) -> str:
    updates = QUICK_UPDATES if quick else UPDATES
    return (
        f"point mass + 20 AR(1) distractors (rotated together), {LATENT}-D latent, {updates} Adam updates of "
        f"{BATCH} random-action transitions; InfoNCE latent model with and without the empowerment bound; linear "
        "probes on 4,096 held-out observations."
    )


def _mlp(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, 128), nn.ReLU(), nn.Linear(128, o))


def _r2(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-column R^2 of the least-squares linear probe y ~ [z, 1] (fit on the first half, scored on the second)."""
    half = z.shape[0] // 2
    x = torch.cat([z, torch.ones(z.shape[0], 1)], 1).double()
    w = torch.linalg.lstsq(x[:half], y[:half].double()).solution
    resid = y[half:].double() - x[half:] @ w
    var = y[half:].double().var(0, unbiased=False)
    return 1 - resid.pow(2).mean(0) / var


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    env = PointMassWithDistractors(seed=seed)
    obs_dim = 2 + env.noise_dims
    encoder, forward, inverse = _mlp(obs_dim, LATENT), _mlp(LATENT + env.num_actions, LATENT), _mlp(2 * LATENT, 9)
    params = [*encoder.parameters(), *forward.parameters(), *inverse.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    pos, noise = env.reset(BATCH, gen)
    curve = []
    for u in range(updates):
        actions = torch.randint(env.num_actions, (BATCH,), generator=gen)
        pos2, noise2 = env.step(pos, noise, actions, gen)
        z, z2 = encoder(env.observe(pos, noise)), encoder(env.observe(pos2, noise2))
        a1h = torch.nn.functional.one_hot(actions, env.num_actions).float()
        loss, nce_bound = info_nce(forward(torch.cat([z, a1h], 1)), z2)
        emp = inverse_dynamics_bound(inverse(torch.cat([z, z2], 1)), actions, action_entropy=math.log(env.num_actions))
        total = loss - emp if variant == "empowerment" else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        pos, noise = pos2, noise2
        if u % 25 == 0:  # fresh starts keep the batch spread over the arena
            pos, noise = env.reset(BATCH, gen)
        if u % max(1, updates // 20) == 0 or u == updates - 1:
            curve.append([u + 1, float(nce_bound), float(emp.detach())])
    with torch.no_grad():
        p, x = env.reset(4096, gen)
        z = encoder(env.observe(p, x))
    r2_pos = _r2(z, p)
    r2_noise = _r2(z, x)
    return {
        "position_r2": float(r2_pos.mean()),
        "distractor_r2": float(r2_noise.mean()),
        "curve": curve,
    }


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_UPDATES if quick else UPDATES)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    col = functools.partial(column, results)

    rows = [
        (
            "R^2 of the position (controllable) from z",
            format_interval(*mean_interval(col("empowerment", "position_r2"))),
            format_interval(*mean_interval(col("contrastive", "position_r2"))),
        ),
        (
            "mean R^2 of the distractors from z",
            format_interval(*mean_interval(col("empowerment", "distractor_r2"))),
            format_interval(*mean_interval(col("contrastive", "distractor_r2"))),
        ),
    ]
    n = len(results)
    pe, pc = (sum(col(v, "position_r2")) / n for v in VARIANTS)
    de, dc = (sum(col(v, "distractor_r2")) / n for v in VARIANTS)
    verdict = (
        f"With empowerment the latent explains the position with R^2 {pe:.3f} (contrastive only: {pc:.3f}) and the "
        f"distractors with {de:.3f} ({dc:.3f}): the claimed prioritisation "
        f"{'appears' if pe > pc and de < dc else 'does not clearly appear'} at this scale."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = {"empowerment": "InfoNCE + empowerment", "contrastive": "InfoNCE only"}
    for k, v in enumerate(VARIANTS):
        pos = [r[v]["position_r2"] for r in results]
        dis = [r[v]["distractor_r2"] for r in results]
        axes[0].scatter(dis, pos, color=f"C{k}", label=labels[v])
        for r in results:
            s, nce, _emp = zip(*r[v]["curve"])
            axes[1].plot(
                s, nce, color=f"C{k}", alpha=0.8, label=f"{labels[v]}: InfoNCE bound" if r is results[0] else None
            )
    axes[0].set(xlabel="distractor R^2 (lower is better)", ylabel="position R^2 (higher is better)",
                title="linear probes from the 4-D latent (one point per seed)")  # fmt: skip
    axes[1].set(xlabel="update", ylabel="nats", title="InfoNCE bound during training")
    save_figure(fig, axes, path)
