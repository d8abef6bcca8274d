"""Gallery entry ``sse``: multi-query associative recall with dense, row-sparse and state-expanded linear attention.

The spec's demo (``shared/specs/beyond_llm.md`` section 18), simplified to fit one layer on a CPU: each write token
carries a key and its value (embedding ``E_key[k] + E_value[v] + E_write``), distinct keys per sequence; then
queries of half of the stored keys (``E_key[k] + E_query``); the target at a query is the value stored with its key.
One token-mixing layer with a residual, a LayerNorm and a linear head over the values, width 64, one head (state
64 x 64 per partition), Adam 3e-3, batch 32, the number of pairs drawn per batch from {16, 32, 64}; recall accuracy
on held-out sequences for each number of pairs.  Variants at equal per-partition state size:

- ``dense``: gated linear attention (every state row written by every token);
- ``row_sparse``: only the top-8 rows of the softmax key are written;
- ``sse``: row-sparse plus 4 routed partitions (one per token, rank-8 deltas), with the load-balancing loss at 0.01.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure
from entrolab.nn import SparseStateExpansion

TITLE = "Sparse State Expansion: associative recall with row-sparse writes and routed state partitions"
PAPER = "arXiv 2507.16577"
CLAIM = (
    "Writing only the top-k rows of the state (keys read as classifiers) and routing tokens to expanded state "
    "partitions reduces interference, so recall degrades more slowly as the number of stored pairs grows: "
    "SSE >= row-sparse >= dense."
)
VARIANTS = ("sse", "row_sparse", "dense")
PAIRS = (16, 32, 64)
KEYS, VALUES, WIDTH, BATCH, LR, STEPS, QUICK_STEPS, ROW_TOP_K = 128, 32, 64, 32, 3e-3, 1000, 4, 8


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"one-layer recall over {KEYS} keys and {VALUES} values, width {WIDTH}, {steps} Adam steps of batch {BATCH} "
        f"with {list(PAIRS)} pairs; dense gated linear attention, top-{ROW_TOP_K} row-sparse writes, and SSE "
        f"(row-sparse + 4 routed partitions); recall accuracy per number of pairs on 512 held-out sequences each."
    )


class _Recall(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        self.key = nn.Embedding(KEYS, WIDTH)
        self.value = nn.Embedding(VALUES, WIDTH)
        self.kind = nn.Embedding(2, WIDTH)  # 0: write, 1: query
        self.mix = SparseStateExpansion(
            WIDTH, num_heads=1, num_partitions=4 if variant == "sse" else 0, top_partitions=1,
            row_top_k=None if variant == "dense" else ROW_TOP_K, low_rank=8,
        )  # fmt: skip
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VALUES)

    def forward(self, keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, Any]:
        writes = self.key(keys) + self.value(values) + self.kind.weight[0]
        asks = self.key(queries) + self.kind.weight[1]
        x = torch.cat([writes, asks], 1)
        out = self.mix(x, chunk=32)
        h = self.norm(x + out.output)
        return self.head(h[:, keys.shape[1] :]), out.aux_loss


def _batch(n: int, pairs: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    keys = torch.rand(n, KEYS, generator=gen).argsort(1)[:, :pairs]  # distinct keys per sequence
    values = torch.randint(VALUES, (n, pairs), generator=gen)
    ask = torch.rand(n, pairs, generator=gen).argsort(1)[:, : pairs // 2]
    return keys, values, torch.gather(keys, 1, ask), torch.gather(values, 1, ask)


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _Recall(variant)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    curve = []
    for _ in range(updates):
        pairs = PAIRS[int(torch.randint(len(PAIRS), (1,), generator=gen))]
        keys, values, queries, targets = _batch(BATCH, pairs, gen)
        logits, aux = model(keys, values, queries)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VALUES), targets.reshape(-1)) + 0.01 * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(float(loss.detach()))
    accuracy = {}
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for pairs in PAIRS:
            keys, values, queries, targets = _batch(512, pairs, eval_gen)
            logits, _ = model(keys, values, queries)
            accuracy[str(pairs)] = float((logits.argmax(-1) == targets).float().mean())
    return {"accuracy": accuracy, "curve": curve[:: max(updates // 100, 1)]}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_STEPS if quick else STEPS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    flat = [{v: {f"acc{p}": r[v]["accuracy"][str(p)] for p in PAIRS} for v in VARIANTS} for r in results]
    rows = []
    for p in PAIRS:
        rows.append((f"recall accuracy, {p} pairs: SSE vs dense", cell(flat, "sse", f"acc{p}"),
                     cell(flat, "dense", f"acc{p}")))  # fmt: skip
        rows.append((f"... row-sparse vs dense, {p} pairs", cell(flat, "row_sparse", f"acc{p}"),
                     cell(flat, "dense", f"acc{p}")))  # fmt: skip

    def mean(v: str, p: int) -> float:
        return sum(column(flat, v, f"acc{p}")) / len(flat)

    top = PAIRS[-1]
    order = mean("sse", top) >= mean("row_sparse", top) >= mean("dense", top)
    verdict = (
        f"At {top} pairs: SSE {mean('sse', top):.3f}, row-sparse {mean('row_sparse', top):.3f}, dense "
        f"{mean('dense', top):.3f} (chance {1 / VALUES:.3f}); "
        + ("the claimed ordering SSE >= row-sparse >= dense holds." if order else "the claimed ordering does not hold.")
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, v in enumerate(VARIANTS):
        for r in results:
            ax.plot(PAIRS, [r[v]["accuracy"][str(p)] for p in PAIRS], "o-", color=f"C{k}", alpha=0.8,
                    label=v if r is results[0] else None)  # fmt: skip
    ax.axhline(1 / VALUES, color="grey", ls=":", label="chance")
    ax.set(xlabel="stored pairs", ylabel="recall accuracy", xscale="log", title="one line per seed")
    ax.set_xticks(PAIRS, [str(p) for p in PAIRS])
    save_figure(fig, [ax], path)
