"""Gallery entry ``kecor``: active learning by the kernel coding rate of NTK features, against predictive entropy
and random choice.

The spec's demo (``shared/specs/beyond_llm.md`` section 2): a ``make_classification`` pool of 5,000 points (20
features, 3 classes) and a test set of 2,000; 20 initial labels; a proxy MLP (20 -> 64 -> 3) retrained on the
labelled set each round; 8 rounds of 20 picks from 1,000 random unlabelled candidates by (a) KECOR's greedy log-det
on the NTK kernel of the proxy's last two layers (random projection to 256 dims) conditioned on the labelled set,
(b) the largest predictive entropy, (c) random.  Metric: test accuracy after each round and its mean over the
rounds (the area under the learning curve).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.gallery._common import cell, column, plot_seed_curves, pyplot, run_variants, save_figure
from entrolab.selection import kecor_select, ntk_features

TITLE = "KECOR: batch active learning by the kernel coding rate"
PAPER = "arXiv 2307.07942"
CLAIM = (
    "Selecting the batch that maximises the coding rate of (empirical NTK) features, conditioned on what is already "
    "labelled, picks informative and diverse samples and learns faster than entropy-based or random acquisition."
)
VARIANTS = ("kecor", "entropy", "random")
ROUNDS, PER_ROUND, QUICK_ROUNDS, CANDIDATES = 8, 20, 2, 1000


def setup(quick: bool) -> str:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    return (
        f"make_classification pool of 5,000 (20 features, 3 classes), 20 initial labels, {rounds} rounds of "
        f"{PER_ROUND} picks from {CANDIDATES} candidates; proxy MLP retrained each round; KECOR (NTK of the last two "
        "layers, 256-d projection, sigma 0.1, conditioned on the labelled set) vs predictive entropy vs random."
    )


def _fit(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.SiLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    from sklearn.datasets import make_classification

    x_all, y_all = make_classification(7000, 20, n_informative=10, n_classes=3, n_clusters_per_class=2,
                                       random_state=seed)  # fmt: skip
    x_all = torch.tensor(x_all, dtype=torch.float32)
    y_all = torch.tensor(y_all)
    pool_x, pool_y, test_x, test_y = x_all[:5000], y_all[:5000], x_all[5000:], y_all[5000:]
    gen = torch.Generator().manual_seed(seed)
    labelled = torch.randperm(5000, generator=gen)[:20]
    curve = []
    for r in range(updates + 1):
        model = _fit(pool_x[labelled], pool_y[labelled], seed + r)
        with torch.no_grad():
            curve.append(float((model(test_x).argmax(1) == test_y).float().mean()))
        if r == updates:
            break
        free = torch.ones(5000, dtype=torch.bool)
        free[labelled] = False
        cand = free.nonzero().squeeze(1)
        cand = cand[torch.randperm(cand.numel(), generator=gen)[:CANDIDATES]]
        if variant == "random":
            picks = cand[:PER_ROUND]
        elif variant == "entropy":
            with torch.no_grad():
                p = torch.softmax(model(pool_x[cand]), -1)
            h = -(p * p.clamp_min(1e-12).log()).sum(-1)
            picks = cand[h.topk(PER_ROUND).indices]
        else:
            last_two = nn.Sequential(*list(model.children())[1:])  # the SiLU and the output layer
            with torch.no_grad():
                hidden = model[0](pool_x)
            feats = ntk_features(last_two, hidden[torch.cat([labelled, cand])], projection_dim=256, generator=gen)
            feats = feats.double() / feats.norm(dim=1).mean()
            f_l, f_c = feats[: labelled.numel()], feats[labelled.numel() :]
            sigma = 0.1
            # the candidates' kernel conditioned on the labelled points, through the features: K_C - K_CL (K_LL +
            # sigma^2 I)^-1 K_LC = F_C (I - F_L^T (F_L F_L^T + sigma^2 I)^-1 F_L) F_C^T
            inner = torch.eye(f_l.shape[1], dtype=torch.float64) - f_l.T @ torch.linalg.solve(
                f_l @ f_l.T + sigma**2 * torch.eye(f_l.shape[0], dtype=torch.float64), f_l
            )
            k_cond = f_c @ inner @ f_c.T
            k_cond = (k_cond + k_cond.T) / 2
            idx, _ = kecor_select(k_cond, PER_ROUND, sigma=sigma)
            picks = cand[idx]
        labelled = torch.cat([labelled, picks])
    return {"curve": curve, "mean_accuracy": sum(curve[1:]) / max(1, len(curve) - 1), "final_accuracy": curve[-1]}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_ROUNDS if quick else ROUNDS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    col = functools.partial(column, results)

    f = functools.partial(cell, results)

    rows = [
        ("mean test accuracy over the rounds: vs entropy", f("kecor", "mean_accuracy"), f("entropy", "mean_accuracy")),
        ("mean test accuracy over the rounds: vs random", f("kecor", "mean_accuracy"), f("random", "mean_accuracy")),
        ("final test accuracy: vs random", f("kecor", "final_accuracy"), f("random", "final_accuracy")),
    ]
    mean = {v: sum(col(v, "mean_accuracy")) / len(results) for v in VARIANTS}
    verdict = (
        f"Area under the learning curve (mean accuracy over the rounds): KECOR {mean['kecor']:.3f}, predictive "
        f"entropy {mean['entropy']:.3f}, random {mean['random']:.3f}."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    plot_seed_curves(ax, results, VARIANTS, lambda r: range(len(r[VARIANTS[0]]["curve"])))
    ax.set(xlabel="round (20 labels each)", ylabel="test accuracy", title="one line per seed")
    save_figure(fig, [ax], path)
