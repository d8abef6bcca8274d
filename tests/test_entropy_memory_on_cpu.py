"""Memory: the fast paths never allocate an (N, V) temporary (checked with the PyTorch profiler's allocation log)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from entrolab.entropy import _rows, linear_logprob_and_entropy, token_logprob_and_entropy


def _allocations(fn) -> list[int]:
    """Sizes in bytes of every CPU allocation made while ``fn`` runs.

    Only ATen ops are counted: the profiler also charges an allocation to every enclosing frame (the autograd node,
    the engine's evaluate_function), which would count the same bytes two or three times.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0 and e.name.startswith("aten::")]


def test_fused_linear_never_allocates_n_by_v(backend):
    n, h, v = 4096, 32, 8192
    nv_bytes = n * v * 4  # 128 MiB
    hid = torch.randn(n, h, requires_grad=True)
    w = torch.randn(v, h, requires_grad=True)
    labels = torch.randint(0, v, (n,))

    def run():
        lp, ent = linear_logprob_and_entropy(hid, w, labels)
        (lp.sum() + ent.sum()).backward()

    sizes = _allocations(run)
    assert sizes, "the profiler recorded no allocation"
    assert max(sizes) <= nv_bytes // 8, f"largest allocation {max(sizes)} bytes vs N*V*4 = {nv_bytes}"


@pytest.mark.parametrize("chunk_size", [None, 64])
def test_from_logits_holds_at_most_one_chunk(backend, chunk_size):
    n, v = 2048, 8192
    z = torch.randn(n, v, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    fwd = _allocations(lambda: token_logprob_and_entropy(z, labels, chunk_size=chunk_size))
    chunk = chunk_size or _rows.auto_row_chunk(n, v, z.device, native=False)
    chunk_bytes = chunk * v * 4
    assert max(fwd) <= max(chunk_bytes, 1 << 20), f"forward allocated {max(fwd)} bytes"

    def fwd_bwd():
        lp, ent = token_logprob_and_entropy(z, labels, chunk_size=chunk_size)
        (lp.sum() + ent.sum()).backward()
        z.grad = None

    sizes = sorted(_allocations(fwd_bwd), reverse=True)
    grad_bytes = n * v * 4
    assert sizes[0] == grad_bytes  # the gradient itself
    assert sizes[1] <= max(chunk_bytes, 1 << 20), f"a second large allocation of {sizes[1]} bytes"
