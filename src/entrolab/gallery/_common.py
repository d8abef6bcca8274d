"""Plumbing shared by the gallery entries: running every variant of a demo on one seed, and saving a figure."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from entrolab._stats import format_interval, mean_interval

__all__ = [
    "cell",
    "column",
    "markov2_entropy",
    "markov2_sample",
    "markov2_table",
    "plot_seed_curves",
    "plot_seed_points",
    "pyplot",
    "run_variants",
    "save_figure",
]


def run_variants(
    train_variant: Callable[..., dict[str, Any]], variants: Sequence[str], *, seed: int, updates: int
) -> dict[str, Any]:
    """``{"seed", "updates", <variant>: train_variant(variant, seed=, updates=) + its "seconds"}``."""
    out: dict[str, Any] = {"seed": seed, "updates": updates}
    for v in variants:
        t0 = time.perf_counter()
        out[v] = train_variant(v, seed=seed, updates=updates)
        out[v]["seconds"] = time.perf_counter() - t0
    return out


def save_figure(fig: Any, axes: Sequence[Any], path: Path) -> None:
    """Legends (where something is labelled), grids, tight layout, a 100-dpi PNG, and the figure closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (figures are written to files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def column(results: Sequence[dict[str, Any]], variant: str, key: str) -> list[float]:
    """``results[i][variant][key]`` over the seeds."""
    return [r[variant][key] for r in results]


def cell(results: Sequence[dict[str, Any]], variant: str, key: str, digits: int = 3) -> str:
    """The mean and 95% interval over the seeds of ``results[i][variant][key]``, formatted for a table."""
    return format_interval(*mean_interval(column(results, variant, key)), digits=digits)


def plot_seed_curves(
    ax: Any, results: Sequence[dict[str, Any]], variants: Sequence[str], x: Callable[[dict[str, Any]], Any],
    *, key: str = "curve", fmt: str = "-",
) -> None:  # fmt: skip
    """One line per seed and variant (``results[i][variant][key]`` against ``x(results[i])``), a colour per variant,
    the variant named once in the legend."""
    for k, v in enumerate(variants):
        for r in results:
            ax.plot(x(r), r[v][key], fmt, color=f"C{k}", alpha=0.8, label=v if r is results[0] else None)


def markov2_table(vocab: int, gen: torch.Generator, *, sharpness: float = 3.0) -> torch.Tensor:
    """A random order-2 transition table ``(V, V, V)`` (``softmax`` of N(0, sharpness^2) logits: each context
    continues with one of a few tokens), the synthetic text of the tiny-LM entries."""
    return torch.softmax(torch.randn(vocab, vocab, vocab, generator=gen) * sharpness, -1)


def markov2_sample(table: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` sequences ``(n, length + 1)`` from ``table``, started by two uniform tokens."""
    vocab = table.shape[0]
    seq = [torch.randint(vocab, (n,), generator=gen), torch.randint(vocab, (n,), generator=gen)]
    for _ in range(length - 1):
        seq.append(torch.multinomial(table[seq[-2], seq[-1]], 1, generator=gen).squeeze(1))
    return torch.stack(seq, 1)


def markov2_entropy(table: torch.Tensor, data: torch.Tensor) -> float:
    """The source's conditional entropy (nats per token) averaged over the contexts of ``data``: the floor of a
    model's cross-entropy on those positions."""
    p = table[data[:, :-2], data[:, 1:-1]]  # (n, length - 1, V)
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


def plot_seed_points(
    ax: Any, results: Sequence[dict[str, Any]], variants: Sequence[str], *, key: str = "curve", fmt: str = "-",
    y: Callable[[float], float] = float,
) -> None:  # fmt: skip
    """Like :func:`plot_seed_curves` for curves stored as ``[(x, y), ...]`` pairs (``y`` maps the plotted value);
    ``results`` is not modified."""
    for k, v in enumerate(variants):
        for r in results:
            points = r[v][key]
            ax.plot([p[0] for p in points], [y(p[1]) for p in points], fmt, color=f"C{k}", alpha=0.8,
                    label=v if r is results[0] else None)  # fmt: skip
