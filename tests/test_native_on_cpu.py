"""The native kernel loader: availability on CI, the portable (non-AVX-512) build, the fallback when disabled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from entrolab import _native
from entrolab.entropy import _rows, token_logprob_and_entropy
from entrolab.entropy.reference import token_logprob_and_entropy_reference
from tests.conftest import assert_close, make_logits


def test_native_kernels_are_built_on_ci():
    """CI has a C compiler: the fast path must really be exercised there, not silently skipped."""
    if os.environ.get("CI"):
        assert _native.get() is not None, _native.status()
    assert "native kernels" in _native.status()


@pytest.mark.parametrize("flags", [["-mno-avx512f"], ["-O0"]])
def test_portable_build_matches_reference(gen, monkeypatch, flags):
    """The auto-vectorised C loops (CPUs without AVX-512) and an unoptimised build give the same numbers."""
    if _native._compiler() is None:
        pytest.skip("no C compiler")
    try:
        kernels = _native.build(flags)
    except RuntimeError as exc:
        pytest.skip(f"cannot build with {flags}: {exc}")
    monkeypatch.setattr(_rows, "native_for", lambda x: kernels if kernels.supports(x) else None)
    for kind in ("random", "neg_inf_masked", "huge", "one_hot"):
        z = make_logits(kind, 13, 4099 + 17, generator=gen).float()
        labels = torch.randint(0, z.shape[1], (13,), generator=gen)
        labels = torch.where(torch.isfinite(z.gather(1, labels[:, None]).squeeze(1)), labels, -100)
        x = z.clone().requires_grad_()
        lp, h = token_logprob_and_entropy(x, labels, temperature=0.8)
        xr = z.double().requires_grad_()
        rlp, rh = token_logprob_and_entropy_reference(xr, labels, temperature=0.8)
        assert_close(h, rh, torch.float32, what=f"entropy {kind}")
        assert_close(lp, rlp, torch.float32, what=f"logp {kind}")
        (lp.sum() + h.sum()).backward()
        (rlp.sum() + rh.sum()).backward()
        assert_close(x.grad, xr.grad, torch.float32, what=f"grad {kind}")


def test_disabled_native_falls_back_to_torch(tmp_path):
    code = (
        "import torch; from entrolab import _native; from entrolab.entropy import token_logprob_and_entropy;"
        "print(_native.get() is None);"
        "_, h = token_logprob_and_entropy(torch.zeros(2, 4)); print(round(float(h[0]), 6))"
    )
    env = {**os.environ, "ENTROLAB_NATIVE": "0", "ENTROLAB_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "1.386294"]


def test_missing_compiler_falls_back(tmp_path):
    code = "from entrolab import _native; print(_native.get() is None); print(_native.status())"
    env = {**os.environ, "CC": "/nonexistent/cc", "ENTROLAB_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "True" and "no C compiler" in lines[1]


def test_cache_is_reused_and_written_atomically(tmp_path):
    code = "from entrolab import _native; _native.get(); print(_native.status())"
    env = {**os.environ, "ENTROLAB_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if "not in use" in first:
        pytest.skip(first)
    assert "compiled" in first and "cached" in second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]  # no half-written leftovers


def test_works_after_fork():
    """A forked child (DataLoader workers, multiprocessing) gets a fresh thread pool instead of deadlocking."""
    import multiprocessing as mp

    z = torch.randn(64, 5000)
    _, h_parent = token_logprob_and_entropy(z)  # creates the parent's pool
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        h_child = pool.apply_async(_child_entropy, (z,)).get(timeout=120)
    assert torch.allclose(h_parent, h_child)


def _child_entropy(z):
    return token_logprob_and_entropy(z)[1]
