"""Measure this machine's roofline: sustained memory bandwidth, fp32/bf16 matmul FLOP/s and exp throughput.

Run: ``python bench/roofline.py [--threads N] [--quick]``.  Prints a table and a final JSON line; every other
benchmark measures the same numbers in its own run and reports its rows as a percentage of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, roofline, set_threads, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smaller buffers and fewer repetitions")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    roof = roofline(quick=args.quick)
    info = machine()
    print(f"machine: {info['cpu']}  threads: {threads}  torch {info['torch']}")
    print(f"  memory bandwidth, read (sum):   {roof['bw_read'] / 1e9:8.1f} GB/s")
    print(f"  memory bandwidth, copy (r + w): {roof['bw_copy'] / 1e9:8.1f} GB/s")
    print(f"  matmul fp32:                    {roof['flops_fp32'] / 1e9:8.1f} GFLOP/s")
    print(f"  matmul bf16:                    {roof['flops_bf16'] / 1e9:8.1f} GFLOP/s")
    print(f"  exp (fp32, L2-resident):        {roof['exp_per_s'] / 1e9:8.2f} G/s")
    write_csv("roofline.csv", [{**info, "threads": threads, **roof}])
    print(json.dumps({"threads": threads, **info, **roof}))


if __name__ == "__main__":
    main()
