"""entrolab's policy losses and advantage estimators inside verl (tested with verl 0.9.1).

Importing this module registers, and changes nothing else in verl (tested attribute by attribute):

- every entrolab policy loss (:func:`entrolab.losses.policy_losses`) in verl's policy-loss registry as
  ``entrolab_<name>``; select one with ``actor_rollout_ref.actor.policy_loss.loss_mode=entrolab_clip_cov``;
- the advantage estimators in :data:`ADVANTAGE_ESTIMATORS` in verl's advantage registry (``entrolab_hapo``: HAPO's
  token-level group advantage); select with ``algorithm.adv_estimator=entrolab_hapo``.

In Ray workers the module is imported by ``import verl`` through the ``verl.plugins`` entry point that ``pip install
entrolab[verl]`` declares, or, if plug-in discovery is off, through ``VERL_USE_EXTERNAL_MODULES=
entrolab.integrations.verl`` exported to every worker.

Each registered loss has verl's exact keyword signature ``(old_log_prob, log_prob, advantages, response_mask,
loss_agg_mode, config, rollout_is_weights)`` and:

- reads its hyperparameters from the actor config where verl has a field with the same meaning, as verl's own loss
  for the method reads it: ``clip_ratio_low``/``clip_ratio_high`` (each falling back to ``clip_ratio``) ->
  ``eps_low``/``eps_high`` for every clipped loss including ``gspo``, and ``ratio_min = 1 - low``, ``ratio_max = 1 +
  high`` for ``cispo``; ``clip_ratio_c`` -> ``dual_clip`` for ``ppo`` (verl's ``vanilla``);
  ``policy_loss.clip_cov_ratio``/``clip_cov_lb``/``clip_cov_ub`` for ``clip_cov``; ``policy_loss.kl_cov_ratio`` and
  ``ppo_kl_coef`` for ``kl_cov``, whose selection is verl's (``compat="code"``: its ``torch.topk``, ties included).
  Then the overrides: the JSON file named by ``ENTROLAB_VERL_LOSS_KWARGS`` (``{"steer": {"mode": "linear"}}``,
  read once when the loss is built, i.e. at import), :func:`configure`, and :func:`register`'s bound values;
- aggregates with ``config.global_batch_info`` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
  ``loss_scale_factor``) fed to entrolab's aggregation, which then equals verl's ``agg_loss`` (tested), so the loss
  stays correct under any split into micro-batches and data-parallel ranks;
- multiplies the per-token loss by ``rollout_is_weights`` (``token_weights``);
- returns ``(loss, metrics)`` with detached 0-d tensors under ``actor/entrolab/<name>`` (verl's ``Metric`` converts
  them; no host sync here), plus the entropy dynamics of :func:`entrolab.dynamics.dynamics_metrics` under
  ``actor/entrolab/dynamics/<name>`` (``Cov(log pi, A)`` statistics under the old policy, the first-order predicted
  entropy change, and entropy percentiles when the update's entropy is handed over), per micro-batch, which verl
  averages.

Losses that need the **current token entropy** (``steer``, ``hapo``, ``entropy_balanced``, ``high_entropy_tokens``)
need ``actor_rollout_ref.actor.calculate_entropy=true``, and an explicit opt-in: verl 0.9.1 hands the update's
entropy only to its own bonus code, so :func:`install_entropy_hook` (or importing
:mod:`entrolab.integrations.verl_entropy`, e.g. ``VERL_USE_EXTERNAL_MODULES=entrolab.integrations.verl_entropy``)
wraps verl's actor loss function with a layer that makes the entropy visible to the entrolab losses of that call.
Without it those losses raise a ``ValueError`` saying so.  STEER weights with the old policy's entropy when the
update batch carries the old-log-prob pass's ``entropy`` column (verl's v1 trainer writes it next to
``old_log_probs``); otherwise with the current policy's, equal to the old one on the first mini-batch of a step and
an approximation on later ones (``shared/specs/integrations.md`` 1.5).

``register(alias, base, **hyperparameters)`` registers a loss with its hyperparameters bound (the route the spec
recommends for presets, e.g. ``entrolab_steer_linear``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from entrolab.advantages import token_advantage_transform
from entrolab.dynamics import dynamics_metrics
from entrolab.losses import AGG_MODES, OLD_ENTROPY_LOSSES, Aggregation, get_policy_loss, policy_losses

try:
    from verl.trainer.ppo import core_algos as _core_algos
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "entrolab.integrations.verl needs verl (pip install 'entrolab[verl]', tested with verl 0.9.1)"
    ) from exc

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "NEEDS_ENTROPY",
    "PREFIX",
    "configure",
    "hapo_advantage",
    "install_entropy_hook",
    "register",
    "registered_names",
    "verl_aggregation",
]

PREFIX = "entrolab_"
NEEDS_ENTROPY = frozenset({"steer", "hapo", "entropy_balanced", "high_entropy_tokens"})
"""entrolab losses that need the current token entropy (``calculate_entropy=true`` in verl)."""

_ENTROPY: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("entrolab_verl_entropy", default=None)
_OLD_ENTROPY: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("entrolab_verl_old_entropy", default=None)
_OVERRIDES: dict[str, dict[str, Any]] = {}
_ENV = "ENTROLAB_VERL_LOSS_KWARGS"


def configure(name: str, **hyperparameters: Any) -> None:
    """Override hyperparameters of ``entrolab_<name>`` in this process (e.g. ``configure("steer", mode="linear")``);
    unknown names and hyperparameters raise ``ValueError``.  For Ray workers use ``ENTROLAB_VERL_LOSS_KWARGS`` or
    :func:`register`, which run wherever the module is imported."""
    _check_kwargs(name, hyperparameters)
    _OVERRIDES.setdefault(name, {}).update(hyperparameters)


def _check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(get_policy_loss(name)).parameters  # unknown name -> ValueError listing the valid ones
    reserved = {"logp", "old_logp", "advantages", "mask", "entropy", "agg", "generator", "token_weights"}
    for key in kwargs:
        if key not in params or key in reserved:
            valid = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in reserved)
            raise ValueError(f"entrolab loss {name!r} has no hyperparameter {key!r}; valid: {', '.join(valid)}")


def _env_overrides() -> dict[str, dict[str, Any]]:
    path = os.environ.get(_ENV)
    if not path:
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{_ENV}={path!r}: cannot read a JSON object of per-loss hyperparameters ({exc})") from exc
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f'{_ENV}={path!r} must hold {{"<loss>": {{"<hyperparameter>": value}}}}, got {table!r}')
    for name, kwargs in table.items():
        _check_kwargs(name, kwargs)
    return table


def _get(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    getter = getattr(config, "get", None)
    value = getter(key, default) if callable(getter) else getattr(config, key, default)
    return default if value is None else value


def _from_config(name: str, config: Any, params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """The hyperparameters verl's actor config carries for ``name``, mapped as verl's own loss of the same method
    reads them (``clip_ratio_low``/``clip_ratio_high``, each falling back to ``clip_ratio`` as in verl)."""
    out: dict[str, Any] = {}
    if config is None:
        return out
    clip = _get(config, "clip_ratio", 0.2)
    low = float(_get(config, "clip_ratio_low", clip))
    high = float(_get(config, "clip_ratio_high", clip))
    if "eps_low" in params:  # ppo, gspo and the PPO-based losses: verl's clip bounds
        out["eps_low"], out["eps_high"] = low, high
    if name == "cispo":  # verl's compute_policy_loss_cispo clamps the weight to [1 - low, 1 + high]
        out["ratio_min"], out["ratio_max"] = 1.0 - low, 1.0 + high
    if name == "ppo":  # verl's vanilla loss always applies dual-clip with clip_ratio_c
        out["dual_clip"] = float(_get(config, "clip_ratio_c", 3.0))
    pl = _get(config, "policy_loss")
    if name == "clip_cov":
        out["ratio"] = float(_get(pl, "clip_cov_ratio", 2e-4))
        out["cov_lb"] = float(_get(pl, "clip_cov_lb", 1.0))
        out["cov_ub"] = float(_get(pl, "clip_cov_ub", 5.0))
    if name == "kl_cov":
        out["ratio"] = float(_get(pl, "kl_cov_ratio", 2e-4))
        out["kl_coef"] = float(_get(pl, "ppo_kl_coef", 1.0))
        out["compat"] = "code"  # verl's top-k, ties included
    return out


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def verl_aggregation(loss_agg_mode: str, global_batch_info: Mapping[str, Any] | None, mask: Tensor) -> Aggregation:
    """entrolab's :class:`~entrolab.losses.Aggregation` equal to verl's ``agg_loss(..., **global_batch_info)``.

    Like verl, ``token-mean`` and the ``seq-mean-*`` modes refuse ``dp_size > 1`` without their global normaliser,
    and ``seq-mean-token-sum-norm`` divides by ``loss_scale_factor`` or, when it is unset, the padded length
    ``mask.shape[-1]`` (set ``actor.loss_scale_factor`` to your maximum response length so it does not vary).
    Departure: an all-masked micro-batch without global normalisers gives 0, where verl's 0/0 gives NaN.
    """
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(AGG_MODES)}; got {loss_agg_mode!r}")
    info = dict(global_batch_info or {})
    dp = int(_number(info.get("dp_size")) or 1)
    tokens = _number(info.get("batch_num_tokens"))
    seqs = _number(info.get("global_batch_size"))
    if loss_agg_mode == "token-mean" and tokens is None and dp > 1:
        raise ValueError("loss_agg_mode 'token-mean' with dp_size > 1 needs global_batch_info['batch_num_tokens']")
    if loss_agg_mode.startswith("seq-mean") and seqs is None and dp > 1:
        raise ValueError(
            f"loss_agg_mode {loss_agg_mode!r} with dp_size > 1 needs global_batch_info['global_batch_size']"
        )
    k = None
    if loss_agg_mode == "seq-mean-token-sum-norm":
        k = _number(info.get("loss_scale_factor")) or float(mask.shape[-1])
    return Aggregation(
        loss_agg_mode,
        num_tokens=tokens if loss_agg_mode == "token-mean" else None,
        num_sequences=seqs if loss_agg_mode.startswith("seq-mean") else None,
        max_length=k,
        dp_size=dp,
    )


def _make(
    name: str,
    bound: Mapping[str, Any] | None = None,
    label: str | None = None,
    advantage: Callable[..., Tensor] | None = None,
) -> Callable[..., Any]:
    fn = get_policy_loss(name)
    params = inspect.signature(fn).parameters
    label = label or PREFIX + name
    from_file = _env_overrides().get(name, {})  # read once, when the loss is built

    def loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        kwargs = _from_config(name, config, params)
        kwargs.update(from_file)
        kwargs.update(_OVERRIDES.get(name, {}))
        kwargs.update(bound or {})
        entropy = _ENTROPY.get()
        if (name in NEEDS_ENTROPY or advantage is not None) and entropy is None:
            raise ValueError(
                f"{label} needs the current token entropy: set actor_rollout_ref.actor.calculate_entropy=true and "
                "opt in to entrolab's entropy channel in every worker (VERL_USE_EXTERNAL_MODULES="
                "entrolab.integrations.verl_entropy, or call entrolab.integrations.verl.install_entropy_hook())"
            )
        if entropy is not None and entropy.shape != log_prob.shape:
            raise ValueError(
                f"{label}: the update's entropy has shape {tuple(entropy.shape)}, log_prob {tuple(log_prob.shape)}"
            )
        old_entropy = _OLD_ENTROPY.get()
        if old_entropy is not None and old_entropy.shape != log_prob.shape:
            old_entropy = None
        mask = response_mask.to(torch.bool)
        if advantage is not None:  # EMPG / AEPO-EB on this micro-batch, from the sequence advantage verl broadcast
            assert entropy is not None
            seq = (advantages * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # (B,)
            rollout_entropy = (old_entropy if old_entropy is not None else entropy).detach()
            advantages = advantage(seq, entropy=rollout_entropy, mask=mask)
        if name in OLD_ENTROPY_LOSSES and old_entropy is not None:
            entropy = old_entropy  # STEER: the old-log-prob pass's entropy, as the paper defines Omega
        agg = verl_aggregation(loss_agg_mode, _get(config, "global_batch_info", None), mask)
        out = fn(
            log_prob, old_log_prob, advantages, mask, entropy=entropy, agg=agg,
            token_weights=rollout_is_weights, **kwargs,
        )  # fmt: skip
        metrics = {f"actor/entrolab/{k}": v.detach() for k, v in out.metrics.items()}
        dynamics = dynamics_metrics(old_log_prob, advantages, mask, entropy=entropy)  # the sampling policy's
        metrics.update({f"actor/entrolab/dynamics/{k}": v for k, v in dynamics.items() if k != "entropy"})
        return out.loss, metrics

    loss.__name__ = label
    loss.__qualname__ = label
    loss.__doc__ = f"entrolab's ``{name}`` policy loss with verl's signature (see :mod:`entrolab.integrations.verl`)."
    return loss


def register(
    alias: str,
    base: str,
    *,
    advantage: str | None = None,
    advantage_kwargs: Mapping[str, Any] | None = None,
    **hyperparameters: Any,
) -> str:
    """Register entrolab's ``base`` loss in verl as ``alias`` with ``hyperparameters`` bound (they win over the
    config); returns the alias.  verl's registry overwrites silently, so an alias clashing with a verl built-in name
    is refused.

    ``advantage`` (``"empg"`` or ``"entropy_aware"``, :data:`entrolab.advantages.TOKEN_ADVANTAGES`) reshapes the
    advantages inside the loss with the token entropy, on each actor micro-batch: verl 0.9.1's advantage
    estimators receive no entropy, its loss does (with the entropy opt-in).  The sequence advantage is the mean of
    verl's token advantages over each response; the entropy is the old-log-prob pass's when the batch carries it,
    else the update forward's; batch statistics (EMPG's entropy range, AEPO-EB's z-score) are per micro-batch.
    """
    _check_kwargs(base, hyperparameters)
    transform = None
    if advantage is not None:
        transform = token_advantage_transform(advantage, **dict(advantage_kwargs or {}))
    elif advantage_kwargs:
        raise ValueError("advantage_kwargs given without advantage=")
    if not isinstance(alias, str) or not alias:
        raise ValueError(f"alias must be a non-empty string, got {alias!r}")
    existing = _core_algos.POLICY_LOSS_REGISTRY.get(alias)
    if existing is not None and not getattr(existing, "_entrolab", False):
        raise ValueError(f"{alias!r} is a verl built-in policy loss; choose another name")
    fn = _make(base, hyperparameters, alias, transform)
    fn._entrolab = True  # type: ignore[attr-defined]
    _core_algos.register_policy_loss(alias)(fn)
    return alias


def registered_names() -> list[str]:
    """The verl loss names this module registered (``entrolab_<name>`` for every entrolab loss)."""
    return [PREFIX + n for n in policy_losses()]


def _padded(t: Tensor, data: Any) -> Tensor:
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(t, data)


def _old_entropy(data: Any) -> Tensor | None:
    """The old-log-prob pass's token entropy, ``(B, T)`` padded like ``old_log_probs``, when the update batch
    carries verl's ``entropy`` column (verl's v1 trainer writes it next to ``old_log_probs``), else ``None``."""
    keys = data.keys() if hasattr(data, "keys") else ()
    if "entropy" not in keys:
        return None
    return data.select("entropy").to_padded_tensor()["entropy"]


def install_entropy_hook() -> bool:
    """Wrap verl's actor loss function (``verl.workers.utils.losses.ppo_loss``) so that the entrolab losses it calls
    see the update forward's token entropy (``model_output["entropy"]``, present with ``calculate_entropy=true``).
    The wrapper only sets a context variable around the original call.  Idempotent; ``False`` when verl's loss module
    cannot be imported (then only the losses that need no entropy work)."""
    try:
        from verl.workers.utils import losses as verl_losses
    except Exception:  # pragma: no cover - a verl without the engine path
        return False
    original: Any = verl_losses.ppo_loss
    if getattr(original, "_entrolab_hook", False):
        return True

    @functools.wraps(original)
    def ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> Any:
        entropy = model_output.get("entropy", None) if hasattr(model_output, "get") else None
        token = _ENTROPY.set(_padded(entropy, data) if entropy is not None else None)
        old_token = _OLD_ENTROPY.set(_old_entropy(data))
        try:
            return original(config, model_output, data, dp_group)
        finally:
            _ENTROPY.reset(token)
            _OLD_ENTROPY.reset(old_token)

    ppo_loss._entrolab_hook = True  # type: ignore[attr-defined]
    setattr(verl_losses, "ppo_loss", ppo_loss)  # noqa: B010
    for module_name in ("verl.workers.engine_workers", "verl.trainer.distillation.losses"):
        module = sys.modules.get(module_name)  # modules imported before us bound the original name
        if module is not None and getattr(module, "ppo_loss", None) is original:
            setattr(module, "ppo_loss", ppo_loss)  # noqa: B010
    return True


def hapo_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Any = None,
    config: Any = None,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """verl advantage estimator ``entrolab_hapo``: HAPO's token-level group advantage
    (:func:`entrolab.advantages.hapo_token_level_advantages`) with verl's estimator signature.

    The response reward is ``token_level_rewards.sum(-1)``; groups are verl's ``uid`` index.  Returns
    ``(advantages, returns)``, both ``(B, T)``, the advantage broadcast over the valid tokens (0 on padding), as verl's
    GRPO does.  ``config.hapo_fallback_threshold`` (default 5) sets the fallback to GRPO's advantage.
    """
    from entrolab.advantages import hapo_token_level_advantages

    if index is None:
        raise ValueError("entrolab_hapo needs verl's group index (the batch's 'uid' column)")
    group_ids = _group_ids(index)
    rewards = token_level_rewards.sum(-1)  # (B,)
    threshold = float(_get(config, "hapo_fallback_threshold", 5.0))
    adv = hapo_token_level_advantages(
        rewards, response_mask.bool(), torch.as_tensor(group_ids, device=rewards.device), fallback_threshold=threshold
    )  # (B,)
    out = adv.unsqueeze(-1) * response_mask
    return out, out


def _group_ids(index: Any) -> list[int]:
    """verl's per-response group keys (any hashable, e.g. uid strings) as consecutive integers."""
    keys: dict[Any, int] = {}
    return [keys.setdefault(k, len(keys)) for k in list(index)]


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {PREFIX + "hapo": hapo_advantage}
"""The advantage estimators registered in verl's ``ADV_ESTIMATOR_REGISTRY`` (``algorithm.adv_estimator=...``)."""


def _register_all() -> None:
    for name in policy_losses():
        fn = _make(name)
        fn._entrolab = True  # type: ignore[attr-defined]
        _core_algos.register_policy_loss(PREFIX + name)(fn)
    for name, est in ADVANTAGE_ESTIMATORS.items():
        if _core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not est:
            _core_algos.register_adv_est(name)(est)


_register_all()
