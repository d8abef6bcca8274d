"""Every registered policy loss and regularizer against plain ``ppo``, forward+backward, side by side.

One batch of ``B x T`` response tokens (default 64 x 1024 = 65,536 tokens, about 80% valid, fp32), the loss and its
backward timed per method: 200 rounds, each calling every method (and baseline) once in a freshly shuffled order, so
that the slow spells of a shared machine hit every method alike and no method always follows the same one; median and
p20/p80 over the rounds.  Baselines in the same run:
plain ``ppo`` (the target: every method within 1.5x of it), the five lines of naive PyTorch a user would write for
PPO, and verl 0.9.1's own implementations (``vanilla``, ``clip_cov``, ``kl_cov``, ``gspo``, ``cispo``) when verl is
installed, run from its source file (``import verl`` needs Ray).  SIREN reads full logits ``(B, T, V)``, a different
input, so it is timed on a smaller ``V`` and reported outside the 1.5x target.

Two heap states, each measured in ``--processes`` fresh interpreters (default 3; the table gives the median over
them, and a method's ratio is taken within each process first, so it compares like with like):

- **warm** (the target's condition): before timing, the process allocates and frees one 16 MiB block.  That is what
  any training process has done long before its loss runs (a model step allocates and frees far larger tensors), and
  it moves glibc's dynamic mmap threshold to 16 MiB and its trim threshold to 32 MiB, so the loss's temporaries are
  reused from call to call.
- **cold**: a fresh interpreter with glibc's initial thresholds (128 KiB mmap, 128 KiB trim, raised only by what the
  benchmark itself frees).  Freed 256 KiB temporaries go back to the system at the end of each call, so every call
  pays page faults again, in proportion to its peak memory; the ratios then move by tens of percent from one process
  to the next on a small machine (measured on 2 cores: ``ppo`` between 0.49 and 0.78 ms, the same method between
  1.4x and 2.6x).  Reported, not targeted.

Run: ``python bench/losses.py [--quick] [--threads N] [--processes N]``.  Prints the table, writes
``bench/results/losses.csv`` and ends with one JSON line (ratios and the machine's roofline).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _common import fmt_table, machine, percentiles, roofline, run_worker, set_threads, timeit, write_csv
from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.losses import (
    SirenAnchor,
    entropy_bonus,
    epo,
    get_policy_loss,
    kl_penalty,
    policy_losses,
    siren,
)

TARGET = 1.5


# ----------------------------------------------------------------------------------------------------- baselines
def naive_ppo(logp, old, adv, mask):
    """What a user writes by hand: PPO clip with masked mean (multiplication by the mask)."""
    ratio = torch.exp(logp - old)
    a = adv.unsqueeze(1)
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
    m = mask.to(logp.dtype)
    return (loss * m).sum() / m.sum()


class _Config(SimpleNamespace):
    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class _StripAnnotations(ast.NodeTransformer):
    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.decorator_list = []
        node.returns = None
        for arg in node.args.args + node.args.kwonlyargs:
            arg.annotation = None
        return node


def _verl_namespace() -> dict | None:
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    ns: dict[str, Any] = {"torch": torch, "Optional": Any, "Any": Any}
    tf_ns: dict[str, Any] = {"torch": torch}
    for path, names, target in (
        (root / "utils/torch_functional.py", {"masked_sum", "masked_mean"}, tf_ns),
        (
            root / "trainer/ppo/core_algos.py",
            {
                "agg_loss",
                "compute_policy_loss_vanilla",
                "compute_policy_loss_clip_cov",
                "compute_policy_loss_kl_cov",
                "compute_policy_loss_gspo",
                "compute_policy_loss_cispo",
            },
            ns,
        ),
    ):
        if not path.exists():
            return None
        tree = ast.parse(path.read_text())
        defs = [_StripAnnotations().visit(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        exec(compile(ast.fix_missing_locations(ast.Module(body=defs, type_ignores=[])), str(path), "exec"), target)
    ns["verl_F"] = SimpleNamespace(**{k: tf_ns[k] for k in ("masked_sum", "masked_mean")})
    ns["AlgoConfig"] = type("AlgoConfig", (), {})
    ns["ActorConfig"] = _Config
    return ns


def verl_baselines() -> dict[str, Any]:
    ns = _verl_namespace()
    if ns is None:
        return {}
    config = _Config(
        clip_ratio=0.2,
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,
        clip_ratio_c=3.0,
        global_batch_info={},
        policy_loss=_Config(clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0, kl_cov_ratio=2e-3, ppo_kl_coef=1.0),
    )
    out = {}
    for ours, theirs, mode in (
        ("ppo", "compute_policy_loss_vanilla", "token-mean"),
        ("clip_cov", "compute_policy_loss_clip_cov", "token-mean"),
        ("kl_cov", "compute_policy_loss_kl_cov", "token-mean"),
        ("gspo", "compute_policy_loss_gspo", "seq-mean-token-mean"),
        ("cispo", "compute_policy_loss_cispo", "token-mean"),
    ):
        fn = ns[theirs]

        def call(logp, old, adv, mask, _fn=fn, _mode=mode):
            a = adv.unsqueeze(1).expand_as(logp)
            return _fn(old, logp, a, mask.to(logp.dtype), loss_agg_mode=_mode, config=config)[0]

        out[ours] = call
    return out


# -------------------------------------------------------------------------------------------------------- driver
def make_batch(b: int, t: int, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 4
    old = logp + torch.randn(b, t, generator=g) * 0.1
    adv = torch.randn(b, generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    entropy = torch.rand(b, t, generator=g) * 2
    return logp, old, adv, mask, entropy


WARM_BLOCK = 4 << 20  # float32 elements: 16 MiB, under glibc's 32 MiB cap on the dynamic mmap threshold


def warm_heap() -> None:
    """Allocate, touch and free one 16 MiB block, as every training process has long before its loss runs."""
    block = torch.empty(WARM_BLOCK)
    block.fill_(0.0)
    del block


def worker(spec: dict) -> dict:
    """One process's interleaved timings: ``{"p20"|"p50"|"p80": {runner: seconds}}``."""
    set_threads(spec["threads"])
    if spec["heap"] == "warm":
        warm_heap()
    logp0, old, adv, mask, ent0 = make_batch(spec["batch"], spec["length"])
    logp = logp0.clone().requires_grad_(True)
    ent = ent0.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)

    methods: dict[str, Any] = {}
    for name in policy_losses():
        kw: dict[str, Any] = {"generator": gen} if name == "clip_cov" else {}
        methods[name] = lambda n=name, k=kw: get_policy_loss(n)(logp, old, adv, mask, entropy=ent0, **k).loss
    methods["ppo+dual_clip"] = lambda: get_policy_loss("ppo")(logp, old, adv, mask, dual_clip=3.0, agg="token-mean").loss
    ctl = AdaptiveEntropyCoefficient(target=10.0, init=0.01)
    ctl.observe(1.0)
    methods["entropy_bonus (controller)"] = lambda: entropy_bonus(ent, mask, coef=ctl).loss
    methods["kl_penalty (k3)"] = lambda: kl_penalty(logp, old, mask, kind="k3").loss
    methods["epo (paper)"] = lambda: epo(ent, mask, reference_entropy=1.0).loss
    methods["naive PyTorch ppo"] = lambda: naive_ppo(logp, old, adv, mask)
    verl = verl_baselines()
    runners = {**methods, **{f"verl {n}": (lambda f=fn: f(logp, old, adv, mask)) for n, fn in verl.items()}}

    # Forward+backward of every runner, one call each per round, round after round: a slow spell of this shared
    # machine then hits every method alike instead of whichever was being timed.  The order is shuffled each round
    # (seeded): what ran just before a call (its allocations, what it left in the caches) changes that call's time by
    # tens of percent here, and a fixed order would hand each method the same predecessor every time.
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = random.Random(spec.get("seed", 0))
    names = list(runners)
    for r in range(spec["rounds"] + 3):
        order.shuffle(names)
        for name in names:
            fn = runners[name]
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            dt = time.perf_counter() - t0
            logp.grad = None
            ent.grad = None
            if r >= 3:  # warm-up rounds
                times[name].append(dt)
    stats = {name: percentiles(t) for name, t in times.items()}
    return {q: {name: st[q] for name, st in stats.items()} for q in ("p20", "p50", "p80")}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, one process per heap state")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--processes", type=int, default=None, help="fresh processes per heap state (default 3)")
    parser.add_argument("--siren-vocab", type=int, default=256)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    threads = set_threads(args.threads)
    roof = roofline(quick=args.quick)
    processes = args.processes or (1 if args.quick else 3)
    spec = {"threads": threads, "batch": args.batch, "length": args.length, "rounds": 30 if args.quick else 200}
    runs: dict[str, list[dict]] = {"warm": [], "cold": []}
    for rep in range(processes):
        for heap in ("warm", "cold"):
            res = run_worker(Path(__file__), {**spec, "heap": heap, "seed": rep}, timeout=1800)
            if "error" in res:
                raise SystemExit(f"benchmark worker ({heap} heap) failed: {res['error']}")
            runs[heap].append(res)
            print(f"  process {rep + 1}/{processes}, {heap} heap: ppo {1e3 * res['p50']['ppo']:.3f} ms", flush=True)

    def across(heap: str, q: str, name: str) -> float:
        return _median([r[q][name] for r in runs[heap]])

    def ratio(heap: str, name: str, base: str = "ppo") -> float:
        return _median([r["p50"][name] / r["p50"][base] for r in runs[heap]])

    names = [n for n in runs["warm"][0]["p50"] if not n.startswith("verl ")]
    verl_names = [n[5:] for n in runs["warm"][0]["p50"] if n.startswith("verl ")]
    rows = []
    for name in names:
        ours_vs = "ppo+dual_clip" if name == "ppo" else name
        has_verl = name in verl_names
        rows.append(
            {
                "method": name,
                "p50_ms": 1e3 * across("warm", "p50", name),
                "p20_ms": 1e3 * across("warm", "p20", name),
                "p80_ms": 1e3 * across("warm", "p80", name),
                "x_ppo": ratio("warm", name),
                "x_ppo_cold": ratio("cold", name),
                "cold_ms": 1e3 * across("cold", "p50", name),
                "verl_ms": 1e3 * across("warm", "p50", f"verl {name}") if has_verl else None,
                "verl_over_ours": ratio("warm", f"verl {name}", ours_vs) if has_verl else None,
            }
        )

    # SIREN reads (B, T, V) logits: a different input, timed on a smaller vocabulary, outside the 1.5x target
    logp0, _, _, mask, _ = make_batch(args.batch, args.length)
    b_s, t_s, v_s = args.batch, max(1, args.length // 4), args.siren_vocab
    logits = torch.randn(b_s, t_s, v_s, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    m_s = mask[:, :t_s]
    anchor = SirenAnchor(1.0)
    reps = 30 if args.quick else 200
    ts = timeit(lambda: siren(logits, m_s, anchor=anchor).loss.backward(), reps=max(3, reps // 4), warmup=1)
    rows.append(
        {
            "method": f"siren (logits {b_s}x{t_s}x{v_s})",
            "p50_ms": 1e3 * ts["p50"],
            "p20_ms": 1e3 * ts["p20"],
            "p80_ms": 1e3 * ts["p80"],
            "x_ppo": None,
            "x_ppo_cold": None,
            "cold_ms": None,
            "verl_ms": None,
            "verl_over_ours": None,
        }
    )
    tokens = logp0.numel()
    print()
    print(
        f"{tokens} tokens ({int(mask.sum())} valid), fp32, forward+backward, {threads} threads; median over "
        f"{processes} process(es) per heap state"
    )
    print(
        fmt_table(
            rows,
            [
                ("method", "method"),
                ("p50_ms", "warm ms"),
                ("p20_ms", "p20"),
                ("p80_ms", "p80"),
                ("x_ppo", "x ppo"),
                ("cold_ms", "cold ms"),
                ("x_ppo_cold", "x ppo cold"),
                ("verl_ms", "verl ms"),
                ("verl_over_ours", "verl / ours"),
            ],
        )
    )
    path = write_csv("losses.csv", [{**r, "tokens": tokens, "threads": threads, "processes": processes} for r in rows])
    targeted = {r["method"]: r["x_ppo"] for r in rows if r["x_ppo"] is not None and r["method"] != "naive PyTorch ppo"}
    cold = {r["method"]: r["x_ppo_cold"] for r in rows if r["method"] in targeted}
    worst = max(targeted, key=lambda k: targeted[k])
    worst_cold = max(cold, key=lambda k: cold[k])
    summary = {
        "bench": "losses",
        "tokens": tokens,
        "dtype": "fp32",
        "threads": threads,
        "processes": processes,
        "x_ppo": {k: round(v, 3) for k, v in targeted.items()},
        "worst": worst,
        "worst_x_ppo": round(targeted[worst], 3),
        "target_x_ppo": TARGET,
        "meets_target": targeted[worst] <= TARGET,
        "x_ppo_cold": {k: round(v, 3) for k, v in cold.items()},
        "worst_cold": worst_cold,
        "worst_x_ppo_cold": round(cold[worst_cold], 3),
        "ppo_ms_per_process": {h: [round(1e3 * r["p50"]["ppo"], 3) for r in runs[h]] for h in ("warm", "cold")},
        "x_ppo_per_process": {
            h: {n: [round(r["p50"][n] / r["p50"]["ppo"], 3) for r in runs[h]] for n in targeted}
            for h in ("warm", "cold")
        },
        "naive_over_ppo": round(ratio("warm", "naive PyTorch ppo"), 3),
        "verl_over_ours": {r["method"]: round(r["verl_over_ours"], 3) for r in rows if r["verl_over_ours"]},
        "roofline": roof,
        "machine": machine(),
        "csv": str(path),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
