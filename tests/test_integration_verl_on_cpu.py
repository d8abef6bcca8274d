"""entrolab's losses inside verl 0.9.1: registration with verl's exact signature, parity with verl's own losses
(vanilla, kl_cov, clip_cov) over every aggregation mode with and without global normalisers, rollout importance
weights, and the entropy hook through verl's real actor loss function."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.conftest import engine

verl = engine("verl")
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

import entrolab.integrations.verl as ev  # noqa: E402
from entrolab.dynamics import entropy_dynamics  # noqa: E402
from entrolab.losses import AGG_MODES, get_policy_loss, policy_losses  # noqa: E402


def _config(calculate_entropy: bool = False, **policy_loss) -> ActorConfig:
    return ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, policy_loss=PolicyLossConfig(**policy_loss),
        clip_ratio_low=0.2, clip_ratio_high=0.28, calculate_entropy=calculate_entropy,
    )  # fmt: skip


def _batch(seed: int, b: int = 6, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.05
    new = (old + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
    adv[0] = -adv[0].abs()  # negative advantages reach the dual-clip branch
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    mask[-1, 4:] = False
    return old, new, adv, mask


def _actor_batch(attn, p: int, g, old, adv, **extra):
    """A batch as verl's actor loss receives it: the TensorDict (prompts, responses, masks, old log-probs,
    advantages and ``extra`` columns, with verl's non-tensor batch info) and the unpadded model outputs
    (``log_probs`` with gradient, ``entropy``) drawn from ``g``."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    b, t = attn.shape[0], attn.shape[1] - p
    n_tok = int(attn.sum())
    flat_lp = (-torch.rand(n_tok, generator=g) * 2).requires_grad_()
    flat_ent = torch.rand(n_tok, generator=g) * 3
    data = TensorDict(
        {"prompts": torch.ones(b, p, dtype=torch.long), "responses": torch.ones(b, t, dtype=torch.long),
         "attention_mask": attn, "response_mask": attn[:, p:].clone(), "old_log_probs": old, "advantages": adv,
         **extra},
        batch_size=[b],
    )  # fmt: skip
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return data, flat_lp, flat_ent


INFOS = [
    {},
    {"dp_size": 2, "batch_num_tokens": 97, "global_batch_size": 13, "loss_scale_factor": 16},
    {"dp_size": 1, "batch_num_tokens": torch.tensor(40), "global_batch_size": 6, "loss_scale_factor": None},
]


def test_every_loss_is_registered_with_verls_signature():
    names = set(core_algos.POLICY_LOSS_REGISTRY)
    assert {f"entrolab_{n}" for n in policy_losses()} <= names
    assert ev.registered_names() == [f"entrolab_{n}" for n in policy_losses()]
    want = list(inspect.signature(core_algos.POLICY_LOSS_REGISTRY["vanilla"]).parameters)
    for n in policy_losses():
        fn = core_algos.get_policy_loss_fn(f"entrolab_{n}")
        assert list(inspect.signature(fn).parameters) == want, n
    # the plug-in entry point verl discovers on `import verl`
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="verl.plugins") if e.name == "entrolab"]
    assert eps and eps[0].value == "entrolab.integrations.verl"


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("info", range(len(INFOS)))
@pytest.mark.parametrize(("ours", "theirs", "policy_loss"), [
    ("entrolab_ppo", "vanilla", {}),
    ("entrolab_kl_cov", "kl_cov", {"kl_cov_ratio": 0.2, "ppo_kl_coef": 0.7}),
    ("entrolab_clip_cov", "clip_cov", {"clip_cov_ratio": 1.0, "clip_cov_lb": -0.5, "clip_cov_ub": 0.5}),
    ("entrolab_cispo", "cispo", {}),
    ("entrolab_gspo", "gspo", {}),
])  # fmt: skip
def test_parity_with_verls_losses(mode, info, ours, theirs, policy_loss):
    config = _config(**policy_loss)
    config.global_batch_info.update(INFOS[info])
    results = []
    for name in (ours, theirs):
        old, new, adv, mask = _batch(info)
        torch.manual_seed(0)  # verl's Clip-Cov draws with the global RNG (all candidates selected here anyway)
        loss, metrics = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=config,
            rollout_is_weights=None,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(loss, new)
        results.append((loss.detach(), grad, metrics))
    (l1, g1, m1), (l2, g2, _) = results
    torch.testing.assert_close(l1, l2, rtol=1e-9, atol=1e-7)  # verl's seq-mean-token-mean adds 1e-8 to counts
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-7)
    assert float(l1.abs()) > 0 and float(g1.abs().sum()) > 0
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in m1.values())
    assert float(m1["actor/entrolab/dynamics/cov_mean"]) == pytest.approx(
        float(entropy_dynamics(_batch(info)[0], adv, mask).cov_mean)
    )  # the covariance under the sampling (old) policy
    if theirs == "clip_cov":  # the candidate band selects some tokens, so the comparison covers the detaching
        assert float(m1["actor/entrolab/covclip_frac"]) > 0


def test_rollout_importance_weights_scale_each_token():
    config = _config()
    old, new, adv, mask = _batch(3)
    w = torch.rand(old.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    out = []
    for name in ("entrolab_ppo", "vanilla"):
        loss, _ = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
            config=config, rollout_is_weights=w,
        )  # fmt: skip
        out.append(loss)
    torch.testing.assert_close(out[0], out[1], rtol=1e-10, atol=1e-12)


def test_dp_without_global_normalisers_is_refused_as_verl_does():
    config = _config()
    config.global_batch_info.update({"dp_size": 2})
    old, new, adv, mask = _batch(0)
    for mode, key in (("token-mean", "batch_num_tokens"), ("seq-mean-token-mean", "global_batch_size")):
        with pytest.raises(ValueError, match=key):
            core_algos.get_policy_loss_fn("entrolab_ppo")(
                old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                config=config, rollout_is_weights=None,
            )  # fmt: skip
        with pytest.raises(ValueError):
            core_algos.agg_loss(new, mask, mode, dp_size=2)


def test_hyperparameters_come_from_config_overrides_and_bound_aliases(tmp_path, monkeypatch):
    old, new, adv, mask = _batch(5)
    ent = torch.rand(old.shape, dtype=torch.float64) * 2
    config = _config()
    kw = {"old_log_prob": old, "log_prob": new, "advantages": adv, "response_mask": mask, "config": config,
          "rollout_is_weights": None}  # fmt: skip

    def steer_ref(**hp):
        base = {"eps_low": 0.2, "eps_high": 0.28, "agg": "token-mean", **hp}
        return get_policy_loss("steer")(new, old, adv, mask, entropy=ent, **base).loss

    token = ev._ENTROPY.set(ent)
    try:
        torch.testing.assert_close(core_algos.get_policy_loss_fn("entrolab_steer")(**kw)[0], steer_ref())
        file = tmp_path / "kw.json"
        file.write_text('{"steer": {"mode": "linear", "lambda_min": 0.5}}')
        monkeypatch.setenv("ENTROLAB_VERL_LOSS_KWARGS", str(file))
        ev.register("entrolab_steer_file", "steer")  # the file is read when a loss is built, not per call
        file.write_text('{"steer": {"mode": "linear", "lambda_min": 0.9}}')
        torch.testing.assert_close(
            core_algos.get_policy_loss_fn("entrolab_steer_file")(**kw)[0], steer_ref(mode="linear", lambda_min=0.5)
        )
        monkeypatch.delenv("ENTROLAB_VERL_LOSS_KWARGS")
        ev.register("entrolab_steer_lin", "steer", mode="linear")
        torch.testing.assert_close(
            core_algos.get_policy_loss_fn("entrolab_steer_lin")(**kw)[0], steer_ref(mode="linear")
        )
    finally:
        ev._ENTROPY.reset(token)
    with pytest.raises(ValueError, match="calculate_entropy=true"):
        core_algos.get_policy_loss_fn("entrolab_steer")(**kw)
    with pytest.raises(ValueError, match="has no hyperparameter 'k'"):
        ev.register("entrolab_steer_bad", "steer", k=2)
    with pytest.raises(ValueError, match="verl built-in"):
        ev.register("vanilla", "ppo")
    with pytest.raises(ValueError, match="valid"):
        ev.configure("nope", ratio=1.0)
    (tmp_path / "bad.json").write_text("[1, 2]")
    monkeypatch.setenv("ENTROLAB_VERL_LOSS_KWARGS", str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="ENTROLAB_VERL_LOSS_KWARGS"):
        ev.register("entrolab_ppo_bad_file", "ppo")


def test_entropy_reaches_the_loss_through_verls_actor_loss_function():
    """verl's real ``ppo_loss`` (unpadded model output, TensorDict batch) with ``loss_mode=entrolab_hapo``: after the
    explicit opt-in the hook hands the update's entropy to the loss, whose value equals entrolab's HAPO on the padded
    tensors."""
    from verl.workers.utils import losses as verl_losses

    b, p, t = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    resp_len = torch.tensor([5, 3, 4])
    attn = torch.zeros(b, p + t, dtype=torch.long)
    attn[:, :p] = 1
    for i, n in enumerate(resp_len.tolist()):
        attn[i, p : p + n] = 1
    response_mask = attn[:, p:].clone()
    old = -torch.rand(b, t, generator=g) * 2
    adv = torch.randn(b, 1, generator=g).expand(b, t).clone()
    data, flat_lp, flat_ent = _actor_batch(attn, p, g, old, adv)
    config = _config(calculate_entropy=True, loss_mode="entrolab_hapo")
    unhooked = getattr(verl_losses.ppo_loss, "__wrapped__", verl_losses.ppo_loss)  # another test may have opted in
    with pytest.raises(ValueError, match="verl_entropy"):  # without the opt-in the loss says how to get entropy
        unhooked(config, {"log_probs": flat_lp, "entropy": flat_ent}, data)
    import entrolab.integrations.verl_entropy  # noqa: F401  (the opt-in: wraps verl's actor loss function)

    loss, metrics = verl_losses.ppo_loss(config, {"log_probs": flat_lp, "entropy": flat_ent}, data)
    from verl.workers.utils.padding import no_padding_2_padding

    lp = no_padding_2_padding(flat_lp, data)
    ent = no_padding_2_padding(flat_ent, data)
    ref = get_policy_loss("hapo")(
        lp, old, adv, response_mask.bool(), entropy=ent, eps_low=0.2, eps_high=0.28, agg="token-mean"
    ).loss
    torch.testing.assert_close(loss, ref)
    assert "actor/entrolab/entropy" in metrics or any("entrolab" in k for k in metrics)
    # with the update's entropy handed over, its percentiles join the dynamics metrics
    assert {"actor/entrolab/dynamics/entropy_p10", "actor/entrolab/dynamics/entropy_p90"} <= set(metrics)
    loss.backward()
    assert flat_lp.grad is not None and float(flat_lp.grad.abs().sum()) > 0


@pytest.mark.parametrize("method", ["clip_cov", "steer", "hapo"])
def test_example_launch_overrides_compose_with_verls_config(method, monkeypatch):
    """examples/verl: the overrides compose with verl's own Hydra config into its actor dataclass, select the
    entrolab loss, and that loss runs with the resulting config and the example's hyperparameter file."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    here = Path(__file__).resolve().parents[1] / "examples" / "verl"
    lines = []
    for name in ("common", method):
        lines += [x.strip() for x in (here / f"{name}.overrides").read_text().splitlines() if x.strip()]
    subs = {"${MODEL}": "Qwen/Qwen2.5-7B-Instruct", "${DATA_DIR}": "/data", "${NNODES}": "2"}
    for k, v in subs.items():
        lines = [x.replace(k, v) for x in lines]
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=lines)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == f"entrolab_{method}"
    assert actor.calculate_entropy == (method in ev.NEEDS_ENTROPY)
    monkeypatch.setenv("ENTROLAB_VERL_LOSS_KWARGS", str(here / "entrolab_losses.json"))
    old, new, adv, mask = _batch(7)
    token = ev._ENTROPY.set(torch.rand(old.shape, dtype=torch.float64) + 0.1)
    try:
        loss, metrics = core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode=actor.loss_agg_mode,
            config=actor, rollout_is_weights=None,
        )  # fmt: skip
    finally:
        ev._ENTROPY.reset(token)
    assert torch.isfinite(loss) and metrics
    script = (here / "run.sh").read_text()
    assert "VERL_USE_EXTERNAL_MODULES" in script and "entrolab.integrations.verl" in script
    assert "entrolab.integrations.verl_entropy" in script  # the entropy opt-in for steer and hapo


@pytest.mark.parametrize("name", ["cispo", "gspo", "ppo"])
def test_verls_clip_fields_win_with_verls_fallback_to_clip_ratio(name):
    """With ``clip_ratio_low``/``clip_ratio_high`` unset verl's losses use ``clip_ratio``; so do entrolab's."""
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.3,
                         clip_ratio_low=None, clip_ratio_high=None)  # fmt: skip
    out = []
    for fn in (f"entrolab_{name}", {"ppo": "vanilla"}.get(name, name)):
        old, new, adv, mask = _batch(11)
        loss, _ = core_algos.get_policy_loss_fn(fn)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
            config=config, rollout_is_weights=None,
        )  # fmt: skip
        out.append((loss.detach(), torch.autograd.grad(loss, new)[0]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.29, 0.07])
def test_kl_cov_selects_verls_tokens_on_exact_ties_and_verls_count(ratio):
    """A realistic batch: 13 tokens at log-prob 0 (certain tokens) with equal advantages tie exactly in covariance;
    the selected count is verl's ``int(N * ratio)`` (0.29 x 100 = 28, not 29)."""
    g = torch.Generator().manual_seed(3)
    b, t = 10, 10  # N = 100 valid tokens
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    new = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    new.view(-1)[torch.randperm(b * t, generator=g)[:13]] = 0.0
    new.requires_grad_()
    adv = torch.ones(b, 1, dtype=torch.float64).expand(b, t).clone()
    adv[::2] = -1.0
    mask = torch.ones(b, t, dtype=torch.bool)
    config = _config(kl_cov_ratio=ratio, ppo_kl_coef=1.0)
    out = []
    for fn in ("entrolab_kl_cov", "kl_cov"):
        loss, metrics = core_algos.get_policy_loss_fn(fn)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
            config=config, rollout_is_weights=None,
        )  # fmt: skip
        out.append((loss.detach(), torch.autograd.grad(loss, new)[0], metrics))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-12, atol=1e-12)
    assert float(out[0][2]["actor/entrolab/klcov_frac"]) == pytest.approx(int(100 * ratio) / 100)
    if ratio == 0.1:  # here the tie straddles the cut: the row-major rule (compat="paper") picks other tokens
        paper = get_policy_loss("kl_cov")(new, old, adv, mask, agg="token-mean", ratio=ratio, kl_coef=1.0).loss
        assert float(paper) != pytest.approx(float(out[1][0]), rel=1e-6)


def test_importing_the_plugin_changes_only_verls_registries():
    """In a fresh interpreter with verl's plug-in discovery off: snapshot every attribute of every imported verl
    module, import ``entrolab.integrations.verl``, compare.  Only the two registries may change (gaining entries)."""
    import subprocess
    import sys

    code = r"""
import sys, importlib
import verl, verl.trainer.ppo.core_algos, verl.workers.utils.losses, verl.trainer.ppo.ray_trainer
def snap():
    return {n: {k: id(v) for k, v in vars(m).items()} for n, m in list(sys.modules.items())
            if (n == "verl" or n.startswith("verl.")) and m is not None}
before = snap()
regs = {k: dict(getattr(verl.trainer.ppo.core_algos, k)) for k in ("POLICY_LOSS_REGISTRY", "ADV_ESTIMATOR_REGISTRY")}
import entrolab.integrations.verl
after = snap()
changed = sorted(f"{n}.{k}" for n in before for k in before[n] if after.get(n, {}).get(k) != before[n][k])
assert not changed, changed
for k, old in regs.items():
    new = getattr(verl.trainer.ppo.core_algos, k)
    assert all(new[n] is f for n, f in old.items()), k
    assert len(new) > len(old), k
print("ok", len(before))
"""
    env = {**__import__("os").environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_hapo_advantage_through_verls_own_compute_advantage():
    """``algorithm.adv_estimator=entrolab_hapo`` through verl's ``compute_advantage`` on a ``DataProto`` built as
    verl's trainer builds it (``uid`` groups, token-level rewards at the last valid token)."""
    import numpy as np
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from entrolab.advantages import hapo_token_level_advantages

    g = torch.Generator().manual_seed(4)
    b, t = 8, 6
    mask = torch.ones(b, t, dtype=torch.long)
    lengths = torch.tensor([6, 3, 5, 1, 6, 2, 4, 6])
    for i, n in enumerate(lengths.tolist()):
        mask[i, n:] = 0
    rewards = torch.rand(b, generator=g)
    rewards[4:6] = 1.0  # a mixed group with two equal rewards
    token_rewards = torch.zeros(b, t)
    token_rewards[torch.arange(b), lengths - 1] = rewards
    uid = np.array(["a", "b", "a", "b", "c", "c", "d", "d"], dtype=object)
    data = DataProto.from_dict(tensors={"token_level_rewards": token_rewards, "response_mask": mask},
                               non_tensors={"uid": uid})  # fmt: skip
    out = compute_advantage(data, adv_estimator="entrolab_hapo", config=AlgoConfig())
    want = hapo_token_level_advantages(rewards, mask.bool(), torch.tensor([0, 1, 0, 1, 2, 2, 3, 3]))
    torch.testing.assert_close(out.batch["advantages"], want.unsqueeze(-1) * mask)
    assert float(out.batch["advantages"].abs().sum()) > 0
    with pytest.raises(ValueError, match="uid"):
        core_algos.get_adv_estimator_fn("entrolab_hapo")(token_level_rewards=token_rewards, response_mask=mask)


def test_steer_takes_the_old_log_prob_pass_entropy_when_the_batch_carries_it():
    """verl's v1 trainer writes the old-log-prob pass's ``entropy`` next to ``old_log_probs``; through verl's real
    ``ppo_loss`` (after the opt-in) ``entrolab_steer`` weights with it, not with the update forward's entropy."""
    from verl.workers.utils import losses as verl_losses
    from verl.workers.utils.padding import no_padding_2_padding

    import entrolab.integrations.verl_entropy  # noqa: F401

    b, p, t = 3, 2, 4
    g = torch.Generator().manual_seed(5)
    attn = torch.ones(b, p + t, dtype=torch.long)
    attn[1, p + 2 :] = 0
    response_mask = attn[:, p:].clone()
    old = -torch.rand(b, t, generator=g) * 2
    old_ent = torch.rand(b, t, generator=g) * 2 + 0.1
    adv = torch.randn(b, 1, generator=g).expand(b, t).clone()
    data, flat_lp, flat_ent = _actor_batch(attn, p, g, old, adv, entropy=old_ent)
    config = _config(calculate_entropy=True, loss_mode="entrolab_steer")
    loss, _ = verl_losses.ppo_loss(config, {"log_probs": flat_lp, "entropy": flat_ent}, data)
    lp = no_padding_2_padding(flat_lp, data)
    kw = {"eps_low": 0.2, "eps_high": 0.28, "agg": "token-mean"}
    want = get_policy_loss("steer")(lp, old, adv, response_mask.bool(), entropy=old_ent, **kw).loss
    torch.testing.assert_close(loss, want)
    current = no_padding_2_padding(flat_ent, data)
    other = get_policy_loss("steer")(lp, old, adv, response_mask.bool(), entropy=current, **kw).loss
    assert float(other) != pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize(("advantage", "kwargs"), [("entropy_aware", {"coef": 0.3}), ("empg", {"zeta": 0.2})])
def test_entropy_reshaped_advantages_inside_verls_loss(advantage, kwargs):
    """``register(alias, "ppo", advantage=...)``: through verl's real ``ppo_loss`` the advantages are reshaped with
    the update's token entropy (verl's estimators get none); equal to entrolab's PPO on the method's own output."""
    from verl.workers.utils import losses as verl_losses
    from verl.workers.utils.padding import no_padding_2_padding

    import entrolab.integrations.verl_entropy  # noqa: F401
    from entrolab.advantages import empg_advantages, entropy_aware_advantages

    alias = ev.register(f"entrolab_ppo_{advantage}", "ppo", advantage=advantage, advantage_kwargs=kwargs)
    b, p, t = 4, 2, 5
    g = torch.Generator().manual_seed(6)
    attn = torch.ones(b, p + t, dtype=torch.long)
    attn[1, p + 3 :] = 0
    attn[3, p + 1 :] = 0
    response_mask = attn[:, p:].clone()
    old = -torch.rand(b, t, generator=g) * 2
    seq = torch.randn(b, generator=g)
    adv = seq.unsqueeze(1) * response_mask  # verl broadcasts the sequence advantage over the valid tokens
    data, flat_lp, flat_ent = _actor_batch(attn, p, g, old, adv)
    config = _config(calculate_entropy=True, loss_mode=alias)
    loss, _ = verl_losses.ppo_loss(config, {"log_probs": flat_lp, "entropy": flat_ent}, data)
    lp, ent = no_padding_2_padding(flat_lp, data), no_padding_2_padding(flat_ent, data)
    m = response_mask.bool()
    if advantage == "empg":
        shaped = empg_advantages(ent, m, seq, **kwargs)
    else:
        shaped = entropy_aware_advantages(seq, ent, m, **kwargs)
    want = get_policy_loss("ppo")(lp, old, shaped, m, agg="token-mean", eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    torch.testing.assert_close(loss, want.loss)
    plain = get_policy_loss("ppo")(lp, old, adv, m, agg="token-mean", eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    assert float(plain.loss) != pytest.approx(float(loss), rel=1e-6)
    with pytest.raises(ValueError, match="valid: empg, entropy_aware"):
        ev.register("entrolab_ppo_bad_adv", "ppo", advantage="ettrl")
