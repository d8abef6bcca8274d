"""entrolab.sampling: the spec's worked examples (shared/specs/decoding.md), agreement with transformers' Top-H warper,
the exact full-vocabulary Top-H against a brute-force float64 reference, boundaries, fork points, and the HF processors
inside ``model.generate``."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from entrolab.losses.hapo import HapoEntropyStats
from entrolab.sampling import (
    adaptive_temperature,
    entropix_regime,
    entropy_varentropy,
    eta_mask,
    min_p_mask,
    sample,
    select_fork_points,
    top_h_mask,
    top_p_mask,
)

P5 = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])


def kept(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


@pytest.mark.parametrize("rule", ["paper", "hf"])
@pytest.mark.parametrize(
    ("alpha", "expected"), [(0.4, [0]), (0.7, [0, 1]), (0.9, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3, 4])]
)
def test_top_h_example_a_rules_agree_when_the_candidates_hold_all_mass(rule, alpha, expected):
    assert kept(top_h_mask(P5.log(), alpha, rule=rule)) == expected
    assert kept(top_h_mask(P5.log().unsqueeze(0), alpha, rule=rule, top_n=100)[0]) == expected


def test_top_h_example_b_rules_differ_with_a_small_candidate_set():
    assert kept(top_h_mask(P5.log(), 0.7, top_n=3, rule="paper")) == [0]
    assert kept(top_h_mask(P5.log(), 0.7, top_n=3, rule="hf")) == [0, 1]


def test_top_h_example_c_hf_fixed_hundred():
    p = torch.cat(
        [torch.tensor([0.4, 0.2, 0.1], dtype=torch.float64), torch.full((997,), 0.3 / 997, dtype=torch.float64)]
    )
    logits = p.log()
    assert int(top_h_mask(logits, 0.8, top_n=100, rule="paper").sum()) == 5
    assert int(top_h_mask(logits, 0.8, top_n=100, rule="hf").sum()) == 21
    for alpha, n in ((0.3, 1), (0.4, 1), (0.5, 1), (0.6, 2), (0.7, 2)):
        for rule in ("paper", "hf"):
            assert int(top_h_mask(logits, alpha, top_n=100, rule=rule).sum()) == n, (alpha, rule)


def test_top_h_hf_rule_equals_transformers_warper():
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    for alpha in (0.2, 0.4, 0.7, 0.95):
        scores = torch.randn(16, 700, generator=g) * 3
        theirs = torch.isfinite(transformers.TopHLogitsWarper(top_h=alpha)(None, scores))
        ours = top_h_mask(scores, alpha, top_n=100, rule="hf")
        assert torch.equal(ours, theirs), alpha


def _top_h_reference(logits: torch.Tensor, alpha: float, top_n: int | None) -> torch.Tensor:
    """The authors' rule in float64 over a full sort, bounded by n (the spec's crash-free version)."""
    z = logits.double()
    p = torch.softmax(z, -1)
    order = torch.sort(p, descending=True, stable=True)
    n = z.shape[-1] if top_n is None else min(top_n, z.shape[-1])
    pv = order.values[:, :n]
    h = torch.where(pv > 0, -pv * pv.log(), 0.0)
    cum = h.cumsum(-1)
    sel = cum <= alpha * cum[:, -1:] * (1 + 1e-9)
    sel[:, 0] = True
    return torch.zeros_like(z, dtype=torch.bool).scatter(-1, order.indices[:, :n], sel)


@pytest.mark.parametrize("top_n", [None, 7, 100])
@pytest.mark.parametrize("kind", ["random", "flat", "masked", "peaked"])
def test_top_h_paper_rule_matches_a_full_sort_reference(top_n, kind):
    g = torch.Generator().manual_seed(zlib.crc32(f"{top_n}{kind}".encode()))
    z = torch.randn(9, 3001, generator=g, dtype=torch.float64)
    if kind == "flat":  # the kept prefix runs past the first partial top-k: the search must grow
        z = z * 0.01
    elif kind == "masked":
        z = z.masked_fill(torch.rand(9, 3001, generator=g) < 0.5, -math.inf)
    elif kind == "peaked":
        z = z * 8
    for alpha in (0.3, 0.6, 0.9):
        ours = top_h_mask(z, alpha, top_n=top_n)
        ref = _top_h_reference(z, alpha, top_n)
        # sets may differ only by a token sitting on the threshold within float32 rounding
        assert int((ours ^ ref).sum()) <= 1, (alpha, int((ours ^ ref).sum()))


def test_top_h_boundaries():
    one_hot = torch.full((2, 6), -math.inf)
    one_hot[0, 3] = 0.0
    one_hot[1, 0] = 5.0
    for rule in ("paper", "hf"):
        assert top_h_mask(one_hot, 0.5, rule=rule).sum(-1).tolist() == [1, 1]
        assert top_h_mask(one_hot, 1.0, rule=rule)[torch.arange(2), torch.tensor([3, 0])].all()
    uniform = torch.zeros(1, 10)
    assert int(top_h_mask(uniform, 0.55).sum()) == 5  # equal terms: exactly floor(alpha * 10) of them
    assert int(top_h_mask(P5.log(), 0.4, top_n=50).sum()) == 1  # top_n > V
    assert int(top_h_mask(P5.log(), 0.4, min_tokens_to_keep=3).sum()) == 3
    assert int(top_h_mask(P5.log(), 0.4, top_n=2, min_tokens_to_keep=4).sum()) == 4
    # the selection temperature flattens p and the threshold together: at T = 2, alpha = 0.7 keeps three (hand-computed:
    # h = [0.3670, 0.3303, 0.3129, 0.2863, 0.2397] nats, tau = 0.7 * 1.5362 = 1.0753, cumulative 0.367, 0.697, 1.010)
    assert kept(top_h_mask(P5.log(), 0.7, temperature=2.0)) == [0, 1, 2]
    x = P5.log().clone()
    top_h_mask(x, 0.7)
    assert torch.equal(x, P5.log())
    half = top_h_mask(P5.log().to(torch.bfloat16), 0.7)
    assert kept(half) == [0, 1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: top_h_mask(P5.log(), 0.0), "alpha"),
        (lambda: top_h_mask(P5.log(), 1.5), "alpha"),
        (lambda: top_h_mask(P5.log(), 0.4, top_n=0), "top_n"),
        (lambda: top_h_mask(P5.log(), 0.4, rule="vllm"), "rule"),
        (lambda: top_h_mask(P5.log(), 0.4, temperature=0.0), "temperature"),
        (lambda: top_h_mask(P5.log(), 0.4, min_tokens_to_keep=0), "min_tokens_to_keep"),
        (lambda: top_h_mask(torch.tensor([0.0, math.nan]), 0.4), "NaN"),
        (lambda: top_h_mask(torch.tensor([0.0, math.inf]), 0.4), r"\+inf"),
        (lambda: top_h_mask(torch.full((2, 3), -math.inf), 0.4), "every entry is -inf"),
        (lambda: top_h_mask(torch.zeros(2, 3, 4), 0.4), "shape"),
        (lambda: min_p_mask(P5.log(), 1.5), "min_p"),
        (lambda: top_p_mask(P5.log(), 0.0), "top_p"),
        (lambda: eta_mask(P5.log(), 0.0), "epsilon"),
        (lambda: eta_mask(P5.log(), 1.0), "epsilon"),
        (lambda: select_fork_points(P5, torch.ones(5), 0), "k"),
        (lambda: select_fork_points(P5, torch.ones(5), 2, strategy="best"), "strategy"),
        (lambda: select_fork_points(P5, torch.ones(4), 2), "mask"),
        (lambda: sample(torch.zeros(2, 3), temperature=-1.0), "temperature"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_top_h_rejects_integer_logits():
    with pytest.raises(TypeError, match="logits"):
        top_h_mask(torch.tensor([1, 2, 3]), 0.4)


def test_min_p_and_eta_examples():
    p = torch.tensor([0.6, 0.25, 0.1, 0.05])
    assert kept(min_p_mask(p.log(), 0.1)) == [0, 1, 2]
    assert kept(min_p_mask(p.log(), 0.0)) == [0, 1, 2, 3]
    assert kept(min_p_mask(p.log(), 1.0)) == [0]
    assert kept(min_p_mask(p.log(), 0.9, min_tokens_to_keep=2)) == [0, 1]
    assert kept(top_p_mask(p.log(), 0.8)) == [0, 1] and kept(top_p_mask(p.log(), 1.0)) == [0, 1, 2, 3]
    assert kept(top_p_mask(p.log(), 0.5)) == [0] and kept(top_p_mask(p.log(), 0.5, min_tokens_to_keep=3)) == [0, 1, 2]
    assert kept(eta_mask(p.log(), 0.2)) == [0, 1]
    assert kept(eta_mask(p.log().double(), 0.1)) == [0, 1, 2]  # eta = min(0.1, 0.1125): 0.1 is kept
    assert kept(eta_mask(p.log(), 0.9, min_tokens_to_keep=3)) == [0, 1, 2]


def test_entropy_varentropy_and_entropix_regimes():
    h, v = entropy_varentropy(torch.tensor([[0.5, 0.25, 0.25]]).log())
    assert float(h) == pytest.approx(1.5) and float(v) == pytest.approx(0.25)
    h, v = entropy_varentropy(torch.tensor([[0.0, -math.inf, -math.inf], [0.0, 0.0, 0.0]]))
    assert h.tolist() == pytest.approx([0.0, math.log2(3)]) and v.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    h_nats, _ = entropy_varentropy(torch.zeros(1, 4), base=None)
    assert float(h_nats) == pytest.approx(math.log(4))
    logits = torch.stack(
        [
            torch.tensor([0.0] + [-40.0] * 15),  # one-hot-ish: LELV
            torch.zeros(16),  # uniform over 16: H = 4 bits, V = 0: HELV
            torch.tensor([0.0, -0.5] + [-25.0] * 14),  # middling: adaptive
        ]
    )
    assert entropix_regime(logits).tolist() == [0, 1, 4]
    assert entropix_regime(logits, high_entropy=5.0).tolist() == [0, 4, 4]
    # a two-level distribution with a rare mass of tiny tokens: low entropy, high varentropy (LEHV)
    p = torch.cat([torch.tensor([0.9]), torch.full((10000,), 0.1 / 10000)])
    h, v = entropy_varentropy(p.log().unsqueeze(0))
    assert float(h) < 5 and float(v) > 5
    assert entropix_regime(p.log().unsqueeze(0)).tolist() == [2]


def _stats(neg_min: float = -1.0) -> HapoEntropyStats:
    one = torch.tensor(1.0)
    return HapoEntropyStats(torch.tensor(0.0), one, one, torch.tensor(neg_min))


def test_adaptive_temperature_spec_example_clamp_and_code_sign_bug():
    # entropies e^-1, e^0, e^1 nats -> log H = -1, 0, 1 -> h_hat = -1, 0, 1 -> T = 0.95, 1, 1.05
    target = torch.tensor([math.exp(-1), 1.0, math.exp(1)], dtype=torch.float64)
    logits = torch.stack([_logits_with_entropy(float(h)) for h in target])
    assert adaptive_temperature(logits, _stats()).tolist() == pytest.approx([0.95, 1.0, 1.05], abs=1e-6)
    assert adaptive_temperature(logits, _stats(), base_temperature=2.0, tau=0.1).shape == (3,)
    # clamp: a far lower entropy still gives h_hat = -1
    assert float(adaptive_temperature(_logits_with_entropy(1e-3).unsqueeze(0), _stats())) == pytest.approx(0.95)
    # the released code divides negative h by the negative neg_min: the confident token gets hotter
    code = adaptive_temperature(logits, _stats(), compat="code").tolist()
    assert code == pytest.approx([1.05, 1.0, 1.05], abs=1e-6)
    # the released patch measures H on the raw logits (T = 1): p = [0.75, 0.25] there, [0.9, 0.1] at T = 0.5
    row = torch.tensor([[0.0, -math.log(3.0)]])
    h_raw = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats: log H = -0.5757
    paper_t = 0.5 * (1 + 0.05 * max(-1.0, math.log(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))))  # clamped: 0.475
    code_t = 0.5 * (1 + 0.05 * (math.log(h_raw) / -1.0))  # the sign bug too: -0.5757 / neg_min (-1) -> +0.5757
    assert float(adaptive_temperature(row, _stats(), base_temperature=0.5)) == pytest.approx(paper_t, abs=1e-6)
    assert float(adaptive_temperature(row, _stats(), base_temperature=0.5, compat="code")) == pytest.approx(code_t)
    with pytest.raises(ValueError, match="neg_min"):
        adaptive_temperature(logits, _stats(neg_min=0.0))
    with pytest.raises(TypeError, match="HapoEntropyStats"):
        adaptive_temperature(logits, (0.0, 1.0, 1.0, -1.0))


def _logits_with_entropy(h: float, v: int = 50) -> torch.Tensor:
    """Logits over v tokens whose softmax has entropy h nats (a one-parameter family, solved by bisection)."""
    lo, hi = 0.0, 200.0
    for _ in range(200):
        beta = (lo + hi) / 2
        z = -beta * torch.arange(v, dtype=torch.float64)
        logp = torch.log_softmax(z, -1)
        ent = float(-(logp.exp() * logp).sum())
        lo, hi = (beta, hi) if ent > h else (lo, beta)
    return z


def test_sample_is_seeded_uses_processors_and_per_row_temperature():
    z = torch.randn(64, 30, generator=torch.Generator().manual_seed(1))
    a = sample(z, generator=torch.Generator().manual_seed(3))
    b = sample(z, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (64,) and a.dtype == torch.int64
    greedy = sample(z, processors=[lambda s: s.masked_fill(~top_h_mask(s, 0.01), -math.inf)])
    assert torch.equal(greedy, z.argmax(-1))
    cold = sample(z, temperature=torch.full((64,), 1e-4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, z.argmax(-1))
    with pytest.raises(ValueError, match="no finite logit"):
        sample(z, processors=[lambda s: torch.full_like(s, -math.inf)])


def test_select_fork_points():
    h = torch.tensor([[5.0, 1.0, 3.0, 3.0, 0.5, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    # position 0 excluded by default, position 5 is padding; ties by position
    assert select_fork_points(h, mask, 3).tolist() == [[2, 3, 1], [1, 2, 3]]
    assert select_fork_points(h, mask, 6).tolist() == [[2, 3, 1, 4, -1, -1], [1, 2, 3, -1, -1, -1]]
    assert select_fork_points(h, mask, 2, exclude_first=0).tolist() == [[0, 2], [0, 1]]
    ex = torch.zeros_like(mask)
    ex[0, 2] = True
    assert select_fork_points(h, mask, 2, exclude=ex).tolist() == [[3, 1], [1, 2]]
    none = torch.zeros_like(mask)
    assert select_fork_points(h, none, 2).tolist() == [[-1, -1], [-1, -1]]
    assert select_fork_points(h, none, 2, strategy="random_of_top").tolist() == [[-1], [-1]]
    draws = {
        int(select_fork_points(h[0], mask[0], 3, strategy="random_of_top", generator=torch.Generator().manual_seed(s)))
        for s in range(60)
    }
    assert draws == {1, 2, 3}  # uniform over the top 3 valid positions, each reached
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(
        select_fork_points(h, mask, 3, strategy="random_of_top", generator=g1),
        select_fork_points(h, mask, 3, strategy="random_of_top", generator=g2),
    )
    with pytest.raises(ValueError, match="not finite"):
        select_fork_points(torch.tensor([0.0, math.nan]), torch.ones(2, dtype=torch.bool), 1)


# --------------------------------------------------------------------------------------- HF LogitsProcessors
def test_processors_follow_hf_conventions_and_run_inside_generate():
    transformers = pytest.importorskip("transformers")
    from entrolab.sampling.hf import AdaptiveTemperatureLogitsProcessor, EntropixLogitsProcessor, TopHLogitsProcessor

    procs = [
        TopHLogitsProcessor(0.4),
        TopHLogitsProcessor(0.6, rule="hf", top_n=100, min_tokens_to_keep=2),
        AdaptiveTemperatureLogitsProcessor(_stats()),
        EntropixLogitsProcessor(clarifying_token_id=3),
    ]
    scores = torch.randn(4, 40, generator=torch.Generator().manual_seed(0)) * 3
    scores[1, :10] = -math.inf
    for proc in procs:
        before = scores.clone()
        out = proc(torch.zeros(4, 2, dtype=torch.long), scores)
        assert torch.equal(scores, before), proc  # never in place
        assert out.shape == scores.shape and out.dtype == scores.dtype
        assert bool(torch.isfinite(out).any(-1).all())
        half = proc(torch.zeros(4, 2, dtype=torch.long), scores.to(torch.bfloat16))
        assert half.dtype == torch.bfloat16
    cfg = transformers.Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    for proc in procs:
        torch.manual_seed(1)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            max_new_tokens=5,
            logits_processor=transformers.LogitsProcessorList([proc]),
        )
        assert out.shape == (2, 8) and bool((out[:, :3] == ids).all())
    # alpha tiny: Top-H keeps only the argmax, so sampling is greedy decoding
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5)
    torch.manual_seed(2)
    toph = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        max_new_tokens=5,
        logits_processor=transformers.LogitsProcessorList([TopHLogitsProcessor(1e-6)]),
    )
    assert torch.equal(greedy, toph)


def test_processor_constructors_validate():
    pytest.importorskip("transformers")
    from entrolab.sampling.hf import AdaptiveTemperatureLogitsProcessor, EntropixLogitsProcessor, TopHLogitsProcessor

    for make, message in (
        (lambda: TopHLogitsProcessor(0.0), "alpha"),
        (lambda: TopHLogitsProcessor(0.4, min_tokens_to_keep=0), "min_tokens_to_keep"),
        (lambda: TopHLogitsProcessor(0.4, filter_value=math.inf), "filter_value"),
        (lambda: TopHLogitsProcessor(0.4, rule="x"), "rule"),
        (lambda: AdaptiveTemperatureLogitsProcessor(_stats(), tau=2.0), "tau"),
        (lambda: AdaptiveTemperatureLogitsProcessor(_stats(neg_min=1.0)), "neg_min"),
        (lambda: EntropixLogitsProcessor(clarifying_token_id=-1), "clarifying_token_id"),
        (lambda: EntropixLogitsProcessor(low_entropy=-1.0), "low_entropy"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(TypeError):
        EntropixLogitsProcessor(entropy_cutoff=1.0)


def test_entropix_processor_actions():
    pytest.importorskip("transformers")
    from entrolab.sampling.hf import EntropixLogitsProcessor

    scores = torch.stack(
        [torch.tensor([0.0] + [-40.0] * 15), torch.zeros(16), torch.tensor([0.0, -0.5] + [-25.0] * 14)]
    )
    proc = EntropixLogitsProcessor(clarifying_token_id=7)
    out = proc(torch.tensor([[1], [1], [1]]), scores)
    assert kept(torch.isfinite(out[0])) == [0]  # LELV: argmax only
    assert kept(torch.isfinite(out[1])) == [7]  # HELV: the clarifying token
    assert torch.equal(out[2], scores[2])  # adaptive: unchanged
    again = proc(torch.tensor([[1], [7], [1]]), scores)  # just clarified: sample 1.3x hotter instead
    assert torch.allclose(again[1], scores[1] / 1.3)


@pytest.mark.parametrize(
    "kwargs", [{}, {"top_n": 100}, {"rule": "hf", "top_n": 100}, {"alpha": 1.0}, {"top_n": 3, "min_tokens_to_keep": 5}]
)
def test_top_h_processor_equals_the_mask(kwargs):
    pytest.importorskip("transformers")
    from entrolab.sampling.hf import TopHLogitsProcessor

    g = torch.Generator().manual_seed(4)
    scores = torch.randn(6, 500, generator=g) * 4
    scores[2, 100:] = -math.inf
    alpha = kwargs.pop("alpha", 0.5)
    out = TopHLogitsProcessor(alpha, filter_value=-1e4, **kwargs)(torch.zeros(6, 1, dtype=torch.long), scores)
    expected = scores.masked_fill(~top_h_mask(scores, alpha, **kwargs), -1e4)
    assert torch.equal(out, expected)


def test_sample_categorical_rejects_bad_probabilities():
    from entrolab.sampling import sample_categorical

    for probs in (torch.tensor([0.5, 0.5]), torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.1, 1.1]]),
                  torch.tensor([[math.nan, 1.0]]), torch.tensor([[1, 2]])):  # fmt: skip
        with pytest.raises(ValueError, match="probs"):
            sample_categorical(probs)


@pytest.mark.parametrize("top_n", [None, 100])
@pytest.mark.parametrize("kind", ["random", "peaked", "masked"])
def test_top_h_large_vocabulary_matches_the_reference(top_n, kind):
    g = torch.Generator().manual_seed(zlib.crc32(f"large{top_n}{kind}".encode()))
    z = torch.randn(4, 40_000, generator=g, dtype=torch.float64) * (8 if kind == "peaked" else 2)
    if kind == "masked":
        z = z.masked_fill(torch.rand(4, 40_000, generator=g) < 0.7, -math.inf)
    for alpha in (0.3, 0.8):
        ours = top_h_mask(z, alpha, top_n=top_n)
        ref = _top_h_reference(z, alpha, top_n)
        assert int((ours ^ ref).sum()) <= 1, (alpha, int((ours ^ ref).sum()))


def test_entropy_varentropy_is_finite_for_widely_separated_logits():
    """Logits 1e30 apart: the far entry has p = 0 but a finite log-prob whose square overflows; it must drop out."""
    h, v = entropy_varentropy(torch.tensor([[0.0, -1e30, 5.0]]), base=None)
    p0 = 1 / (1 + math.exp(5.0))  # the two live entries: logits 0 and 5
    lp = [math.log(p0), math.log(1 - p0)]
    want_h = -(p0 * lp[0] + (1 - p0) * lp[1])
    want_v = p0 * (lp[0] + want_h) ** 2 + (1 - p0) * (lp[1] + want_h) ** 2
    assert float(h) == pytest.approx(want_h, rel=1e-5) and float(v) == pytest.approx(want_v, rel=1e-4)
    h, v = entropy_varentropy(torch.tensor([[1e30, -1e30]]))
    assert float(h) == 0.0 and float(v) == 0.0


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0), (0,)])
def test_select_fork_points_on_empty_and_zero_width_inputs(shape):
    """No candidate position: every row gets -1 (the documented "none"), with no crash."""
    h = torch.zeros(shape)
    out = select_fork_points(h, torch.ones(shape, dtype=torch.bool), 2)
    rows = 1 if len(shape) == 1 else shape[0]
    assert out.shape == ((2,) if len(shape) == 1 else (rows, 2)) and bool((out == -1).all())


def test_top_h_defaults_to_the_authors_top_100_and_the_full_vocabulary_is_opt_in():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 32000, generator=g) * 2.5  # a realistic spread over a 32k vocabulary
    default = top_h_mask(z, 0.4)
    torch.testing.assert_close(default, top_h_mask(z, 0.4, top_n=100))
    full = top_h_mask(z, 0.4, top_n=None)
    assert bool((default.sum(-1) <= 100).all()) and bool((full.sum(-1) > default.sum(-1)).all())
    pytest.importorskip("transformers")
    from entrolab.sampling.hf import TopHLogitsProcessor

    assert TopHLogitsProcessor().top_n == 100
    # alpha = 1, where the authors' loop raises IndexError: every one of the top_n candidates is kept
    assert top_h_mask(z, 1.0).sum(-1).tolist() == [100, 100, 100]


def test_top_h_paper_rule_cuts_confident_float32_rows_where_float64_does():
    """Rows whose top probability is 0.99997 and above: the running entropy of the many tiny terms is accumulated
    in float64, so float32 logits give the same kept set as the same logits in float64 (it drifted by up to 20
    tokens when summed in float32)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(24):
        z = torch.randn(32000, generator=g) * 2
        z[0] = z.max() + 16 + 0.3 * i
        rows.append(z)
    z32 = torch.stack(rows)
    assert bool((torch.softmax(z32.double(), -1)[:, 0] >= 0.99997).all())
    for top_n in (None, 100):
        torch.testing.assert_close(top_h_mask(z32, 0.4, top_n=top_n), top_h_mask(z32.double(), 0.4, top_n=top_n))


# ------------------------------------------------------------------------------ epsilon and typical sampling
def test_epsilon_and_typical_worked_examples():
    """Spec sections 3 and 4: p = [0.6, 0.25, 0.1, 0.05]; s = |-log p - H| = [0.5223, 0.3532, 1.2695, 1.9626]."""
    from entrolab.sampling import epsilon_mask, typical_mask

    lp = torch.tensor([0.6, 0.25, 0.1, 0.05]).log()
    assert epsilon_mask(lp, 0.08).tolist() == [True, True, True, False]
    assert epsilon_mask(lp, 0.7).tolist() == [True, False, False, False]  # the top token stays (min_tokens_to_keep)
    assert epsilon_mask(lp, 0.7, min_tokens_to_keep=3).tolist() == [True, True, True, False]
    assert typical_mask(lp, 0.9).tolist() == [True, True, True, False]
    assert typical_mask(lp, 0.8).tolist() == [True, True, False, False]
    # the most probable token can be dropped: mass 0.2 keeps only the token closest to the entropy, the 0.25 one
    assert typical_mask(lp, 0.2).tolist() == [False, True, False, False]
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="epsilon"):
            epsilon_mask(lp, bad)
        with pytest.raises(ValueError, match="mass"):
            typical_mask(lp, bad)


def _hostile_rows(b: int, v: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, v, generator=g) * 3
    z[0, : v // 3] = float("-inf")  # already filtered tokens
    if b > 1:
        z[1] = 0.0  # a flat row: every token tied
        z[-1, :5] = z[-1].max() + 1.0  # ties at the top
    return z.to(dtype)


@pytest.mark.parametrize(("b", "v"), [(1, 151936), (64, 1000), (5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_epsilon_and_typical_equal_transformers_warpers(b, v, dtype):
    """The processors equal transformers' ``EpsilonLogitsWarper`` and ``TypicalLogitsWarper`` on the same rows (ties,
    ``-inf``, flat rows, batch 1 and 64, a 151,936-token vocabulary).  Half-precision scores are processed in
    float32 here, so they are compared with the warpers on the same scores upcast (the warpers' own softmax would
    run in bfloat16)."""
    transformers = pytest.importorskip("transformers")
    from entrolab.sampling.hf import EpsilonLogitsProcessor, TypicalLogitsProcessor

    scores = _hostile_rows(b, v, dtype, seed=b + v)
    before = scores.clone()
    ids = torch.zeros(b, 1, dtype=torch.long)
    eps_w, typ_w = transformers.EpsilonLogitsWarper, transformers.TypicalLogitsWarper
    for ours, theirs in (
        (EpsilonLogitsProcessor(3e-4), eps_w(3e-4)),
        (EpsilonLogitsProcessor(0.05, min_tokens_to_keep=3), eps_w(0.05, min_tokens_to_keep=3)),
        (TypicalLogitsProcessor(0.9), typ_w(0.9)),
        (TypicalLogitsProcessor(0.5, min_tokens_to_keep=2), typ_w(0.5, min_tokens_to_keep=2)),
    ):
        got = ours(ids, scores)
        want = theirs(ids, scores.float())
        assert got.dtype == dtype and got.shape == scores.shape
        torch.testing.assert_close(torch.isinf(got), torch.isinf(want), msg=type(ours).__name__)
        assert bool((torch.isfinite(got).sum(-1) >= 1).all())
    torch.testing.assert_close(scores, before, rtol=0, atol=0)  # never in place


def test_epsilon_and_typical_processors_run_inside_generate():
    transformers = pytest.importorskip("transformers")
    from entrolab.sampling.hf import EpsilonLogitsProcessor, TypicalLogitsProcessor

    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    for proc in (EpsilonLogitsProcessor(0.02), TypicalLogitsProcessor(0.5)):
        out = model.generate(
            torch.tensor([[1, 2, 3]]), do_sample=True, max_new_tokens=5, pad_token_id=0,
            logits_processor=transformers.LogitsProcessorList([proc]), top_k=0,
        )  # fmt: skip
        assert out.shape == (1, 8)
    with pytest.raises(ValueError, match="mass"):
        TypicalLogitsProcessor(1.5)
    with pytest.raises(ValueError, match="filter_value"):
        EpsilonLogitsProcessor(0.1, filter_value=math.inf)
