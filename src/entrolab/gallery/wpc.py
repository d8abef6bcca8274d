"""Gallery entry ``wpc``: do Lipschitz critics capture more of many independent factors than InfoNCE (CPC)?

The spec's demo (``shared/specs/beyond_llm.md`` section 5): ``x`` = ``n`` independent 4-way factors rendered as noisy
one-hot vectors; ``y`` = the same factors after a fixed per-factor permutation, rendered with fresh noise; the true
``I(X; Y) = n ln 4`` exceeds InfoNCE's ``ln B`` cap (``B = 64``: 4.16 nats) from ``n = 4`` on.  Encoders ``g``,
``h``: MLPs to 32 dims, a bilinear critic, Adam 1e-3; CPC (plain InfoNCE) against WPC (the same with a gradient
penalty, weight 10).  Metric: a linear probe (ridge least squares on one-hot targets) on the frozen ``g(x)``
predicting every factor, mean accuracy over factors, for ``n`` in {2, 4, 8, 16}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab._stats import format_interval, mean_interval
from entrolab.gallery._common import pyplot, save_figure
from entrolab.regularizers.wpc import BilinearCritic, wpc_loss

TITLE = "Wasserstein predictive coding: Lipschitz critics against InfoNCE's log-batch cap"
PAPER = "arXiv 1903.11780"
CLAIM = (
    "KL-based contrastive bounds such as InfoNCE are capped at ln B and capture only a few of many independent "
    "factors; a Lipschitz critic (the Wasserstein dependency measure) keeps learning them as their number grows."
)
VARIANTS = ("wpc", "cpc")
FACTORS = (2, 4, 8, 16)
K, BATCH, STEPS, QUICK_STEPS, NOISE = 4, 64, 3000, 40, 0.3


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"n independent {K}-way factors as noisy one-hot vectors (noise {NOISE}), y a per-factor permutation of x; "
        f"MLP encoders to 32 dims, batch {BATCH}, {steps} Adam steps per n in {list(FACTORS)}; WPC (gradient "
        "penalty 10) against CPC (InfoNCE); linear probes on 4,096 fresh samples."
    )


def _render(f: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = torch.nn.functional.one_hot(f, K).float().flatten(1)
    return x + NOISE * torch.randn(x.shape, generator=gen)


def _probe_accuracy(z: torch.Tensor, factors: torch.Tensor) -> float:
    """Mean over factors of the held-out accuracy of a ridge least-squares probe on one-hot targets."""
    half = z.shape[0] // 2
    x = torch.cat([z, torch.ones(z.shape[0], 1)], 1).double()
    accs = []
    for j in range(factors.shape[1]):
        y = torch.nn.functional.one_hot(factors[:, j], K).double()
        a = x[:half].T @ x[:half] + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(a, x[:half].T @ y[:half])
        accs.append(float(((x[half:] @ w).argmax(1) == factors[half:, j]).double().mean()))
    return sum(accs) / len(accs)


def _train(variant: str, n: int, *, seed: int, steps: int) -> float:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(K, generator=gen) for _ in range(n)])  # (n, K)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(n * K, 128), nn.ReLU(), nn.Linear(128, 32))

    critic = BilinearCritic(mlp(), mlp(), 32)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(steps):
        f = torch.randint(K, (BATCH, n), generator=gen)
        fy = perms[torch.arange(n), f]  # the same factors, permuted per factor
        out = wpc_loss(critic, _render(f, gen), _render(fy, gen), lipschitz="gp" if variant == "wpc" else "none",
                       generator=gen)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    f = torch.randint(K, (4096, n), generator=gen)
    with torch.no_grad():
        z = critic.g(_render(f, gen))
    return _probe_accuracy(z, f)


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    import time

    steps = QUICK_STEPS if quick else STEPS
    out: dict[str, Any] = {"seed": seed, "steps": steps}
    for v in VARIANTS:
        t0 = time.perf_counter()
        out[v] = {"probe_accuracy": {str(n): _train(v, n, seed=seed, steps=steps) for n in FACTORS}}
        out[v]["seconds"] = time.perf_counter() - t0
    return out


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    def col(v: str, n: int) -> list[float]:
        return [r[v]["probe_accuracy"][str(n)] for r in results]

    rows = [
        (f"probe accuracy, n = {n} factors (chance 0.25)", format_interval(*mean_interval(col("wpc", n))),
         format_interval(*mean_interval(col("cpc", n))))
        for n in FACTORS
    ]  # fmt: skip
    mean = {(v, n): sum(col(v, n)) / len(results) for v in VARIANTS for n in FACTORS}
    ahead = [n for n in FACTORS if mean[("wpc", n)] > mean[("cpc", n)]]
    verdict = (
        f"WPC's probe accuracy at n = 16 is {mean[('wpc', 16)]:.3f} against {mean[('cpc', 16)]:.3f} for CPC "
        f"(n = 2: {mean[('wpc', 2)]:.3f} against {mean[('cpc', 2)]:.3f}); WPC is ahead for n in {ahead or 'none'}."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, (v, label) in enumerate((("wpc", "WPC (gradient penalty)"), ("cpc", "CPC (InfoNCE)"))):
        for r in results:
            ax.plot(FACTORS, [r[v]["probe_accuracy"][str(n)] for n in FACTORS], "o-", color=f"C{k}", alpha=0.8,
                    label=label if r is results[0] else None)  # fmt: skip
    ax.axhline(1 / K, color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", xticks=list(FACTORS), xlabel="independent factors n", ylabel="linear-probe accuracy",
           title="one line per seed")  # fmt: skip
    ax.set_xticklabels([str(n) for n in FACTORS])
    save_figure(fig, [ax], path)
