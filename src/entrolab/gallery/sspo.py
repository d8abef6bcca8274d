"""Gallery entry ``sspo``: DPO with and without the self-supervised preference-degree objective.

The spec's demo (``shared/specs/beyond_llm.md`` section 20; LOW CONFIDENCE: only the paper's abstract is public).
Synthetic prompt -> answer data: a prompt names 3 of 8 key tokens; an answer has 6 tokens, ``m`` of them the prompt's
keys and the rest filler, and its quality is ``m``.  A tiny causal transformer (one layer, width 64) is first
fine-tuned on answers with uniformly random ``m`` (that model is also the frozen DPO reference); then, from the same
weights and pairs (two answers of one prompt with different ``m``, the larger one chosen):

- ``dpo``: the DPO loss (beta 0.1);
- ``dpo_degree``: DPO plus ``lam = 0.1`` times the cross-entropy of a linear classifier on the policy's mean-pooled
  answer states that predicts how many key tokens were deleted (replaced by filler) from a chosen answer
  (:func:`entrolab.preference.preference_degree_loss`).

Metrics on 512 held-out pairs: preference accuracy (the policy's implicit reward ranks the chosen answer first) and
the mean implicit-reward margin; and what DPO is for, the mean number of key tokens in 4 answers sampled per held-out
prompt.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure
from entrolab.preference import preference_degree_loss

TITLE = "Self-supervised preference optimisation: DPO with a preference-degree auxiliary task"
PAPER = "arXiv 2409.17791"
CLAIM = (
    "Adding a self-supervised task that classifies how much key content was removed from a response makes a "
    "DPO-trained model aware of preference degree and improves alignment."
)
VARIANTS = ("dpo_degree", "dpo")
KEYS, FILLER, PROMPT_KEYS, ANSWER = 8, 15, 3, 6
VOCAB, WIDTH, BATCH, SFT_STEPS, STEPS, QUICK_STEPS, BETA, LAM = 1 + KEYS + FILLER, 64, 64, 300, 300, 6, 0.1, 0.1
# DPO at 1e-3 displaced the likelihood onto tokens no answer contains (0.00 prompt keys per sampled answer after 600
# steps, from 1.24); at 1e-4 it moves the samples the intended way
DPO_LR = 1e-4


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"prompts naming {PROMPT_KEYS} of {KEYS} key tokens, {ANSWER}-token answers with quality = the number of "
        f"the prompt's keys they contain; a one-layer causal transformer (width {WIDTH}), {SFT_STEPS} SFT steps on "
        f"random-quality answers (the reference), then {steps} Adam steps of DPO (beta {BETA}) with and without "
        f"the degree classifier (lam {LAM}); preference accuracy, reward margin and key tokens per sampled answer."
    )


class _LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        length = PROMPT_KEYS + 1 + ANSWER
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(torch.randn(length, WIDTH) * 0.02)
        self.block = nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.degree = nn.Linear(WIDTH, PROMPT_KEYS + 1)  # the auxiliary preference-degree classifier

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.norm(self.block(self.embed(ids) + self.pos[:t], src_mask=mask, is_causal=True))

    def answer_logp(self, prompts: torch.Tensor, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of ``answers`` ``(B, A)`` after ``prompts`` ``(B, P)``, and the mean answer state."""
        ids = torch.cat([prompts, answers], 1)
        h = self.hidden(ids[:, :-1])
        logp = torch.log_softmax(self.head(h[:, prompts.shape[1] - 1 :]), -1)
        token_logp = logp.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
        return token_logp.sum(1), h[:, prompts.shape[1] - 1 :].mean(1)


def _prompts(n: int, gen: torch.Generator) -> torch.Tensor:
    keys = torch.rand(n, KEYS, generator=gen).argsort(1)[:, :PROMPT_KEYS] + 1
    return torch.cat([keys, torch.zeros(n, 1, dtype=torch.long)], 1)  # the keys, then the separator 0


def _answers(prompts: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Answers containing the first ``m`` (per row) prompt keys at random positions, filler elsewhere."""
    n = prompts.shape[0]
    out = 1 + KEYS + torch.randint(FILLER, (n, ANSWER), generator=gen)
    slots = torch.rand(n, ANSWER, generator=gen).argsort(1)[:, :PROMPT_KEYS]
    for j in range(PROMPT_KEYS):
        use = m > j
        out[use, slots[use, j]] = prompts[use, j]
    return out


def quality(prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """The number of distinct prompt keys an answer contains ``(B,)``."""
    keys = prompts[:, :PROMPT_KEYS]
    return (answers.unsqueeze(2) == keys.unsqueeze(1)).any(1).sum(1)


def _pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    prompts = _prompts(n, gen)
    a = torch.randint(PROMPT_KEYS + 1, (n,), generator=gen)
    b = (a + torch.randint(1, PROMPT_KEYS + 1, (n,), generator=gen)) % (PROMPT_KEYS + 1)  # a different quality
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)
    return prompts, _answers(prompts, hi, gen), _answers(prompts, lo, gen), hi


def _delete_keys(prompts: torch.Tensor, answers: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> Any:
    """Replace ``d ~ U{0..m}`` of an answer's key tokens by filler; returns the new answers and ``d``."""
    d = (torch.rand(m.shape, generator=gen) * (m + 1)).floor().long()
    out = answers.clone()
    is_key = (answers.unsqueeze(2) == prompts[:, :PROMPT_KEYS].unsqueeze(1)).any(2)  # (B, A)
    rank = torch.where(is_key, torch.rand(answers.shape, generator=gen), 2.0).argsort(1).argsort(1)
    drop = is_key & (rank < d.unsqueeze(1))
    out[drop] = 1 + KEYS + torch.randint(FILLER, (int(drop.sum()),), generator=gen)
    return out, d


def _sample(model: _LM, prompts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    ids = prompts
    with torch.no_grad():
        for _ in range(ANSWER):
            logits = model.head(model.hidden(ids)[:, -1])
            ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)], 1)
    return ids[:, prompts.shape[1] :]


def _reference(seed: int) -> _LM:
    torch.manual_seed(seed)
    model = _LM()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(SFT_STEPS):
        prompts = _prompts(BATCH, gen)
        answers = _answers(prompts, torch.randint(PROMPT_KEYS + 1, (BATCH,), generator=gen), gen)
        loss = -model.answer_logp(prompts, answers)[0].mean() / ANSWER
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    ref = _reference(seed).requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True)
    opt = torch.optim.Adam(policy.parameters(), lr=DPO_LR)
    gen = torch.Generator().manual_seed(1_000 + seed)
    for _ in range(updates):
        prompts, chosen, rejected, m = _pairs(BATCH, gen)
        lp_c, _ = policy.answer_logp(prompts, chosen)
        lp_r, _ = policy.answer_logp(prompts, rejected)
        with torch.no_grad():
            ref_c, ref_r = ref.answer_logp(prompts, chosen)[0], ref.answer_logp(prompts, rejected)[0]
        logits = labels = None
        if variant == "dpo_degree":
            damaged, labels = _delete_keys(prompts, chosen, m, gen)
            _, pooled = policy.answer_logp(prompts, damaged)
            logits = policy.degree(pooled)
        out = preference_degree_loss(lp_c - ref_c, lp_r - ref_r, logits, labels, beta=BETA, lam=LAM)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    eval_gen = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        prompts, chosen, rejected, _ = _pairs(512, eval_gen)
        margin = BETA * (
            policy.answer_logp(prompts, chosen)[0] - ref.answer_logp(prompts, chosen)[0]
            - policy.answer_logp(prompts, rejected)[0] + ref.answer_logp(prompts, rejected)[0]
        )  # fmt: skip
        held = _prompts(128, eval_gen).repeat_interleave(4, 0)
        keys = quality(held, _sample(policy, held, eval_gen)).float().mean()
        ref_keys = quality(held, _sample(ref, held, eval_gen)).float().mean()
    return {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean()),
            "keys_per_answer": float(keys), "reference_keys_per_answer": float(ref_keys)}  # fmt: skip


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_STEPS if quick else STEPS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    rows = [
        ("held-out preference accuracy", cell(results, "dpo_degree", "accuracy"), cell(results, "dpo", "accuracy")),
        ("mean implicit-reward margin", cell(results, "dpo_degree", "margin"), cell(results, "dpo", "margin")),
        (f"prompt keys per sampled answer (of {PROMPT_KEYS})", cell(results, "dpo_degree", "keys_per_answer"),
         cell(results, "dpo", "keys_per_answer")),
    ]  # fmt: skip

    def mean(v: str, k: str) -> float:
        return sum(column(results, v, k)) / len(results)

    with_task, alone = mean("dpo_degree", "keys_per_answer"), mean("dpo", "keys_per_answer")
    gain, reference = with_task - alone, mean("dpo", "reference_keys_per_answer")
    verdict = (
        f"Sampled answers carry {with_task:.2f} prompt keys with the degree task against {alone:.2f} with DPO alone "
        f"(reference {reference:.2f}); "
        f"preference accuracy {mean('dpo_degree', 'accuracy'):.3f} against {mean('dpo', 'accuracy'):.3f}: "
        + ("the degree task helps here." if gain > 0.05 else "no gain from the degree task at this scale.")
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = ["reference", "dpo", "dpo_degree"]
    vals = [column(results, "dpo", "reference_keys_per_answer"), column(results, "dpo", "keys_per_answer"),
            column(results, "dpo_degree", "keys_per_answer")]  # fmt: skip
    for k, v in enumerate(vals):
        ax.scatter([k] * len(v), v, color=f"C{k}")
    ax.set_xticks(range(3), labels)
    ax.set(ylabel=f"prompt keys per sampled answer (of {PROMPT_KEYS})", title="one point per seed")
    save_figure(fig, [ax], path)
