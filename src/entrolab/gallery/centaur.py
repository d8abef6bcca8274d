"""Gallery entry ``centaur``: one cluster-entropy test-time step before each prediction, under an input shift.

A stand-in for a planner: a 2-D, 8-class problem (classes on a ring) whose classes form 2 clusters ("left" and
"right" halves: the decision that matters), an MLP classifier trained on clean inputs, then evaluated on a stream of
batches whose inputs are shifted and scaled.  Before predicting each batch, :class:`~entrolab.regularizers.
TestTimeAdapter` takes one SGD step minimising the mean cluster entropy of the previous 4 batches (never the current
one; weights reset each step).  Baselines: no adaptation, and the same step on the entropy over the 8 classes (Tent-
style).  Metrics: cluster accuracy and class accuracy on the shifted stream.  LOW CONFIDENCE reconstruction of the
method (``shared/specs/beyond_llm.md`` section 13).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab._stats import mean_interval
from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure
from entrolab.regularizers.centaur import TestTimeAdapter

TITLE = "Centaur: cluster-entropy test-time training"
PAPER = "arXiv 2503.11650"
CLAIM = (
    "One gradient step that lowers the entropy over clusters of candidate decisions, computed on recent "
    "observations, makes a planner more robust under distribution shift, without rules or cost functions."
)
VARIANTS = ("cluster_entropy", "no_adaptation", "class_entropy")
CLASSES, STREAM, BATCH, EPOCHS, QUICK_EPOCHS = 8, 60, 32, 300, 20
ASSIGNMENT = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
TTA_LR = 2.0
"""The test-time step's SGD learning rate (an open choice of the reconstruction; 0.05 changes nothing measurable)."""


def setup(quick: bool) -> str:
    epochs = QUICK_EPOCHS if quick else EPOCHS
    return (
        f"8 Gaussian classes on a ring in 2-D forming 2 clusters; MLP trained {epochs} steps on clean inputs; a "
        f"stream of {STREAM} shifted batches of {BATCH}; one SGD step (lr {TTA_LR}) on the previous 4 batches "
        "before each prediction, on the cluster entropy, on the class entropy, or none."
    )


def _sample(
    n: int, gen: torch.Generator, *, shift: float | torch.Tensor = 0.0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(CLASSES, (n,), generator=gen)
    angle = 2 * math.pi * (y.float() + 0.5) / CLASSES
    centre = torch.stack([angle.cos(), angle.sin()], 1) * 2
    x = centre + 0.45 * torch.randn(n, 2, generator=gen)
    return x * scale + shift, y


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(updates):
        x, y = _sample(128, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assignment = {"cluster_entropy": ASSIGNMENT, "class_entropy": torch.arange(CLASSES)}.get(variant)
    adapter = TestTimeAdapter(model, assignment, lr=TTA_LR, buffer_size=4) if assignment is not None else None
    cluster_hits = class_hits = total = 0
    shift = torch.tensor([0.9, 0.6])
    for _ in range(STREAM):
        x, y = _sample(BATCH, gen, shift=shift, scale=0.8)
        with torch.enable_grad():
            logits = adapter.predict(x) if adapter is not None else model(x).detach()
        pred = logits.argmax(1)
        class_hits += int((pred == y).sum())
        cluster_hits += int((ASSIGNMENT[pred] == ASSIGNMENT[y]).sum())
        total += BATCH
    return {"cluster_accuracy": cluster_hits / total, "class_accuracy": class_hits / total}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_EPOCHS if quick else EPOCHS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    col = functools.partial(column, results)

    f = functools.partial(cell, results)

    pairs = [
        ("cluster accuracy: vs no adaptation", "cluster_accuracy", "no_adaptation"),
        ("cluster accuracy: vs class-entropy step", "cluster_accuracy", "class_entropy"),
        ("class accuracy: vs no adaptation", "class_accuracy", "no_adaptation"),
    ]
    rows = [(label, f("cluster_entropy", key), f(base, key)) for label, key, base in pairs]
    n = len(results)
    ce, na, cl = (sum(col(v, "cluster_accuracy")) / n for v in VARIANTS)
    gain, half = mean_interval([a - b for a, b in zip(col("cluster_entropy", "cluster_accuracy"),
                                                      col("no_adaptation", "cluster_accuracy"))])  # fmt: skip
    if gain > half > 0 or (half == 0 and gain > 0):
        claim = "appears"
    elif gain > 0:
        claim = f"is within the seeds' noise (paired gain {gain:+.3f} ± {half:.3f})"
    else:
        claim = "does not appear"
    verdict = (
        f"Under the shift, the cluster-entropy step gives cluster accuracy {ce:.3f} against {na:.3f} without "
        f"adaptation and {cl:.3f} with the class-entropy step: the claimed robustness {claim} here."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, v in enumerate(VARIANTS):
        vals = [r[v]["cluster_accuracy"] for r in results]
        ax.scatter([k] * len(vals), vals, color=f"C{k}", label=v)
    ax.set_xticks(range(len(VARIANTS)), list(VARIANTS))
    ax.set(ylabel="cluster accuracy on the shifted stream", title="one point per seed")
    save_figure(fig, [ax], path)
