"""entrolab's policy losses inside verl (tested with verl 0.9.1).

Importing this module registers every entrolab policy loss (:func:`entrolab.losses.policy_losses`) in verl's
policy-loss registry as ``entrolab_<name>``; select one with
``actor_rollout_ref.actor.policy_loss.loss_mode=entrolab_clip_cov``.  In Ray workers the module is imported by
``import verl`` through the ``verl.plugins`` entry point that ``pip install entrolab[verl]`` declares, or, if plug-in
discovery is off, through ``VERL_USE_EXTERNAL_MODULES=entrolab.integrations.verl`` exported to every worker.

Each registered function has verl's exact keyword signature ``(old_log_prob, log_prob, advantages, response_mask,
loss_agg_mode, config, rollout_is_weights)`` and:

- reads its hyperparameters from the actor config where verl has them (``clip_ratio_low``/``clip_ratio_high`` ->
  ``eps_low``/``eps_high``; ``clip_ratio_c`` -> ``dual_clip`` for ``ppo``, as verl's ``vanilla``;
  ``policy_loss.clip_cov_ratio``/``clip_cov_lb``/``clip_cov_ub`` for ``clip_cov``; ``policy_loss.kl_cov_ratio`` and
  ``ppo_kl_coef`` for ``kl_cov``), then overrides from :func:`configure` or the JSON file named by
  ``ENTROLAB_VERL_LOSS_KWARGS`` (``{"steer": {"mode": "linear"}}``), else entrolab's defaults;
- aggregates with ``config.global_batch_info`` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
  ``loss_scale_factor``) fed to entrolab's aggregation, which then equals verl's ``agg_loss`` (tested), so the loss
  stays correct under any split into micro-batches and data-parallel ranks;
- multiplies the per-token loss by ``rollout_is_weights`` (``token_weights``);
- returns ``(loss, metrics)`` with detached 0-d tensors under ``actor/entrolab/<name>`` (verl's ``Metric`` converts
  them; no host sync here).

Losses that need the **current token entropy** (``steer``, ``hapo``, ``entropy_balanced``, ``high_entropy_tokens``)
get it from verl's update forward: set ``actor_rollout_ref.actor.calculate_entropy=true``.  verl hands entropy only
to its own bonus code, so importing this module also wraps ``verl.workers.utils.losses.ppo_loss`` (the actor's loss
function) with a transparent layer that makes the entropy visible to the entrolab losses of that call; nothing else
changes (:func:`install_entropy_hook`).  STEER then weights with the current policy's entropy, equal to the old
policy's on the first mini-batch of a step and an approximation on later ones (``shared/specs/integrations.md`` 1.5).

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

from entrolab.losses import AGG_MODES, Aggregation, get_policy_loss, policy_losses

try:
    from verl.trainer.ppo import core_algos as _core_algos
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "entrolab.integrations.verl needs verl (pip install 'entrolab[verl]', tested with verl 0.9.1)"
    ) from exc

__all__ = [
    "NEEDS_ENTROPY",
    "PREFIX",
    "configure",
    "install_entropy_hook",
    "register",
    "registered_names",
    "verl_aggregation",
]

PREFIX = "entrolab_"
NEEDS_ENTROPY = frozenset({"steer", "hapo", "entropy_balanced", "high_entropy_tokens"})
"""entrolab losses that need the current token entropy (``calculate_entropy=true`` in verl)."""

_ENTROPY: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("entrolab_verl_entropy", default=None)
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
    """The hyperparameters verl's actor config carries for ``name``."""
    out: dict[str, Any] = {}
    clip = _get(config, "clip_ratio", 0.2)
    if "eps_low" in params and (name != "gspo" or config is not None):
        # verl configures GSPO's (tiny) clip ratios with the same fields; unset, GSPO keeps entrolab's defaults
        low = params["eps_low"].default if name == "gspo" else clip
        high = params["eps_high"].default if name == "gspo" else clip
        out["eps_low"] = float(_get(config, "clip_ratio_low", low))
        out["eps_high"] = float(_get(config, "clip_ratio_high", high))
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


def _make(name: str, bound: Mapping[str, Any] | None = None, label: str | None = None) -> Callable[..., Any]:
    fn = get_policy_loss(name)
    params = inspect.signature(fn).parameters
    label = label or PREFIX + name

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
        kwargs.update(_env_overrides().get(name, {}))
        kwargs.update(_OVERRIDES.get(name, {}))
        kwargs.update(bound or {})
        entropy = _ENTROPY.get()
        if name in NEEDS_ENTROPY and entropy is None:
            raise ValueError(
                f"{label} needs the current token entropy: set actor_rollout_ref.actor.calculate_entropy=true (and "
                "keep entrolab's entropy hook installed: it is installed by importing entrolab.integrations.verl)"
            )
        if entropy is not None and entropy.shape != log_prob.shape:
            raise ValueError(
                f"{label}: the update's entropy has shape {tuple(entropy.shape)}, log_prob {tuple(log_prob.shape)}"
            )
        mask = response_mask.to(torch.bool)
        agg = verl_aggregation(loss_agg_mode, _get(config, "global_batch_info", None), mask)
        out = fn(
            log_prob, old_log_prob, advantages, mask, entropy=entropy, agg=agg,
            token_weights=rollout_is_weights, **kwargs,
        )  # fmt: skip
        metrics = {f"actor/entrolab/{k}": v.detach() for k, v in out.metrics.items()}
        return out.loss, metrics

    loss.__name__ = label
    loss.__qualname__ = label
    loss.__doc__ = f"entrolab's ``{name}`` policy loss with verl's signature (see :mod:`entrolab.integrations.verl`)."
    return loss


def register(alias: str, base: str, **hyperparameters: Any) -> str:
    """Register entrolab's ``base`` loss in verl as ``alias`` with ``hyperparameters`` bound (they win over the
    config); returns the alias.  verl's registry overwrites silently, so an alias clashing with a verl built-in name
    is refused."""
    _check_kwargs(base, hyperparameters)
    if not isinstance(alias, str) or not alias:
        raise ValueError(f"alias must be a non-empty string, got {alias!r}")
    existing = _core_algos.POLICY_LOSS_REGISTRY.get(alias)
    if existing is not None and not getattr(existing, "_entrolab", False):
        raise ValueError(f"{alias!r} is a verl built-in policy loss; choose another name")
    fn = _make(base, hyperparameters, alias)
    fn._entrolab = True  # type: ignore[attr-defined]
    _core_algos.register_policy_loss(alias)(fn)
    return alias


def registered_names() -> list[str]:
    """The verl loss names this module registered (``entrolab_<name>`` for every entrolab loss)."""
    return [PREFIX + n for n in policy_losses()]


def _padded(t: Tensor, data: Any) -> Tensor:
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(t, data)


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
        try:
            return original(config, model_output, data, dp_group)
        finally:
            _ENTROPY.reset(token)

    ppo_loss._entrolab_hook = True  # type: ignore[attr-defined]
    setattr(verl_losses, "ppo_loss", ppo_loss)  # noqa: B010
    for module_name in ("verl.workers.engine_workers", "verl.trainer.distillation.losses"):
        module = sys.modules.get(module_name)  # modules imported before us bound the original name
        if module is not None and getattr(module, "ppo_loss", None) is original:
            setattr(module, "ppo_loss", ppo_loss)  # noqa: B010
    return True


def _register_all() -> None:
    for name in policy_losses():
        fn = _make(name)
        fn._entrolab = True  # type: ignore[attr-defined]
        _core_algos.register_policy_loss(PREFIX + name)(fn)


_register_all()
install_entropy_hook()
