"""``EntropyGRPOTrainer`` under real data parallelism: 2 processes started by ``torchrun`` (gloo, CPU).

Every registered policy loss trains 2 steps with and without gradient checkpointing (and with ``global_stats``
where the loss has it): finite losses, DDP really wrapping the model in a 2-process gloo group, identical parameters
on both ranks.  On a fixed batch split unevenly over the ranks, the DDP-averaged gradient and the summed loss equal
one process on the whole batch (``dapo`` aggregation, whose normaliser is global; Clip-Cov and KL-Cov with
``global_stats``, whose selection is then global too)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import engine

trl = engine("trl")
from entrolab.integrations.trl import EntropyGRPOTrainer  # noqa: E402
from tests._trl_fixtures import GRAD_CASES, config, data, fixed_batch, grads, model, reward, tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(mode: str, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "_trl_ddp_worker.py"), mode, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("trl_ddp_train")
    _torchrun("train", out)
    return json.loads((out / "train.json").read_text())


def test_two_real_processes_train_every_loss_identically_on_both_ranks(trained):
    assert trained["world"] == 2 and trained["backend"] == "gloo"
    seen = set()
    for r in trained["results"]:
        case = f"{r['loss']} {r['kwargs']} gradient_checkpointing={r['gc']}"
        assert r["ddp"] == "DistributedDataParallel", case
        assert r["steps"] == 2 and len(r["losses"]) == 2, case
        assert all(math.isfinite(v) for v in r["losses"]), case
        assert r["hashes"][0] == r["hashes"][1], f"ranks diverged: {case}"
        seen.add((r["loss"], r["gc"]))
    from entrolab.losses import policy_losses

    assert seen == {(name, gc) for name in policy_losses() for gc in (False, True)}


def test_trls_metric_names_are_logged_under_data_parallelism(trained):
    for r in trained["results"]:
        keys = set(r["keys"])
        assert {"entropy", "clip_ratio/low_mean", "clip_ratio/high_max", "clip_ratio/region_mean"} <= keys, r["loss"]
        assert any(k.startswith("entrolab/") for k in keys)
        if r["coef"]:
            assert {"policy_loss", "entropy_coef"} <= keys


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    _torchrun("grad", tmp_path)
    saved = torch.load(tmp_path / "grad.pt")
    tok = tokenizer()
    for name, kw in GRAD_CASES:
        trainer = EntropyGRPOTrainer(
            model(tok, seed=2), reward_funcs=reward, args=config(tmp_path / name), train_dataset=data(),
            processing_class=tok, policy_loss=name, loss_kwargs=kw,
        )  # fmt: skip
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        loss = trainer.compute_loss(trainer.model, fixed_batch(tok))
        loss.backward()
        ref = grads(trainer.model)
        got = saved[name]
        assert got["ddp"] == "DistributedDataParallel"
        # each rank normalises by half the global token count (TRL's dapo), so the ranks' losses sum to twice it
        torch.testing.assert_close(got["loss_sum"] / 2, loss.detach(), rtol=1e-5, atol=1e-7, msg=name)
        assert ref.keys() == got["grads"].keys() and len(ref) > 10
        for key in ref:
            torch.testing.assert_close(got["grads"][key], ref[key], rtol=1e-4, atol=1e-7, msg=f"{name} {key}")
