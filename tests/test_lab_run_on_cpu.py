"""The lab end to end on tiny settings: every preset trains, the report renders, runs resume exactly after SIGKILL,
a NaN loss stops cleanly, and an existing run directory is never overwritten silently."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrolab.lab import LabConfig, LabError, run_lab
from entrolab.lab.checkpoints import read_checkpoint
from entrolab.lab.presets import PRESETS

TINY = {
    "seeds": 1,
    "steps": 3,
    "prompts_per_step": 4,
    "group_size": 4,
    "eval_every": 2,
    "eval_prompts": 4,
    "eval_samples": 4,
    "sft_steps": 5,
    "sft_batch": 8,
    "d_model": 32,
    "checkpoint_every": 2,
    "threads": 1,
    "workers": 1,
}
TIMING = {"tokens_per_s", "step_seconds", "generation_seconds", "eval_seconds"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


SINGLE_TURN = tuple(name for name, p in PRESETS.items() if p.rollout != "aepo_eb")  # aepo_eb needs a tool task


def test_every_preset_trains_and_the_report_renders(tmp_path):
    cfg = LabConfig(methods=SINGLE_TURN, out=str(tmp_path / "run"), **TINY)
    out = run_lab(cfg, progress=False, log=lambda s: None)
    for name in SINGLE_TURN:
        rows = _rows(out / "runs" / name / "seed0" / "metrics.jsonl")
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert [r["step"] for r in train] == [1, 2, 3], name
        assert [r["step"] for r in evals] == [0, 2, 3], name
        for r in rows:
            for k, v in r.items():
                if isinstance(v, float):
                    assert math.isfinite(v), (name, k, v)
        for key in (
            "reward",
            "entropy",
            "entropy_p90",
            "cov_mean",
            "predicted_entropy_change",
            "kl_to_init",
            "response_length",
            "tokens_per_s",
            "loss",
        ):
            assert key in train[-1], (name, key)
        assert {"pass@1", "pass@4", "distinct_correct"} <= set(evals[-1])
        assert 0.0 <= evals[-1]["pass@1"] <= evals[-1]["pass@4"] <= 1.0
    # same seed, same warm start: every method's first rollout is the same batch, so its statistics agree exactly
    # (CURE's rollout branches the samples, so its first batch differs by construction)
    standard = [name for name, p in PRESETS.items() if p.rollout == "standard"]
    firsts = {name: _rows(out / "runs" / name / "seed0" / "metrics.jsonl")[1] for name in standard}
    for key in ("entropy", "reward", "entropy_p90", "response_length"):
        assert len({r[key] for r in firsts.values()}) == 1, key
    assert "clipfrac" in _rows(out / "runs" / "grpo" / "seed0" / "metrics.jsonl")[1]
    assert "covclip_frac" in _rows(out / "runs" / "clip_cov" / "seed0" / "metrics.jsonl")[1]
    assert "siren_entropy" in _rows(out / "runs" / "siren" / "seed0" / "metrics.jsonl")[1]
    cure = _rows(out / "runs" / "cure" / "seed0" / "metrics.jsonl")[1]
    assert 0.0 <= cure["cure_fork_found_frac"] <= 1.0 and cure["cure_fork_position"] >= 0.0
    assert list((out / "runs" / "grpo" / "seed0" / "tb").glob("events.out.tfevents.*"))

    from entrolab.lab.report import build_report

    paths = build_report(out)
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 5
    summary = paths["summary"].read_text()
    for name in SINGLE_TURN:
        assert f"| {name} |" in summary
    for diag in ("| cure | cure_fork_found_frac |", "| ettrl | ettrl_vote_accuracy |", "| aepo_entropy | aepo_mixed |"):
        assert diag in summary, diag
    assert "<h2>Method diagnostics</h2>" in page
    # CPU and wall time apart (wall time also counts a loaded machine), both from each run's done.json
    header = next(line for line in summary.splitlines() if line.startswith("| method | seeds |"))
    assert "CPU s / run" in header and "wall s / run" in header and "processor time" in page
    grpo_row = next(line for line in summary.splitlines() if line.startswith("| grpo |")).split("|")
    cpu, wall = float(grpo_row[-3]), float(grpo_row[-2])
    assert cpu > 0 and wall > 0
    for fig in ("entropy_accuracy", "heldout", "entropy_law", "mechanism", "pass_at_k"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (out / "figures" / f"{fig}.svg").exists()
    # the report reads on its own: what entropy collapse is, the metrics, captions that say what a figure shows
    # (held-out pass@1 and pass@k against the step), and what the run does not show
    for text in ("Entropy collapse", "pass@k", "Held-out pass@1 (solid) and pass@k", "What this does not show"):
        assert text in page, text
    # the change from the warm start, per method (one seed here: the mean alone, never a NaN interval)
    assert "Change from the warm start (paired over seeds)" in page and "nan" not in summary.lower()
    assert "(one seed: no test of the change)" in summary
    assert re.search(r"\| grpo \| [+-]\d\.\d{3} \(1 seed: no interval\) \| [+-]\d\.\d{3} \(1 seed", summary)
    # an unfinished run is named and left out of every number
    metrics = out / "runs" / "cure" / "seed0" / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:3]))
    (out / "runs" / "cure" / "seed0" / "done.json").unlink()
    paths = build_report(out)
    page = paths["html"].read_text()
    assert "Unfinished runs, left out of every number: cure seed 0 (stopped at step" in page
    assert "| cure |" not in next(t for t in paths["summary"].read_text().split("\n\n") if "| method | seeds |" in t)

    # the warm start is cached: a second run with the same settings reuses it
    sft = list((out / "sft").glob("sft-*.pt"))
    assert len(sft) == 1
    mtime = sft[0].stat().st_mtime_ns
    run_lab(LabConfig(methods=("grpo",), out=str(out), **TINY), overwrite=True, progress=False, log=lambda s: None)
    assert sft[0].stat().st_mtime_ns == mtime


def test_existing_run_directory_is_not_overwritten(tmp_path):
    cfg = LabConfig(methods=("grpo",), out=str(tmp_path / "run"), **TINY)
    run_lab(cfg, progress=False, log=lambda s: None)
    with pytest.raises(LabError, match=r"exists and is not empty; pass --overwrite"):
        run_lab(cfg, progress=False, log=lambda s: None)
    with pytest.raises(LabError, match="settings differ"):
        run_lab(LabConfig(methods=("grpo",), out=str(tmp_path / "run"), **{**TINY, "steps": 4}), resume=True)
    with pytest.raises(LabError, match=r"no config\.json"):
        run_lab(LabConfig(methods=("grpo",), out=str(tmp_path / "elsewhere"), **TINY), resume=True)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import torch

    from entrolab.lab import trainer
    from entrolab.losses import LossOutput

    calls = {"n": 0}
    real = trainer.get_policy_loss("ppo")

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] >= 3:
            return LossOutput(out.loss * torch.tensor(float("nan")), out.metrics)
        return out

    monkeypatch.setattr(trainer, "get_policy_loss", lambda name: sometimes_nan)
    overrides = {"steps": 5, "checkpoint_every": 1, "ppo_epochs": 1, "minibatches": 1}  # one loss call per step
    cfg = LabConfig(methods=("grpo",), out=str(tmp_path / "run"), **{**TINY, **overrides})
    with pytest.raises(LabError, match=r"the loss is nan at step 3; stopping. The last good checkpoint"):
        run_lab(cfg, progress=False, log=lambda s: None)
    state = read_checkpoint(tmp_path / "run" / "runs" / "grpo" / "seed0" / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _lab_cmd(out: Path, *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "entrolab",
        "lab",
        "--out",
        str(out),
        "--methods",
        "grpo,clip_cov",
        "--no-report",
        "--progress",
        "off",
    ]
    for k, v in {**TINY, "steps": 24, "checkpoint_every": 4, "eval_every": 6}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args + list(extra)


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_metrics(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = tmp_path / "ref"
    subprocess.run(_lab_cmd(ref), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_lab_cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run / "runs" / "grpo" / "seed0"
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        metrics = target / "metrics.jsonl"
        if (target / "checkpoint.pt").exists() and metrics.exists():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
            if steps and max(steps) >= 6:  # past a checkpoint, mid-way through the first run
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    proc.wait()
    assert killed, "the run finished before it could be killed; make it longer"
    assert not (target / "done.json").exists()
    subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--resume", str(run), "--no-report", "--progress", "off"],
        check=True,
        env=env,
        capture_output=True,
    )
    for method in ("grpo", "clip_cov"):
        a = _strip(_rows(ref / "runs" / method / "seed0" / "metrics.jsonl"))
        b = _strip(_rows(run / "runs" / method / "seed0" / "metrics.jsonl"))
        assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]  # no duplicates, no gaps
        assert a == b, method


def test_cli_quick_smoke_and_report_command(tmp_path):
    out = tmp_path / "quick"
    done = subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--quick", "--out", str(out), "--threads", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "report.html").exists() and "| grpo |" in done.stdout
    (out / "report.html").unlink()
    again = subprocess.run([sys.executable, "-m", "entrolab", "report", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and (out / "report.html").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--methods", "grpo,nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "valid methods:" in bad.stderr
    exists = subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--quick", "--out", str(out)], capture_output=True, text=True
    )
    assert exists.returncode == 1 and "--overwrite" in exists.stderr
    # make demo's --continue: the same settings resume (here: every run is done, only the report is rebuilt) ...
    (out / "runs" / "grpo" / "seed0" / "done.json").unlink()  # as if interrupted before the last run was marked
    again = subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--quick", "--out", str(out), "--continue", "--threads", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0 and "resuming it" in again.stderr, again.stderr[-2000:]
    assert (out / "runs" / "grpo" / "seed0" / "done.json").exists() and (out / "runs" / "kl_cov").exists()
    # ... other settings are a different run: refused without --overwrite, as before
    other = subprocess.run(
        [sys.executable, "-m", "entrolab", "lab", "--quick", "--steps", "21", "--out", str(out), "--continue"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert other.returncode == 1 and "--overwrite" in other.stderr and "resuming" not in other.stderr
    help_text = subprocess.run([sys.executable, "-m", "entrolab", "lab", "--help"], capture_output=True, text=True)
    for flag in (
        "--methods",
        "--seeds",
        "--steps",
        "--task",
        "--model",
        "--config",
        "--out",
        "--quick",
        "--resume",
        "--threads",
    ):
        assert flag in help_text.stdout


def test_decoding_study_on_a_fresh_and_on_an_existing_run(tmp_path):
    from entrolab.lab.cli import main

    small = ["--sft-steps", "5", "--sft-batch", "8", "--d-model", "32", "--eval-prompts", "4", "--eval-samples", "2"]
    small += ["--threads", "1", "--temperatures", "0.7,2"]
    fresh = tmp_path / "fresh"
    assert main(["--study", "decoding", *small, "--out", str(fresh)]) == 0
    rows = json.loads((fresh / "decoding" / "results.json").read_text())
    assert len(rows) == 4 * 2 and {r["policy"] for r in rows} == {"warm start"}
    assert {r["sampler"] for r in rows} == {"plain", "top_p 0.9", "min_p 0.1", "top_h 0.4"}
    assert all(0 <= r["pass@1"] <= r["pass@2"] <= 1 for r in rows)
    assert (fresh / "decoding" / "decoding_0.png").stat().st_size > 0
    # an existing run: its settings, and its methods' first-seed policies too
    run = tmp_path / "run"
    run_lab(LabConfig(methods=("grpo",), out=str(run), **TINY), progress=False, log=lambda s: None)
    assert main(["--study", "decoding", "--out", str(run), "--temperatures", "1"]) == 0
    rows = json.loads((run / "decoding" / "results.json").read_text())
    assert {r["policy"] for r in rows} == {"warm start", "grpo (seed 0)"} and len(rows) == 2 * 4
    assert "Decoding study" in (run / "decoding" / "summary.md").read_text()
    assert main(["--study", "decoding", "--out", str(run), "--temperatures", "0,1"]) == 2
    assert main(["--study", "decoding", "--out", str(run), "--temperatures", "hot"]) == 2


def test_cure_runs_stage_one_then_stage_two(tmp_path):
    cfg = LabConfig(methods=("cure",), out=str(tmp_path / "run"), **{**TINY, "steps": 4})
    out = run_lab(cfg, progress=False, log=lambda s: None)
    train = [r for r in _rows(out / "runs" / "cure" / "seed0" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["cure_stage"] for r in train] == [1.0, 1.0, 2.0, 2.0]
    assert "cure_fork_found_frac" in train[0] and "cure_fork_found_frac" not in train[-1]


def test_the_calculator_task_runs_multi_turn_with_its_tool(tmp_path):
    cfg = LabConfig(methods=("grpo", "cure"), task="calculator", out=str(tmp_path / "run"), **{**TINY, "steps": 2})
    out = run_lab(cfg, progress=False, log=lambda s: None)
    for name in ("grpo", "cure"):
        train = [r for r in _rows(out / "runs" / name / "seed0" / "metrics.jsonl") if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2]
        assert all(r["tool_calls"] >= 0.0 and math.isfinite(r["loss"]) for r in train)
    summary = json.loads((out / "sft" / "summary.json").read_text())
    assert 0.0 <= summary["eval"]["pass@1"] <= 1.0


MULTI_TURN = ("empg", "epo", "aepo_agentic", "spear")


def test_multi_turn_methods_run_on_the_calculator_and_report_their_metrics(tmp_path):
    cfg = LabConfig(methods=MULTI_TURN, task="calculator", out=str(tmp_path / "run"), **{**TINY, "steps": 3})
    out = run_lab(cfg, progress=False, log=lambda s: None)
    for name in MULTI_TURN:
        train = [r for r in _rows(out / "runs" / name / "seed0" / "metrics.jsonl") if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2, 3], name
        assert all(math.isfinite(v) for r in train for v in r.values() if isinstance(v, float)), name
    agentic = _rows(out / "runs" / "aepo_agentic" / "seed0" / "metrics.jsonl")[1]
    assert agentic["aepo_roots"] + agentic["aepo_branches"] + agentic["aepo_fresh"] == TINY["group_size"]
    spear = _rows(out / "runs" / "spear" / "seed0" / "metrics.jsonl")[1]
    assert spear["spear_tool_bonus"] >= 0.0 and spear["spear_buffer"] >= 0.0
    epo_rows = [r for r in _rows(out / "runs" / "epo" / "seed0" / "metrics.jsonl") if r["kind"] == "train"]
    assert "epo_penalty" in epo_rows[-1]

    from entrolab.lab.report import build_report

    summary = build_report(out)["summary"].read_text()
    for diag in ("| aepo_agentic | aepo_roots |", "| aepo_agentic | aepo_branches |", "| spear | spear_buffer |"):
        assert diag in summary, diag


def test_spear_replays_and_resumes_with_its_buffers(tmp_path, monkeypatch):
    """A SPEAR run killed after a checkpoint resumes with its replay buffer and baseline: the metrics equal an
    uninterrupted run's, and the buffer in the checkpoint is not empty (so the equality tests the restore)."""

    from entrolab.lab import agentic
    from entrolab.lab.presets import preset_from_mapping

    small = preset_from_mapping("spear_small", {"base": "spear", "replay_kwargs": {"buffer_size": 4}})
    settings = {**TINY, "steps": 8, "checkpoint_every": 4, "eval_every": 4}

    def cfg(name: str) -> LabConfig:
        return LabConfig(
            methods=("spear_small",), task="calculator", presets={"spear_small": small}, out=str(tmp_path / name),
            **settings,
        )  # fmt: skip

    ref = run_lab(cfg("ref"), progress=False, log=lambda s: None)
    ref_rows = _strip(_rows(ref / "runs" / "spear_small" / "seed0" / "metrics.jsonl"))
    assert any(r.get("spear_replayed", 0) > 0 for r in ref_rows)  # the buffer filled and was replayed

    real_add = agentic.SpearReplay.add

    def dies_at_step_6(self, *args, step, **kw):
        if step == 5:
            raise KeyboardInterrupt  # killed mid-run, after the checkpoint of step 4
        return real_add(self, *args, step=step, **kw)

    monkeypatch.setattr(agentic.SpearReplay, "add", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg("killed"), progress=False, log=lambda s: None)
    monkeypatch.setattr(agentic.SpearReplay, "add", real_add)
    state = read_checkpoint(tmp_path / "killed" / "runs" / "spear_small" / "seed0" / "checkpoint.pt")
    assert state["step"] == 4 and state["spear"]["group_means"]
    out = run_lab(cfg("killed"), resume=True, progress=False, log=lambda s: None)
    assert _strip(_rows(out / "runs" / "spear_small" / "seed0" / "metrics.jsonl")) == ref_rows


def test_adam8bit_optimizer_trains_and_resumes(tmp_path, monkeypatch):
    """``--optimizer adam8bit``: the RL updates use bitsandbytes' 8-bit states (uint8 in the checkpoint for the
    tensors of 4,096+ elements), and a run killed after a checkpoint resumes to the uninterrupted run's metrics."""
    import torch

    from entrolab.lab import trainer
    from tests.conftest import engine

    engine("bitsandbytes", "optim")
    settings = {**TINY, "steps": 4, "checkpoint_every": 2, "eval_every": 2, "d_model": 64}

    def cfg(name: str) -> LabConfig:
        # the entropy bonus has a gradient even when every reward of the barely warm-started model is 0
        return LabConfig(methods=("entropy_bonus",), optimizer="adam8bit", out=str(tmp_path / name), **settings)

    ref = run_lab(cfg("ref"), progress=False, log=lambda s: None)
    ref_rows = _strip(_rows(ref / "runs" / "entropy_bonus" / "seed0" / "metrics.jsonl"))
    state = read_checkpoint(ref / "runs" / "entropy_bonus" / "seed0" / "checkpoint.pt")
    # bitsandbytes nests its states; the 2-D weights of 4,096+ elements hold uint8 codes, and they moved
    quant = [s["__bnb_optimizer_quant_state__"] for s in state["optimizer"]["state"].values()]
    codes = [q["state1"] for q in quant if q["state1"].dtype == torch.uint8]
    assert codes and any(bool(c.any()) for c in codes)

    real_sample, calls = trainer.sample_train, {"n": 0}

    def dies_in_step_3(*args, **kw):
        calls["n"] += 1
        if calls["n"] > settings["sft_batch"] * settings["sft_steps"] + 2 * settings["prompts_per_step"]:
            raise KeyboardInterrupt  # killed in step 3, after the checkpoint of step 2
        return real_sample(*args, **kw)

    monkeypatch.setattr(trainer, "sample_train", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg("killed"), progress=False, log=lambda s: None)
    monkeypatch.setattr(trainer, "sample_train", real_sample)
    out = run_lab(cfg("killed"), resume=True, progress=False, log=lambda s: None)
    assert _strip(_rows(out / "runs" / "entropy_bonus" / "seed0" / "metrics.jsonl")) == ref_rows


def test_unknown_lab_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'adam8bit'"):
        LabConfig(methods=("grpo",), optimizer="lion")


def test_a_run_directory_is_never_written_by_two_processes(tmp_path):
    """A second process on a locked run directory fails at once, naming it and its holder; the lock dies with its
    holder."""
    from entrolab.lab.trainer import run_directory_lock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from entrolab.lab.trainer import run_directory_lock\n"
            "with run_directory_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        cfg = LabConfig(methods=("grpo",), steps=1, seeds=1, out=str(out))
        with pytest.raises(LabError, match=f"run directory {out} is in use by process {holder.pid} on "):
            run_lab(cfg, progress=False)
        assert not (out / "config.json").exists()  # nothing written under the other process's feet
    finally:
        holder.kill()
        holder.wait()
    # released with the killed holder; one process re-entering its own lock is refused too
    with run_directory_lock(out), pytest.raises(LabError, match="in use"), run_directory_lock(out):
        pass


def test_parallel_workers_give_the_serial_results_row_for_row(tmp_path):
    """Two worker processes (spawned, one thread each) against one process: the same rows, the same done markers."""
    base = {**TINY, "seeds": 2, "steps": 3}
    serial = run_lab(LabConfig(methods=("grpo", "clip_cov"), out=str(tmp_path / "serial"), **base), progress=False,
                     log=lambda s: None)  # fmt: skip
    lines: list[str] = []
    par_cfg = LabConfig(methods=("grpo", "clip_cov"), out=str(tmp_path / "parallel"), **{**base, "workers": 2})
    parallel = run_lab(par_cfg, progress=False, log=lines.append)
    assert any("4 runs on 2 worker processes, 1 thread(s) each" in x for x in lines)
    assert sum("done: held-out pass@1" in x for x in lines) == 4
    for method in ("grpo", "clip_cov"):
        for seed in (0, 1):
            a = _strip(_rows(serial / "runs" / method / f"seed{seed}" / "metrics.jsonl"))
            b = _strip(_rows(parallel / "runs" / method / f"seed{seed}" / "metrics.jsonl"))
            assert a == b, (method, seed)
            done = json.loads((parallel / "runs" / method / f"seed{seed}" / "done.json").read_text())
            assert done["last_eval"]["step"] == 3 and done["cpu_seconds"] > 0


def test_resume_continues_the_directory_it_is_given_even_when_moved(tmp_path):
    """DIR is the run: a copied run resumes in the copy (the original is never written), and --resume refuses
    settings that would change the run."""
    import shutil

    from entrolab.lab.cli import main

    first = tmp_path / "first"
    run_lab(LabConfig(methods=("grpo",), out=str(first), **TINY), progress=False, log=lambda s: None)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    run_dir = moved / "runs" / "grpo" / "seed0"
    (run_dir / "done.json").unlink()
    (run_dir / "checkpoint.pt").unlink()  # start that run over, from its first row
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    assert main(["--resume", str(moved), "--no-report", "--progress", "off"]) == 0
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before
    assert json.loads((moved / "config.json").read_text())["out"] == str(moved)
    original = first / "runs" / "grpo" / "seed0" / "metrics.jsonl"
    assert _strip(_rows(run_dir / "metrics.jsonl")) == _strip(_rows(original))
    done = json.loads((run_dir / "done.json").read_text())
    assert done["last_eval"]["step"] == TINY["steps"]
    assert main(["--resume", str(moved), "--steps", "30", "--no-report"]) == 2


def test_a_sweep_on_a_local_ray_instance_equals_the_serial_sweep(tmp_path):
    """--ray: each run a Ray task writing its own run directory, on a local instance the test starts; the rows equal
    a serial run's, and a resume of the Ray-made directory with local processes finds nothing left to do."""
    if os.environ.get("ENTROLAB_REQUIRE_ENGINES") != "1":
        pytest.importorskip("ray")
    base = {**TINY, "seeds": 2, "steps": 2, "eval_every": 2, "checkpoint_every": 2}
    serial = run_lab(LabConfig(methods=("grpo",), out=str(tmp_path / "serial"), **base), progress=False,
                     log=lambda s: None)  # fmt: skip
    lines: list[str] = []
    on_ray = run_lab(
        LabConfig(methods=("grpo",), out=str(tmp_path / "ray"), **{**base, "ray": "local"}), progress=False,
        log=lines.append,
    )  # fmt: skip
    assert any("2 runs as Ray tasks on local" in x for x in lines), lines
    for seed in (0, 1):
        a = _strip(_rows(serial / "runs" / "grpo" / f"seed{seed}" / "metrics.jsonl"))
        b = _strip(_rows(on_ray / "runs" / "grpo" / f"seed{seed}" / "metrics.jsonl"))
        assert a == b, seed
    before = (on_ray / "runs" / "grpo" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    run_lab(LabConfig(methods=("grpo",), out=str(on_ray), **base), resume=True, progress=False, log=lambda s: None)
    assert (on_ray / "runs" / "grpo" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == before


def test_a_run_made_by_another_version_of_its_task_is_never_resumed_as_this_one(tmp_path):
    """config.json records the task as run (``SortTask(length=10, ...)``): a directory whose task differed (an earlier
    version's 6-digit sort, or a config.json from before the record) is refused by --resume with both named, and is
    not "the same settings" for --continue."""
    from entrolab.lab.cli import main
    from entrolab.lab.trainer import same_settings, task_spec

    out = tmp_path / "run"
    cfg = LabConfig(methods=("grpo",), out=str(out), **TINY)
    run_lab(cfg, progress=False, log=lambda s: None)
    saved = json.loads((out / "config.json").read_text())
    assert saved["task_spec"] == task_spec(cfg) and task_spec(cfg).startswith("SortTask(length=10,")
    assert same_settings(cfg, out)
    saved["task_spec"] = task_spec(cfg).replace("length=10", "length=6")
    (out / "config.json").write_text(json.dumps(saved))
    assert not same_settings(cfg, out)
    with pytest.raises(LabError, match=r"made with task SortTask\(length=6.*this version runs SortTask\(length=10"):
        run_lab(cfg, resume=True, progress=False, log=lambda s: None)
    assert main(["--resume", str(out), "--no-report", "--progress", "off"]) == 1  # the message, no traceback
    del saved["task_spec"]  # written before the record existed
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(LabError, match="made with task of an earlier version"):
        run_lab(cfg, resume=True, progress=False, log=lambda s: None)


@pytest.mark.parametrize(
    ("methods", "task"), [(("grpo", "cure", "ettrl", "aepo_entropy"), "sort"), (("aepo_agentic",), "calculator")]
)
def test_the_entropy_before_an_update_is_the_policys_own_on_the_batch(tmp_path, methods, task):
    """The mechanism check takes the entropy before the update from the rollout itself (no second forward).  With a
    learning rate of 1e-12 the policy does not move, so the observed change must vanish for every rollout kind: it
    would not if a rollout's entropies were not the policy's full-distribution entropies on the batch it trains on
    (branched, tempered-then-rescored and tool-interleaved rollouts included)."""
    cfg = LabConfig(methods=methods, task=task, lr=1e-12, out=str(tmp_path / "run"), **{**TINY, "steps": 2})
    out = run_lab(cfg, progress=False, log=lambda s: None)
    for name in methods:
        train = [r for r in _rows(out / "runs" / name / "seed0" / "metrics.jsonl") if r["kind"] == "train"]
        assert len(train) == 2, name
        for r in train:
            assert r["entropy_before_update"] == r["entropy"] > 0.0, name
            assert abs(r["observed_entropy_change"]) < 1e-5, (name, r["observed_entropy_change"])
