"""AEM: the spec's closed forms and gradient identity, lambda = 0 is plain ABMIL, padding, heads, top-k, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.regularizers import ABMIL, aem_lambda, aem_loss


def test_worked_example_and_gradient_identity():
    s = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = aem_loss(s, lam=1.0)
    assert float(out.loss.detach()) == pytest.approx(-0.8324, abs=1e-4)
    (g,) = torch.autograd.grad(out.loss, s)
    a = torch.softmax(s.detach(), -1)
    h = -(a * a.log()).sum()
    torch.testing.assert_close(g, a * (a.log() + h))  # d(sum a log a)/ds_i = a_i (log a_i + H)
    assert g.tolist() == pytest.approx([-0.1418, -0.1408, 0.2826], abs=1e-4)


def test_uniform_and_one_hot():
    u = torch.zeros(100, dtype=torch.float64, requires_grad=True)
    out = aem_loss(u, lam=1.0)
    assert float(out.loss.detach()) == pytest.approx(-math.log(100))
    (g,) = torch.autograd.grad(out.loss, u)
    assert float(g.abs().max()) < 1e-12  # uniform attention: zero gradient
    assert float(out.metrics["normalized_attention_entropy"]) == pytest.approx(1.0)
    one_hot = torch.tensor([0.0, -math.inf, -math.inf])
    assert float(aem_loss(one_hot, lam=1.0).loss) == 0.0


def test_lambda_zero_is_plain_abmil_and_padding_matches_single_bags():
    torch.manual_seed(0)
    model = ABMIL(8)
    bags = [torch.randn(n, 8) for n in (5, 9, 3)]
    y = torch.tensor([1, 0, 1])
    width = max(b.shape[0] for b in bags)
    x = torch.zeros(3, width, 8)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    logits, s = model(x, mask)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.equal(ce + aem_loss(s, lam=0.0).loss, ce)  # lambda 0: the plain loss, bit for bit
    batched = aem_loss(s, lam=0.3).loss
    single = sum(aem_loss(model(b.unsqueeze(0))[1], lam=0.3).loss for b in bags) / 3
    torch.testing.assert_close(batched, single)
    # the mask argument and -inf logits are equivalent
    raw = model.w(
        torch.tanh(model.v(torch.relu(model.reduce(x)))) * torch.sigmoid(model.u(torch.relu(model.reduce(x))))
    )
    torch.testing.assert_close(aem_loss(raw.squeeze(-1), mask, lam=0.3).loss, batched)


def test_heads_average_and_top_k():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    multi = aem_loss(s, lam=0.5).loss
    per_head = sum(aem_loss(s[:, k], lam=0.5).loss for k in range(4)) / 4
    torch.testing.assert_close(multi, per_head)
    torch.testing.assert_close(aem_loss(s, lam=0.5, top_k=7).loss, multi)  # k >= N: the full penalty
    top2 = aem_loss(torch.tensor([3.0, 1.0, 0.0, -1.0], dtype=torch.float64), lam=1.0, top_k=2).loss
    a = torch.softmax(torch.tensor([3.0, 1.0], dtype=torch.float64), -1)
    assert float(top2) == pytest.approx(float((a * a.log()).sum()))


def test_schedule():
    assert aem_lambda(0, 10, lam=0.2, schedule="cosine") == pytest.approx(0.2)
    assert aem_lambda(10, 10, lam=0.2, schedule="cosine") == pytest.approx(0.0)
    assert aem_lambda(3, 10, lam=0.2) == 0.2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: aem_loss(torch.zeros(3), lam=-1.0), "lam"),
        (lambda: aem_loss(torch.tensor([0.0, float("nan")])), "NaN"),
        (lambda: aem_loss(torch.full((3,), -math.inf)), "at least one valid"),
        (lambda: aem_loss(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool)), "mask"),
        (lambda: aem_loss(torch.zeros(3), top_k=0), "top_k"),
        (lambda: aem_loss(torch.zeros(1, 1, 1, 1)), "dimensions|N,"),
        (lambda: aem_loss(torch.zeros(3, dtype=torch.long)), "floating"),
        (lambda: aem_lambda(0, 10, schedule="linear"), "schedule"),
        (lambda: aem_lambda(11, 10), "step"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_centaur_cluster_entropy_step():
    from entrolab.estimators import cluster_entropy
    from entrolab.regularizers import TestTimeAdapter, tta_step

    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    assert float(cluster_entropy(p, torch.tensor([0, 0, 1, 1]))) == pytest.approx(0.6109, abs=1e-4)
    # invariances: permuting candidates with their clusters, moving mass inside a cluster
    perm = torch.tensor([2, 0, 3, 1])
    assert float(cluster_entropy(p[perm], torch.tensor([0, 0, 1, 1])[perm])) == pytest.approx(0.6109, abs=1e-4)
    moved = torch.tensor([0.6, 0.1, 0.2, 0.1], dtype=torch.float64)
    assert float(cluster_entropy(moved, torch.tensor([0, 0, 1, 1]))) == pytest.approx(0.6109, abs=1e-4)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    assignment = torch.tensor([0, 0, 1, 1])
    buf = torch.randn(6, 3)

    def mean_ce(m):
        with torch.no_grad():
            return float(cluster_entropy(torch.softmax(m(buf), -1), assignment).mean())

    before = mean_ce(model)
    assert tta_step(model, buf, assignment, lr=1e-2) == pytest.approx(before)
    assert mean_ce(model) < before  # a small step lowers the buffer's cluster entropy
    w = model.weight.detach().clone()
    assert tta_step(model, buf[:0], assignment) == 0.0 and torch.equal(model.weight, w)  # empty buffer: no change

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x):
            seen.append(x.clone())
            return self.lin(x)

    adapter = TestTimeAdapter(Spy(), assignment, lr=1e-2, buffer_size=2)
    obs = [torch.randn(1, 3) for _ in range(4)]
    for t, o in enumerate(obs):
        seen.clear()
        adapter.predict(o)
        adapted_on = seen[0] if t > 0 else None
        if t > 0:  # the step's data are earlier observations only (at most 2), never o_t
            assert not any(torch.equal(o, row.unsqueeze(0)) for row in adapted_on)
            assert adapted_on.shape[0] == min(t, 2)
    original = adapter.original.lin.weight.detach().clone()
    assert torch.equal(adapter.original.lin.weight, original)  # reset=True never changes the original weights
    acc = TestTimeAdapter(torch.nn.Linear(3, 4), assignment, lr=1e-1, reset=False)
    w0 = acc.running.weight.detach().clone()
    for o in obs:
        acc.predict(o)
    assert not torch.equal(acc.running.weight, w0)  # reset=False accumulates


def test_entropy_band_regularizer():
    from entrolab.regularizers import EntropyBandRegularizer

    uniform = torch.full((1, 1, 1, 64), 1 / 64, dtype=torch.float64)
    reg = EntropyBandRegularizer(layers=1, heads=1, lam=1.0)
    assert float(reg([uniform]).loss.detach()) == pytest.approx(4.3241, abs=1e-4)
    with torch.no_grad():
        reg.thresholds.fill_(0.9)
    assert float(reg([uniform]).loss.detach()) == 0.0  # delta 0.4159 inside the band 0.8318
    # the jump at the band edge is (gamma E_max)^2 = 0.6919
    e_max = math.log(64)
    with torch.no_grad():
        reg.thresholds.fill_(1 - 0.2 - 1e-6)  # delta just beyond gamma E_max
    assert float(reg([uniform]).loss.detach()) == pytest.approx((0.2 * e_max) ** 2, rel=1e-4)
    one_hot = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    one_hot[..., 0] = 1
    assert float(-(one_hot * torch.log(one_hot + 1e-9)).sum()) == pytest.approx(0.0, abs=1e-8)
    # dead band: zero gradient inside; outside, 2 delta dE/dA
    a = torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64), -1).requires_grad_()
    reg2 = EntropyBandRegularizer(layers=1, heads=3, lam=1.0, gamma=10.0)  # the whole range is inside the band
    reg2([a]).loss.backward()
    assert a.grad is not None and float(a.grad.abs().max()) == 0.0
    # per-layer thresholds get independent gradients; the shared variant reproduces one vector for all layers
    stack = [torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64) * 3, -1) for _ in range(2)]
    per = EntropyBandRegularizer(layers=2, heads=3, lam=1.0, gamma=0.0)
    per([s for s in stack]).loss.backward()
    assert per.thresholds.grad.shape == (2, 3) and not torch.equal(per.thresholds.grad[0], per.thresholds.grad[1])
    shared = EntropyBandRegularizer(layers=2, heads=3, lam=1.0, gamma=0.0, share_thresholds_across_layers=True)
    with torch.no_grad():
        per.thresholds.copy_(shared.thresholds.expand(2, 3))
    torch.testing.assert_close(shared(stack).loss, per(stack).loss.to(torch.float64))
    # causal rows: a row t uniform over its t + 1 keys has delta = (1 - theta) ln(t + 1)
    causal = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    for t in range(4):
        causal[0, 0, t, : t + 1] = 1 / (t + 1)
    c = EntropyBandRegularizer(layers=1, heads=1, lam=1.0, gamma=0.0, max_entropy="causal_row")
    expected = sum(((1 - 0.5) * math.log(t + 1)) ** 2 for t in range(4))
    assert float(c([causal]).loss.detach()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="one per layer"):
        reg([uniform, uniform])
    with pytest.raises(ValueError, match="max_entropy"):
        EntropyBandRegularizer(layers=1, heads=1, max_entropy="row")


def _critic(spectral: bool = False):
    from entrolab.regularizers import BilinearCritic

    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    h = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    return BilinearCritic(g, h, 8, spectral=spectral)


def test_wpc_gradient_penalty_spectral_norm_and_permutation():
    from entrolab.regularizers import gradient_penalty, wpc_loss

    # a linear critic a.x + b.y with |(a, b)| = 1 has a two-sided penalty of exactly 0
    a = torch.tensor([0.6, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.8], dtype=torch.float64)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    assert float(gradient_penalty(lambda u, v: u @ a + v @ b, x, y)) == pytest.approx(0.0, abs=1e-24)
    assert float(gradient_penalty(lambda u, v: 2 * (u @ a + v @ b), x, y)) == pytest.approx(1.0)
    assert float(gradient_penalty(lambda u, v: 0.5 * (u @ a + v @ b), x, y, one_sided=True)) == 0.0
    # spectral normalisation: the largest singular value of each normalised weight is about 1
    crit = _critic(spectral=True)
    for _ in range(30):  # power iterations run in training-mode forwards
        crit(torch.randn(4, 6), torch.randn(4, 6))
    lins = [m for m in crit.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lins) == 5
    for m in lins:
        assert float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) == pytest.approx(1.0, abs=0.05)
    # the loss is invariant to permuting the batch (pairs kept together); the penalty is on and finite
    crit = _critic()
    xb, yb = torch.randn(16, 6), torch.randn(16, 6)
    l1 = wpc_loss(crit, xb, yb, lipschitz="none").loss
    perm = torch.randperm(16)
    l2 = wpc_loss(crit, xb[perm], yb[perm], lipschitz="none").loss
    torch.testing.assert_close(l1, l2)
    out = wpc_loss(crit, xb, yb, generator=torch.Generator().manual_seed(0))
    assert float(out.metrics["gradient_penalty"]) > 0 and torch.isfinite(out.loss)
    assert float(out.metrics["infonce_bound"]) <= math.log(16) + 1e-6
    with pytest.raises(ValueError, match="lipschitz"):
        wpc_loss(crit, xb, yb, lipschitz="clip")


def test_wpc_dual_is_near_zero_on_independent_data():
    from entrolab.regularizers import wpc_loss

    crit = _critic()
    opt = torch.optim.Adam(crit.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        x, y = torch.randn(64, 6, generator=g), torch.randn(64, 6, generator=g)  # independent
        loss = wpc_loss(crit, x, y, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    duals = []
    with torch.no_grad():
        for _ in range(20):
            x, y = torch.randn(256, 6, generator=g), torch.randn(256, 6, generator=g)
            duals.append(float(wpc_loss(crit, x, y, lipschitz="none").metrics["wpc_dual"]))
    assert abs(sum(duals) / len(duals)) < 0.1


def test_koopman_pieces():
    from entrolab.regularizers import koopman_loss, ridge_koopman, temporal_info_nce

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3
    z0 = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    traj = [z0]
    for _ in range(20):
        traj.append(traj[-1] @ a)
    z = torch.cat(traj, 1)
    torch.testing.assert_close(ridge_koopman(z[:, :-1], z[:, 1:], ridge=1e-12), a, atol=1e-6, rtol=1e-6)
    same = torch.ones(2, 9, 3, dtype=torch.float64)  # all similarities equal: ln(#candidates / #positives)
    assert float(temporal_info_nce(same, k=2)) == pytest.approx(math.log(8 / 4))
    assert float(temporal_info_nce(torch.randn(2, 9, 3, generator=g), k=2)) >= 0
    enc = torch.nn.Linear(3, 5).double()
    dec = torch.nn.Linear(5, 3).double()
    x = torch.randn(4, 12, 3, generator=g, dtype=torch.float64)
    paper = koopman_loss(enc, dec, x, k=2)
    code = koopman_loss(enc, dec, x, k=2, vn_sign=1)
    s = float(paper.metrics["vn_entropy"])
    assert float(code.loss.detach()) - float(paper.loss.detach()) == pytest.approx(
        2 * 0.1 * s
    )  # only the VN term's sign flips
    assert float(paper.metrics["effective_rank"]) == pytest.approx(math.exp(s))
    with pytest.raises(ValueError, match="vn_sign"):
        koopman_loss(enc, dec, x, vn_sign=0)
    with pytest.raises(ValueError, match="T > 2k"):
        temporal_info_nce(same[:, :4], k=2)


def test_mee_entropy_term():
    from entrolab.regularizers import CodeBuffer, mee_entropy_term, mee_lambda

    g = torch.Generator().manual_seed(0)
    codes = torch.randn(8, 4, generator=g, dtype=torch.float64)
    buf = CodeBuffer(dim=4, capacity=32)
    buf.push(torch.randn(32, 4, generator=g))
    t1 = mee_entropy_term(codes, buf)
    buf2 = CodeBuffer(dim=4, capacity=32)
    buf2.push(buf.codes * 2)
    t2 = mee_entropy_term(codes * 2, buf2)
    assert float(t2 - t1) == pytest.approx(-2 * math.log(2), abs=1e-5)  # scaling identity
    # chunked nearest neighbour equals brute force, with a buffer smaller than the batch
    small = CodeBuffer(dim=4, capacity=3)
    small.push(torch.randn(10, 4, generator=g))
    assert len(small) == 3  # FIFO: the newest 3
    brute = torch.stack([((codes - b).pow(2).sum(1)) for b in small.codes.double()], 1).amin(1)
    torch.testing.assert_close(mee_entropy_term(codes, small, chunk=2), -torch.log(brute.mean() / 4))
    # gradient reaches the codes only; spreading codes apart lowers the term
    c = codes.clone().requires_grad_()
    mee_entropy_term(c, buf).backward()
    assert c.grad is not None and buf.codes.grad is None
    assert float(mee_entropy_term(codes * 3, buf)) < float(mee_entropy_term(codes, buf))
    with pytest.raises(ValueError, match="empty"):
        mee_entropy_term(codes, CodeBuffer(dim=4))
    # the code's columnwise buffer shrinks: 961, 898, ..., 16, then 1 row, for batch 64 and 1024 rows
    col = CodeBuffer(dim=2, nn_search="columnwise", batch=64, rows=1024, generator=g)
    sizes = []
    for _ in range(18):
        col.push(torch.zeros(64, 2))
        sizes.append(len(col))
    assert sizes[:3] == [961, 898, 835] and sizes[15] == 16 and sizes[16:] == [1, 1]
    assert mee_lambda(0) == 0.0 and mee_lambda(50) == pytest.approx(2.5e-4) and mee_lambda(300) == pytest.approx(5e-4)


def test_mee_dlle_and_disomap():
    from entrolab.regularizers import disomap_loss, dlle_loss

    lin = torch.nn.Linear(2, 3).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    assert float(dlle_loss(lin, x, lambda t: t).detach()) == 0.0  # identical codes
    assert float(dlle_loss(lin, x, lambda t: t + 1.0).detach()) > 0
    # a linear (affine) discriminator maps straight lines to straight lines: DIsoMap is only the target noise
    fake = torch.randn(8, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert float(disomap_loss(lin, x, fake, generator=g, noise=0.0).detach()) == pytest.approx(0.0, abs=1e-20)
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    loss = disomap_loss(mlp, x, fake, generator=g)
    loss.backward()
    assert float(loss.detach()) > 0 and all(p.grad is not None for p in mlp.parameters())
    with pytest.raises(ValueError, match="one shape"):
        disomap_loss(lin, x, fake[:3])
