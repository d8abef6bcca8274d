"""``EntropyGRPOTrainer`` on TRL 1.16 in one process: parity with TRL's own loss (value and gradients) for every
aggregating ``loss_type``, TRL's metric names in its logs, the adaptive entropy state through TRL's checkpoints,
and three real training steps of ``clip_cov``, ``kl_cov`` and ``steer`` on a tiny random Qwen2 with a locally built
tokenizer (no hub).  The 2-process DDP tests are in ``test_integration_trl_ddp_on_cpu.py``."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import engine

trl = engine("trl")
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from entrolab.integrations.trl import EntropyGRPOTrainer, trl_aggregation  # noqa: E402
from tests import _trl_fixtures as fixtures  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return fixtures.tokenizer()


_model, _data, _reward = fixtures.model, fixtures.data, fixtures.reward


def _config(tmp_path, loss_type: str = "dapo", **kw) -> GRPOConfig:
    return fixtures.config(tmp_path / "out", loss_type, **kw)


def _inputs(tokenizer, beta: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, p, t = 4, 5, 6
    v = len(tokenizer)
    prompt_ids = torch.randint(3, v, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    prompt_ids[0, :2] = 0
    completion_ids = torch.randint(3, v, (b, t), generator=g)
    completion_mask = torch.ones(b, t, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[2, 5:] = 0
    out = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.tensor([1.2, -0.7, 0.4, -1.1]),
        "num_items_in_batch": completion_mask.sum() * 3,
    }  # fmt: skip
    return out


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("loss_type", "beta"), [("grpo", 0.0), ("bnpo", 0.0), ("dr_grpo", 0.0), ("dapo", 0.0),
                                                 ("dapo", 0.05), ("grpo", 0.05)])  # fmt: skip
def test_ppo_equals_trls_own_loss_and_gradients(tmp_path, tokenizer, loss_type, beta):
    path = tmp_path / "ckpt"  # a local checkpoint directory: TRL loads the policy and its reference from it
    _model(tokenizer).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    cfg = _config(tmp_path, loss_type, beta=beta)
    theirs = GRPOTrainer(str(path), reward_funcs=_reward, args=cfg, train_dataset=_data(), processing_class=tokenizer)
    ours = EntropyGRPOTrainer(str(path), reward_funcs=_reward, args=cfg, train_dataset=_data(),
                              processing_class=tokenizer, policy_loss="ppo")  # fmt: skip
    inputs = _inputs(tokenizer, beta > 0)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        lp, _, _ = theirs._get_per_token_logps_and_entropies(theirs.model, ids, am, 6)
    noise = torch.randn(lp.shape, generator=torch.Generator().manual_seed(1)) * 0.3
    inputs["old_per_token_logps"] = lp + noise  # ratios away from 1: both clip branches are exercised
    if beta:
        inputs["ref_per_token_logps"] = lp - noise.abs()
    results = []
    for trainer in (ours, theirs):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        loss.backward()
        results.append((loss.detach(), _grads(trainer.model)))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=2e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=2e-4, atol=2e-6, msg=name)
    assert any(k.startswith("entrolab/clipfrac") for k in ours._metrics["train"])


@pytest.mark.parametrize(("policy_loss", "kwargs"), [("clip_cov", {"ratio": 0.2}), ("kl_cov", {"ratio": 0.2}),
                                                      ("steer", {})])  # fmt: skip
def test_three_training_steps(tmp_path, tokenizer, policy_loss, kwargs):
    model = _model(tokenizer, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = EntropyGRPOTrainer(
        model, reward_funcs=_reward, args=_config(tmp_path, "dapo", num_iterations=2), train_dataset=_data(),
        processing_class=tokenizer, policy_loss=policy_loss, loss_kwargs=kwargs,
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 3
    keys = set().union(*logged)
    assert "entropy" in keys and any(k.startswith("entrolab/") for k in keys), keys
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in logged)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_every_metric_trl_logs_is_logged_under_the_same_name(tmp_path, tokenizer):
    """Same model, data and seed, with a KL term and an adaptive entropy bonus: TRL's metric names are a subset of
    the entrolab trainer's, and its entropy and KL statistics agree at the first step (on-policy, same head)."""
    path = tmp_path / "ckpt"  # a local checkpoint: TRL loads the policy and the reference (beta > 0) from it
    _model(tokenizer, seed=5).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    logs = []
    for cls in (GRPOTrainer, EntropyGRPOTrainer):
        cfg = _config(tmp_path, "dapo", beta=0.05, use_adaptive_entropy=True, entropy_coef=0.01, entropy_target=5.0,
                      max_steps=2)  # fmt: skip
        trainer = cls(str(path), reward_funcs=_reward, args=cfg, train_dataset=_data(), processing_class=tokenizer)
        trainer.train()
        logs.append([row for row in trainer.state.log_history if "loss" in row])
    theirs, ours = logs
    missing = set().union(*theirs) - set().union(*ours)
    assert not missing, f"TRL logs {sorted(missing)}; EntropyGRPOTrainer does not"
    assert {"policy_loss", "entropy_coef", "kl", "clip_ratio/high_max"} <= set(ours[0])
    dynamics = {
        f"entrolab/dynamics/{k}" for k in ("cov_mean", "predicted_entropy_change", "entropy_p10", "entropy_p90")
    }
    assert dynamics <= set(ours[0])
    for key in ("entropy", "kl", "entropy_coef", "reward"):
        assert ours[0][key] == pytest.approx(theirs[0][key], rel=1e-4, abs=1e-7), key


def test_the_adaptive_entropy_state_travels_with_trls_checkpoints(tmp_path, tokenizer):
    cfg = _config(tmp_path, use_adaptive_entropy=True, entropy_coef=0.01, entropy_target=50.0, entropy_coef_delta=0.003,
                  max_steps=2, save_strategy="steps", save_steps=1)  # fmt: skip
    first = EntropyGRPOTrainer(_model(tokenizer, seed=6), reward_funcs=_reward, args=cfg, train_dataset=_data(),
                               processing_class=tokenizer)  # fmt: skip
    first.train()
    assert first.entropy_coef == pytest.approx(0.016)  # entropy below the target twice: +delta twice
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "entropy_ctrl_state.json").read_text())
    assert state["entropy_coef"] == pytest.approx(0.016) and state["last_world_entropy"] < 50.0
    again = EntropyGRPOTrainer(_model(tokenizer, seed=6), reward_funcs=_reward, args=cfg, train_dataset=_data(),
                               processing_class=tokenizer)  # fmt: skip
    again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert again.entropy_coef == pytest.approx(0.016)


@pytest.mark.parametrize(("advantage", "kwargs"), [("empg", {"zeta": 0.2}), ("entropy_aware", {"coef": 0.5})])
def test_entropy_reshaped_advantages_as_a_trainer_option(tmp_path, tokenizer, advantage, kwargs):
    """``advantage=`` applies the registered method to TRL's advantages with the rollout's token entropy: the loss
    equals the policy loss on the advantages the method's own function returns; and a run trains."""
    from entrolab.advantages import empg_advantages, entropy_aware_advantages
    from entrolab.losses import get_policy_loss

    trainer = EntropyGRPOTrainer(
        _model(tokenizer, seed=8), reward_funcs=_reward, args=_config(tmp_path, "bnpo", max_steps=2),
        train_dataset=_data(), processing_class=tokenizer, advantage=advantage, advantage_kwargs=kwargs,
    )  # fmt: skip
    batch = fixtures.fixed_batch(tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, dict(batch))
    lp, ent, _ = trainer._logps_and_entropy(trainer.model, batch)
    mask = batch["completion_mask"].bool()
    if advantage == "empg":
        adv = empg_advantages(ent.detach(), mask, batch["advantages"], **kwargs)
    else:
        adv = entropy_aware_advantages(batch["advantages"], ent.detach(), mask, **kwargs)
    agg = trl_aggregation("bnpo", mask, accumulation=1, max_completion_length=6)
    want = get_policy_loss("ppo")(lp, batch["old_per_token_logps"], adv, mask, entropy=ent, agg=agg,
                                  eps_low=0.2, eps_high=0.28).loss  # fmt: skip
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    trainer.train()
    assert trainer.state.global_step == 2


def test_steer_weights_with_the_entropy_of_the_first_pass_over_a_micro_batch(tmp_path, tokenizer):
    """STEER's Omega uses the old policy's entropy: on the second iteration over a buffered micro-batch (after an
    update) the loss still sees the entropy recorded on the first pass, not the current one."""
    from entrolab.losses import get_policy_loss

    trainer = EntropyGRPOTrainer(_model(tokenizer, seed=9), reward_funcs=_reward, args=_config(tmp_path, "bnpo"),
                                 train_dataset=_data(), processing_class=tokenizer, policy_loss="steer")  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = fixtures.fixed_batch(tokenizer)
    trainer.compute_loss(trainer.model, batch)
    recorded = batch["entrolab_old_entropy"]
    with torch.no_grad():  # an update: the policy, hence its entropy, moves
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = trainer.compute_loss(trainer.model, batch)
    lp, ent, _ = trainer._logps_and_entropy(trainer.model, batch)
    assert not torch.allclose(ent, recorded)
    mask = batch["completion_mask"].bool()
    agg = trl_aggregation("bnpo", mask, accumulation=1, max_completion_length=6)
    steer = get_policy_loss("steer")
    kw = {"agg": agg, "eps_low": 0.2, "eps_high": 0.28}
    old = batch["old_per_token_logps"]
    torch.testing.assert_close(loss, steer(lp, old, batch["advantages"], mask, entropy=recorded, **kw).loss)
    current = steer(lp, old, batch["advantages"], mask, entropy=ent, **kw).loss
    assert float(current) != pytest.approx(float(loss), rel=1e-6)


def test_bad_configuration_is_refused(tmp_path, tokenizer):
    model = _model(tokenizer)
    common = {"reward_funcs": _reward, "train_dataset": _data(), "processing_class": tokenizer}
    with pytest.raises(ValueError, match="has no hyperparameter 'k'"):
        EntropyGRPOTrainer(model, args=_config(tmp_path), policy_loss="steer", loss_kwargs={"k": 1}, **common)
    with pytest.raises(ValueError, match="valid"):
        EntropyGRPOTrainer(model, args=_config(tmp_path), policy_loss="nope", **common)
    with pytest.raises(ValueError, match="policy_loss="):
        EntropyGRPOTrainer(model, args=_config(tmp_path, "cispo"), policy_loss="ppo", **common)
    with pytest.raises(ValueError, match="valid: empg, entropy_aware"):
        EntropyGRPOTrainer(model, args=_config(tmp_path), advantage="hapo", **common)
    with pytest.raises(ValueError, match="no hyperparameter 'beta'"):
        EntropyGRPOTrainer(model, args=_config(tmp_path), advantage="empg", advantage_kwargs={"beta": 1}, **common)
    with pytest.raises(ValueError, match="not both"):
        EntropyGRPOTrainer(model, args=_config(tmp_path), advantage="empg", advantage_transform=lambda a, **_: a,
                           **common)  # fmt: skip
    with pytest.raises(ValueError, match="delta"):
        EntropyGRPOTrainer(model, args=_config(tmp_path, delta=2.0), **common)


def test_trl_aggregation_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    values = torch.tensor([[1.0, 3.0, 9.0], [4.0, 9.0, 9.0]])
    from entrolab.losses import aggregate

    def agg(lt, **kw):
        return float(aggregate(values, mask, trl_aggregation(lt, mask, max_completion_length=4, **kw)))

    assert agg("grpo", accumulation=2) == pytest.approx((2.0 + 4.0) / 2 / 2)
    assert agg("bnpo", accumulation=1) == pytest.approx(8.0 / 3)
    assert agg("dr_grpo", accumulation=1) == pytest.approx(8.0 / (2 * 4))
    assert agg("luspo", accumulation=1) == pytest.approx((4.0 + 4.0) / 2)
    n = torch.tensor(12.0)
    assert agg("dapo", accumulation=2, num_items_in_batch=n, num_processes=2, steps_per_generation=4) == pytest.approx(
        8.0 / (12 / 2 * 2 / 4)
    )


def test_the_example_script_trains_in_smoke_mode():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "trl_grpo_entropy.py"
    spec = importlib.util.spec_from_file_location("trl_grpo_entropy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    last = module.main(["--smoke", "--policy-loss", "steer"])
    assert "loss" in last and any(k.startswith("entrolab/") for k in last)
    assert module.last_number_reward(["1+2="], ["so 3"], ["3"]) == [1.0]
