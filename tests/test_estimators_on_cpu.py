"""Entropy estimators against closed forms: Gaussian differential entropy (k-NN, converging with n), von Neumann
entropy of isotropic and rank-deficient spectra with its invariances, the determinant identity of the coding rate,
hand-computed cluster entropies, the particle-mixture bounds, attention entropies; bad input."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.estimators import (
    attention_entropy,
    cluster_entropy,
    coding_rate,
    knn_entropy,
    particle_entropy,
    von_neumann_entropy,
)


def _gaussian_entropy(cov: torch.Tensor) -> float:
    d = cov.shape[0]
    return 0.5 * (d * math.log(2 * math.pi * math.e) + float(torch.logdet(cov)))


@pytest.mark.parametrize("d", [1, 3])
def test_knn_entropy_converges_to_the_gaussian_closed_form(d):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    truth = _gaussian_entropy(cov)
    errors = []
    for n in (200, 3000):
        x = torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T
        errors.append(abs(float(knn_entropy(x)) - truth))
    assert errors[1] < 0.08
    assert errors[1] < errors[0] + 0.02  # no worse with 15x the samples
    # shifting the samples leaves it unchanged; scaling by c adds d ln c
    x = torch.randn(500, d, generator=g, dtype=torch.float64)
    assert float(knn_entropy(x + 7.0)) == pytest.approx(float(knn_entropy(x)), abs=1e-9)
    assert float(knn_entropy(3 * x)) == pytest.approx(float(knn_entropy(x)) + d * math.log(3), abs=1e-9)


def test_von_neumann_closed_forms_and_invariances():
    assert float(von_neumann_entropy(torch.eye(16, dtype=torch.float64))) == pytest.approx(math.log(16))
    rank3 = torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0], dtype=torch.float64))
    assert float(von_neumann_entropy(rank3)) == pytest.approx(math.log(3))
    spec = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert float(von_neumann_entropy(spec)) == pytest.approx(0.5623, abs=1e-4)
    assert math.exp(float(von_neumann_entropy(spec))) == pytest.approx(1.7548, abs=1e-4)  # effective rank
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 6, generator=g, dtype=torch.float64)
    cov = z.T @ z
    q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    h = float(von_neumann_entropy(cov))
    assert float(von_neumann_entropy(7.5 * cov)) == pytest.approx(h)
    assert float(von_neumann_entropy(q @ cov @ q.T)) == pytest.approx(h)
    batch = von_neumann_entropy(torch.stack([cov, torch.eye(6, dtype=torch.float64)]))
    assert batch.shape == (2,) and float(batch[1]) == pytest.approx(math.log(6))
    # finite gradients at rank deficiency and repeated eigenvalues
    zz = torch.randn(3, 6, generator=g, dtype=torch.float64).requires_grad_()
    von_neumann_entropy(zz.T @ zz).backward()
    assert bool(torch.isfinite(zz.grad).all())


def test_coding_rate_determinant_identity():
    g = torch.Generator().manual_seed(0)
    for n, d in ((5, 3), (3, 5), (4, 4)):
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        ref = 0.5 * float(torch.logdet(torch.eye(n, dtype=torch.float64) + z @ z.T / 0.7**2))
        assert float(coding_rate(z, 0.7, kind="features")) == pytest.approx(ref)
        assert float(coding_rate(z @ z.T, 0.7, kind="kernel")) == pytest.approx(ref)
    assert float(coding_rate(torch.zeros(4, 2, dtype=torch.float64), 1.0)) == 0.0
    with pytest.raises(ValueError, match="positive definite"):
        coding_rate(-5 * torch.eye(3, dtype=torch.float64), 1.0, kind="kernel")


def test_cluster_entropy_by_hand():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    out = cluster_entropy(p, torch.tensor([0, 0, 1, 1]))
    assert float(out[0]) == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)))
    assert float(out[1]) == pytest.approx(math.log(2))
    assert float(cluster_entropy(p[1], torch.tensor([0, 0, 0, 0]))) == 0.0
    assert float(cluster_entropy(p[1], torch.tensor([0, 1, 2, 3]))) == pytest.approx(math.log(4))
    one_hot = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    cluster_entropy(one_hot, torch.tensor([0, 1, 2])).backward()
    assert bool(torch.isfinite(one_hot.grad).all())


def test_particle_entropy_bounds():
    same = torch.zeros(16, 3, dtype=torch.float64)
    assert torch.allclose(particle_entropy(same, 1.0), torch.zeros(3, dtype=torch.float64))
    far = torch.arange(16, dtype=torch.float64).unsqueeze(1) * 100
    assert float(particle_entropy(far, 1.0)[0]) == pytest.approx(math.log(16))
    g = torch.Generator().manual_seed(0)
    y = torch.randn(16, 5, 2, generator=g, dtype=torch.float64)
    h = particle_entropy(y, 0.5)
    assert h.shape == (5,) and bool((h >= 0).all() & (h <= math.log(16) + 1e-12).all())
    assert bool((particle_entropy(y, 0.5, pairwise="product") <= h + 1e-12).all())  # the wider kernel: lower
    assert float(particle_entropy(same[:1], 1.0)[0]) == 0.0  # one particle


def test_attention_entropy():
    a = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]], dtype=torch.float64)
    out = attention_entropy(a)
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])
    mask = torch.tensor([[True, True, False, False]])
    masked = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]], dtype=torch.float64)
    assert float(attention_entropy(masked, mask)[0, 0]) == pytest.approx(math.log(2))
    none_valid = attention_entropy(torch.zeros(1, 1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.bool))
    assert float(none_valid) == 0.0
    with pytest.raises(ValueError, match="masked keys"):
        attention_entropy(a[:, :1], mask)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: knn_entropy(torch.zeros(10, 2)), "duplicated"),
        (lambda: knn_entropy(torch.randn(3, 2), k=3), "more than k"),
        (lambda: knn_entropy(torch.randn(10, 2), k=0), "k must be"),
        (lambda: knn_entropy(torch.tensor([[1.0, float("nan")]] * 5)), "finite"),
        (lambda: knn_entropy(torch.ones(5, dtype=torch.long)), "floating"),
        (lambda: von_neumann_entropy(torch.ones(2, 3)), "square"),
        (lambda: von_neumann_entropy(torch.tensor([[1.0, 2.0], [0.0, 1.0]])), "symmetric"),
        (lambda: von_neumann_entropy(torch.zeros(2, 2)), "trace"),
        (lambda: coding_rate(torch.ones(3, 2), 0.0), "sigma"),
        (lambda: coding_rate(torch.ones(3, 2), 1.0, kind="gram"), "kind"),
        (lambda: coding_rate(torch.ones(3, 2), 1.0, kind="kernel"), "square"),
        (lambda: cluster_entropy(torch.tensor([0.5, 0.6]), torch.tensor([0, 1])), "sum"),
        (lambda: cluster_entropy(torch.tensor([0.5, 0.5]), torch.tensor([0, -1])), "ids"),
        (lambda: cluster_entropy(torch.tensor([0.5, 0.5]), torch.tensor([0, 1, 2])), "assignment"),
        (lambda: particle_entropy(torch.ones(4, 2), -1.0), "sigma"),
        (lambda: particle_entropy(torch.ones(4), 1.0), "dimensions"),
        (lambda: particle_entropy(torch.ones(4, 2), 1.0, pairwise="max"), "pairwise"),
        (lambda: attention_entropy(torch.tensor([[0.7, 0.7]])), "sum to 1"),
        (lambda: attention_entropy(torch.tensor([[1.5, -0.5]])), "non-negative"),
        (lambda: attention_entropy(torch.full((1, 2), 0.5), torch.ones(3, dtype=torch.bool)), "broadcast"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
