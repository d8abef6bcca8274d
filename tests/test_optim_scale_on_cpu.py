"""SCALE: the spec's worked example, row norms, scale invariance, state only on the head, 1-D parameters exactly as
AdamW, the embedding's dim-0 normalisation, decoupled weight decay, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from entrolab.optim import SCALE, normalize_rows, scale_param_groups


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 11, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mid(self.embed(ids))))


def _loss(model: nn.Module, scale: float = 1.0) -> torch.Tensor:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    return scale * nn.functional.cross_entropy(model(ids).reshape(-1, 11), torch.tensor([2, 3, 4, 5, 6, 7, 8, 9]))


def test_worked_example_and_row_norms():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(normalize_rows(g), torch.tensor([[0.8485, 1.1314], [0.0, 0.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalize_rows(g, normalization="l2"), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    x = torch.randn(7, 9)
    assert torch.allclose(normalize_rows(x).pow(2).mean(1), torch.ones(7), atol=1e-6)
    assert torch.allclose(normalize_rows(x, dim=0).pow(2).mean(0), torch.ones(9), atol=1e-6)


def test_scale_invariance_state_and_weight_decay():
    torch.manual_seed(0)
    a = _Tiny()
    b = copy.deepcopy(a)
    oa = SCALE(scale_param_groups(a, head=a.head, embedding=a.embed), lr=0.01)
    ob = SCALE(scale_param_groups(b, head=b.head, embedding=b.embed), lr=0.01)
    for _ in range(3):
        for model, opt, c in ((a, oa, 1.0), (b, ob, 37.0)):
            opt.zero_grad()
            _loss(model, c).backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.ndim == 2:  # the 2-D updates do not depend on the loss scale (momentum included)
            torch.testing.assert_close(pa, pb, msg=name)
    head_bytes = a.head.weight.numel() * 4
    vec = sum(p.numel() for p in a.parameters() if p.ndim == 1)
    assert oa.state_bytes() == head_bytes + 2 * vec * 4  # the head's momentum + AdamW's two moments of 1-D params
    assert set(oa.state) == {a.head.weight}  # only the head carries SCALE state
    # decoupled weight decay with a zero gradient
    m = nn.Linear(3, 2, bias=False)
    w0 = m.weight.detach().clone()
    opt = SCALE([{"params": [m.weight], "kind": "matrix"}], lr=0.1, weight_decay=0.5)
    m.weight.grad = torch.zeros_like(m.weight)
    opt.step()
    torch.testing.assert_close(m.weight, w0 * (1 - 0.1 * 0.5))


def test_vectors_follow_adamw_exactly_and_the_embedding_is_normalised_along_dim0():
    torch.manual_seed(1)
    a = _Tiny()
    b = copy.deepcopy(a)
    opt = SCALE(scale_param_groups(a, head=a.head, embedding=a.embed), lr=0.01, vector_lr=0.003)
    ref = torch.optim.AdamW([p for p in b.parameters() if p.ndim == 1], lr=0.003, weight_decay=0.0)
    emb0 = a.embed.weight.detach().clone()
    for step in range(3):
        opt.zero_grad()
        ref.zero_grad()
        _loss(a).backward()
        _loss(b).backward()
        g_emb = a.embed.weight.grad.clone()
        opt.step()
        ref.step()
        if step == 0:  # dim-0 normalisation of the embedding's gradient
            torch.testing.assert_close(a.embed.weight, emb0 - 0.01 * normalize_rows(g_emb, dim=0))
        for name, p in a.named_parameters():
            if p.ndim == 1:
                torch.testing.assert_close(p, dict(b.named_parameters())[name], msg=name)
        # keep b's 2-D weights in step with a's so both see the same gradients
        with torch.no_grad():
            for pa, pb in zip(a.parameters(), b.parameters()):
                if pa.ndim == 2:
                    pb.copy_(pa)


@pytest.mark.parametrize(("kwargs", "match"), [({"lr": 0.0}, "lr"), ({"momentum": 1.0}, "momentum"),
                                               ({"normalization": "max"}, "normalization"),
                                               ({"weight_decay": -1.0}, "weight_decay")])  # fmt: skip
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCALE(nn.Linear(2, 2).parameters(), **kwargs)
    with pytest.raises(ValueError, match="kind"):
        SCALE([{"params": [nn.Parameter(torch.ones(2, 2))], "kind": "other"}])
