"""Per-token log-prob + entropy, side by side: naive PyTorch, TRL and verl (when installed), and entrolab.

(a) from materialised logits ``(N, V)``; (b) from hidden states ``(N, H)`` and the LM head ``(V, H)``.  Forward and
forward+backward, time (median of repeated calls, p20/p80) and peak extra memory (RSS of a fresh process above its
inputs), fp32 and bf16.  Every row is also given as a percentage of its floor on this machine, measured in the same
run: ``N V bytes / BW_read`` for (a) forward, ``N V (2 bytes + bytes) / BW_read`` for (a) forward+backward,
``2 N H V / F`` and ``8 N H V / F`` for (b) (``shared/specs/performance.md`` section 5).

Run: ``python bench/entropy.py [--quick] [--full] [--threads N]``.  Prints one table per part, writes
``bench/results/entropy.csv`` and ends with one JSON line (ratios against each baseline and the roofline).
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _common import (
    current_rss_bytes,
    fmt_table,
    machine,
    peak_rss_bytes,
    reset_peak_rss,
    roofline,
    run_worker,
    set_threads,
    timeit,
    write_csv,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEMPERATURE = 0.9


# ----------------------------------------------------------------------------------------------- implementations
def naive_from_logits(z, labels):
    """What a user writes: log_softmax + gather, softmax * log_softmax, in float32."""
    logp_all = torch.log_softmax(z.float() / TEMPERATURE, -1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def ours_from_logits(z, labels):
    from entrolab.entropy import token_logprob_and_entropy

    return token_logprob_and_entropy(z, labels, temperature=TEMPERATURE)


def trl_from_logits():
    try:
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    except Exception:
        return None

    def fn(z, labels):
        zt = z / TEMPERATURE
        return selective_log_softmax(zt, labels), entropy_from_logits(zt)

    return fn


def _verl_source(relative: str) -> Path | None:
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def _verl_functions(relative: str, names: list[str]) -> dict | None:
    """verl's own functions, taken from its installed source file (``import verl`` needs Ray and tensordict)."""
    path = _verl_source(relative)
    if path is None:
        return None
    tree = ast.parse(path.read_text())
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    namespace = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def verl_from_logits():
    """verl's CPU path (no flash-attn): logprobs_from_logits_v2 (a row loop) and entropy_from_logits_with_chunking."""
    fns = _verl_functions("utils/torch_functional.py", ["logprobs_from_logits_v2", "entropy_from_logits_with_chunking"])
    if fns is None:
        return None

    def fn(z, labels):
        zt = z / TEMPERATURE
        return fns["logprobs_from_logits_v2"](zt, labels), fns["entropy_from_logits_with_chunking"](zt)

    return fn


def naive_fused(h, w, labels):
    return naive_from_logits(h @ w.T, labels)


def ours_fused(h, w, labels):
    from entrolab.entropy import linear_logprob_and_entropy

    return linear_logprob_and_entropy(h, w, labels, temperature=TEMPERATURE)


def verl_fused():
    """verl's FusedLinearForPPO (torch backend).  Its module needs only torch, but ``import verl`` pulls in Ray, so the
    installed source file is loaded on its own."""
    path = _verl_source("utils/experimental/torch_functional.py")
    if path is None:
        return None
    mod_spec = importlib.util.spec_from_file_location("_verl_torch_functional", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)

    def fn(h, w, labels):
        return mod.FusedLinearForPPOFunction.apply(h, w, labels, TEMPERATURE, 512)

    return fn


IMPLS = {
    "logits": {
        "naive": lambda: naive_from_logits,
        "trl": trl_from_logits,
        "verl": verl_from_logits,
        "entrolab": lambda: ours_from_logits,
    },
    "fused": {"naive": lambda: naive_fused, "verl": verl_fused, "entrolab": lambda: ours_fused},
}


# ----------------------------------------------------------------------------------------------- one measurement
def worker(spec: dict) -> dict:
    set_threads(spec["threads"])
    fn = IMPLS[spec["part"]][spec["impl"]]()
    if fn is None:
        return {"error": "not installed"}
    gen = torch.Generator().manual_seed(0)
    n, v, dtype = spec["N"], spec["V"], DTYPES[spec["dtype"]]
    labels = torch.randint(0, v, (n,), generator=gen)
    if spec["part"] == "logits":
        inputs = [(torch.randn(n, v, generator=gen) * 2).to(dtype)]
    else:
        hdim = spec["H"]
        inputs = [
            torch.randn(n, hdim, generator=gen).to(dtype),
            (torch.randn(v, hdim, generator=gen) / hdim**0.5).to(dtype),
        ]
    backward = spec["mode"] == "fwd+bwd"
    g1, g2 = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    for t in inputs:
        t.requires_grad_(backward)
    if spec["impl"] == "entrolab":  # load the native kernels (a one-off, cached) before measuring
        from entrolab import _native

        _native.get()
    gc.collect()
    reset_peak_rss()  # the inputs' construction temporaries are not the implementation's
    base = current_rss_bytes()

    def step():
        if backward:
            lp, ent = fn(*inputs, labels)
            ((lp.float() * g1).sum() + (ent.float() * g2).sum()).backward()
            for t in inputs:
                t.grad = None
        else:
            with torch.no_grad():
                fn(*inputs, labels)

    # Adaptive repetitions: a first (warm-up) call sizes the run, so fast implementations get a stable median of
    # several calls while slow baselines (tens of seconds) are timed once.
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    if first > spec["budget_s"]:
        times = {"p20": first, "p50": first, "p80": first}
    else:
        reps = max(1, min(spec["reps"], int(spec["budget_s"] / max(first, 1e-6))))
        times = timeit(step, reps=reps, warmup=0)
    return {**times, "peak_extra_bytes": max(0, peak_rss_bytes() - base)}


# ----------------------------------------------------------------------------------------------- driver
def floor_seconds(row: dict, roof: dict) -> float:
    n, v = row["N"], row["V"]
    nbytes = 4 if row["dtype"] == "fp32" else 2
    if row["part"] == "logits":
        traffic = n * v * nbytes * (1 if row["mode"] == "fwd" else 3)
        return traffic / roof["bw_read"]
    flops = (2 if row["mode"] == "fwd" else 8) * n * row["H"] * v
    return flops / roof["flops_fp32" if row["dtype"] == "fp32" else "flops_bf16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only (a minute)")
    parser.add_argument("--full", action="store_true", help="the whole grid, fused N = 8192 and H = 2048 included")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parts", default="logits,fused", help="comma-separated: logits, fused")
    parser.add_argument("--csv", default="entropy.csv", help="file name under bench/results/")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    threads = set_threads(args.threads)
    roof = roofline(quick=args.quick)
    info = machine()
    if args.quick:
        logit_shapes = [(2048, 32768)]
        fused_shapes = [(1024, 32768, 896)]
    else:
        logit_shapes = [(n, v) for n in (2048, 4096, 8192) for v in (32768, 151936)]
        fused_shapes = [(2048, v, h) for v in (32768, 151936) for h in (896, 2048)] + [(8192, 151936, 896)]
        if args.full:
            fused_shapes += [(8192, v, h) for v in (32768, 151936) for h in (896, 2048) if (v, h) != (151936, 896)]
    rows = []
    parts = args.parts.split(",")
    jobs = []
    if "logits" in parts:
        jobs += [("logits", n, v, None) for n, v in logit_shapes]
    if "fused" in parts:
        jobs += [("fused", n, v, h) for n, v, h in fused_shapes]
    for part, n, v, h in jobs:
        for dtype in DTYPES:
            for mode in ("fwd", "fwd+bwd"):
                for impl in IMPLS[part]:
                    row = {"part": part, "impl": impl, "N": n, "V": v, "H": h, "dtype": dtype, "mode": mode}
                    spec = {**row, "threads": threads, "reps": 5, "budget_s": 20.0}
                    res = run_worker(Path(__file__), spec, timeout=1800)
                    row.update(res)
                    if "p50" in row:
                        row["floor_s"] = floor_seconds(row, roof)
                        row["pct_floor"] = 100 * row["floor_s"] / row["p50"]
                        row["peak_extra_MiB"] = row.pop("peak_extra_bytes") / 2**20
                    rows.append(row)
                    status = f"{row['p50']:.4f} s" if "p50" in row else row.get("error")
                    print(f"  {part:6s} {impl:8s} N={n} V={v} H={h} {dtype} {mode:7s} -> {status}", flush=True)
    # ratios: baseline time / entrolab time, baseline memory / entrolab memory, per configuration
    ratios = {}
    for row in rows:
        if row["impl"] == "entrolab" or "p50" not in row:
            continue
        key = (row["part"], row["N"], row["V"], row["H"], row["dtype"], row["mode"])
        ours = next(
            (
                r
                for r in rows
                if r["impl"] == "entrolab" and (r["part"], r["N"], r["V"], r["H"], r["dtype"], r["mode"]) == key
            ),
            None,
        )
        if ours is None or "p50" not in ours:
            continue
        row["speedup_of_entrolab"] = row["p50"] / ours["p50"]
        row["memory_ratio"] = row["peak_extra_MiB"] / max(ours["peak_extra_MiB"], 1e-9)
        name = (
            f"{row['part']}/{row['impl']}/N{row['N']}/V{row['V']}"
            + (f"/H{row['H']}" if row["H"] else "")
            + f"/{row['dtype']}/{row['mode']}"
        )
        ratios[name] = {"speedup": round(row["speedup_of_entrolab"], 3), "memory_ratio": round(row["memory_ratio"], 2)}
    cols = [
        ("impl", "impl"),
        ("N", "N"),
        ("V", "V"),
        ("H", "H"),
        ("dtype", "dtype"),
        ("mode", "mode"),
        ("p50", "p50 s"),
        ("p20", "p20 s"),
        ("p80", "p80 s"),
        ("peak_extra_MiB", "peak extra MiB"),
        ("pct_floor", "% of floor"),
        ("speedup_of_entrolab", "entrolab speedup"),
        ("error", "note"),
    ]
    for part, title in (("logits", "(a) from logits"), ("fused", "(b) fused from hidden states")):
        sel = [r for r in rows if r["part"] == part]
        if sel:
            print(
                f"\n{title}  [threads={threads}, BW_read={roof['bw_read'] / 1e9:.1f} GB/s, "
                f"F32={roof['flops_fp32'] / 1e9:.0f} GFLOP/s, F_bf16={roof['flops_bf16'] / 1e9:.0f} GFLOP/s]"
            )
            print(fmt_table(sel, cols))
    ours_pct = {
        f"{r['part']}/N{r['N']}/V{r['V']}" + (f"/H{r['H']}" if r["H"] else "") + f"/{r['dtype']}/{r['mode']}": round(
            r["pct_floor"], 1
        )
        for r in rows
        if r["impl"] == "entrolab" and "pct_floor" in r
    }
    out_rows = [{**info, "threads": threads, "device": "cpu", **r} for r in rows]
    if not args.quick:
        write_csv(args.csv, out_rows)
    print(
        json.dumps(
            {
                "bench": "entropy",
                "threads": threads,
                **info,
                "roofline": roof,
                "ratios": ratios,
                "entrolab_pct_of_floor": ours_pct,
            }
        )
    )


if __name__ == "__main__":
    main()
