"""KECOR's greedy coding-rate selection: the spec's worked example, brute force, the incremental log-det, posterior
conditioning as a Schur complement, diminishing gains, NTK features, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entrolab.estimators import coding_rate
from entrolab.selection import kecor_select, ntk_features, posterior_kernel


def _objective(k: torch.Tensor, s: list[int], sigma: float) -> float:
    return 0.5 * float(torch.logdet(torch.eye(len(s), dtype=k.dtype) + k[s][:, s] / sigma**2))


def test_worked_example():
    k = torch.tensor([[1, 0.9, 0.1], [0.9, 1, 0.1], [0.1, 0.1, 0.5]], dtype=torch.float64)
    idx, gains = kecor_select(k, 2, sigma=0.1)
    assert idx.tolist() == [0, 2]
    assert _objective(k, [0, 2], 0.1) == pytest.approx(4.2637, abs=1e-4)
    assert _objective(k, [0, 1], 0.1) == pytest.approx(3.8251, abs=1e-4)
    assert float(gains.sum()) == pytest.approx(_objective(k, [0, 2], 0.1))  # the incremental log-det


def test_against_brute_force_and_slogdet():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, b = 8, 1 + trial % 3
        z = torch.randn(n, 4, generator=g, dtype=torch.float64)
        k = z @ z.T / 4
        idx, gains = kecor_select(k, b, sigma=0.5)
        value = _objective(k, idx.tolist(), 0.5)
        best = max(_objective(k, list(s), 0.5) for s in itertools.combinations(range(n), b))
        assert value >= (1 - 1 / math.e) * best - 1e-9
        assert float(gains.sum()) == pytest.approx(value, rel=1e-9)  # Cholesky increments = slogdet of the block
        assert bool((gains[1:] <= gains[:-1] + 1e-12).all())  # diminishing returns along the greedy path
        assert int(idx[0]) == int(k.diagonal().argmax())  # first pick: the largest prior variance
        assert float(coding_rate(k[idx][:, idx], 0.5, kind="kernel")) == pytest.approx(value)


def test_posterior_is_the_schur_complement():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 3, generator=g, dtype=torch.float64)
    k = z @ z.T
    lab = torch.tensor([1, 4])
    post = posterior_kernel(k, lab, sigma=0.3)
    pool = [i for i in range(7) if i not in (1, 4)]
    full = k.clone()
    full[1, 1] += 0.09
    full[4, 4] += 0.09
    kll = full[lab][:, lab]
    ref = k[pool][:, pool] - k[pool][:, lab] @ torch.linalg.inv(kll) @ k[lab][:, pool]
    torch.testing.assert_close(post, ref)
    assert torch.equal(posterior_kernel(k, torch.zeros(0, dtype=torch.long)), k)


def test_entropy_bonus_and_early_stop():
    k = torch.eye(3, dtype=torch.float64) * 0.5
    idx, _ = kecor_select(k, 1, entropy=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), entropy_weight=0.5)
    assert idx.tolist() == [2]
    zero_variance = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert kecor_select(zero_variance, 3)[0].tolist() == [0]  # nothing left to learn from the other two
    rank1 = torch.ones(4, 4, dtype=torch.float64)  # copies of one point: each new copy adds less
    idx, gains = kecor_select(rank1, 3, sigma=1.0)
    assert gains.tolist() == pytest.approx([0.5 * math.log(2), 0.5 * math.log(3 / 2), 0.5 * math.log(4 / 3)])


def test_ntk_features_give_the_empirical_ntk():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    x = torch.randn(4, 3)
    feats = ntk_features(model, x, projection_dim=None)
    ref = []
    for i in range(4):
        model.zero_grad()
        model(x[i : i + 1]).sum().backward()
        ref.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(feats, torch.stack(ref))
    proj = ntk_features(model, x, projection_dim=8, generator=torch.Generator().manual_seed(0))
    assert proj.shape == (4, 8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: kecor_select(torch.eye(3), 0), "budget"),
        (lambda: kecor_select(torch.eye(3), 1, sigma=0.0), "sigma"),
        (lambda: kecor_select(torch.ones(2, 3), 1), "square"),
        (lambda: kecor_select(torch.eye(3), 1, entropy=torch.ones(2)), "entropy"),
        (lambda: posterior_kernel(torch.eye(3), torch.tensor([5])), "labelled"),
        (lambda: posterior_kernel(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([0])), "symmetric"),
        (lambda: ntk_features("model", torch.ones(2, 3)), "Module"),  # type: ignore[arg-type]
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_ads_worked_example_masking_and_invariances():
    from entrolab.estimators import particle_entropy
    from entrolab.selection import max_entropy_measurement

    a = torch.cat([torch.zeros(8), torch.full((8,), 30.0)])
    b = torch.linspace(0, 12, 16)
    y = torch.stack([a, b], 1).double()
    h = particle_entropy(y, 1.0)
    assert float(h[0]) == pytest.approx(math.log(2), abs=1e-4) and float(h[1]) == pytest.approx(1.6997, abs=1e-4)
    free = torch.zeros(2, dtype=torch.bool)
    assert max_entropy_measurement(y, free, sigma=1.0)[0] == 1
    idx, code = max_entropy_measurement(y, free, sigma=1.0, exponent_sign=1)
    assert (
        idx == 0
        and float(code[0]) == pytest.approx(7233.3, abs=0.1)
        and float(code[1]) == pytest.approx(704.1, abs=0.1)
    )
    # a measured location is never chosen, even when every free score is lower (or negative, for the code's form)
    assert max_entropy_measurement(y, torch.tensor([False, True]), sigma=1.0)[0] == 0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 9, generator=g, dtype=torch.float64)
    mask = torch.zeros(9, dtype=torch.bool)
    mask[3] = True
    pick = max_entropy_measurement(z, mask, sigma=0.5)[0]
    assert max_entropy_measurement(z[torch.randperm(12, generator=g)], mask, sigma=0.5)[0] == pick  # permutation
    assert max_entropy_measurement(z + 5.0, mask, sigma=0.5)[0] == pick  # shift
    # no overflow at d / sigma = 1e3; logsumexp agrees with the naive formula where that is finite
    far = torch.tensor([[0.0], [1e3]], dtype=torch.float64)
    assert torch.isfinite(
        max_entropy_measurement(far, torch.zeros(1, dtype=torch.bool), sigma=1.0, exponent_sign=1)[1]
    ).all()
    near = torch.randn(5, 2, generator=g, dtype=torch.float64)
    naive = -torch.log(torch.exp(-torch.cdist(near.T.unsqueeze(-1), near.T.unsqueeze(-1)).pow(2) / 2).mean(-1)).mean(-1)
    torch.testing.assert_close(particle_entropy(near, 1.0), naive)
    with pytest.raises(ValueError, match="already measured"):
        max_entropy_measurement(y, torch.ones(2, dtype=torch.bool), sigma=1.0)
    with pytest.raises(ValueError, match="exponent_sign"):
        max_entropy_measurement(y, free, sigma=1.0, exponent_sign=2)
