"""Minimum-entropy coupling, EBIM and MEC-B: the spec's worked examples, marginals to 1e-12, the support and entropy
bounds, brute force over set partitions and over the transportation polytope's vertices, the chain inequality."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entrolab.coupling import ebim, entropy_bits, greedy_mec, greedy_mec_sparse, mec_b


def _dirichlet(n: int, g: torch.Generator) -> torch.Tensor:
    x = -torch.log(torch.rand(n, generator=g, dtype=torch.float64))
    return x / x.sum()


def _h(p: torch.Tensor) -> float:
    return entropy_bits(p)


def test_worked_examples():
    j = greedy_mec(torch.tensor([0.6, 0.4], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert j[0, 0] == pytest.approx(0.5) and j[1, 1] == pytest.approx(0.4) and j[0, 1] == pytest.approx(0.1)
    assert _h(j) == pytest.approx(1.3610, abs=1e-4)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    assert _h(p) == pytest.approx(1.4855, abs=1e-4)
    g = ebim(p, 1.2)
    masses = torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, p)
    assert masses.tolist() == pytest.approx([0.7, 0.3]) and _h(masses) == pytest.approx(0.8813, abs=1e-4)


def test_greedy_mec_marginals_support_and_entropy_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, m = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        p, q = _dirichlet(n, g), _dirichlet(m, g)
        j = greedy_mec(p, q)
        assert float((j.sum(1) - p).abs().max()) < 1e-12 and float((j.sum(0) - q).abs().max()) < 1e-12
        assert int((j > 0).sum()) <= n + m - 1
        h = _h(j)
        assert h >= max(_h(p), _h(q)) - 1e-9
        assert h <= max(_h(p), _h(q)) + math.log2(math.e) + 1  # far looser than the proven gap; a sanity bound
        rows, cols, masses = greedy_mec_sparse(p, q)
        assert torch.allclose(j[rows, cols], masses)


def test_greedy_mec_near_the_exact_optimum_on_3x3():
    # entropy is concave: its minimum over the transportation polytope is at a vertex; enumerate vertices as the
    # couplings whose support is a spanning tree of the bipartite graph (a northwest-corner fill per row/column order)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        p, q = _dirichlet(3, g), _dirichlet(3, g)
        best = math.inf
        for rp in itertools.permutations(range(3)):
            for cq in itertools.permutations(range(3)):
                a, b = p[list(rp)].clone(), q[list(cq)].clone()
                j = torch.zeros(3, 3, dtype=torch.float64)
                i = k = 0
                while i < 3 and k < 3:
                    w = min(float(a[i]), float(b[k]))
                    j[rp[i], cq[k]] += w
                    a[i] -= w
                    b[k] -= w
                    if a[i] <= 1e-15:
                        i += 1
                    else:
                        k += 1
                best = min(best, _h(j))
        assert _h(greedy_mec(p, q)) <= best + 0.53


def test_ebim_edges_monotonicity_and_the_bound_against_brute_force():
    g = torch.Generator().manual_seed(2)

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for part in partitions(rest):
            yield [[first], *part]
            for k in range(len(part)):
                yield [*part[:k], [first, *part[k]], *part[k + 1 :]]

    for _ in range(40):
        n = int(torch.randint(2, 7, (1,), generator=g))
        p = _dirichlet(n, g)
        h = _h(p)
        assert ebim(p, h).tolist() == list(range(n)) or len(set(ebim(p, h).tolist())) == n  # the identity
        assert set(ebim(p, 0.0).tolist()) == {0}  # a constant map
        p2 = float(p.sort(descending=True).values[1])
        h2 = -(p2 * math.log2(p2) + (1 - p2) * math.log2(1 - p2)) if 0 < p2 < 1 else 0.0
        all_h = [_h(torch.tensor([float(p[c].sum()) for c in part], dtype=torch.float64))
                 for part in partitions(list(range(n)))]  # fmt: skip
        previous = -1.0
        for r in torch.linspace(0, h, 9, dtype=torch.float64).tolist():
            cells = ebim(p, r)
            i = _h(torch.zeros(int(cells.max()) + 1, dtype=torch.float64).index_add_(0, cells, p))
            assert i <= r + 1e-9 and i >= previous - 1e-9  # within the rate, non-decreasing in it
            best = max(x for x in all_h if x <= r + 1e-9)
            assert i <= best + 1e-9 and r - i <= h2 + 1e-9  # never beats the best map; within h(p_2) of the rate
            previous = i


def test_mec_b_marginals_and_the_chain_inequality():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        px, py = _dirichlet(6, g), _dirichlet(5, g)
        rate = 0.6 * _h(px)
        _cells, coupling, joint = mec_b(px, py, rate)
        assert torch.allclose(joint.sum(1), px) and torch.allclose(joint.sum(0), py)
        pt = coupling.sum(1)
        h_t = _h(pt)
        assert h_t <= rate + 1e-9

        def mi(j):
            return _h(j.sum(1)) + _h(j.sum(0)) - _h(j)

        i_xy = mi(joint)
        i_xt = h_t  # deterministic encoder
        i_ty = mi(coupling)
        assert i_xy >= i_xt + i_ty - h_t - 1e-9


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: greedy_mec(torch.tensor([0.5, 0.6]), torch.tensor([1.0])), "sum to 1"),
        (lambda: greedy_mec(torch.tensor([1.5, -0.5]), torch.tensor([1.0])), "non-negative"),
        (lambda: greedy_mec(torch.tensor([[1.0]]), torch.tensor([1.0])), "1-D"),
        (lambda: ebim(torch.tensor([0.5, 0.5], dtype=torch.float64), 1.5), "rate"),
        (lambda: ebim(torch.tensor([0.5, 0.5], dtype=torch.float64), -0.1), "rate"),
        (lambda: mec_b(torch.tensor([1.0]), torch.tensor([0.2, 0.2]), 0.0), "p_y"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
