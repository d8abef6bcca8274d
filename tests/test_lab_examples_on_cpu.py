"""The lab's example scripts that docs/lab.md quotes numbers from still run against the current internals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from entrolab.lab import LabConfig, run_lab

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_clip_cov_candidates_reports_nested_shares_for_the_warm_start_and_two_checkpoints(tmp_path):
    cfg = LabConfig(
        methods=("grpo",), seeds=1, steps=3, prompts_per_step=4, group_size=4, eval_every=3, eval_prompts=4,
        eval_samples=4, sft_steps=5, sft_batch=8, d_model=32, checkpoint_every=2, threads=1, workers=1,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    out = run_lab(cfg, progress=False, log=lambda s: None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "lab_clip_cov_candidates.py"), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in done.stdout.splitlines() if "cov_lb" in x]
    assert [x.split(" entropy")[0].strip() for x in lines] == ["warm start", "grpo after 2 steps", "grpo after 3 steps"]
    for line in lines:
        shares = [float(x) for x in re.findall(r"cov_lb [\d.]+: +([\d.]+)% of tokens", line)]
        positive = [float(x) for x in re.findall(r"([\d.]+)% with A > 0", line)]
        assert len(shares) == len(positive) == 3, line
        # a higher lower bound selects a subset of the tokens a lower one does
        assert shares[0] >= shares[1] >= shares[2] >= 0.0 and shares[0] <= 100.0, line
        assert all(0.0 <= p <= 100.0 for p in positive), line
