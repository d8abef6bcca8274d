"""Gallery entry ``spo``: self-play preference optimisation on a cyclic-preference bandit.

The spec's demo (``shared/specs/beyond_llm.md`` section 19): three actions with the intransitive preference
``P(i > j) = M[i, j]``, ``M = [[.5, .9, .4], [.1, .5, .9], [.6, .1, .5]]``, whose minimax winner is
``(4/9, 1/9, 4/9)``.  SPO: a softmax policy, groups of 8 sampled actions, pairwise Bernoulli(M) outcomes, the reward
of each sample its win rate against the rest of its group (:func:`entrolab.preference.self_play_win_rate_rewards`),
REINFORCE with the group-mean baseline, lr 0.1; its time-averaged policy (the object of the guarantee) and its last
iterate.  Baseline: a Bradley-Terry reward fitted on uniformly sampled comparisons, then the greedy policy.  Metric:
exploitability ``max_a P(a > pi) - 1/2`` (0 at the minimax winner).  A transitive control (Bradley-Terry scores
(1, 0, -1)) checks that SPO then concentrates on the Condorcet winner, as the reward model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from entrolab.gallery._common import cell, column, pyplot, run_variants, save_figure
from entrolab.preference import exploitability, self_play_win_rate_rewards

TITLE = "Self-play preference optimisation: minimax winners of intransitive preferences without a reward model"
PAPER = "arXiv 2401.04056"
CLAIM = (
    "Rewarding each sample by its win rate against the policy's own other samples converges (on average) to the "
    "minimax winner even for intransitive preferences, where any Bradley-Terry reward model must pick a pure, "
    "exploitable action."
)
VARIANTS = ("spo", "bradley_terry")
CYCLIC = [[0.5, 0.9, 0.4], [0.1, 0.5, 0.9], [0.6, 0.1, 0.5]]
GROUP, LR, UPDATES, QUICK_UPDATES, COMPARISONS = 8, 0.1, 20_000, 200, 20_000


def setup(quick: bool) -> str:
    updates = QUICK_UPDATES if quick else UPDATES
    return (
        f"3 actions, intransitive M (minimax winner (4/9, 1/9, 4/9)); SPO with groups of {GROUP}, REINFORCE lr {LR}, "
        f"{updates} updates (time-averaged and last iterate) against a Bradley-Terry reward fitted on {COMPARISONS:,} "
        "comparisons then greedy; plus a transitive control."
    )


def _transitive() -> torch.Tensor:
    s = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    return torch.sigmoid(s.unsqueeze(1) - s.unsqueeze(0))


def _spo(matrix: torch.Tensor, updates: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=LR)
    average = torch.zeros(3, dtype=torch.float64)
    upper = torch.ones(GROUP, GROUP, dtype=torch.bool).triu(1)
    for _ in range(updates):
        probs = torch.softmax(logits, 0)
        average += probs.detach()
        actions = torch.multinomial(probs.detach(), GROUP, replacement=True, generator=gen)
        wins = (torch.rand(GROUP, GROUP, generator=gen, dtype=torch.float64) < matrix[actions][:, actions]).double()
        outcomes = torch.where(upper, wins, 1 - wins.T)  # one Bernoulli draw per pair: o_ji = 1 - o_ij
        rewards = self_play_win_rate_rewards(outcomes)
        loss = -((rewards - rewards.mean()) * torch.log(probs[actions])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return average / updates, torch.softmax(logits.detach(), 0)


def _bradley_terry(matrix: torch.Tensor, comparisons: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.randint(3, (comparisons,), generator=gen)
    j = (i + torch.randint(1, 3, (comparisons,), generator=gen)) % 3  # a different action
    y = (torch.rand(comparisons, generator=gen, dtype=torch.float64) < matrix[i, j]).double()
    score = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([score], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(score[i] - score[j], y) + 1e-6 * score.pow(2).sum()
        nll.backward()
        return nll

    opt.step(closure)
    greedy = torch.nn.functional.one_hot(score.detach().argmax(), 3).double()
    return greedy, score.detach() - score.detach().mean()


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, matrix in (("cyclic", torch.tensor(CYCLIC, dtype=torch.float64)), ("transitive", _transitive())):
        gen = torch.Generator().manual_seed(seed)
        if variant == "bradley_terry":
            policy, scores = _bradley_terry(matrix, COMPARISONS, gen)
            out[f"{name}_scores"] = scores.tolist()
            out[f"{name}_policy"] = policy.tolist()
            out[f"{name}_exploitability"] = exploitability(policy, matrix)
        else:
            average, last = _spo(matrix, updates, gen)
            out[f"{name}_policy"], out[f"{name}_last_policy"] = average.tolist(), last.tolist()
            out[f"{name}_exploitability"] = exploitability(average, matrix)
            out[f"{name}_last_exploitability"] = exploitability(last, matrix)
    return out


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_UPDATES if quick else UPDATES)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    rows = [
        ("exploitability, cyclic M: SPO (time-averaged) vs Bradley-Terry + greedy",
         cell(results, "spo", "cyclic_exploitability"), cell(results, "bradley_terry", "cyclic_exploitability")),
        ("... SPO's last iterate vs Bradley-Terry", cell(results, "spo", "cyclic_last_exploitability"),
         cell(results, "bradley_terry", "cyclic_exploitability")),
        ("exploitability, transitive control: SPO (time-averaged) vs Bradley-Terry",
         cell(results, "spo", "transitive_exploitability"),
         cell(results, "bradley_terry", "transitive_exploitability")),
    ]  # fmt: skip

    def mean(v: str, k: str) -> float:
        return sum(column(results, v, k)) / len(results)

    avg = [sum(r["spo"]["cyclic_policy"][a] for r in results) / len(results) for a in range(3)]
    spo, bt = mean("spo", "cyclic_exploitability"), mean("bradley_terry", "cyclic_exploitability")
    last = mean("spo", "cyclic_last_exploitability")
    t_spo, t_bt = mean("spo", "transitive_exploitability"), mean("bradley_terry", "transitive_exploitability")
    verdict = (
        f"On the cyclic preference SPO's time-averaged policy ({avg[0]:.3f}, {avg[1]:.3f}, {avg[2]:.3f}) is "
        f"{spo:.3f}-exploitable against {bt:.3f} for the reward model's greedy action (SPO's last iterate: "
        f"{last:.3f}; it cycles); on the transitive control both find the Condorcet winner ({t_spo:.3f} and "
        f"{t_bt:.3f})."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.2
    winner = [4 / 9, 1 / 9, 4 / 9]
    for k, (label, pol) in enumerate(
        [
            ("minimax winner", [winner]),
            ("SPO, time-averaged", [r["spo"]["cyclic_policy"] for r in results]),
            ("SPO, last iterate", [r["spo"]["cyclic_last_policy"] for r in results]),
            ("Bradley-Terry + greedy", [r["bradley_terry"]["cyclic_policy"] for r in results]),
        ]
    ):
        mean = [sum(p[a] for p in pol) / len(pol) for a in range(3)]
        ax.bar([a + (k - 1.5) * width for a in range(3)], mean, width, label=label, color=f"C{k}")
    ax.set_xticks(range(3), ["action 0", "action 1", "action 2"])
    ax.set(ylabel="probability (mean over seeds)", title="cyclic preferences")
    save_figure(fig, [ax], path)
