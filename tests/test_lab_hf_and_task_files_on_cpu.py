"""The lab on real parts: a local Hugging Face checkpoint (``--model PATH``) and a JSONL task file (``--task FILE``).

The checkpoint is a tiny randomly initialised Qwen2 model and a character tokenizer, both built and saved here with
``save_pretrained`` (nothing is downloaded).
"""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from entrolab.lab import LabConfig  # noqa: E402
from entrolab.lab.cli import main  # noqa: E402
from entrolab.lab.policy import HFPolicy, load_hf_policy, load_hf_tokenizer  # noqa: E402
from entrolab.lab.rollout import generate, left_pad, score_completions  # noqa: E402
from entrolab.lab.task_files import FileTask, load_task_file, parse_number  # noqa: E402
from entrolab.lab.tasks import Example as Ex  # noqa: E402

CHARS = sorted(set("0123456789+-*=.:, abcdefghijklmnopqrstuvwxyz?"))


def save_tiny_qwen2(directory: Path, *, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 causal LM and a one-token-per-character tokenizer, saved like a hub checkpoint."""
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.save_pretrained(str(directory))
    cfg = transformers.Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


def test_hf_policy_kv_cache_and_left_padding_match_full_recompute(checkpoint):
    policy = load_hf_policy(checkpoint)
    tok = load_hf_tokenizer(checkpoint)
    assert isinstance(policy, HFPolicy) and tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 0
    assert tok.prompt_ids("3+4=") == [1, *tok.encode("3+4=")] and tok.decode([*tok.encode("12"), 2, 5]) == "12"
    ids = torch.randint(3, policy.head.weight.shape[0], (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    with torch.no_grad():
        full, _ = policy(ids, mask)
        h, cache = policy(ids[:, :6], mask[:, :6])
        parts = [h]
        for t in range(6, 11):
            h, cache = policy(ids[:, t : t + 1], mask[:, : t + 1], cache=cache)
            parts.append(h)
        # the padded row's valid part equals the same tokens alone, unpadded
        alone, _ = policy(ids[1:2, 4:], torch.ones(1, 7, dtype=torch.bool))
        # the hidden states feed the LM head exactly as the HF model's own logits
        logits = policy.model(input_ids=ids[:1]).logits
    valid = mask.unsqueeze(-1)
    assert torch.allclose(full * valid, torch.cat(parts, 1) * valid, atol=1e-5)
    assert torch.allclose(full[1, 4:], alone[0], atol=1e-5)
    assert torch.allclose(full[0] @ policy.head.weight.T, logits[0], atol=1e-5)


def test_hf_generation_is_batch_independent_and_scores_reproduce_sampling(checkpoint):
    policy = load_hf_policy(checkpoint)
    tok = load_hf_tokenizer(checkpoint)
    prompts = [tok.prompt_ids("3+4="), tok.prompt_ids("what is 12*3+45?")]
    batch = generate(
        policy, prompts, max_new_tokens=5, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=torch.Generator()
    )
    logp, ent, _ = score_completions(policy, batch)
    assert torch.allclose(logp, batch.sample_logp, atol=1e-5)
    assert batch.sample_entropy is not None and torch.allclose(ent, batch.sample_entropy, atol=1e-5)
    assert bool((ent[~batch.completion_mask] == 0).all()) and bool((ent[batch.completion_mask] > 0).all())
    ids, mask = left_pad(prompts, tok.pad_id)
    with torch.no_grad():
        h_batch, _ = policy(ids, mask)
        h_alone, _ = policy(torch.tensor([prompts[0]]), torch.ones(1, len(prompts[0]), dtype=torch.bool))
    assert torch.allclose(h_batch[0, -len(prompts[0]) :], h_alone[0], atol=1e-5)


def test_hf_policy_refuses_rescaled_logits(checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        HFPolicy(model)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_two_rl_steps_with_a_local_hf_model_on_a_three_line_task_file(checkpoint, tmp_path):
    task = _write(
        tmp_path / "sums.jsonl",
        [
            json.dumps({"prompt": "1+1=", "answer": "2"}),
            json.dumps({"prompt": "2+3=", "answer": "5.0", "source": "ignored"}),
            json.dumps({"prompt": "4+4=", "answer": "8"}),
        ],
    )
    out = tmp_path / "run"
    argv = ["--model", str(checkpoint), "--task", str(task), "--verifier", "numeric", "--methods", "grpo,kl_cov"]
    argv += ["--seeds", "1", "--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--minibatches", "1"]
    argv += ["--eval-prompts", "1", "--eval-samples", "2", "--sft-steps", "2", "--sft-batch", "4"]
    argv += ["--out", str(out), "--progress", "off", "--threads", "1"]
    assert main(argv) == 0
    for method in ("grpo", "kl_cov"):
        rows = [
            json.loads(line) for line in (out / "runs" / method / "seed0" / "metrics.jsonl").read_text().splitlines()
        ]
        train = [r for r in rows if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2]
        assert all(r["entropy"] > 0 and 0 <= r["reward"] <= 1 for r in train)
    assert (out / "report.html").is_file() and "sums.jsonl" in (out / "summary.md").read_text()
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == str(checkpoint) and saved["verifier"] == "numeric"


def test_verifiers():
    ex = Ex(prompt="q", answer="0.50")
    numeric = FileTask(rows=(("q", "0.50"),), verifier="numeric", name="t")
    assert numeric.score(ex, " .5 ") == 1.0 and numeric.score(ex, "1/2") == 0.0 and numeric.score(ex, "5e-1") == 0.0
    assert numeric.answer_key(ex, "0.5000") == "1/2"
    exact = FileTask(rows=(("q", "Paris"),), verifier="exact", name="t")
    assert exact.score(Ex("q", "Paris"), " Paris ") == 1.0 and exact.score(Ex("q", "Paris"), "paris") == 0.0
    regex = FileTask(rows=(("q", r"[0-9]+ apples?"),), verifier="regex", name="t", has_solutions=False)
    assert regex.score(Ex("q", r"[0-9]+ apples?"), "12 apples") == 1.0
    assert regex.score(Ex("q", r"[0-9]+ apples?"), "12 apples and 3 pears") == 0.0
    assert parse_number("-12.25") == Fraction(-49, 4)
    for hostile in ("1e999999", "inf", "nan", "1_000", "\u0661\u0662", "9" * 100, "--1", None, 3):
        assert parse_number(hostile) is None
    t0 = time.perf_counter()
    assert numeric.score(ex, "1" * 10**6) == 0.0 and regex.score(Ex("q", r"(a+)+b"), "a" * 10**6) == 0.0
    # a pattern prone to catastrophic backtracking under `re` is cut off by the regex package's time limit
    assert regex.score(Ex("q", r"(a|aa|a?)+(b|c)"), "a" * 10**6) == 0.0
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    ("lines", "verifier", "message"),
    [
        (['{"prompt": "a", "answer": "1"}', "{not json"], "exact", "line 2: invalid JSON"),
        (['{"prompt": "a"}'], "exact", "line 1: field 'answer' is missing"),
        (['{"prompt": "a", "answer": 3}'], "exact", "line 1: field 'answer' must be a string"),
        (['["a", "b"]'], "exact", "line 1: expected a JSON object"),
        (['{"prompt": "", "answer": "1"}'], "exact", "line 1: field 'prompt' is empty"),
        (["", '{"prompt": "a", "answer": "one"}'], "numeric", "line 2: field 'answer' must be a plain decimal"),
        (['{"prompt": "a", "answer": "(unclosed"}'], "regex", "line 1: field 'answer' is not a valid regular"),
        ([""], "exact", "no rows"),
        # hostile files: nesting beyond the parser's recursion, huge integers, huge lines and prompts
        (['{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"], "exact", "line 1: JSON nested too deeply"),
        (['{"prompt": "a", "answer": "1", "n": ' + "9" * 10_000 + "}"], "exact", "line 1: invalid JSON value"),
        (['{"prompt": "' + "a" * 5_000_000 + '", "answer": "1"}'], "exact", "line 1: longer than"),
        (['{"prompt": "' + "a" * 5_000 + '", "answer": "1"}'], "exact", "line 1: field 'prompt' has 5000 char"),
    ],
)
def test_malformed_task_files_name_file_line_and_field(tmp_path, lines, verifier, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message) as info:
        load_task_file(path, verifier=verifier)
    assert str(path) in str(info.value)


def test_a_task_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl, line 2: not UTF-8"):
        load_task_file(path)


def test_task_file_config_errors(tmp_path, checkpoint):
    good = _write(tmp_path / "t.jsonl", ['{"prompt": "a", "answer": "x+"}', '{"prompt": "b", "answer": "y"}'])
    with pytest.raises(ValueError, match="verifier must be one of"):
        LabConfig(task=str(good), verifier="fuzzy")
    with pytest.raises(ValueError, match="sft_steps"):
        LabConfig(task=str(good), verifier="regex")
    LabConfig(task=str(good), verifier="regex", sft_steps=0, model=str(checkpoint))
    with pytest.raises(ValueError, match="no such file"):
        LabConfig(task=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="checkpoint directory"):
        LabConfig(model=str(tmp_path))
    task = load_task_file(good)
    assert task.has_solutions and task.max_prompt_chars == 1 and set("abxy+") <= set(task.alphabet)


def test_too_few_prompts_for_the_eval_split_is_a_clear_error(tmp_path):
    task = _write(tmp_path / "t.jsonl", ['{"prompt": "1+1=", "answer": "2"}', '{"prompt": "2+2=", "answer": "4"}'])
    argv = ["--task", str(task), "--eval-prompts", "4", "--steps", "1", "--out", str(tmp_path / "r"), "--quick"]
    assert main([*argv, "--progress", "off"]) == 1


def test_math_verifier_checks_equivalence_with_math_verify(tmp_path):
    pytest.importorskip("math_verify")
    path = _write(tmp_path / "m.jsonl", ['{"prompt": "half of one is ", "answer": "1/2"}'])
    task = load_task_file(path, verifier="math")
    ex = Ex("half of one is ", "1/2")
    assert task.score(ex, "0.5") == 1.0 and task.score(ex, "\\frac{2}{4}") == 1.0
    assert task.score(ex, "0.6") == 0.0 and task.score(ex, "(((((") == 0.0 and task.score(ex, "x" * 10**6) == 0.0
    assert task.has_solutions and task.solution(ex, None) == "1/2"  # type: ignore[arg-type]


def test_math_verifier_is_bounded_in_time_and_works_off_the_main_thread(tmp_path, monkeypatch):
    """math-verify's own time limits need signals (main thread only): entrolab runs it in a worker process with a
    wall-clock limit, so a worker thread gets correct scores and a slow completion costs the limit, then 0."""
    import threading

    pytest.importorskip("math_verify")
    from entrolab.lab import task_files

    task = load_task_file(_write(tmp_path / "m.jsonl", ['{"prompt": "half is ", "answer": "1/2"}']), verifier="math")
    ex = Ex("half is ", "1/2")
    got: list[float] = []
    worker = threading.Thread(target=lambda: got.append(task.score(ex, "0.5")))
    worker.start()
    worker.join()
    assert got == [1.0]
    monkeypatch.setattr(task_files, "MATH_TIMEOUT_S", 0.2)
    t0 = time.perf_counter()
    assert task.score(ex, "9^{9^{9^{9}}}") == 0.0  # about a second of sympy work, cut at 0.2 s
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setattr(task_files, "MATH_TIMEOUT_S", 30.0)
    assert task.score(ex, "\\frac{2}{4}") == 1.0  # a fresh worker after the stuck one was terminated
    # a completion over the length limit is wrong, even when its prefix is right
    assert task.score(ex, "0.5" + " " * 300) == 0.0


def test_text_after_the_length_limit_never_earns_reward():
    from entrolab.lab.tasks import MAX_COMPLETION_CHARS, get_task

    calc = get_task("calculator")
    ex = calc.sample(__import__("random").Random(0))
    right = calc.solution(ex, None)  # type: ignore[arg-type]
    assert calc.score(ex, right) == 1.0
    assert calc.score(ex, right + ";" * (MAX_COMPLETION_CHARS - len(right) + 1)) == 0.0
    padded = "?" * MAX_COMPLETION_CHARS + f"#{ex.data['value']}"
    assert calc.score(ex, padded) == 0.0
