"""How many CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota (containers, CI
runners, cluster jobs), rather than the machine's core count."""

from __future__ import annotations

import os

__all__ = ["available_cpus"]


def available_cpus() -> int:
    """CPUs this process can run on (``sched_getaffinity``), at most the cgroup v2 quota (``cpu.max``); >= 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)
