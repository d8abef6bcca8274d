"""``entrolab demo``: a short, real demonstration of the entropy core on a built-in, seeded example.

It builds a small language-model head (hidden states and an LM-head weight drawn from a fixed seed, so nothing is
downloaded), then shows what the core computes and what it saves:

1. per-token log-prob and entropy from hidden states with the fused path, against the naive
   ``logits = h @ W.T; log_softmax; softmax * log_softmax`` -- same numbers, time and peak memory side by side;
2. the entropy of the same tokens at several sampling temperatures (entropy rises with temperature);
3. the gradient identities ``d logp/dz = onehot - p`` and ``dH/dz = -p (log p + H)`` checked on the spec's worked
   example.

The main job of entrolab, the entropy lab, replaces this demo in a later release.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from entrolab import _native
from entrolab.entropy import linear_logprob_and_entropy, token_logprob_and_entropy


def _naive(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float):
    logits = hidden @ weight.T / temperature  # (N, V)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def run(*, tokens: int = 2048, hidden_size: int = 256, vocab: int = 32000, seed: int = 0) -> dict[str, float]:
    """Run the demonstration, print it, and return its measured numbers."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=gen)
    # A head whose logits have a realistic spread (a few nats of entropy per token).
    weight = torch.randn(vocab, hidden_size, generator=gen) * (2.5 / math.sqrt(hidden_size))
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    temperature = 0.9
    print(f"entrolab demo: N={tokens} tokens, H={hidden_size}, V={vocab}, temperature={temperature}")
    print(f"  {_native.status()}")

    # 1. fused vs naive, forward + backward through both outputs
    results: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]] = {}
    for name in ("naive", "entrolab fused"):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        t0 = time.perf_counter()
        if name == "naive":
            logp, ent = _naive(h, w, labels, temperature)
        else:
            logp, ent = linear_logprob_and_entropy(h, w, labels, temperature=temperature)
        grad_h, grad_w = torch.autograd.grad(logp.mean() + 0.01 * ent.mean(), (h, w))
        results[name] = (logp.detach(), ent.detach(), grad_h, grad_w, time.perf_counter() - t0)
    (lp0, h0, gh0, gw0, t_naive), (lp1, h1, gh1, gw1, t_fused) = results["naive"], results["entrolab fused"]
    logits_mib = tokens * vocab * 4 / 2**20
    print("\n1. per-token log-prob and entropy from hidden states, forward + backward")
    print(
        f"   naive: materialises {logits_mib:.0f} MiB of logits and keeps ~{2 * logits_mib:.0f} MiB for backward; "
        f"{t_naive:.3f} s"
    )
    print(f"   fused: largest temporary one (chunk, block) tile, no (N, V) tensor;               {t_fused:.3f} s")
    diffs = {
        "logp": float((lp0 - lp1).abs().max()),
        "entropy": float((h0 - h1).abs().max()),
        "grad hidden": float((gh0 - gh1).abs().max()),
        "grad weight": float((gw0 - gw1).abs().max()),
    }
    print("   max |naive - fused|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(
        f"   mean entropy {float(h1.mean()):.4f} nats (uniform would be log V = {math.log(vocab):.4f}); "
        f"mean log-prob of the labels {float(lp1.mean()):.4f}"
    )

    # 2. entropy against temperature
    print("\n2. mean token entropy against sampling temperature")
    by_temp = {}
    for t in (0.25, 0.5, 1.0, 1.5, 3.0):
        _, ent = linear_logprob_and_entropy(hidden, weight, temperature=t)
        by_temp[t] = float(ent.mean())
        bar = "#" * int(40 * by_temp[t] / math.log(vocab))
        print(f"   T={t:<4}  H={by_temp[t]:7.4f}  {bar}")

    # 3. gradient identities on the spec's worked example
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]], requires_grad=True)
    logp, ent = token_logprob_and_entropy(z, torch.tensor([1]))
    (g_lp,) = torch.autograd.grad(logp.sum(), z, retain_graph=True)
    (g_h,) = torch.autograd.grad(ent.sum(), z)
    p = torch.softmax(z.detach(), -1)
    print("\n3. gradient identities on z = [2, 1, 0, -1], y = 1 (shared/specs/performance.md section 2)")
    print(f"   p          = {[round(v, 4) for v in p[0].tolist()]}")
    print(f"   d logp/dz  = {[round(v, 4) for v in g_lp[0].tolist()]}   (onehot - p)")
    print(
        f"   dH/dz      = {[round(v, 4) for v in g_h[0].tolist()]}   (-p (log p + H)); sums to {float(g_h.sum()):.1e}"
    )
    return {
        "seconds_naive": t_naive,
        "seconds_fused": t_fused,
        **{f"maxdiff_{k}": v for k, v in diffs.items()},
        **{f"entropy_T{t}": v for t, v in by_temp.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="entrolab demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="number of tokens N (default 2048)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size V (default 32000)")
    parser.add_argument("--hidden-size", type=int, default=256, help="hidden size H (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in example (default 0)")
    args = parser.parse_args(argv)
    for name in ("tokens", "vocab", "hidden_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    run(tokens=args.tokens, hidden_size=args.hidden_size, vocab=args.vocab, seed=args.seed)
