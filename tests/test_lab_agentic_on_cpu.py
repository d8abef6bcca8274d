"""Multi-turn tool-use methods: AEPO-EB's entropy-balanced decisions (spec worked examples) and rollout, SPEAR's
replay buffers, EMPG over model turns, and the turn bookkeeping they share."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from entrolab.advantages import empg_advantages
from entrolab.lab import agentic
from entrolab.lab.agentic import SpearReplay, aepo_eb_rollout, empg_turn_advantages
from entrolab.lab.policy import CharTokenizer
from entrolab.lab.rollout import Rollout, turn_index, turn_means
from entrolab.lab.tasks import CalculatorTask, Example
from entrolab.sampling import aepo_branch_probability, aepo_root_count, aepo_should_branch, aepo_step_entropy


# ------------------------------------------------------------------------------------------- pure AEPO-EB decisions
def test_root_count_worked_example_and_clamps():
    # spec: k = 12, H_root = 0.30, mean H_tool = 0.50: sigma(-0.1) = 0.4750, m = int(5.70) + 1 = 6
    assert aepo_root_count(0.30, 0.50, budget=12) == 6
    assert aepo_root_count(0.5, 0.5, budget=12) == 7  # int(6.0) + 1
    assert aepo_root_count(50.0, 0.0, budget=12) == 12  # int(11.99...) + 1 = 12, and never above k
    assert aepo_root_count(1e6, 0.0, budget=12) == 12  # sigma = 1: int(12) + 1 = 13 clamped to k
    assert aepo_root_count(-1e6, 0.0, budget=12) == 1  # sigma = 0: at least one root
    assert aepo_root_count(0.0, 0.0, budget=1) == 1
    assert aepo_root_count(0.3, 0.5, budget=12, beta=0.0) == 7  # beta 0: half the budget, plus one


def test_branch_probability_worked_example_penalty_and_threshold():
    # spec: U = 0.45, dH = 0.5, w = 0.2 -> p = 0.55; with l = 2: 0.55 * 0.9 = 0.495 < 0.5, no branch
    p0 = aepo_branch_probability(0.45, 0.5, 0.0, consecutive=0)
    p2 = aepo_branch_probability(0.45, 0.7, 0.2, consecutive=2)
    assert p0 == pytest.approx(0.55, abs=1e-12) and p2 == pytest.approx(0.495, abs=1e-12)
    assert aepo_should_branch(p0) and not aepo_should_branch(p2)
    assert aepo_should_branch(0.5) and aepo_should_branch(0.5, threshold=0.5)  # equality branches (>=)
    assert not aepo_should_branch(math.nextafter(0.5, 0.0))
    assert aepo_branch_probability(0.9, 5.0, 0.0, consecutive=0) == 1.0  # clipped to [0, 1]
    assert aepo_branch_probability(0.1, 0.0, 5.0, consecutive=0) == 0.0
    assert aepo_branch_probability(0.9, 1.0, 0.0, consecutive=20) == 0.0  # max(0, 1 - 0.05 * 20) = 0
    assert aepo_branch_probability(0.9, 1.0, 0.0, consecutive=40) == 0.0  # never negative


def test_step_entropy_sums_the_first_tokens_and_normalises():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.0, 0.0]])
    m = torch.tensor([[False, True, True, True], [True, True, False, False]])
    out = aepo_step_entropy(h, m, vocab_size=100, first_n=2)
    assert torch.allclose(out, torch.tensor([5.0, 1.0]) / math.log(100))  # a sum, not a mean
    assert float(aepo_step_entropy(h[0], m[0], vocab_size=100)) == pytest.approx(9.0 / math.log(100))
    assert float(aepo_step_entropy(h[0], torch.zeros(4, dtype=torch.bool), vocab_size=7)) == 0.0  # no tokens
    # garbage off the mask is never read
    assert float(aepo_step_entropy(torch.tensor([float("nan"), 1.0]), torch.tensor([False, True]), vocab_size=2)) > 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: aepo_root_count(float("nan"), 0.0, budget=3), "root_entropy"),
        (lambda: aepo_root_count(0.0, 0.0, budget=0), "budget"),
        (lambda: aepo_root_count(0.0, 0.0, budget=3, beta=-1.0), "beta"),
        (lambda: aepo_branch_probability(1.5, 0.0, 0.0, consecutive=0), "uniform"),
        (lambda: aepo_branch_probability(0.5, 0.0, 0.0, consecutive=-1), "consecutive"),
        (lambda: aepo_branch_probability(0.5, math.inf, 0.0, consecutive=0), "entropy_now"),
        (lambda: aepo_should_branch(0.5, threshold=2.0), "threshold"),
        (lambda: aepo_step_entropy(torch.ones(3), torch.ones(3, dtype=torch.bool), vocab_size=1), "vocab_size"),
        (lambda: aepo_step_entropy(torch.ones(3), torch.ones(3, dtype=torch.bool), vocab_size=5, first_n=0), "first_n"),
        (lambda: aepo_step_entropy(torch.ones(3), torch.ones(2, dtype=torch.bool), vocab_size=5), "mask"),
        (
            lambda: aepo_step_entropy(torch.tensor([1.0, math.nan]), torch.ones(2, dtype=torch.bool), vocab_size=5),
            "finite",
        ),
    ],
)
def test_aepo_decisions_reject_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------------------------------------------------- turn bookkeeping
def test_turn_index_and_turn_means_by_hand():
    # "[3*4]" sampled, "12;" the tool's reply, "#12" sampled, then padding
    tool = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    turns = turn_index(mask, tool)
    assert turns.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]]
    h = torch.arange(12, dtype=torch.float32).unsqueeze(0)
    means, valid = turn_means(h, mask, turns)
    assert means.tolist() == [[2.0, 9.0]] and valid.tolist() == [[True, True]]
    assert torch.equal(turn_index(mask, None), torch.zeros_like(turns))
    # a row with one turn next to a row with two: the short row's second turn is padding
    two = torch.cat([mask, torch.tensor([[1] * 4 + [0] * 8], dtype=torch.bool)])
    t2 = turn_index(two, torch.cat([tool, torch.zeros(1, 12, dtype=torch.bool)]))
    m2, v2 = turn_means(torch.cat([h, h]), two, t2)
    assert m2.tolist() == [[2.0, 9.0], [1.5, 0.0]] and v2.tolist() == [[True, True], [True, False]]


def test_empg_over_turns_gives_each_token_its_turns_advantage():
    tool = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ent = torch.tensor([[0.2, 0.4, 0.0, 1.0, 1.0], [0.6, 0.6, 0.6, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    turns = turn_index(mask, tool)
    out = empg_turn_advantages(ent, mask, turns, adv)
    # by hand: steps (0.3, 1.0) and (0.6,): the turn means fed to EMPG
    ref = empg_advantages(torch.tensor([[0.3, 1.0], [0.6, 0.0]]), torch.tensor([[1, 1], [1, 0]]).bool(), adv)
    expect = torch.tensor(
        [[ref[0, 0], ref[0, 0], 0.0, ref[0, 1], ref[0, 1]], [ref[1, 0], ref[1, 0], ref[1, 0], 0.0, 0.0]]
    )
    assert torch.allclose(out, expect)
    assert out[0, 0] != out[0, 3]  # the two turns differ


# --------------------------------------------------------------------------------------------- AEPO-EB rollout
class Bigram(nn.Module):
    """A policy whose next-token logits depend only on the last token: writes calculator calls often."""

    def __init__(self, tok: CharTokenizer) -> None:
        super().__init__()
        v = tok.vocab_size
        table = torch.full((v, v), -1e4)

        def allow(after: str, nxt: dict[str, float]) -> None:
            for a in after:
                row = {"^": tok.bos_id, "$": tok.eos_id}.get(a) or tok.encode(a)[0]
                for n, w in nxt.items():
                    col = tok.eos_id if n == "$" else tok.encode(n)[0]
                    table[row, col] = math.log(w)

        digits = "0123456789"
        allow("=", {"[": 0.8, "#": 0.2})
        allow("[+*", {d: 0.1 for d in digits})
        allow(digits, {**{d: 0.05 for d in digits}, "]": 0.2, "*": 0.1, "+": 0.1, "$": 0.1})
        allow(";", {"[": 0.6, "#": 0.4})
        allow("#", {d: 0.1 for d in digits})
        allow("?]-^$", {"#": 1.0})
        self.embed = nn.Embedding(v, v)
        self.embed.weight.data.copy_(table)
        self.head = nn.Linear(v, v, bias=False)
        self.head.weight.data.copy_(torch.eye(v))

    def forward(self, ids, mask, cache=None):
        return self.embed(ids), cache


def _rollout(seed: int, group: int = 6, examples: list[Example] | None = None):
    task = CalculatorTask()
    tok = CharTokenizer(task.alphabet)
    model = Bigram(tok)
    ex = examples or [task.sample(__import__("random").Random(i)) for i in range(3)]
    out = aepo_eb_rollout(
        model, task, ex, tok, group_size=group, max_new=24, temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return tok, ex, out


def test_aepo_eb_rollout_groups_roots_and_branches():
    group = 6
    tok, examples, (r, texts, metrics) = _rollout(0, group)
    assert r.completion_ids.shape[0] == len(examples) * group == len(texts)
    assert metrics["aepo_roots"] + metrics["aepo_branches"] + metrics["aepo_fresh"] == pytest.approx(group)
    assert 1 <= metrics["aepo_roots"] <= group
    n_branch = 0
    for i, ex in enumerate(examples):
        prompt = tok.prompt_ids(ex.prompt)
        full = []
        for row in range(i * group, (i + 1) * group):
            p_ids = r.prompt_ids[row][r.prompt_mask[row]].tolist()
            assert p_ids[: len(prompt)] == prompt  # every row of the group answers its question
            real = r.completion_mask[row] | r.tool_mask[row]
            cont = r.completion_ids[row][real].tolist()
            prefix = p_ids[len(prompt) :]
            full.append(prefix + cont)
            assert texts[row] == tok.decode(prefix + cont)
            assert not bool((r.completion_mask[row] & r.tool_mask[row]).any())  # no loss on the tool's tokens
            if prefix:  # a branch: copied just after a tool reply of another response of the group
                n_branch += 1
                assert tok.decode(prefix).endswith(";") and "]" in tok.decode(prefix)
        for row, resp in enumerate(full):
            p_len = len(r.prompt_ids[i * group + row][r.prompt_mask[i * group + row]]) - len(prompt)
            if p_len:
                assert any(other[:p_len] == resp[:p_len] for j, other in enumerate(full) if j != row)
    assert n_branch == round(metrics["aepo_branches"] * len(examples)) and n_branch > 0
    again = _rollout(0, group)[2]
    assert torch.equal(again[0].completion_ids, r.completion_ids) and again[1] == texts and again[2] == metrics


def test_aepo_eb_branch_decisions_follow_the_probability(monkeypatch):
    seen: list[int] = []

    def first_round_only(u, h_now, h_init, *, consecutive, **kw):  # branch only when the question did not just branch
        assert 0.0 <= u <= 1.0 and h_now >= 0.0 and h_init >= 0.0
        seen.append(consecutive)
        return 1.0 if consecutive == 0 else 0.0

    monkeypatch.setattr(agentic, "aepo_branch_probability", first_round_only)
    _, _, (_, _, m_yes) = _rollout(1, group=24)
    assert m_yes["aepo_branches"] > 0
    assert 1 in seen  # a question that branched in a round is penalised in the next (l = 1)
    assert 2 not in seen  # ... and after a round without a branch, l is back to 0
    monkeypatch.setattr(agentic, "aepo_branch_probability", lambda *a, **k: 0.0)
    tok, examples, (r0, _, m_no) = _rollout(1)
    assert m_no["aepo_branches"] == 0 and m_no["aepo_roots"] + m_no["aepo_fresh"] == 6
    prompt_lens = {len(tok.prompt_ids(ex.prompt)) for ex in examples}
    assert all(int(r0.prompt_mask[i].sum()) in prompt_lens for i in range(r0.prompt_ids.shape[0]))  # no prefixes


def test_aepo_agentic_needs_a_tool_task():
    from entrolab.lab import LabConfig

    with pytest.raises(ValueError, match="needs a task with a tool"):
        LabConfig(methods=("aepo_agentic",), task="arithmetic")
    LabConfig(methods=("aepo_agentic",), task="calculator")


# ------------------------------------------------------------------------------------------------------ SPEAR
def _fake_rollout(n: int, width: int = 3, fill: int = 0) -> Rollout:
    ids = torch.arange(n * width).view(n, width) + fill
    ones = torch.ones(n, width, dtype=torch.bool)
    return Rollout(ids, ones, ids.clone(), ones, torch.zeros(n, width), torch.zeros(n, width), ~ones)


def test_spear_buffer_keeps_winners_drops_old_and_replays_once():
    buf = SpearReplay(buffer_size=2, tolerate_steps=3)
    rewards = torch.tensor([1.0, 0.0, 0.2, 0.6])  # two groups of 2: means 0.5, 0.4
    buf.add(_fake_rollout(4), rewards, torch.tensor([1.0, -1.0, -1.0, 1.0]), group_size=2, step=0)
    assert len(buf) == 2 and not buf.full and buf.group_means == pytest.approx([0.5, 0.4])
    assert buf.group_stds == pytest.approx([0.5, 0.2])
    buf.add(_fake_rollout(4, fill=100), rewards, torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2, step=4)
    assert len(buf) == 2  # step 0's winners are more than 3 steps older than the newest: dropped
    buf.add(_fake_rollout(4, fill=200), rewards, torch.ones(4), group_size=2, step=5)
    assert len(buf) == 6 and buf.full  # > 1.5 * 2
    replay, adv, baseline = buf.take(pad_id=0, generator=torch.Generator().manual_seed(0))
    # group means so far: 0.5, 0.4 three times -> an even count: the middle pair's mean, 0.45 (torch.median: 0.4)
    assert baseline == pytest.approx(0.45)
    assert len(buf) == 0 and len(buf.group_means) == 6  # the trajectories are replayed once, the baseline stays
    # R - 0.45 over (1.0, 0.6 | 1.0, 0.0, 0.2, 0.6): four are >= 0; a random power of two <= min(4, 2) of them
    assert replay is not None and adv.numel() == 2
    assert all(min(abs(a - 0.55), abs(a - 0.15)) < 1e-6 for a in adv.tolist())
    assert replay.completion_ids.shape[0] == 2


def test_spear_buffer_worked_example_and_nothing_to_replay():
    buf = SpearReplay(buffer_size=4)
    buf.add(_fake_rollout(2), torch.tensor([1.0, 0.4]), torch.ones(2), group_size=2, step=0)
    buf.group_means = [0.2, 0.5, 0.6]  # spec: b = 0.5; R = 1 -> 0.5; R = 0.4 -> -0.1, dropped
    replay, adv, baseline = buf.take(pad_id=0)
    assert baseline == pytest.approx(0.5) and adv.tolist() == pytest.approx([0.5])
    assert replay is not None and replay.completion_ids.tolist() == [[0, 1, 2]]
    buf.add(_fake_rollout(2), torch.tensor([0.0, 0.1]), torch.ones(2), group_size=2, step=1)
    buf.group_means = [0.9]
    assert buf.take(pad_id=0)[0] is None  # nobody beats the baseline


def test_spear_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    buf = SpearReplay(buffer_size=8)
    buf.add(
        _fake_rollout(4), torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, -1.0, 0.5, 0.5]), group_size=2, step=3
    )
    torch.save({"spear": buf.state_dict()}, tmp_path / "c.pt")
    back = SpearReplay(buffer_size=1)
    back.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["spear"])
    assert len(back) == 3 and back.buffer_size == 8 and back.group_means == buf.group_means
    a = buf.take(pad_id=0, generator=torch.Generator().manual_seed(1))
    b = back.take(pad_id=0, generator=torch.Generator().manual_seed(1))
    assert a[0] is not None and b[0] is not None
    assert torch.equal(a[0].completion_ids, b[0].completion_ids) and torch.equal(a[1], b[1])


def test_spear_buffer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="buffer_size"):
        SpearReplay(buffer_size=0)
    with pytest.raises(ValueError, match="tolerate_steps"):
        SpearReplay(tolerate_steps=True)  # type: ignore[arg-type]


def test_cure_branch_prompts_never_cut_silently():
    """Spec 19's code hazard, by hand: a 4-token prompt with a 3-token prefix in a 5-token prompt buffer.  The
    released code keeps the first 5 tokens (the branch restarts after 1 prefix token, not 3); entrolab raises, or
    with truncate='skip' branches from the prompt alone and counts it; a prefix that fits is untouched."""
    from entrolab.lab.method_rollouts import branch_prompts
    from entrolab.lab.presets import cure_knobs

    prompts, prefixes = [[1, 2, 3, 4], [1, 2]], [[7, 8, 9], [7]]
    code = branch_prompts(prompts, prefixes, max_prompt_tokens=5, compat="code")
    assert code == ([[1, 2, 3, 4, 7], [1, 2, 7]], [[7], [7]], 1)
    skip = branch_prompts(prompts, prefixes, max_prompt_tokens=5, truncate="skip")
    assert skip == ([[1, 2, 3, 4], [1, 2, 7]], [[], [7]], 1)
    with pytest.raises(
        ValueError, match="branch 0: prompt \\(4 tokens\\) \\+ prefix \\(3\\) exceeds max_prompt_tokens 5"
    ):
        branch_prompts(prompts, prefixes, max_prompt_tokens=5)
    assert branch_prompts(prompts, prefixes, max_prompt_tokens=None) == (
        [[1, 2, 3, 4, 7, 8, 9], [1, 2, 7]],
        prefixes,
        0,
    )
    with pytest.raises(ValueError, match="truncate"):
        cure_knobs(truncate="cut")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        cure_knobs(max_prompt_tokens=0)
