"""The lab under CPU contention: how much slower one serial lab run gets when another process competes for the CPU,
with the thread settings a user would otherwise have and with entrolab's.

Each setting runs the same small lab job (``entrolab lab``: grpo, 1 seed, ``--steps`` RL steps on the default task,
the warm start cached beforehand) in a fresh process, alone and next to one busy-looping process, interleaved so
machine noise hits both alike.  The slowdown is contended / alone wall time; a share-of-the-CPU argument says one
competitor on N cores should cost at most about N / (N - 1) for an N-thread job (2x on 2 cores), and much less for
one thread.

- ``spinning (torch default)``: ``--threads 0`` with ``OMP_WAIT_POLICY`` unset and the thread policy off: torch's
  intra-op pool has one thread per core, and OpenMP's threads spin while they wait;
- ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (what entrolab's worker processes get);
- ``1 thread``: ``--threads 1``;
- ``2-worker sweep``: 2 seeds on ``--workers 0`` (one spawned worker per available CPU, each with its share of
  threads and passive waiting): the demo's configuration.

Run: ``python bench/contention.py [--steps N] [--rounds N]``.  Prints the table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_table, machine, write_csv

ROOT = Path(__file__).resolve().parents[1]
BUSY = "while True: pass"


def _job(out: Path, steps: int, threads: int, env: dict[str, str], *, seeds: int = 1, workers: int = 1) -> float:
    cmd = [sys.executable, "-m", "entrolab", "lab", "--methods", "grpo", "--seeds", str(seeds), "--steps", str(steps),
           "--eval-every", str(steps), "--eval-prompts", "16", "--workers", str(workers), "--threads", str(threads),
           "--out", str(out), "--overwrite", "--no-report", "--progress", "off"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ENTROLAB_"))}
    old = {**base_env, "ENTROLAB_NO_THREAD_POLICY": "1"}
    settings = {
        "spinning (torch default)": (0, old, {}),
        "passive": (0, {**old, "OMP_WAIT_POLICY": "PASSIVE"}, {}),
        "1 thread": (1, base_env, {}),
        "2-worker sweep": (0, base_env, {"seeds": 2, "workers": 0}),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        _job(out, args.steps, 1, base_env)  # the warm start, cached in out/sft for every later job
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, (threads, env, kw) in settings.items():
                times.setdefault((name, "alone"), []).append(_job(out, args.steps, threads, env, **kw))
                busy = subprocess.Popen([sys.executable, "-c", BUSY])
                try:
                    times.setdefault((name, "contended"), []).append(_job(out, args.steps, threads, env, **kw))
                finally:
                    busy.kill()
                    busy.wait()
    for name in settings:
        alone, contended = min(times[(name, "alone")]), min(times[(name, "contended")])
        rows.append({"setting": name, "alone_s": round(alone, 2), "contended_s": round(contended, 2),
                     "slowdown": round(contended / alone, 2)})  # fmt: skip
    print(f"one lab job ({args.steps} RL steps), alone and next to one busy process; {os.cpu_count()} CPUs")
    print(fmt_table(rows, [("setting", "setting"), ("alone_s", "alone s"), ("contended_s", "contended s"),
                           ("slowdown", "slowdown")]))  # fmt: skip
    csv = write_csv("contention.csv", rows)
    print(json.dumps({"bench": "contention", "rows": rows, "machine": machine(), "csv": str(csv)}))


if __name__ == "__main__":
    main()
