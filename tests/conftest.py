"""Shared test fixtures: tolerances per dtype, the shape grid, adversarial rows and the entropy backend switch."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import _native
from entrolab.entropy import _rows

# One table of tolerances (atol, rtol) per input dtype, for values and gradients against the float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 1e-5),
    torch.bfloat16: (5e-3, 5e-2),
    torch.float16: (5e-3, 5e-2),
}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ADVERSARIAL = ["random", "all_negative", "neg_inf_masked", "one_hot", "uniform", "huge", "shifted"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, what: str, scale: float = 1.0):
    """Compare with the dtype's tolerance (scaled), printing the first mismatching elements on failure."""
    atol, rtol = TOLERANCES[dtype]
    actual, expected = actual.double(), expected.double()
    ok = torch.isclose(actual, expected, atol=atol * scale, rtol=rtol * scale) | (
        torch.isinf(actual) & (actual == expected)
    )
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:5]
        lines = [
            f"  at {tuple(i.tolist())}: got {actual[tuple(i)]:.8g}, expected {expected[tuple(i)]:.8g}" for i in bad
        ]
        raise AssertionError(f"{what} ({dtype}): {int((~ok).sum())} mismatches of {ok.numel()}\n" + "\n".join(lines))


def make_logits(kind: str, n: int, v: int, *, generator: torch.Generator) -> torch.Tensor:
    """float64 logits (n, v) of one adversarial kind; every row keeps at least one finite entry."""
    z = torch.randn(n, v, generator=generator, dtype=torch.float64) * 2
    if kind == "all_negative":
        z = -z.abs() * 3 - 50
    elif kind == "neg_inf_masked":
        mask = torch.rand(n, v, generator=generator, dtype=torch.float64) < 0.4
        mask[:, 0] = False  # keep column 0 finite
        z = z.masked_fill(mask, float("-inf"))
    elif kind == "one_hot":
        z = torch.full((n, v), float("-inf"), dtype=torch.float64)
        z[torch.arange(n), torch.randint(0, v, (n,), generator=generator)] = 0.0
    elif kind == "uniform":
        z = torch.full((n, v), 3.25, dtype=torch.float64)
    elif kind == "huge":
        z = torch.randn(n, v, generator=generator, dtype=torch.float64).sign() * 1e4 + z
    elif kind == "shifted":
        z = z + 1000.0
    return z


def labels_for(z: torch.Tensor, *, generator: torch.Generator, ignore_some: bool = True) -> torch.Tensor:
    """Labels pointing at finite entries, with about one in five ignored (-100)."""
    n = z.shape[0]
    weights = torch.isfinite(z).double()
    labels = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    if ignore_some and n > 1:
        labels[torch.rand(n, generator=generator) < 0.2] = -100
    return labels


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Run a test with the native CPU kernels, and again with the portable PyTorch path."""
    if request.param == "native":
        if _native.get() is None:
            pytest.skip(f"native kernels unavailable: {_native.status()}")
    else:
        monkeypatch.setattr(_rows, "native_for", lambda x: None)
    return request.param


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def log(v: int) -> float:
    return math.log(v)


def engine(module: str, extra: str | None = None):
    """Import an optional engine (``trl``, ``verl``) for an integration test: skip when it is missing in a bare
    ``pytest`` run, fail when ``ENTROLAB_REQUIRE_ENGINES=1`` (``make test`` and CI set it, so both suites run there)."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("ENTROLAB_REQUIRE_ENGINES") == "1":
            raise AssertionError(
                f"{module} is required under ENTROLAB_REQUIRE_ENGINES=1 but cannot be imported"
            ) from exc
        pytest.skip(
            f"{module} is not installed (pip install 'entrolab[{extra or module}]'; make test installs it)",
            allow_module_level=True,
        )
