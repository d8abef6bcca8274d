"""Shared benchmark plumbing: timing percentiles, the machine's roofline, peak memory of a fresh process, CSV rows."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(threads: int | None) -> int:
    """Fix the thread count before any other torch work (performance.md section 6.1) and return it."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def timeit(fn: Callable[[], object], *, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median and 20th/80th percentiles (seconds) of ``reps`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))]

    return {"p20": pct(0.2), "p50": pct(0.5), "p80": pct(0.8)}


def percentiles(times: list[float]) -> dict[str, float]:
    """Median and 20th/80th percentiles (seconds) of measured times."""
    t = sorted(times)

    def pct(q: float) -> float:
        return t[min(len(t) - 1, int(q * len(t)))]

    return {"p20": pct(0.2), "p50": pct(0.5), "p80": pct(0.8)}


def roofline(*, quick: bool = False) -> dict[str, float]:
    """Sustained read and copy bandwidth (bytes/s), fp32/bf16 matmul FLOP/s and fp32 exp/s on this machine."""
    n = 1 << (26 if quick else 28)  # 256 MiB or 1 GiB of float32
    reps = 5 if quick else 10
    bufs = [torch.randn(n), torch.empty(n)]
    t_sum = timeit(lambda: bufs[0].sum(), reps=reps)["p50"]
    t_copy = timeit(lambda: bufs[1].copy_(bufs[0]), reps=reps)["p50"]
    bufs.clear()
    out = {"bw_read": 4 * n / t_sum, "bw_copy": 2 * 4 * n / t_copy}
    m = 2048 if quick else 4096
    for name, dtype in (("flops_fp32", torch.float32), ("flops_bf16", torch.bfloat16)):
        mats = (torch.randn(m, m).to(dtype), torch.randn(m, m).to(dtype))
        out[name] = 2 * m**3 / timeit(lambda mats=mats: mats[0] @ mats[1], reps=3 if quick else 5)["p50"]
    v = torch.randn(1 << 17)
    w = torch.empty_like(v)
    out["exp_per_s"] = v.numel() / timeit(lambda: torch.exp(v, out=w), reps=50)["p50"]
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset (VmHWM), else since it started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def run_worker(script: Path, spec: dict, *, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter (so its peak memory is its own) and parse its JSON answer."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    code = proc.returncode
    reason = "killed (out of memory?)" if code in (-9, 137) else f"exit {code}: {tail[0][:200]}"
    return {"error": reason}


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        sha = ""
    return {
        "cpu": cpu,
        "torch": torch.__version__,
        "git_sha": sha or "unknown",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_csv(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def fmt_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """A plain fixed-width table; ``cols`` are (key, header)."""
    cells = [[h for _, h in cols]] + [[_fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
