"""Every registered policy loss and regularizer against plain ``ppo``, forward+backward, side by side.

One batch of ``B x T`` response tokens (default 64 x 1024 = 65,536 tokens, about 80% valid, fp32), the loss and its
backward timed per method: 200 rounds, each calling every method (and baseline) once in turn, so that the slow
spells of a shared machine hit every method alike; median and p20/p80 over the rounds.  Baselines in the same run:
plain ``ppo`` (the target:
every method within 1.5x of it), the five lines of naive PyTorch a user would write for PPO, and verl 0.9.1's own
implementations (``vanilla``, ``clip_cov``, ``kl_cov``, ``gspo``, ``cispo``) when verl is installed, run from its
source file (``import verl`` needs Ray).  SIREN reads full logits ``(B, T, V)``, a different input, so it is timed on
a smaller ``V`` and reported outside the 1.5x target.

Run: ``python bench/losses.py [--quick] [--threads N]``.  Prints the table, writes ``bench/results/losses.csv`` and
ends with one JSON line (ratios and the machine's roofline).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _common import fmt_table, machine, percentiles, roofline, set_threads, timeit, write_csv
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--siren-vocab", type=int, default=256)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    roof = roofline(quick=args.quick)
    reps = 30 if args.quick else 200
    logp0, old, adv, mask, ent0 = make_batch(args.batch, args.length)
    tokens = logp0.numel()
    logp = logp0.clone().requires_grad_(True)
    ent = ent0.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)

    def interleaved(fns: dict[str, Any], *, rounds: int) -> dict[str, list[float]]:
        """Forward+backward times of every runner, one call each per round, round after round: a slow spell of
        this shared machine then hits every method alike instead of whichever was being timed."""
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds + 3):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                loss = fn()
                loss.backward()
                dt = time.perf_counter() - t0
                logp.grad = None
                ent.grad = None
                if r >= 3:  # warm-up rounds
                    times[name].append(dt)
        return times

    methods: dict[str, Any] = {}
    for name in policy_losses():
        kw: dict[str, Any] = {"generator": gen} if name == "clip_cov" else {}
        methods[name] = lambda n=name, k=kw: get_policy_loss(n)(logp, old, adv, mask, entropy=ent0, **k).loss
    methods["ppo+dual_clip"] = lambda: get_policy_loss("ppo")(logp, old, adv, mask, dual_clip=3.0).loss
    ctl = AdaptiveEntropyCoefficient(target=10.0, init=0.01)
    ctl.observe(1.0)
    methods["entropy_bonus (controller)"] = lambda: entropy_bonus(ent, mask, coef=ctl).loss
    methods["kl_penalty (k3)"] = lambda: kl_penalty(logp, old, mask, kind="k3").loss
    methods["epo (paper)"] = lambda: epo(ent, mask, reference_entropy=1.0).loss
    methods["naive PyTorch ppo"] = lambda: naive_ppo(logp, old, adv, mask)

    rows = []
    verl = verl_baselines()
    runners = {**methods, **{f"verl {n}": (lambda f=fn: f(logp, old, adv, mask)) for n, fn in verl.items()}}
    samples = interleaved(runners, rounds=reps)
    results = {name: percentiles(times) for name, times in samples.items() if not name.startswith("verl ")}
    verl_times = {name[5:]: percentiles(times)["p50"] for name, times in samples.items() if name.startswith("verl ")}
    for name, t in results.items():
        print(f"  {name:28s} {1e3 * t['p50']:8.3f} ms", flush=True)
    for name, t50 in verl_times.items():
        print(f"  verl {name:23s} {1e3 * t50:8.3f} ms", flush=True)
    base = results["ppo"]["p50"]
    for name, t in results.items():
        ours_vs = "ppo+dual_clip" if name == "ppo" else name
        row = {
            "method": name,
            "p50_ms": 1e3 * t["p50"],
            "p20_ms": 1e3 * t["p20"],
            "p80_ms": 1e3 * t["p80"],
            "x_ppo": t["p50"] / base,
            "verl_ms": 1e3 * verl_times[name] if name in verl_times else None,
            "verl_over_ours": verl_times[name] / results[ours_vs]["p50"] if name in verl_times else None,
        }
        rows.append(row)

    # SIREN reads (B, T, V) logits: a different input, timed on a smaller vocabulary, outside the 1.5x target
    b_s, t_s, v_s = args.batch, max(1, args.length // 4), args.siren_vocab
    logits = torch.randn(b_s, t_s, v_s, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    m_s = mask[:, :t_s]
    anchor = SirenAnchor(1.0)
    ts = timeit(lambda: siren(logits, m_s, anchor=anchor).loss.backward(), reps=max(3, reps // 4), warmup=1)
    rows.append(
        {
            "method": f"siren (logits {b_s}x{t_s}x{v_s})",
            "p50_ms": 1e3 * ts["p50"],
            "p20_ms": 1e3 * ts["p20"],
            "p80_ms": 1e3 * ts["p80"],
            "x_ppo": None,
            "verl_ms": None,
            "verl_over_ours": None,
        }
    )
    print()
    print(f"{tokens} tokens ({int(mask.sum())} valid), fp32, forward+backward, {threads} threads")
    print(
        fmt_table(
            rows,
            [
                ("method", "method"),
                ("p50_ms", "median ms"),
                ("p20_ms", "p20"),
                ("p80_ms", "p80"),
                ("x_ppo", "x ppo"),
                ("verl_ms", "verl ms"),
                ("verl_over_ours", "verl / ours"),
            ],
        )
    )
    path = write_csv("losses.csv", [{**r, "tokens": tokens, "threads": threads} for r in rows])
    targeted = {r["method"]: r["x_ppo"] for r in rows if r["x_ppo"] is not None and r["method"] != "naive PyTorch ppo"}
    worst = max(targeted, key=lambda k: targeted[k])
    summary = {
        "bench": "losses",
        "tokens": tokens,
        "dtype": "fp32",
        "threads": threads,
        "x_ppo": {k: round(v, 3) for k, v in targeted.items()},
        "worst": worst,
        "worst_x_ppo": round(targeted[worst], 3),
        "target_x_ppo": TARGET,
        "meets_target": targeted[worst] <= TARGET,
        "naive_over_ppo": round(results["naive PyTorch ppo"]["p50"] / base, 3),
        "verl_over_ours": {r["method"]: round(r["verl_over_ours"], 3) for r in rows if r["verl_over_ours"]},
        "roofline": roof,
        "machine": machine(),
        "csv": str(path),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
