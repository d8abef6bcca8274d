"""The gallery: quick runs of each entry (finite metrics, shapes, reproducible with the same seed), the runner's
page, resumption and command line, and the single-file SAC's pieces (tanh-Gaussian density, Polyak update)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import engine


def test_entries_and_unknown_names():
    from entrolab.gallery import entries, get_entry

    assert {"sac", "adversarial_surprise", "infopower", "subpo", "aem"} <= set(entries())
    with pytest.raises(ValueError, match="valid entries"):
        get_entry("nope")
    for name in entries():
        mod = get_entry(name)
        assert mod.TITLE and mod.PAPER.startswith("arXiv") and mod.CLAIM and mod.setup(True)


def test_every_entry_is_documented():
    """Each registered entry has a section in docs/gallery.md, a row in its measured table and one in the README."""
    from pathlib import Path

    from entrolab.gallery import entries

    root = Path(__file__).resolve().parents[1]
    docs, readme = (root / "docs" / "gallery.md").read_text(), (root / "README.md").read_text()
    for name in entries():
        assert f"### `{name}`" in docs, name
        assert f"\n| `{name}` |" in docs and f"\n| `{name}` |" in readme, name


def test_subpo_quick_run_is_reproducible_and_finite():
    from entrolab.gallery import subpo

    a, b = subpo.run(seed=3, quick=True), subpo.run(seed=3, quick=True)
    for v in subpo.VARIANTS:
        assert a[v]["final_F"] == b[v]["final_F"] and math.isfinite(a[v]["final_F"]) and a[v]["final_F"] > 0
        assert a[v]["curve"] == b[v]["curve"]
    rows, verdict = subpo.summarize([a, b])
    assert len(rows) == 2 and "SubPO covers" in verdict


def test_sac_pieces():
    engine("gymnasium", "gallery")
    import numpy as np

    from entrolab.gallery.sac_continuous import Actor

    torch.manual_seed(0)
    actor = Actor(3, 1, np.array([-2.0]), np.array([2.0]))
    obs = torch.zeros(200_000, 3)
    with torch.no_grad():
        a, logp = actor(obs)
    # the log-density with the tanh and scale change of variables matches a histogram of the samples
    hist, edges = np.histogram(a.numpy().ravel(), bins=40, range=(-2, 2), density=True)
    centres = torch.tensor((edges[:-1] + edges[1:]) / 2, dtype=torch.float32)
    order = torch.argsort(a.ravel())
    dens = torch.exp(logp)[order]
    grid = a.ravel()[order]
    interp = np.interp(centres.numpy(), grid.numpy(), dens.numpy())
    ok = hist > 0.05
    assert np.allclose(hist[ok], interp[ok], rtol=0.1, atol=0.02)
    # Polyak averaging with lerp_: tau = 1 copies, tau = 0 keeps
    p, q = torch.ones(3), torch.zeros(3)
    assert torch.equal(q.clone().lerp_(p, 1.0), p) and torch.equal(q.clone().lerp_(p, 0.0), q)


def test_sac_quick_run_against_sb3_is_reproducible(tmp_path):
    engine("gymnasium", "gallery")
    from entrolab.gallery import sac

    a = sac.run(seed=0, quick=True)
    b = sac.run(seed=0, quick=True)
    assert a["ours"]["returns"] == b["ours"]["returns"] and a["ours"]["alpha"] == b["ours"]["alpha"]
    assert len(a["ours"]["returns"]) == 2 and all(math.isfinite(r) for _, r in a["ours"]["returns"])
    assert a["ours"]["alpha"][-1][1] < 1.0  # the temperature moved from its initial 1.0
    assert a["sb3"] is not None and math.isfinite(a["sb3"]["final_return"])
    rows, verdict = sac.summarize([a])
    assert rows[0][0] == "final return" and "stable-baselines3" in verdict
    sac.figure([a, b], tmp_path / "sac.png")
    assert (tmp_path / "sac.png").stat().st_size > 1000


def test_runner_page_resume_and_cli(tmp_path, monkeypatch):
    from entrolab.__main__ import main
    from entrolab.gallery import runner, subpo

    calls = {"n": 0}
    real = subpo.run

    def counted(seed: int = 0, quick: bool = False):
        calls["n"] += 1
        return real(seed=seed, quick=quick)

    monkeypatch.setattr(subpo, "run", counted)
    page = runner.run_gallery(["subpo"], seeds=2, quick=True, out=tmp_path / "g", log=lambda s: None)
    text = page.read_text()
    assert "<section id='subpo'>" in text and "data:image/png;base64," in text and "What happened" in text
    assert (tmp_path / "g" / "gallery.md").read_text().count("| final coverage F") == 2
    assert calls["n"] == 2
    saved = json.loads((tmp_path / "g" / "subpo" / "seed1.json").read_text())
    assert saved["quick"] is True and saved["result"]["seed"] == 1
    runner.run_gallery(["subpo"], seeds=2, quick=True, out=tmp_path / "g", log=lambda s: None)
    assert calls["n"] == 2  # both seeds were on disk: nothing ran again
    assert main(["gallery", "--list"]) == 0
    assert main(["gallery", "nope", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(ValueError, match="seeds"):
        runner.run_gallery(["subpo"], seeds=0, out=tmp_path / "y")


@pytest.mark.parametrize(("name", "keys"), [("adversarial_surprise", ("coverage", "dark_room", "noisy_room")),
                                           ("infopower", ("position_r2", "distractor_r2")),
                                           ("aem", ("auc", "attention_entropy")),
                                           ("centaur", ("cluster_accuracy", "class_accuracy")),
                                           ("koopman", ("effective_rank", "rollout_mse")),
                                           ("attention_entropy", ("eval_loss", "overloaded_heads"))])  # fmt: skip
def test_quick_runs_are_reproducible_and_finite(name, keys, tmp_path):
    from entrolab.gallery import get_entry

    mod = get_entry(name)
    a, b = mod.run(seed=2, quick=True), mod.run(seed=2, quick=True)
    for v in mod.VARIANTS:
        for k in keys:
            # same training; the float64 least-squares probe may differ in the last bits across LAPACK threads
            assert a[v][k] == pytest.approx(b[v][k], rel=1e-9, abs=1e-12) and math.isfinite(a[v][k]), (v, k)
    rows, verdict = mod.summarize([a, b])
    assert rows and verdict
    mod.figure([a, b], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_subpo_verdict_names_each_variant_right():
    from entrolab.gallery import subpo

    fake = {"seed": 0, "updates": 1, "subpo": {"final_F": 180.0}, "prefix_value": {"final_F": 150.0},
            "modular": {"final_F": 80.0}}  # fmt: skip
    rows, verdict = subpo.summarize([fake])
    assert "against 80.0 for the modular-reward policy" in verdict and "150.0 for the code's" in verdict
    assert rows[0][2] == "80.0" and rows[1][2] == "150.0"


def test_wpc_quick_run_is_reproducible(tmp_path):
    from entrolab.gallery import wpc

    a, b = wpc.run(seed=1, quick=True), wpc.run(seed=1, quick=True)
    for v in wpc.VARIANTS:
        for n in wpc.FACTORS:
            acc = a[v]["probe_accuracy"][str(n)]
            assert acc == pytest.approx(b[v]["probe_accuracy"][str(n)], rel=1e-9) and 0.0 <= acc <= 1.0
    rows, verdict = wpc.summarize([a, b])
    assert len(rows) == len(wpc.FACTORS) and "n = 16" in verdict
    wpc.figure([a], tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000


def test_ads_quick_run(tmp_path):
    engine("sklearn", "gallery")
    from entrolab.gallery import ads

    a, b = ads.run(seed=0, quick=True), ads.run(seed=0, quick=True)
    for v in ads.VARIANTS:
        assert a[v]["mse"] == pytest.approx(b[v]["mse"], rel=1e-9) and 0 < a[v]["mse"] < 1
    rows, verdict = ads.summarize([a])
    assert len(rows) == 3 and "random pixels" in verdict
    ads.figure([a], tmp_path / "a.png")
    # the exact mixture posterior: observing every pixel pins the mean to the image
    prior = ads._Prior(0)
    x = torch.tensor(prior.test[0])
    obs = torch.arange(0, 64, 3)
    w, mean, cov = prior.posterior(obs, x[obs])
    assert float(w.sum()) == pytest.approx(1.0) and torch.allclose(mean[:, obs], x[obs].expand(10, -1), atol=1e-9)
    assert float(torch.diagonal(cov, dim1=-2, dim2=-1)[:, obs].abs().max()) < 1e-9


def test_kecor_quick_run(tmp_path):
    engine("sklearn", "gallery")
    from entrolab.gallery import kecor

    a, b = kecor.run(seed=0, quick=True), kecor.run(seed=0, quick=True)
    for v in kecor.VARIANTS:
        assert len(a[v]["curve"]) == kecor.QUICK_ROUNDS + 1 and all(0 <= c <= 1 for c in a[v]["curve"])
        assert a[v]["curve"] == pytest.approx(b[v]["curve"])
    rows, verdict = kecor.summarize([a])
    assert len(rows) == 3 and "KECOR" in verdict
    kecor.figure([a], tmp_path / "k.png")


def test_mec_quick_run():
    from entrolab.gallery import mec

    a, b = mec.run(seed=0, quick=True), mec.run(seed=0, quick=True)
    assert a == b
    for v in mec.VARIANTS:
        assert len(a[v]["curve"]) == mec.QUICK_RATES and a[v]["min_bound_slack"] >= 0.0
        assert a[v]["curve"][0] == pytest.approx(0.0, abs=1e-9)  # rate 0: a constant encoder keeps nothing
    rows, verdict = mec.summarize([a])
    assert len(rows) == 2 + 2 * len(mec.GAME_TEMPERATURES) and "holds everywhere" in verdict
    for tau in mec.GAME_TEMPERATURES:
        games = a["game"][str(tau)]
        assert games[0]["information"] == pytest.approx(0.0, abs=1e-9) and games[0]["accuracy"] == pytest.approx(1.0)
        for g in games:  # the trajectory carries at most H(T) and at most its own entropy
            cap = mec.GAME_STEPS * g["policy_entropy"]
            assert -1e-9 <= g["information"] <= min(g["H_T"], cap) + 1e-9
            assert g["return"] == pytest.approx(games[0]["return"])  # the coupling keeps the action marginal


def test_coding_game_transmits_a_message_the_channel_can_carry():
    """A uniform policy over 4 actions for 4 steps carries up to 8 bits: a uniform 16-symbol message (4 bits) gets
    through, and at rate 2 bits the receiver recovers T exactly too."""
    from entrolab.gallery import mec

    px = torch.full((16,), 1 / 16, dtype=torch.float64)
    full = mec.coding_game(px, 4.0, tau=1e15)
    assert full["information"] == pytest.approx(4.0, abs=1e-9) and full["accuracy"] == pytest.approx(1.0)
    half = mec.coding_game(px, 2.0, tau=1e15)
    # EBIM's greedy merge reaches H(T) = 1.92 <= 2 here (not the balanced 4-cell split); all of it gets through
    assert half["H_T"] <= 2.0 and half["information"] == pytest.approx(half["H_T"], abs=1e-9)


def test_mee_quick_run_and_mode_metric(tmp_path):
    from entrolab.gallery import mee

    # the metric: samples exactly on 3 of the 8 centres (and 1% elsewhere) -> 3 modes, quality 0.99
    centres = mee._centres()
    on = centres[torch.arange(990) % 3]
    off = torch.full((10, 2), 5.0)
    assert mee.mode_metrics(torch.cat([on, off])) == (3, pytest.approx(0.99))
    a, b = mee.run(seed=0, quick=True), mee.run(seed=0, quick=True)
    for v in mee.VARIANTS:
        assert a[v]["modes"] == b[v]["modes"] and a[v]["quality"] == pytest.approx(b[v]["quality"])
        assert 0 <= a[v]["modes"] <= 8 and 0.0 <= a[v]["quality"] <= 1.0 and len(a[v]["samples"]) == 1000
    rows, verdict = mee.summarize([a, b])
    assert len(rows) == 6 and "MEE" in verdict
    mee.figure([a], tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 0


def test_optim8bit_quick_run(tmp_path):
    engine("bitsandbytes", "optim")
    from entrolab.gallery import optim8bit

    a, b = optim8bit.run(seed=0, quick=True), optim8bit.run(seed=0, quick=True)
    for v in optim8bit.VARIANTS:
        assert a[v]["curve"] == pytest.approx(b[v]["curve"]) and a[v]["pass@1"] == b[v]["pass@1"]
        assert len(a[v]["curve"]) == optim8bit.QUICK_STEPS and all(math.isfinite(x) for x in a[v]["curve"])
        assert a[v]["params"] == a["adamw"]["params"]
    # the first step starts from the same weights and batch: the same loss
    assert a["adamw8bit"]["curve"][0] == pytest.approx(a["adamw"]["curve"][0], rel=1e-6)
    assert 2.5 < a["adamw"]["state_bytes"] / a["adamw8bit"]["state_bytes"] < 4.0
    assert len(a["adamw8bit"]["rl_reward"]) == optim8bit.QUICK_RL_STEPS
    assert 2.5 < a["adamw"]["rl_state_bytes"] / a["adamw8bit"]["rl_state_bytes"] < 4.0  # the lab's Adam vs Adam8bit
    rows, verdict = optim8bit.summarize([a])
    assert len(rows) == 7 and "AdamW8bit" in verdict
    optim8bit.figure([a], tmp_path / "o.png")


def test_scale_quick_run_and_markov_floor(tmp_path):
    from entrolab.gallery import scale
    from entrolab.gallery._common import markov2_entropy, markov2_sample

    # a deterministic source has entropy 0; a uniform one ln V
    det = torch.zeros(3, 3, 3)
    det[..., 0] = 1.0
    data = markov2_sample(det, 4, 6, torch.Generator().manual_seed(0))
    assert markov2_entropy(det, data) == pytest.approx(0.0, abs=1e-12)
    assert markov2_entropy(torch.full((3, 3, 3), 1 / 3), data) == pytest.approx(math.log(3))
    a, b = scale.run(seed=0, quick=True), scale.run(seed=0, quick=True)
    for v in scale.VARIANTS:
        assert a[v]["eval_ce"] == pytest.approx(b[v]["eval_ce"]) and a[v]["excess_ce"] > -0.05
    assert a["sgd"]["state_bytes"] == 0 and 0 < a["scale"]["state_bytes"] < a["adam"]["state_bytes"] / 10
    snapshot = json.dumps(a, sort_keys=True)
    rows, verdict = scale.summarize([a, b])
    assert len(rows) == 5 and "SCALE" in verdict
    scale.figure([a], tmp_path / "s.png")
    assert json.dumps(a, sort_keys=True) == snapshot  # summarize and figure leave results alone


def test_sse_quick_run(tmp_path):
    from entrolab.gallery import sse

    a, b = sse.run(seed=0, quick=True), sse.run(seed=0, quick=True)
    for v in sse.VARIANTS:
        assert a[v]["accuracy"] == b[v]["accuracy"] and set(a[v]["accuracy"]) == {str(p) for p in sse.PAIRS}
    keys, values, queries, targets = sse._batch(4, 16, torch.Generator().manual_seed(0))
    for i in range(4):  # distinct keys; every query's target is the value stored with its key
        assert keys[i].unique().numel() == 16
        for q, t in zip(queries[i], targets[i]):
            assert values[i][keys[i] == q].item() == t.item()
    snapshot = json.dumps(a, sort_keys=True)
    rows, verdict = sse.summarize([a])
    assert len(rows) == 2 * len(sse.PAIRS) and "pairs" in verdict
    sse.figure([a], tmp_path / "s.png")
    assert json.dumps(a, sort_keys=True) == snapshot  # summarize and figure leave results alone


def test_ssm_quick_run(tmp_path):
    engine("sklearn", "gallery")
    from entrolab.gallery import ssm

    a, b = ssm.run(seed=0, quick=True), ssm.run(seed=0, quick=True)
    for v in ssm.VARIANTS:
        assert 0 <= a[v]["accuracy"] <= 1 and a[v]["epochs_to_90"] == 1
        assert a[v]["accuracy"] == b[v]["accuracy"] and a[v]["mu_eig_min"] == pytest.approx(b[v]["mu_eig_min"])
    assert a["psd"]["mu_eig_min"] >= -1e-5 and a["nsd"]["mu_eig_max"] <= 1e-5
    rows, verdict = ssm.summarize([a])
    assert len(rows) == 5 and "PSD" in verdict
    ssm.figure([a], tmp_path / "m.png")


def test_spo_quick_run_and_bradley_terry_on_the_worked_example(tmp_path):
    from entrolab.gallery import spo

    a, b = spo.run(seed=0, quick=True), spo.run(seed=0, quick=True)
    assert a["spo"]["cyclic_policy"] == pytest.approx(b["spo"]["cyclic_policy"])
    # the spec's worked example: a Bradley-Terry reward on the cyclic M picks action 0, exploitability 0.1
    assert a["bradley_terry"]["cyclic_policy"] == [1.0, 0.0, 0.0]
    assert a["bradley_terry"]["cyclic_exploitability"] == pytest.approx(0.1, abs=1e-9)
    assert a["bradley_terry"]["transitive_exploitability"] == pytest.approx(0.0, abs=1e-9)  # the Condorcet winner
    assert sum(a["spo"]["cyclic_policy"]) == pytest.approx(1.0)
    rows, verdict = spo.summarize([a])
    assert len(rows) == 3 and "Condorcet" in verdict
    spo.figure([a], tmp_path / "p.png")


def test_cpl_quick_run_and_data(tmp_path):
    from entrolab.gallery import cpl

    data = cpl._collect(torch.Generator().manual_seed(0))
    assert data["states"].shape == (cpl.SEGMENTS, cpl.LENGTH, 4) and data["actions"].abs().max() <= 1
    # expert segments (even ids) earn more than random ones, and win most comparisons
    assert data["returns"][0::2].mean() > data["returns"][1::2].mean()
    assert float((data["preferred"] % 2 == 0).float().mean()) > 0.6
    a, b = cpl.run(seed=0, quick=True), cpl.run(seed=0, quick=True)
    for v in cpl.VARIANTS:
        assert a[v]["return"] == pytest.approx(b[v]["return"]) and a[v]["return"] < 0
    snapshot = json.dumps(a, sort_keys=True)
    rows, verdict = cpl.summarize([a])
    assert len(rows) == 4 and "CPL" in verdict
    cpl.figure([a], tmp_path / "c.png")
    assert json.dumps(a, sort_keys=True) == snapshot  # summarize and figure leave results alone


def test_sspo_degree_labels_and_quick_run(tmp_path):
    from entrolab.gallery import sspo

    gen = torch.Generator().manual_seed(0)
    prompts = sspo._prompts(64, gen)
    m = torch.randint(sspo.PROMPT_KEYS + 1, (64,), generator=gen)
    answers = sspo._answers(prompts, m, gen)
    assert torch.equal(sspo.quality(prompts, answers), m)
    damaged, d = sspo._delete_keys(prompts, answers, m, gen)
    # spec test 2: the degree label is the number of key tokens removed
    assert torch.equal(sspo.quality(prompts, damaged), m - d) and bool((d <= m).all())
    a, b = sspo.run(seed=0, quick=True), sspo.run(seed=0, quick=True)
    for v in sspo.VARIANTS:
        timeless = {k: x for k, x in a[v].items() if k != "seconds"}
        assert timeless == pytest.approx({k: x for k, x in b[v].items() if k != "seconds"})
        assert 0 <= a[v]["accuracy"] <= 1 and 0 <= a[v]["keys_per_answer"] <= sspo.PROMPT_KEYS
    rows, verdict = sspo.summarize([a])
    assert len(rows) == 3 and "degree task" in verdict
    sspo.figure([a], tmp_path / "d.png")
