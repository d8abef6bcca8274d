"""Progress off a terminal: bounded-rate lines with count, elapsed time, ETA and the caller's detail, during the
warm start and the RL runs (a log file, CI, a cluster job)."""

from __future__ import annotations

from entrolab.lab import progress
from entrolab.lab.config import LabConfig
from entrolab.lab.trainer import run_lab
from tests.test_lab_checkpoints_on_cpu import TINY


def test_line_progress_is_rate_bounded_and_reports_eta():
    now = [0.0]
    lines: list[str] = []
    bar = progress.LineProgress(100, say=lines.append, label="RL steps", interval=30.0, clock=lambda: now[0])
    for _ in range(99):
        now[0] += 1.0  # one step per second: a line every 30 s, not every step
        bar.update(1, "entropy 0.500")
    assert lines == [
        "RL steps: 30/100 (30%), 0m30s elapsed, ETA 1m10s, entropy 0.500",
        "RL steps: 60/100 (60%), 1m00s elapsed, ETA 0m40s, entropy 0.500",
        "RL steps: 90/100 (90%), 1m30s elapsed, ETA 0m10s, entropy 0.500",
    ]
    now[0] += 1.0
    bar.update(1)  # the last step always prints
    assert lines[-1].startswith("RL steps: 100/100 (100%), 1m40s elapsed, ETA 0m00s")
    resumed = progress.LineProgress(10, say=lines.append, label="x", interval=0.0, clock=lambda: now[0])
    resumed.skip(5)  # done before this process: not part of the rate
    now[0] += 2.0
    resumed.update(1)
    assert lines[-1].startswith("x: 6/10 (60%), 0m02s elapsed, ETA 0m08s")


def test_a_run_off_a_terminal_logs_progress_during_the_warm_start_and_rl(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # every step, so a tiny run shows them
    said: list[str] = []
    run_lab(LabConfig(methods=("grpo",), out=str(tmp_path / "run"), **TINY), progress=None, log=said.append)
    warm = [s for s in said if s.startswith("warm start steps: ")]
    rl = [s for s in said if s.startswith("RL steps: ")]
    assert len(warm) == TINY["sft_steps"] and "ETA" in warm[0] and "loss" in warm[0]
    assert len(rl) == TINY["steps"] and "entropy" in rl[-1] and "accuracy" in rl[-1]
    assert rl[-1].startswith(f"RL steps: {TINY['steps']}/{TINY['steps']} (100%)")
    quiet: list[str] = []
    run_lab(LabConfig(methods=("grpo",), out=str(tmp_path / "q"), **TINY), progress=False, log=quiet.append)
    assert not [s for s in quiet if "steps: " in s]


def test_available_cpus_honours_the_affinity_mask_and_a_cgroup_quota(monkeypatch):
    import io
    import os

    from entrolab import _cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(_cpus, "open", lambda path: io.StringIO("250000 100000\n"), raising=False)
    assert _cpus.available_cpus() == 2  # a 2.5-CPU quota: 2 threads, not 8
    monkeypatch.setattr(_cpus, "open", lambda path: io.StringIO("max 100000\n"), raising=False)
    assert _cpus.available_cpus() == 8

    def missing(path: str) -> None:
        raise FileNotFoundError(path)

    monkeypatch.setattr(_cpus, "open", missing, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert _cpus.available_cpus() == 1
