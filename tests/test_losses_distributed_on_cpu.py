"""Global batch statistics through torch.distributed (gloo, 2 CPU processes): the global option on two halves of a
batch equals one process on the whole batch, for every method with batch statistics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _distributed_worker import CASES, CUT, run

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    worker = Path(__file__).with_name("_distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(r), str(tmp / "init"), str(tmp / f"rank{r}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("name", list(CASES))
def test_global_statistics_on_two_halves_equal_one_process_on_the_whole(ranks, name):
    whole = run(None, distributed=False)
    loss = ranks[0][name][0] + ranks[1][name][0]
    grad = torch.cat([ranks[0][name][1], ranks[1][name][1]])
    assert torch.allclose(loss, whole[name][0], atol=1e-12, rtol=1e-12), name
    assert torch.allclose(grad, whole[name][1], atol=1e-12, rtol=1e-12), name


def test_local_statistics_differ_from_global_ones(ranks):
    # the point of the option: per-micro-batch statistics (every framework's default) give a different result
    local = run(slice(0, CUT), distributed=False)
    assert any(not torch.allclose(local[n][1], ranks[0][n][1]) for n in CASES)


def test_dynamics_and_controller_reduce_over_ranks(ranks):
    whole = run(None, distributed=False)
    for i in range(4):
        for r in (0, 1):
            assert torch.allclose(ranks[r]["dynamics"][i], whole["dynamics"][i], atol=1e-12)
    cov = torch.cat([ranks[0]["dynamics"][4], ranks[1]["dynamics"][4]])
    assert torch.allclose(cov, whole["dynamics"][4], atol=1e-12)
    assert ranks[0]["controller"] == pytest.approx(whole["controller"], rel=1e-12) == ranks[1]["controller"]
