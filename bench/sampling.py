"""Top-H and the truncation warpers a user would otherwise use, per decoding step, side by side.

For B in {1, 64} and V in {32768, 151936}: entrolab's ``TopHLogitsProcessor`` over the whole vocabulary (exact) and
with ``top_n=100``, against transformers' ``TopHLogitsWarper`` (its top-100), ``TopPLogitsWarper`` (a full sort) and
``MinPLogitsWarper``, each called as ``generate()`` calls it (scores in, filtered scores out).  Two kinds of rows:
``zipf`` (logits ``-1.1 log(rank)`` plus noise, shuffled: 6-7 nats of entropy, a long-tailed
next-token distribution) and ``flat`` (``2 * randn``: about 10 nats, the worst case for an exact Top-H, whose kept
prefix then runs to thousands of tokens).  Median of repeated calls; ``read`` is one pass over the logits.

Run: ``python bench/sampling.py [--quick] [--threads N]``.  Prints the table, writes ``bench/results/sampling.csv``
and ends with one JSON line (ratios and the machine's roofline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _common import fmt_table, machine, percentiles, roofline, set_threads, timeit, write_csv
from entrolab.sampling.hf import TopHLogitsProcessor


def make_logits(kind: str, b: int, v: int, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "flat":
        return torch.randn(b, v, generator=g) * 2
    ranks = torch.arange(1, v + 1, dtype=torch.float32)
    z = -1.1 * ranks.log() + 0.3 * torch.randn(b, v, generator=g)
    perm = torch.argsort(torch.rand(b, v, generator=g), dim=-1)
    return z.gather(-1, perm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, B = 64 and V = 151936 only")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=0.4)
    args = parser.parse_args()
    import transformers

    threads = set_threads(args.threads)
    roof = roofline(quick=True)
    reps = 3 if args.quick else 9
    shapes = [(64, 151936)] if args.quick else [(1, 32768), (1, 151936), (64, 32768), (64, 151936)]
    ids = torch.zeros(1, 1, dtype=torch.long)
    runners: dict[str, Any] = {
        "entrolab top-H (full vocabulary)": TopHLogitsProcessor(args.alpha),
        "entrolab top-H (top_n=100)": TopHLogitsProcessor(args.alpha, top_n=100),
        "transformers TopHLogitsWarper": transformers.TopHLogitsWarper(top_h=args.alpha),
        "transformers TopPLogitsWarper (0.9)": transformers.TopPLogitsWarper(top_p=0.9),
        "transformers MinPLogitsWarper (0.1)": transformers.MinPLogitsWarper(min_p=0.1),
    }
    rows = []
    for kind in ("zipf", "flat"):
        for b, v in shapes:
            scores = make_logits(kind, b, v)
            t_read = timeit(lambda s=scores: s.sum(), reps=reps)["p50"]
            logp = torch.log_softmax(scores, -1)
            entropy = float(-(logp.exp() * logp).sum(-1).mean())
            # interleaved: every round calls each processor once, so machine noise hits all of them alike
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for rnd in range(reps + 1):
                for name, proc in runners.items():
                    t0 = time.perf_counter()
                    proc(ids, scores)
                    if rnd:  # round 0 warms up
                        samples[name].append(time.perf_counter() - t0)
            times = {name: percentiles(t)["p50"] for name, t in samples.items()}
            for name, proc in runners.items():
                kept = float(torch.isfinite(proc(ids, scores)).sum(-1).float().mean())
                rows.append(
                    {
                        "rows": kind,
                        "B": b,
                        "V": v,
                        "entropy_nats": entropy,
                        "method": name,
                        "ms": 1e3 * times[name],
                        "x_read": times[name] / t_read,
                        "kept_tokens": kept,
                    }
                )
                print(f"  {kind:5s} B={b:3d} V={v:6d} {name:38s} {1e3 * times[name]:9.2f} ms", flush=True)
    print()
    print(f"alpha = {args.alpha}, fp32, {threads} threads; x read = time / one pass over the logits")
    print(
        fmt_table(
            rows,
            [
                ("rows", "rows"),
                ("B", "B"),
                ("V", "V"),
                ("entropy_nats", "H nats"),
                ("method", "method"),
                ("ms", "ms / step"),
                ("x_read", "x read"),
                ("kept_tokens", "kept"),
            ],
        )
    )
    path = write_csv("sampling.csv", [{**r, "threads": threads} for r in rows])

    def ms(kind: str, b: int, v: int, name: str) -> float:
        return next(r["ms"] for r in rows if (r["rows"], r["B"], r["V"], r["method"]) == (kind, b, v, name))

    ratios = {}
    for kind in ("zipf", "flat"):
        for b, v in shapes:
            hf_h = ms(kind, b, v, "transformers TopHLogitsWarper")
            hf_p = ms(kind, b, v, "transformers TopPLogitsWarper (0.9)")
            full = ms(kind, b, v, "entrolab top-H (full vocabulary)")
            top100 = ms(kind, b, v, "entrolab top-H (top_n=100)")
            ratios[f"{kind} B={b} V={v}"] = {
                "top100_over_hf_toph": round(top100 / hf_h, 3),
                "full_over_hf_toph": round(full / hf_h, 3),
                "hf_topp_over_full": round(hf_p / full, 2),
            }
    summary = {
        "bench": "sampling",
        "alpha": args.alpha,
        "threads": threads,
        "ratios": ratios,
        "targets": {"top100_over_hf_toph": "<= 1", "full_over_hf_toph": "<= 2", "hf_topp_over_full": ">= 10"},
        "roofline": roof,
        "machine": machine(),
        "csv": str(path),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
