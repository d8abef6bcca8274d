"""The lab's parts: tasks and their verifiers (hostile completions included), the tiny policy's KV cache and left
padding, pass@k, presets and config files."""

from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path

import pytest
import torch

from entrolab.lab.cli import load_config_file
from entrolab.lab.policy import CharTokenizer, TinyGPT, TinyGPTConfig
from entrolab.lab.presets import PRESETS, get_preset, preset_from_mapping
from entrolab.lab.rollout import generate, left_pad, sample_categorical, score_completions
from entrolab.lab.tasks import ArithmeticTask, CountdownTask, get_task, make_splits, parse_expression, parse_integer
from entrolab.lab.trainer import LabConfig, pass_at_k

# ----------------------------------------------------------------------------------------------------- verifiers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3*7+4", (25, [3, 7, 4])),
        (" (8 - 2) * 3 ", (18, [8, 2, 3])),
        ("2-3-4", (-5, [2, 3, 4])),  # left associative
        ("2+3*4", (14, [2, 3, 4])),  # precedence
        ("((((1))))", (1, [1])),
    ],
)
def test_parse_expression_values(text, expected):
    assert parse_expression(text) == expected


HOSTILE = [
    "9" * 1_000_000,  # a megabyte-long line
    "1+" * 400_000 + "1",
    "(" * 10_000 + "1" + ")" * 10_000,  # deep nesting
    "((((((((((1))))))))))",  # nesting 10 > 8, short
    "2**9999999",  # exponent
    "9^9^9^9",
    "10**10**10",
    "999999*999999*999999",  # intermediate magnitude beyond 1e12
    "1234567+1",  # literal of 7 digits
    "__import__('os').system('true')",
    "exec('1')",
    "１２+３",  # non-ASCII digits
    "3\u200b+4",  # zero-width space
    "1e999",
    "0x10",
    "07+1",  # leading zero
    "-3+4",  # unary minus is not part of the language
    "3+",
    "(3+4",
    "3 4",
    "",
    None,
    12,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completions_are_rejected(text):
    assert parse_expression(text) is None


def test_hostile_completions_score_zero_quickly():
    countdown, arithmetic = CountdownTask(), ArithmeticTask()
    rng = random.Random(0)
    ex_c, ex_a = countdown.sample(rng), arithmetic.sample(rng)
    start = time.perf_counter()
    for text in HOSTILE[:-2]:
        assert countdown.score(ex_c, text) == 0.0 and countdown.answer_key(ex_c, text) is None
        assert arithmetic.score(ex_a, text) == 0.0
    # linear in a bounded prefix: a megabyte of input must not take seconds (generous bound, not a benchmark)
    assert time.perf_counter() - start < 2.0


def test_parse_integer():
    assert parse_integer("-42") == -42 and parse_integer(" 7 ") == 7
    for bad in ("4 2", "1e3", "--1", "", "-", "１", "9" * 13, "+5", None):
        assert parse_integer(bad) is None


def test_countdown_accepts_every_correct_answer_and_nothing_else():
    task = CountdownTask()
    ex = task.sample(random.Random(3))
    nums, target = ex.data["numbers"], ex.data["target"]
    correct = set()
    for perm in itertools.permutations(nums):
        for ops in itertools.product("+-*", repeat=len(nums) - 1):
            expr = "".join(str(n) + (ops[i] if i < len(ops) else "") for i, n in enumerate(perm))
            value = parse_expression(expr)
            assert value is not None
            assert task.score(ex, expr) == (1.0 if value[0] == target else 0.0)
            if value[0] == target:
                correct.add(task.answer_key(ex, expr))
    assert correct  # the reference solution's operator order may differ, but some flat expression hits it
    # numbers not from the prompt, or used twice, are wrong even with the right value
    assert task.score(ex, f"{target}") == 0.0
    assert task.score(ex, f"{target}+0*{nums[0]}") == 0.0


def test_countdown_worked_example():
    task = CountdownTask()
    from entrolab.lab.tasks import Example

    ex = Example("3,7,4:25=", "3*7+4", {"numbers": [3, 7, 4], "target": 25})
    for good in ("3*7+4", "4+7*3", "7*3+4", "(3*7)+4", " 4 + 3 * 7 "):
        assert task.score(ex, good) == 1.0
    assert task.answer_key(ex, " 4 + 3 * 7 ") == "4+3*7"
    for bad in ("3*7+5", "3+7+4", "3*7+4+0", "25", "3*7*4"):
        assert task.score(ex, bad) == 0.0


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "calculator", "sort"])
def test_solutions_are_correct_and_splits_are_disjoint_and_seeded(name):
    task = get_task(name)
    rng = random.Random(1)
    for _ in range(300):
        ex = task.sample(rng)
        sol = task.solution(ex, rng)
        assert task.score(ex, sol) == 1.0, (ex, sol)
        assert len(sol) <= task.max_answer_chars
        tok = CharTokenizer(task.alphabet)
        assert tok.decode(tok.encode(ex.prompt + sol)) == ex.prompt + sol
    ev1, held1 = make_splits(task, seed=5, num_eval=40)
    ev2, _ = make_splits(task, seed=5, num_eval=40)
    ev3, _ = make_splits(task, seed=6, num_eval=40)
    assert [e.prompt for e in ev1] == [e.prompt for e in ev2] != [e.prompt for e in ev3]
    assert len(held1) == 40
    from entrolab.lab.tasks import sample_train

    rng = random.Random(0)
    assert all(sample_train(task, rng, held1).prompt not in held1 for _ in range(500))


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: arithmetic, calculator, countdown"):
        get_task("sudoku")


def test_arithmetic_worked_example():
    from entrolab.lab.tasks import Example

    task = ArithmeticTask()
    ex = Example("3+4*2-5=", "6", {"value": 6})
    assert task.score(ex, "6") == 1.0 and task.score(ex, " 6") == 1.0
    assert task.score(ex, "9") == 0.0 and task.score(ex, "6.0") == 0.0


# ------------------------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(("n", "c"), [(1, 0), (1, 1), (5, 2), (8, 3), (16, 1), (16, 16), (7, 0)])
def test_pass_at_k_is_the_combinatorial_probability(n, c):
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        hit = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert math.isclose(pass_at_k(n, c, k), hit, rel_tol=1e-12, abs_tol=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


# ------------------------------------------------------------------------------------------------------ policy


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    tok = CharTokenizer("0123456789+-*=")
    return tok, TinyGPT(TinyGPTConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=2, max_len=40, **kw))


def test_kv_cache_gives_the_full_recompute():
    tok, model = _model()
    ids = torch.randint(3, tok.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    full, _ = model(ids, mask)
    h, cache = model(ids[:, :6], mask[:, :6])
    parts = [h]
    for t in range(6, 11):
        h, cache = model(ids[:, t : t + 1], mask[:, : t + 1], cache=cache)
        parts.append(h)
    stepped = torch.cat(parts, 1)
    valid = mask.unsqueeze(-1)
    assert torch.allclose(full * valid, stepped * valid, atol=1e-5)


def test_left_padding_does_not_change_a_prompts_generation():
    tok, model = _model(1)
    prompts = [[tok.bos_id, *tok.encode("3+4=")], [tok.bos_id, *tok.encode("12*3+45=")]]
    batch = generate(
        model,
        prompts,
        max_new_tokens=5,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=torch.Generator().manual_seed(0),
    )
    ids, mask = left_pad(prompts, tok.pad_id)
    h_batch, _ = model(ids, mask)
    h_alone, _ = model(torch.tensor([prompts[0]]), torch.ones(1, len(prompts[0]), dtype=torch.bool))
    assert torch.allclose(h_batch[0, -len(prompts[0]) :], h_alone[0], atol=1e-5)
    # scoring the sampled tokens again reproduces the sampling log-probs (0 at padding)
    logp, ent, _ = score_completions(model, batch)
    assert torch.allclose(logp, batch.sample_logp, atol=1e-5)
    assert batch.sample_entropy is not None and torch.allclose(ent, batch.sample_entropy, atol=1e-5)
    assert bool((ent[~batch.completion_mask] == 0).all()) and bool((ent >= 0).all())


def test_generation_is_seeded_and_respects_eos():
    tok, model = _model(2)
    prompts = [[tok.bos_id, *tok.encode("1+1=")]] * 6
    a = generate(
        model,
        prompts,
        max_new_tokens=8,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=torch.Generator().manual_seed(3),
    )
    b = generate(
        model,
        prompts,
        max_new_tokens=8,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(a.completion_ids, b.completion_ids)
    for row, m in zip(a.completion_ids, a.completion_mask):
        n = int(m.sum())
        assert bool(m[:n].all()) and not bool(m[n:].any())
        assert (row[: n - 1] != tok.eos_id).all()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompts, max_new_tokens=2, temperature=0.0, eos_id=2, pad_id=0)


def test_tokenizer_and_model_config_validation():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
        tok.encode("abc")
    with pytest.raises(ValueError, match="d_model"):
        TinyGPTConfig(vocab_size=10, d_model=30, n_head=4)
    _, model = _model()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 41, dtype=torch.long), torch.ones(1, 41, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------- presets

REQUIRED = [
    "grpo",
    "dr_grpo",
    "dapo",
    "entropy_bonus",
    "adaptive_entropy",
    "clip_cov",
    "kl_cov",
    "steer",
    "siren",
    "epo",
    "hapo",
    "high_entropy_tokens",
    "entropy_balanced",
    "empg",
    "cure",
    "ettrl",
    "aepo_entropy",
    "aepo_agentic",
    "spear",
]


def test_every_required_preset_exists_and_is_documented():
    for name in REQUIRED:
        p = PRESETS[name]
        assert p.description and p.reference, name
    with pytest.raises(ValueError, match="valid methods: adaptive_entropy, aepo_agentic, aepo_entropy, clip_cov"):
        get_preset("grpo2")
    with pytest.raises(ValueError, match="valid methods"):
        LabConfig(methods=("grpo", "nope"))


def test_preset_composition_and_errors():
    p = preset_from_mapping("dapo_hot", {"base": "dapo", "temperature": 1.3, "loss_kwargs": {"eps_high": 0.3}})
    assert p.loss == "ppo" and p.loss_kwargs == {"eps_low": 0.2, "eps_high": 0.3} and p.temperature == 1.3
    with pytest.raises(ValueError, match="unknown field"):
        preset_from_mapping("x", {"temprature": 1.0})
    with pytest.raises(ValueError, match="has no hyperparameter 'k'"):
        preset_from_mapping("x", {"base": "steer", "loss_kwargs": {"k": 1}})
    with pytest.raises(ValueError, match=r"loss must be one of 'cispo', .*; got 'nope'"):
        preset_from_mapping("x", {"loss": "nope"})
    with pytest.raises(ValueError, match=r"temperature must be in \(0.0"):
        preset_from_mapping("x", {"temperature": 0})
    # loss values are checked when the preset is read (a dry run of the loss), not after the warm start
    with pytest.raises(ValueError, match=r"preset 'x': ratio must be in \(0.0, 1.0\], got -1"):
        preset_from_mapping("x", {"base": "clip_cov", "loss_kwargs": {"ratio": -1}})
    with pytest.raises(ValueError, match=r"preset 'x': kl_coef must be in .* got nan"):
        preset_from_mapping("x", {"base": "kl_cov", "loss_kwargs": {"kl_coef": float("nan")}})
    with pytest.raises(ValueError, match="buffer_size must be an int >= 1"):
        preset_from_mapping("x", {"replay": "spear", "replay_kwargs": {"buffer_size": 0}})
    with pytest.raises(ValueError, match="schedule_fraction must be in"):
        preset_from_mapping("x", {"base": "spear", "replay_kwargs": {"schedule_fraction": 0}})
    with pytest.raises(ValueError, match="tool_bonus must be true or false"):
        preset_from_mapping("x", {"base": "spear", "replay_kwargs": {"tool_bonus": 1}})
    with pytest.raises(ValueError, match=r"replay 'none' has no hyperparameter 'buffer_size'; valid: none"):
        preset_from_mapping("x", {"replay_kwargs": {"buffer_size": 4}})
    with pytest.raises(ValueError, match=r"rollout 'cure' has no hyperparameter 'k'; valid: top_k, stage1_fraction"):
        preset_from_mapping("x", {"base": "cure", "rollout_kwargs": {"k": 4}})
    with pytest.raises(ValueError, match=r"top_k must be an int >= 1"):
        preset_from_mapping("x", {"base": "cure", "rollout_kwargs": {"top_k": 0}})
    with pytest.raises(ValueError, match=r"target must be in \(0.0, 10.0\)"):
        preset_from_mapping("x", {"base": "aepo_entropy", "rollout_kwargs": {"target": float("inf")}})
    with pytest.raises(ValueError, match=r"'cure_top_k' is now rollout_kwargs.top_k"):
        preset_from_mapping("x", {"base": "cure", "cure_top_k": 5})
    with pytest.raises(ValueError, match="rollout_kwargs must be a mapping"):
        preset_from_mapping("x", {"rollout_kwargs": [1]})
    # knobs merge into the base's while the stage is unchanged, and reset when it changes
    p = preset_from_mapping("cure_wide", {"base": "cure", "rollout_kwargs": {"top_k": 5}})
    assert p.rollout_knobs == {
        "top_k": 5,
        "stage1_fraction": 0.5,
        "max_prompt_tokens": None,
        "truncate": "error",
        "compat": "paper",
    }
    p = preset_from_mapping(
        "c2", {"base": "cure_wide", "rollout_kwargs": {"stage1_fraction": 1.0}}, known={"cure_wide": p}
    )
    assert p.rollout_knobs == {
        "top_k": 5,
        "stage1_fraction": 1.0,
        "max_prompt_tokens": None,
        "truncate": "error",
        "compat": "paper",
    }
    p = preset_from_mapping("std", {"base": "cure", "rollout": "standard"})
    assert p.rollout_kwargs == {} and p.rollout_knobs == {}
    assert PRESETS["spear"].replay_knobs == {"buffer_size": 64, "schedule_fraction": 0.5, "tool_bonus": True}
    with pytest.raises(ValueError, match="rollout must be one of"):
        preset_from_mapping("x", {"rollout": "tree"})


def test_config_files_toml_and_yaml(tmp_path):
    toml = tmp_path / "lab.toml"
    toml.write_text(
        'methods = ["grpo", "hot"]\nsteps = 7\nlr = 1e-3\n\n[presets.hot]\nbase = "dapo"\ntemperature = 1.5\n'
    )
    values = load_config_file(toml)
    cfg = LabConfig(**values)
    assert cfg.steps == 7 and cfg.methods == ("grpo", "hot") and cfg.presets["hot"].temperature == 1.5
    yml = tmp_path / "lab.yaml"
    yml.write_text("methods: grpo,clip_cov\nseeds: 3\n")
    assert LabConfig(**load_config_file(yml)).seeds == 3


def test_docs_config_example_loads_and_stage_tables_agree(tmp_path):
    """The config file in docs/lab.md is valid as written; every rollout the presets accept is dispatched."""
    from entrolab.lab.presets import ROLLOUT_KNOBS
    from entrolab.lab.stages import ROLLOUTS

    text = (Path(__file__).parents[1] / "docs" / "lab.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "lab.toml").write_text(block)
    cfg = LabConfig(**load_config_file(tmp_path / "lab.toml"))
    assert cfg.presets["cure_wide"].rollout_knobs == {
        "top_k": 40,
        "stage1_fraction": 0.5,
        "max_prompt_tokens": None,
        "truncate": "error",
        "compat": "paper",
    }
    assert cfg.presets["steer_hot"].kl_coef == 0.01
    assert set(ROLLOUTS) == set(ROLLOUT_KNOBS)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", "steps = 7\nstpes = 3\n", r"a.toml, line 2: unknown field 'stpes'"),
        ("b.toml", "steps = 'ten'\n", r"b.toml, line 1: field 'steps' must be an integer"),
        ("c.toml", "steps = = 3\n", r"c.toml: invalid TOML"),
        ("d.yaml", "steps: 3\nseeds: [1,\n", r"d.yaml, line \d+: invalid YAML"),
        ("e.yaml", "seeds: 2\nlr: fast\n", r"e.yaml, line 2: field 'lr' must be a number"),
        ("f.toml", "[presets.grpo]\nbase = 'dapo'\n", r"f.toml, line 1: preset 'grpo' is built in"),
        ("g.toml", "[presets.x]\ntemprature = 2\n", r"g.toml, line 1: preset 'x': unknown field"),
        ("h.json", "{}", r"expected a .toml, .yaml or .yml file"),
        # values are checked with the file and line too, before any work starts
        ("i.toml", "seeds = 2\nlr = nan\n", r"i.toml, line 2: lr must be"),
        ("j.toml", "steps = -5\n", r"j.toml, line 1: steps must be"),
        ("k.yaml", "seeds: 2\nmethods: [grpo, nope]\n", r"k.yaml, line 2: .*valid methods"),
        ("l.toml", "sft_correct = 1.5\n", r"l.toml, line 1: sft_correct must be a number in \(0, 1\]"),
        ("m.yaml", "steps: " + "[" * 5000 + "]" * 5000 + "\n", r"m.yaml: nested too deeply|m.yaml.*steps"),
        ("n.toml", "steps = " + "9" * 5000 + "\n", r"n.toml: invalid TOML: Exceeds the limit"),
        ("o.yaml", "steps: " + "9" * 5000 + "\n", r"o.yaml: invalid YAML value: Exceeds the limit"),
    ],
)
def test_malformed_config_files_name_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config_file(path)


def test_config_files_that_are_not_text_or_too_large_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"seeds = 2\nsteps = 3 # caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad.toml, line 2: not UTF-8"):
        load_config_file(bad)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 2**20 + "\n")
    with pytest.raises(ValueError, match="larger than"):
        load_config_file(big)


def test_yaml_loader_is_safe(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("steps: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("group_size", 1),
        ("lr", -1.0),
        ("lr", float("nan")),
        ("task", "sudoku"),
        ("methods", ()),
        ("methods", ("grpo", "grpo")),
        ("minibatches", 3),
        ("model", "gpt2"),
        ("seeds", True),
    ],
)
def test_lab_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field if field != "minibatches" else "divisible"):
        LabConfig(**{field: value})


def test_sample_categorical_draws_from_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 0.0, 2.0], [1e-3, 1.0, 0.0, 1.0]])
    n = 40_000
    draws = sample_categorical(probs.repeat(n, 1), generator=torch.Generator().manual_seed(0)).view(n, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=4).double() / n
        expected = probs[row].double() / probs[row].sum()
        # binomial standard error: 5 sigma bounds, and never a zero-probability entry
        sigma = (expected * (1 - expected) / n).sqrt()
        assert bool(((freq - expected).abs() <= 5 * sigma + 1e-12).all()), (row, freq, expected)
        assert bool((freq[expected == 0] == 0).all())
    a = sample_categorical(probs, generator=torch.Generator().manual_seed(7))
    b = sample_categorical(probs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (3,)


def test_cure_rollout_groups_branches_and_prefixes():
    from entrolab.lab.method_rollouts import CURE_BRANCHES
    from entrolab.lab.method_rollouts import cure_rollout as _cure_rollout
    from entrolab.lab.tasks import Example

    tok, model = _model(3)
    examples = [Example("1+2=", "3"), Example("4*5=", "20")]
    group, max_new = 8, 6
    n1 = group // (1 + CURE_BRANCHES)

    def run(seed):
        return _cure_rollout(
            model, ArithmeticTask(), examples, tok, group_size=group, max_new=max_new, temperature=1.0, top_k=20,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    rollout, texts, metrics = run(0)
    assert rollout.completion_ids.shape[0] == len(examples) * group == len(texts)
    assert 0.0 <= metrics["cure_fork_found_frac"] <= 1.0
    for i, ex in enumerate(examples):
        prompt = [tok.bos_id, *tok.encode(ex.prompt)]
        rows = range(i * group, (i + 1) * group)
        originals, branches = list(rows)[:n1], list(rows)[n1:]
        for j, r in enumerate(branches):
            p_ids = rollout.prompt_ids[r][rollout.prompt_mask[r]].tolist()
            assert p_ids[: len(prompt)] == prompt  # the original prompt, then the parent's prefix
            prefix = p_ids[len(prompt) :]
            parent = originals[j // CURE_BRANCHES]
            parent_ids = rollout.completion_ids[parent][rollout.completion_mask[parent]].tolist()
            assert parent_ids[: len(prefix)] == prefix and len(prefix) < len(parent_ids)  # the fork token is resampled
            assert len(prefix) != 0 or metrics["cure_fork_found_frac"] < 1.0  # position 0 is never a fork
            cont = rollout.completion_ids[r][rollout.completion_mask[r]].tolist()
            assert len(prefix) + len(cont) <= max_new  # the original answer budget
            assert texts[r] == tok.decode(prefix + cont)
        assert all(texts[r] == tok.decode(rollout.completion_ids[r].tolist()) for r in originals)
    again, texts_again, _ = run(0)
    assert torch.equal(again.completion_ids, rollout.completion_ids) and texts_again == texts


def test_aepo_mix_in_replaces_head_rows_with_tempered_positives(monkeypatch):
    from entrolab.advantages import grpo_advantages
    from entrolab.lab import method_rollouts
    from entrolab.lab.rollout import generate
    from entrolab.lab.tasks import Example

    tok, model = _model(5)
    examples = [Example(f"{a}+{b}=", str(a + b), {"value": a + b}) for a, b in ((1, 2), (3, 4), (2, 2), (5, 1))]

    class Always:  # a digit first scores 1: a random policy then gives mixed groups (positive advantages)
        def score(self, ex, text):
            return 1.0 if text and text[0] in "0123456789" else 0.0

    g = 4
    prompts = [ids for ex in examples for ids in [[tok.bos_id, *tok.encode(ex.prompt)]] * g]
    main = generate(model, prompts, max_new_tokens=4, eos_id=tok.eos_id, pad_id=tok.pad_id,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    adv = grpo_advantages(torch.arange(16.0) % 2, group_size=g)
    monkeypatch.setattr(method_rollouts, "AEPO_K_FRACTION", 0.25)  # up to 4 of the 16 rows
    out, adv_out, metrics = method_rollouts.aepo_mix_in(
        model, Always(), tok, examples, main, adv, group_size=g, temperature=1.0, max_new=4,
        prev_entropy=0.0, target=0.5, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert metrics["aepo_temperature"] == 1.2  # the first step (previous entropy 0) samples hot
    k = int(metrics["aepo_mixed"])
    assert 1 <= k <= 4
    assert out.completion_ids.shape[0] == 16 and adv_out.shape == (16,)
    assert bool((adv_out[:k] == 1.0).all()) and torch.equal(adv_out[k:], adv[k:])
    assert torch.equal(out.completion_ids[k:, : main.completion_ids.shape[1]], main.completion_ids[k:])
    _, _, above = method_rollouts.aepo_mix_in(
        model, Always(), tok, examples, main, adv, group_size=g, temperature=1.0, max_new=4,
        prev_entropy=0.9, target=0.5, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert above["aepo_temperature"] == 0.8


def test_vote_keys_and_majority_pseudo_rewards():
    from entrolab.lab.method_rollouts import majority_rewards as _majority_rewards
    from entrolab.lab.tasks import ArithmeticTask, CountdownTask, Example, FileTask

    arith = ArithmeticTask()
    ex = Example("3+4=", "7", {"value": 7})
    assert [arith.vote_key(ex, t) for t in ("7", " 8 ", "x", "")] == ["7", "8", None, None]
    cd = CountdownTask()
    ex_cd = Example("3,7,4:25=", "3*7+4", {"numbers": [3, 7, 4], "target": 25})
    assert cd.vote_key(ex_cd, "3*7+4") == "25" and cd.vote_key(ex_cd, "4+7+3") == "14"
    assert cd.vote_key(ex_cd, "3*7") is None  # the numbers are not all used: no answer
    numeric = FileTask(rows=(("q", "0.5"),), verifier="numeric", name="t")
    assert (
        numeric.vote_key(Example("q", "0.5"), " .50 ") == "1/2" and numeric.vote_key(Example("q", "0.5"), "a") is None
    )
    owners = [ex] * 8
    texts = ["8", "8", "7", "x", "7", "7", "9", "9"]  # group 1: majority 8 (wrong); group 2: majority 7 (right)
    rewards, vote_accuracy = _majority_rewards(arith, owners, texts, 4)
    assert rewards.tolist() == [1, 1, 0, 0, 1, 1, 0, 0] and vote_accuracy == 0.5
    tie, _ = _majority_rewards(arith, [ex] * 4, ["9", "7", "9", "7"], 4)
    assert tie.tolist() == [0, 1, 0, 1]  # a tie goes to the smallest key ("7" < "9")
    none, acc = _majority_rewards(arith, [ex] * 4, ["x", "", "?", "y"], 4)
    assert none.tolist() == [0, 0, 0, 0] and acc == 0.0


def test_calculator_task_and_its_tool():
    from entrolab.lab.tasks import CalculatorTask, Example

    task = CalculatorTask()
    rng = random.Random(0)
    for _ in range(20):
        ex = task.sample(rng)
        sol = task.solution(ex, rng)
        assert task.score(ex, sol) == 1.0 and set(sol) <= set(task.alphabet) and len(sol) <= task.max_answer_chars
    ex = Example("37*41+12=", "1529", {"value": 1529, "terms": (37, 41, 12)})
    assert task.solution(ex, rng) == "[37*41]1517;[1517+12]1529;#1529"
    assert task.tool("[37*41]") == "1517;" and task.tool("1517;[1517+12]") == "1529;"
    for hostile in ("[9**99999]", "[" + "(" * 50 + "1" + ")" * 50 + "]", "no call]", "[1+2", "[" + "9" * 10**5 + "]"):
        assert task.tool(hostile) == "?;"
    assert task.score(ex, "#1529") == 1.0 and task.score(ex, "[1+1]2;#1528") == 0.0 and task.score(ex, "1529") == 0.0
    assert task.vote_key(ex, "[2*3]6;#6") == "6" and task.vote_key(ex, "#x") is None


def test_generation_with_a_tool_writes_the_reply_and_masks_it():
    from entrolab.lab.rollout import tool_kwargs as _tool_kwargs
    from entrolab.lab.tasks import CalculatorTask

    task = CalculatorTask()
    tok = CharTokenizer(task.alphabet)
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, max_len=40))
    close = tok.encode("]")[0]
    calls = {"n": 0}

    def first_close(z):  # step 0 of every row writes "]" so that the tool answers; later steps sample freely
        calls["n"] += 1
        if calls["n"] == 1:
            return torch.full_like(z, -math.inf).index_fill(-1, torch.tensor([close]), 0.0)
        return z

    prefixes = [tok.encode("[3*"), tok.encode("[12+")]
    r = generate(
        model, [tok.prompt_ids("3*4+1="), tok.prompt_ids("12+30=")], max_new_tokens=8, eos_id=tok.eos_id,
        pad_id=tok.pad_id, generator=torch.Generator().manual_seed(0), processors=[first_close],
        **_tool_kwargs(task, tok, prefixes=[p for p in prefixes]),
    )  # fmt: skip
    # row 0: "]" sampled, then the reply to "[3*]"... the prefix "[3*" + "]" does not parse: "?;"
    texts = [tok.decode(row.tolist()) for row in r.completion_ids]
    for text, m, tm in zip(texts, r.completion_mask, r.tool_mask):
        assert text.startswith("]?;")
        assert m[0] and not m[1:3].any() and tm[1:3].all() and not tm[0]
    assert bool((r.sample_logp[r.tool_mask] == 0).all()) and bool((r.sample_entropy[r.tool_mask] == 0).all())
    # the same prefix with a digit first: the continuation closes a call opened in the prefix
    kw = _tool_kwargs(task, tok, prefixes=[tok.encode("[3*4")])
    assert tok.decode(kw["tool"](0, tok.encode("]"))) == "12;"
    # scoring the rollout again reproduces the freely sampled tokens' log-probs (after the forced first step) and
    # gives the tool's tokens none
    logp, _, _ = score_completions(model, r)
    free = r.completion_mask.clone()
    free[:, 0] = False
    assert torch.allclose(logp[free], r.sample_logp[free], atol=1e-5) and bool((logp[r.tool_mask] == 0).all())


def test_generate_rejects_bad_budgets_and_half_a_tool():
    tok, model = _model(0)
    prompts = [[tok.bos_id, *tok.encode("1+1=")]] * 2
    kw = {"max_new_tokens": 3, "eos_id": tok.eos_id, "pad_id": tok.pad_id}
    with pytest.raises(ValueError, match="budgets"):
        generate(model, prompts, budgets=torch.tensor([1, 0]), **kw)
    with pytest.raises(ValueError, match="budgets"):
        generate(model, prompts, budgets=torch.tensor([2]), **kw)
    with pytest.raises(ValueError, match="tool"):
        generate(model, prompts, tool=lambda i, ids: [], **kw)


def test_sort_task_scores_and_near_misses():
    from entrolab.lab.tasks import Example, SortTask

    task = get_task("sort")
    ex = Example("507193=", "013579", {"digits": "507193"})
    assert task.score(ex, "013579") == 1.0 and task.score(ex, " 013579 ") == 1.0
    for bad in ("013597", "13579", "0135790", "", "01357a", "x" * 10_000):
        assert task.score(ex, bad) == 0.0
    rng = random.Random(0)
    misses = {task.near_miss(ex, rng) for _ in range(200)}
    # every near miss is the answer with one pair of unequal neighbours swapped: 5 of them here, all wrong
    assert misses == {"103579", "031579", "015379", "013759", "013597"}
    assert all(task.score(ex, m) == 0.0 for m in misses)
    same = Example("333=", "333", {"digits": "333"})
    assert SortTask(length=3).near_miss(same, rng) == "333"  # nothing to swap
    with pytest.raises(ValueError, match="length"):
        SortTask(length=1)


def test_the_warm_start_imitates_an_imperfect_demonstrator():
    from entrolab.lab.config import LabConfig
    from entrolab.lab.trainer import demonstration

    task = get_task("sort")
    rng = random.Random(3)
    examples = [task.sample(rng) for _ in range(4000)]
    right = sum(task.score(ex, demonstration(task, ex, rng, correct=0.25)) for ex in examples) / len(examples)
    # a quarter right, plus near misses that happen to equal the answer (all digits equal: 1e-5 of prompts)
    assert abs(right - 0.25) < 0.03
    assert all(task.score(ex, demonstration(task, ex, rng)) == 1.0 for ex in examples[:200])
    assert LabConfig().sft_correct_for(task) == 0.25
    assert LabConfig(task="countdown").sft_correct_for(get_task("countdown")) == 1.0
    with pytest.raises(ValueError, match="sft_correct must be a number in"):
        LabConfig(sft_correct=0.0)
    with pytest.raises(ValueError, match=r"needs near misses .* 'countdown'"):
        LabConfig(task="countdown", sft_correct=0.5)
