"""Checkpoints are verified on load and the last two are kept: every kind of damage is reported with its path and
the run resumes from the last good checkpoint to exactly the uninterrupted metrics, or refuses with a clear message."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from entrolab.lab import LabConfig, run_lab
from entrolab.lab.checkpoints import CheckpointError, previous_path, read_checkpoint, write_checkpoint
from entrolab.lab.config import LabError

TINY = {
    "seeds": 1, "steps": 4, "prompts_per_step": 4, "group_size": 4, "eval_every": 2, "eval_prompts": 4,
    "eval_samples": 4, "sft_steps": 5, "sft_batch": 8, "d_model": 32, "checkpoint_every": 2, "threads": 1,
    "workers": 1,
}  # fmt: skip
TIMING = {"tokens_per_s", "step_seconds", "generation_seconds", "eval_seconds"}


def _rows(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(x).items() if k not in TIMING} for x in path.read_text().splitlines() if x.strip()
    ]


def test_write_and_read_round_trip_and_every_damage_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint({"w": torch.arange(1000.0), "step": 2}, path)
    write_checkpoint({"w": torch.arange(1000.0) + 1, "step": 4}, path)
    assert read_checkpoint(path)["step"] == 4 and read_checkpoint(previous_path(path))["step"] == 2
    assert not list(tmp_path.glob(".*tmp*"))
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {
        "empty": b"",
        "truncated": data[: len(data) - 100],
        "random bytes": os.urandom(len(data)),
        "a flipped bit": bytes(flipped),
        "the header alone": data[: data.index(b"\n") + 1],
    }
    for what, content in cases.items():
        bad = tmp_path / f"bad-{what}.pt"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"checkpoint {bad}") as info:
            read_checkpoint(bad)
        assert "damaged" in str(info.value), what
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(tmp_path / "missing.pt")


def test_a_full_disk_leaves_no_temporary_file_and_names_the_checkpoint(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "checkpoint.pt"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"could not write the checkpoint {path}: No space left"):
        write_checkpoint({"step": 1}, path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "ref"
    run_lab(LabConfig(methods=("grpo",), out=str(out), **TINY), progress=False, log=lambda s: None)
    return out


def _damaged_copy(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest)
    run = dest / "runs" / "grpo" / "seed0"
    (run / "done.json").unlink()  # as if killed after the last checkpoint, before the done marker
    cfg = json.loads((dest / "config.json").read_text())
    cfg["out"] = str(dest)
    (dest / "config.json").write_text(json.dumps(cfg))
    return run


def _resume(dest: Path) -> list[str]:
    said: list[str] = []
    cfg = LabConfig(methods=("grpo",), out=str(dest), **TINY)
    run_lab(cfg, resume=True, progress=False, log=said.append)
    return said


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(finished, tmp_path):
    run = _damaged_copy(finished, tmp_path / "flip")
    ckpt = run / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x40
    ckpt.write_bytes(bytes(data))
    said = _resume(tmp_path / "flip")
    assert any(f"checkpoint {ckpt} is damaged" in s for s in said), said
    ref = finished / "runs" / "grpo" / "seed0" / "metrics.jsonl"
    assert _rows(run / "metrics.jsonl") == _rows(ref)  # rows after step 2 re-run, none lost or duplicated
    assert json.loads((run / "done.json").read_text())["last_eval"]["step"] == TINY["steps"]


def test_short_metrics_fall_back_and_two_bad_checkpoints_refuse(finished, tmp_path):
    run = _damaged_copy(finished, tmp_path / "short")
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows[:4]) + "\n")  # fewer rows than the last checkpoint counts, enough for the first
    said = _resume(tmp_path / "short")
    assert any("complete rows" in s for s in said), said
    assert _rows(metrics) == _rows(finished / "runs" / "grpo" / "seed0" / "metrics.jsonl")

    run = _damaged_copy(finished, tmp_path / "both")
    (run / "checkpoint.pt").write_bytes(b"")
    previous_path(run / "checkpoint.pt").write_bytes(os.urandom(300))
    expected = r"cannot resume: checkpoint .*checkpoint\.pt is damaged: it is empty; .*--overwrite"
    with pytest.raises(LabError, match=expected):
        _resume(tmp_path / "both")


def test_a_damaged_warm_start_cache_is_rebuilt(finished, tmp_path):
    dest = tmp_path / "sft"
    _damaged_copy(finished, dest)
    (cache,) = (dest / "sft").glob("sft-*.pt")
    cache.write_bytes(cache.read_bytes()[:50])
    shutil.rmtree(dest / "runs")
    said = _resume(dest)
    assert any(f"warm-start cache {cache} is unusable" in s for s in said), said
    assert read_checkpoint(cache)["meta"]
    ref = finished / "runs" / "grpo" / "seed0" / "metrics.jsonl"
    assert _rows(dest / "runs" / "grpo" / "seed0" / "metrics.jsonl") == _rows(ref)
