"""Where a sweep's runs execute: local worker processes or a Ray cluster.

A sweep is methods x seeds independent runs; each is one call ``job(*call)`` of a picklable top-level function that
rebuilds everything it needs from its arguments, writes its own run directory and returns ``(method, seed,
held-out pass@1)``.  Neither executor shares state between runs, so results equal a serial run's with the same
threads per run.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from entrolab.lab.config import LabError

__all__ = ["run_in_processes", "run_on_ray"]

Job = Callable[..., tuple[str, int, float]]


def run_in_processes(job: Job, calls: Sequence[tuple[Any, ...]], *, workers: int, say: Callable[[str], None]) -> None:
    """``job(*call)`` for every call on ``workers`` spawned processes (no fork of a process holding torch's thread
    pools); a line per finished run with an ETA.  A worker that dies is a :class:`LabError` saying what to do."""
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    # OpenMP threads that wait passively instead of spinning: on a machine other processes also load, spinning
    # threads burn the CPU the others need (bench/contention.py: 1.67x slower next to one busy process with
    # spinning, 1.09x passive).  Read by each worker's OpenMP runtime when it starts; the user's setting wins.
    passive = "OMP_WAIT_POLICY" not in os.environ
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        _run_pool(job, calls, workers=workers, say=say, ctx=ctx, t0=t0)
    finally:
        if passive:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _run_pool(
    job: Job, calls: Sequence[tuple[Any, ...]], *, workers: int, say: Callable[[str], None], ctx: Any, t0: float
) -> None:
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(job, *call) for call in calls]
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            try:
                name, seed, p1 = fut.result()
            except concurrent.futures.process.BrokenProcessPool:
                raise LabError(
                    "a worker process died before finishing its run. Killed for memory, or started from a script "
                    "without `if __name__ == '__main__':` around the lab call (spawned workers import the main "
                    "module again); the finished runs are kept: resume with --resume, or use workers=1"
                ) from None
            eta = (time.perf_counter() - t0) / i * (len(calls) - i)
            say(f"[{i}/{len(calls)}] {name} seed {seed} done: held-out pass@1 {p1:.3f} (ETA {eta:.0f} s)")


def run_on_ray(
    job: Job, calls: Sequence[tuple[Any, ...]], *, address: str, cpus: int, say: Callable[[str], None]
) -> None:
    """``job(*call)`` for every call as a Ray task of ``cpus`` CPUs on the cluster at ``address`` (``auto``, a
    ``host:port``, or ``local`` to start one here; an already initialised Ray is used as it is)."""
    try:
        import ray
    except ImportError:
        raise LabError("--ray needs the ray package (pip install 'entrolab[ray]')") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=cpus)(job)
        pending = [task.remote(*call) for call in calls]
        say(f"{len(calls)} runs as Ray tasks on {address}, {cpus} CPU(s) each")
        for i in range(1, len(calls) + 1):
            (ready,), pending = ray.wait(pending, num_returns=1)
            name, seed, p1 = ray.get(ready)
            say(f"[{i}/{len(calls)}] {name} seed {seed} done: held-out pass@1 {p1:.3f}")
    finally:
        if started:
            ray.shutdown()
