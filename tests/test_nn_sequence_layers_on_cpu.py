"""entrolab.nn: gated linear attention (recurrent vs chunked), Sparse State Expansion (spec beyond_llm.md section 18)
and the selective SSM with the token-dynamics refinements (section 14)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.nn import (
    SelectiveSSM,
    SignConstrainedProjection,
    SparseStateExpansion,
    gated_linear_attention,
    load_balance_loss,
    row_topk_mask,
    selective_scan,
    soft_sort,
    token_dynamics_mu,
)


def _gla_inputs(b, h, t, c, dv, seed, *, decay=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, c, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, t, c, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, t, dv, generator=g, dtype=torch.float64)
    la = -torch.rand(b, h, t, c, generator=g, dtype=torch.float64) * 3 if decay else None
    return q, k, v, la


def _naive(q, k, v, la):
    """o_t = sum_{s <= t} (q_t * prod_{s < r <= t} alpha_r) . k_s v_s, by explicit products (float64)."""
    b, h, t, c = q.shape
    alpha = torch.ones_like(q) if la is None else la.exp()
    o = torch.zeros(b, h, t, v.shape[-1], dtype=q.dtype)
    for i in range(t):
        for s in range(i + 1):
            decay = alpha[:, :, s + 1 : i + 1].prod(2) if s < i else torch.ones(b, h, c, dtype=q.dtype)
            o[:, :, i] += ((q[:, :, i] * decay * k[:, :, s]).sum(-1, keepdim=True)) * v[:, :, s]
    return o


# --------------------------------------------------------------------------------- gated linear attention
@pytest.mark.parametrize(("t", "chunk"), [(1, 1), (7, 3), (16, 16), (17, 4), (33, 8), (5, 64)])
@pytest.mark.parametrize("decay", [True, False])
def test_gla_recurrent_chunked_and_naive_agree(t, chunk, decay):
    q, k, v, la = _gla_inputs(2, 3, t, 5, 4, seed=t + chunk, decay=decay)
    ref = _naive(q, k, v, la)
    rec, s_rec = gated_linear_attention(q, k, v, la)
    par, s_par = gated_linear_attention(q, k, v, la, chunk=chunk)
    torch.testing.assert_close(rec, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(par, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s_par, s_rec, atol=1e-10, rtol=1e-10)


def test_gla_gradients_agree_and_strong_decay_stays_finite():
    q, k, v, la = _gla_inputs(1, 2, 19, 4, 3, seed=5)
    la = la * 200  # decays down to exp(-600) per step: the chunked form only exponentiates differences <= 0
    grads = []
    for chunk in (None, 6):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, la)]
        o, _ = gated_linear_attention(*leaves, chunk=chunk)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum().backward()
        assert all(bool(torch.isfinite(x.grad).all()) for x in leaves)
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_gla_initial_state_carries_over_a_split_sequence():
    q, k, v, la = _gla_inputs(2, 1, 12, 3, 2, seed=9)
    whole, _ = gated_linear_attention(q, k, v, la, chunk=5)
    first, state = gated_linear_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], la[:, :, :7])
    second, _ = gated_linear_attention(
        q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], la[:, :, 7:], initial_state=state, chunk=3
    )
    torch.testing.assert_close(torch.cat([first, second], 2), whole, atol=1e-10, rtol=1e-10)


def test_gla_input_checks():
    q, k, v, la = _gla_inputs(1, 1, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):
        gated_linear_attention(q, k, v, -la)
    with pytest.raises(ValueError, match=r"q, k \(B, H, T, c\)"):
        gated_linear_attention(q, k[..., :2], v, la)
    with pytest.raises(ValueError, match="chunk"):
        gated_linear_attention(q, k, v, la, chunk=0)
    with pytest.raises(ValueError, match="initial_state"):
        gated_linear_attention(q, k, v, la, initial_state=torch.zeros(1, 1, 2, 2, dtype=q.dtype))
    empty = gated_linear_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], la[:, :, :0], chunk=4)[0]
    assert empty.shape == (1, 1, 0, 2)


# ------------------------------------------------------------------------------------------------- SSE
def test_row_topk_mask_exactly_k_and_deterministic_ties():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1], [3.0, -1.0, 3.0, 2.0]])
    m = row_topk_mask(scores, 2)
    assert m.tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]  # ties to the lower index
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, 9, generator=g)
    for k in (1, 4, 9):
        assert bool((row_topk_mask(s, k).sum(-1) == k).all())
    with pytest.raises(ValueError, match="top_k"):
        row_topk_mask(s, 10)


def test_load_balance_loss_closed_forms():
    for n, k in ((4, 1), (8, 2), (3, 3)):
        probs = torch.full((10, n), 1 / n)
        sel = torch.zeros(10, n)
        for t in range(10):  # routing spread evenly: each partition gets k / n of the tokens
            sel[t, [(t * k + j) % n for j in range(k)]] = 1.0
        if 10 * k % n == 0:
            assert float(load_balance_loss(probs, sel)) == pytest.approx(1.0)
    probs = torch.zeros(6, 4)
    probs[:, 0] = 1.0
    sel = probs.clone()
    assert float(load_balance_loss(probs, sel)) == pytest.approx(4.0)  # all tokens on one of N = 4 partitions
    assert float(load_balance_loss(torch.zeros(0, 4), torch.zeros(0, 4))) == 0.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        load_balance_loss(torch.full((2, 3), 1 / 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="same number"):
        load_balance_loss(torch.full((2, 3), 1 / 3), torch.tensor([[1.0, 0, 0], [1, 1, 0]]))


def test_row_sparse_with_all_rows_equals_dense():
    torch.manual_seed(0)
    dense = SparseStateExpansion(12, num_heads=2, num_partitions=0).double()
    sparse = SparseStateExpansion(12, num_heads=2, num_partitions=0, row_top_k=6).double()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(sparse(x).output, dense(x).output)
    fewer = SparseStateExpansion(12, num_heads=2, num_partitions=0, row_top_k=2).double()
    fewer.load_state_dict(dense.state_dict())
    assert not torch.allclose(fewer(x).output, dense(x).output)


def test_sse_one_partition_without_deltas_doubles_the_shared_branch():
    torch.manual_seed(1)
    shared = SparseStateExpansion(8, num_heads=1, num_partitions=0).double()
    one = SparseStateExpansion(8, num_heads=1, num_partitions=1, top_partitions=1, low_rank=0).double()
    one.load_state_dict(shared.state_dict(), strict=False)
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    # out_proj is linear: the partition's identical output doubles the mixed sequence before it
    out = one(x)
    torch.testing.assert_close(out.output, 2 * shared(x).output)
    assert float(out.aux_loss.detach()) == pytest.approx(1.0)  # N = k = 1


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_sse_recurrent_and_chunked_agree_values_and_gradients(chunk):
    torch.manual_seed(2)
    layer = SparseStateExpansion(16, num_heads=2, num_partitions=4, top_partitions=2, row_top_k=3, low_rank=4).double()
    for p in layer.parameters():  # non-zero deltas, so partitions differ from the shared branch
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    grads = []
    outs = []
    for c in (None, chunk):
        layer.zero_grad()
        out = layer(x, chunk=c)
        (out.output.square().sum() + out.aux_loss).backward()
        outs.append(out.output.detach())
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=1e-9)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-8, rtol=1e-8)


def test_sse_router_gets_gradients_through_the_gates():
    torch.manual_seed(3)
    layer = SparseStateExpansion(8, num_partitions=4, top_partitions=1, low_rank=2)
    x = torch.randn(2, 6, 8)
    layer(x).output.sum().backward()  # no aux loss: the gradient comes through e_n on the written keys and queries
    assert float(layer.router.weight.grad.abs().sum()) > 0


def test_sse_unselected_partitions_keep_their_state():
    """A partition that no token selects contributes nothing (neither writes nor reads)."""
    torch.manual_seed(4)
    layer = SparseStateExpansion(8, num_partitions=2, top_partitions=1, low_rank=0).double()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 100.0  # feature 0 > 0 routes to partition 0, otherwise to partition 1
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    x[..., 0] = 1.0 + x[..., 0].abs()  # every token to partition 0, with e_0 = sigmoid(>= 100) = 1 to rounding
    shared = SparseStateExpansion(8, num_partitions=0).double()
    shared.load_state_dict(layer.state_dict(), strict=False)
    torch.testing.assert_close(layer(x).output, 2 * shared(x).output)  # partition 0 = the shared branch (e ~ 1)


def test_sse_input_checks():
    with pytest.raises(ValueError, match="divisible"):
        SparseStateExpansion(10, num_heads=3)
    with pytest.raises(ValueError, match="top_partitions"):
        SparseStateExpansion(8, num_partitions=2, top_partitions=3)
    with pytest.raises(ValueError, match="row_top_k"):
        SparseStateExpansion(8, num_heads=2, row_top_k=5)
    with pytest.raises(ValueError, match="x must be"):
        SparseStateExpansion(8)(torch.randn(2, 8))


# ------------------------------------------------------------------------------------------ selective SSM
def test_spec_worked_example_of_the_psd_constraint():
    proj = SignConstrainedProjection(dt_rank=0, d_state=2)
    raw = torch.zeros(4, 3, dtype=torch.float64)
    raw[0:2] = torch.tensor([[5.0, 2.0, 3.0], [7.0, 9.0, 4.0]])
    raw[2:4, 0] = torch.tensor([0.0, 1.0])
    w = proj(raw)
    s_c = w[2:4]
    assert s_c.tolist() == [[1.0, 2.0, 3.0], [0.0, 1.0, 4.0]]
    d = w[0:2, 0] / s_c[:, 0].clamp_min(1e-12)
    assert float(w[0, 0]) == pytest.approx(math.log(2) + 0.7, abs=1e-12)  # softplus(0) + 0.7 = 1.3931
    assert float(w[1, 1]) == pytest.approx(math.log1p(math.e) + 0.7, abs=1e-12)  # softplus(1) + 0.7 = 2.0133
    assert float(d[0]) == pytest.approx(1.3931, abs=1e-4)
    eig = torch.linalg.eigvalsh(token_dynamics_mu(w, dt_rank=0, d_state=2))
    mu = token_dynamics_mu(w, dt_rank=0, d_state=2)
    eig = torch.linalg.eigvalsh((mu + mu.T) / 2)
    torch.testing.assert_close(eig, torch.tensor([0.0, 2.2901, 51.4394], dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_psd_and_nsd_constraints_hold_for_random_weights(seed):
    torch.manual_seed(seed)
    for constraint, sign in (("psd", 1), ("nsd", -1)):
        block = SelectiveSSM(8, d_state=6, constraint=constraint).double()
        with torch.no_grad():
            block.x_proj.parametrizations.weight.original.normal_(std=2.0)
        mu = block.mu().detach()
        # S_C^T D S_C is symmetric: its eigenvalues decide the token dynamics
        torch.testing.assert_close(mu, mu.T, atol=1e-9, rtol=1e-9)
        eig = torch.linalg.eigvalsh(mu)
        if sign > 0:
            assert float(eig.min()) >= -1e-6
        else:
            assert float(eig.max()) <= 1e-6
    free = SelectiveSSM(8, d_state=6).double()
    eig = torch.linalg.eigvals(free.mu().detach())
    assert float(eig.real.min()) < 0 < float(eig.real.max())  # unconstrained: indefinite


def test_constraint_is_differentiable_and_round_trips_state_dict():
    torch.manual_seed(0)
    block = SelectiveSSM(8, d_state=4, constraint="psd")
    x = torch.randn(2, 5, 8)
    block(x).sum().backward()
    raw = block.x_proj.parametrizations.weight.original
    assert raw.grad is not None and float(raw.grad.abs().sum()) > 0
    other = SelectiveSSM(8, d_state=4, constraint="psd")
    other.load_state_dict(block.state_dict())
    torch.testing.assert_close(other(x), block(x))


def test_soft_sort_rows_and_hard_limit():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 9, generator=g, dtype=torch.float64)
    p = soft_sort(s, tau=1.0)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 9, dtype=torch.float64))
    x = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)
    hard = soft_sort(s, tau=1e-9) @ x
    gathered = torch.gather(x, 1, s.argsort(-1, descending=True).unsqueeze(-1).expand(-1, -1, 4))
    torch.testing.assert_close(hard, gathered, atol=0, rtol=0)
    with pytest.raises(ValueError, match="tau"):
        soft_sort(s, tau=0.0)


@pytest.mark.parametrize("constraint", ["none", "psd", "nsd"])
@pytest.mark.parametrize(("t", "chunk"), [(1, 4), (10, 4), (16, 16), (23, 7)])
def test_ssm_recurrent_and_scan_agree(constraint, t, chunk):
    torch.manual_seed(t)
    block = SelectiveSSM(6, d_state=4, constraint=constraint).double()
    x = torch.randn(2, t, 6, dtype=torch.float64, requires_grad=True)
    rec = block(x, chunk=None)
    scan = block(x, chunk=chunk)
    torch.testing.assert_close(scan, rec, atol=1e-10, rtol=1e-10)
    g1 = torch.autograd.grad(rec.sum(), x)[0]
    g2 = torch.autograd.grad(block(x, chunk=chunk).sum(), x)[0]
    torch.testing.assert_close(g2, g1, atol=1e-9, rtol=1e-9)


def test_ssm_is_causal_without_reordering_and_mixes_with_it():
    torch.manual_seed(0)
    block = SelectiveSSM(6, d_state=4).double()
    x = torch.randn(1, 8, 6, dtype=torch.float64)
    y = x.clone()
    y[:, 5:] += 1.0  # change the future only
    torch.testing.assert_close(block(x)[:, :5], block(y)[:, :5])
    mixed = SelectiveSSM(6, d_state=4, reorder=True).double()
    assert not torch.allclose(mixed(x)[:, :5], mixed(y)[:, :5])


def test_ssm_matches_the_scalar_recurrence():
    """The scan equals h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t, y_t = C_t . h_t + D u_t written out."""
    torch.manual_seed(1)
    block = SelectiveSSM(4, d_state=3, expand=1, d_conv=1).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    u, z = block.in_proj(x).chunk(2, -1)
    u = torch.nn.functional.silu(block.conv(u.transpose(1, 2)).transpose(1, 2))
    dt_in, b_t, c_t = block.x_proj(u).split([block.dt_rank, 3, 3], -1)
    delta = torch.nn.functional.softplus(block.dt_proj(dt_in))[0]
    a = -block.A_log.exp()
    h = torch.zeros(4, 3, dtype=torch.float64)
    ys = []
    for t in range(6):
        h = torch.exp(delta[t].unsqueeze(1) * a) * h + delta[t].unsqueeze(1) * b_t[0, t] * u[0, t].unsqueeze(1)
        ys.append(h @ c_t[0, t] + block.D * u[0, t])
    expected = block.out_proj(torch.stack(ys).unsqueeze(0) * torch.nn.functional.silu(z))
    torch.testing.assert_close(block(x), expected, atol=1e-10, rtol=1e-10)


def test_ssm_input_checks():
    with pytest.raises(ValueError, match="constraint"):
        SelectiveSSM(8, constraint="pd")
    with pytest.raises(ValueError, match="d_state"):
        SelectiveSSM(2, d_state=8, expand=1, constraint="psd")
    with pytest.raises(ValueError, match="x must be"):
        SelectiveSSM(8)(torch.randn(3, 8))
    with pytest.raises(ValueError, match="sign"):
        SignConstrainedProjection(1, 2, sign=0)
    with pytest.raises(ValueError, match="rows"):
        token_dynamics_mu(torch.zeros(5, 3), dt_rank=1, d_state=3)
    with pytest.raises(ValueError, match="x_proj_weight must be a 2-D"):
        token_dynamics_mu(torch.zeros(5), dt_rank=1, d_state=2)


@pytest.mark.parametrize("limit", [0.0, 1.0, math.inf])
def test_gla_whole_and_split_chunks_agree(monkeypatch, limit):
    """Chunks factored whole (limit inf), split down to single steps (limit 0) or split where the decay is strong
    (limit 1), against the naive sum on the same inputs."""
    from entrolab.nn import sse

    monkeypatch.setattr(sse, "FACTORED_DECAY_LIMIT", limit)
    q, k, v, la = _gla_inputs(2, 2, 21, 4, 3, seed=11)
    la = la / 3  # mild: whole chunks stay exact in float64 even when forced
    out, _ = gated_linear_attention(q, k, v, la, chunk=8)
    torch.testing.assert_close(out, _naive(q, k, v, la), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("limit", [0.0, 20.0, math.inf])
@pytest.mark.parametrize(("t", "chunk"), [(1, 3), (9, 4), (16, 16), (21, 8)])
def test_selective_scan_is_gla_with_a_head_per_channel(monkeypatch, limit, t, chunk):
    from entrolab.nn import sse

    monkeypatch.setattr(sse, "FACTORED_DECAY_LIMIT", limit)
    g = torch.Generator().manual_seed(t)
    b, d, n = 2, 3, 4
    inputs = torch.randn(b, t, d, n, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(b, t, d, n, generator=g, dtype=torch.float64) * (0.5 if limit == math.inf else 8)
    readout = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    # as gated linear attention: q = C_t per channel head, k = inputs (already Delta B u), v = 1
    q = readout.unsqueeze(1).expand(b, d, t, n)
    ref, _ = gated_linear_attention(q, inputs.transpose(1, 2), torch.ones(b, d, t, 1, dtype=torch.float64),
                                    log_decay.transpose(1, 2))  # fmt: skip
    ref = ref.squeeze(-1).transpose(1, 2)
    torch.testing.assert_close(selective_scan(inputs, log_decay, readout, chunk=None), ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(selective_scan(inputs, log_decay, readout, chunk=chunk), ref, atol=1e-10, rtol=1e-10)


def test_selective_scan_input_checks():
    x = torch.zeros(1, 4, 2, 3)
    with pytest.raises(ValueError, match="readout"):
        selective_scan(x, x, torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="chunk"):
        selective_scan(x, x, torch.zeros(1, 4, 3), chunk=0)
