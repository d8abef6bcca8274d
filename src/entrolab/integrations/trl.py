"""``EntropyGRPOTrainer``: TRL's ``GRPOTrainer`` with any entrolab policy loss (tested with TRL 1.16).

::

    from entrolab.integrations.trl import EntropyGRPOTrainer

    trainer = EntropyGRPOTrainer(
        model, reward_funcs=reward, args=GRPOConfig(loss_type="dapo", epsilon_high=0.28, ...),
        train_dataset=data, processing_class=tokenizer,
        policy_loss="clip_cov", loss_kwargs={"ratio": 2e-4},
    )
    trainer.train()

Everything TRL does around the loss stays TRL's: generation (transformers or vLLM), rewards, group advantages,
accumulation, accelerate/DeepSpeed/FSDP, checkpoints, logging.  The trainer overrides one public method,
``compute_loss`` (the documented ``transformers.Trainer`` hook):

- **Log-probs and entropy** come from TRL's own fused LM head (``trl.trainer.add_fused_lm_head``, which
  ``GRPOTrainer`` installs with ``outputs=("log_probs", "entropy")``), called through the model's forward as its
  docstring documents (``model(..., labels=labels, fused_lm_head=True)``), so DDP and FSDP see a normal forward
  and a ``ModelOutput``; multimodal and MoE-aux batches go through TRL's per-chunk helper.  Old and reference
  log-probs are TRL's, from the same head, so the ratio is exactly 1 on-policy.
- **The policy loss** is ``get_policy_loss(policy_loss)`` with ``loss_kwargs``; ``eps_low``/``eps_high`` default to
  TRL's ``epsilon``/``epsilon_high`` when the loss has them.  ``global_stats=True`` reduces over the process group
  accelerate initialised (every rank must call the loss, as DDP already requires).
- **Aggregation keeps TRL's semantics for each** ``loss_type`` (tested against TRL's ``_compute_loss``):
  ``grpo`` per-sequence token mean, ``bnpo`` local token mean, ``dr_grpo`` token sum over ``B x
  max_completion_length``, ``dapo`` token sum over the generation batch's tokens per process and accumulation
  window, ``luspo`` per-sequence token sum; each scaled for gradient accumulation as TRL does.  TRL's own loss forms
  (``cispo``, ``sapo``, ``vespo``) are refused: choose ``policy_loss="cispo"`` etc. instead.
- TRL's ``beta`` (k3 KL to the reference, times the ratio under ``use_bias_correction_kl``),
  ``top_entropy_quantile`` (the 80/20 mask, as token weights), vLLM importance-sampling correction,
  ``entropy_coef`` and the adaptive entropy controller (``use_adaptive_entropy``:
  :class:`entrolab.control.AdaptiveEntropyCoefficient`, whose state is kept in TRL's own fields so TRL's
  checkpoints carry it) work as in TRL.  ``regularizers`` add more terms; ``advantage="empg"`` or
  ``"entropy_aware"`` (or your own ``advantage_transform``) reshapes TRL's advantages per token with the entropy.
- **Metrics**: the ones TRL logs, under TRL's names (``entropy``, ``kl``, ``policy_loss`` and ``entropy_coef`` with
  an entropy bonus, ``clip_ratio/*`` for TRL's epsilon regions, ``aux_loss``), plus every loss metric under
  ``entrolab/<name>`` and the entropy dynamics of :func:`entrolab.dynamics.dynamics_metrics` under
  ``entrolab/dynamics/<name>`` (entropy percentiles, ``Cov(log pi, A)`` statistics under the sampling policy, the
  first-order predicted entropy change); each a mean over processes, all gathered in one transfer per call.

Tested with TRL 1.16 (``pyproject.toml`` pins the range), in one process and under DDP with 2 processes.
Refused with a clear error: ``delta``, ``off_policy_mask_threshold`` and ``importance_sampling_level="sequence"``
(use ``policy_loss="gspo"``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab.advantages import token_advantage_transform
from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.dynamics import dynamics_metrics
from entrolab.losses import OLD_ENTROPY_LOSSES, Aggregation, aggregate, entropy_bonus, get_policy_loss, kl_estimate

try:
    from trl import GRPOTrainer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "entrolab.integrations.trl needs TRL (pip install 'entrolab[trl]', tested with TRL 1.16)"
    ) from exc

__all__ = ["AGGREGATING_LOSS_TYPES", "EntropyGRPOTrainer", "Regularizer", "trl_aggregation"]

AGGREGATING_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
"""TRL ``loss_type`` values whose only role here is the aggregation (their per-token loss is the clipped surrogate,
which ``policy_loss`` replaces)."""

Regularizer = Callable[..., LossOutput]
"""``fn(*, logp, entropy, mask, agg) -> LossOutput``: an extra loss term (``(B, T)`` tensors, ``agg`` the step's
:class:`~entrolab.losses.Aggregation`), e.g. ``lambda **kw: entrolab.losses.entropy_bonus(kw["entropy"],
kw["mask"], coef=1e-3, agg=kw["agg"])``."""


def trl_aggregation(
    loss_type: str,
    mask: Tensor,
    *,
    accumulation: float,
    max_completion_length: int,
    num_items_in_batch: Tensor | float | None = None,
    num_processes: int = 1,
    steps_per_generation: int = 1,
) -> Aggregation:
    """The :class:`~entrolab.losses.Aggregation` equal to TRL 1.16's normalisation for ``loss_type``, including the
    division by the gradient-accumulation steps (``accumulation``; 1 in eval).

    Shapes: ``mask`` ``(B, T)``.
    """
    b = mask.shape[0]
    if loss_type == "grpo":  # mean over all B rows of the per-row token means (an empty row counts as 0)
        return Aggregation("seq-mean-token-mean", num_sequences=b * accumulation)
    if loss_type == "bnpo":
        return Aggregation("token-mean", num_tokens=max(float(mask.sum()), 1.0) * accumulation)
    if loss_type == "dr_grpo":
        return Aggregation("seq-mean-token-sum-norm", num_sequences=b * accumulation, max_length=max_completion_length)
    if loss_type == "luspo":
        return Aggregation("seq-mean-token-sum", num_sequences=b * accumulation)
    if loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError("loss_type 'dapo' needs inputs['num_items_in_batch']")
        n = max(1.0, float(num_items_in_batch))
        return Aggregation("token-mean", num_tokens=n / num_processes * accumulation / steps_per_generation)
    raise ValueError(
        f"loss_type {loss_type!r} is a TRL loss form, not an aggregation; with EntropyGRPOTrainer choose the loss with "
        f"policy_loss= and one of {', '.join(AGGREGATING_LOSS_TYPES)} for the aggregation"
    )


class EntropyGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose policy loss is any registered entrolab loss (see the module docstring).

    Parameters
    ----------
    *args, **kwargs
        ``GRPOTrainer``'s (model, reward_funcs, args, train_dataset, processing_class, ...).
    policy_loss : str
        A name from :func:`entrolab.losses.policy_losses` (default ``"ppo"``, which with TRL's epsilons reproduces
        TRL's clipped surrogate).
    loss_kwargs : mapping, optional
        The loss's hyperparameters; unknown ones raise ``ValueError`` naming the valid ones.  ``global_stats=True``
        reduces over accelerate's process group (a no-op in a single process).
    regularizers : sequence of callables, optional
        Extra terms, :data:`Regularizer`.
    advantage : str, optional
        An entropy-reshaped token advantage from :data:`entrolab.advantages.TOKEN_ADVANTAGES` (``"empg"``,
        ``"entropy_aware"``) applied to TRL's group advantages on each micro-batch, with ``advantage_kwargs``.  Its
        batch statistics (EMPG's entropy range and final mean, AEPO-EB's z-score) are over the micro-batch TRL
        hands to the loss (shuffled, one of ``steps_per_generation``), not the whole generation batch.
    advantage_kwargs : mapping, optional
        The method's hyperparameters; unknown ones raise ``ValueError``.
    advantage_transform : callable, optional
        ``fn(advantages, *, entropy, mask, inputs) -> Tensor``: your own map from TRL's ``(B,)`` advantages to
        ``(B,)`` or ``(B, T)`` ones (``entropy`` detached, ``(B, T)``); exclusive with ``advantage``.
    """

    def __init__(
        self,
        *args: Any,
        policy_loss: str = "ppo",
        loss_kwargs: Mapping[str, Any] | None = None,
        regularizers: Sequence[Regularizer] = (),
        advantage: str | None = None,
        advantage_kwargs: Mapping[str, Any] | None = None,
        advantage_transform: Callable[..., Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        self.policy_loss_fn = get_policy_loss(policy_loss)
        self.policy_loss = policy_loss
        params = inspect.signature(self.policy_loss_fn).parameters
        reserved = {"logp", "old_logp", "advantages", "mask", "entropy", "agg", "generator", "token_weights",
                    "process_group"}  # fmt: skip
        loss_kwargs = dict(loss_kwargs or {})
        for key in loss_kwargs:
            if key not in params or key in reserved:
                valid = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in reserved)
                raise ValueError(
                    f"policy loss {policy_loss!r} has no hyperparameter {key!r}; valid: {', '.join(valid)}"
                )
        if not all(callable(r) for r in regularizers):
            raise TypeError("regularizers must be callables fn(*, logp, entropy, mask, agg) -> LossOutput")
        if advantage_transform is not None and not callable(advantage_transform):
            raise TypeError(f"advantage_transform must be callable, got {advantage_transform!r}")
        if advantage is not None:
            if advantage_transform is not None:
                raise ValueError("pass either advantage= or advantage_transform=, not both")
            advantage_transform = token_advantage_transform(advantage, **dict(advantage_kwargs or {}))
        elif advantage_kwargs:
            raise ValueError("advantage_kwargs given without advantage=")
        super().__init__(*args, **kwargs)
        a: Any = self.args
        if self.loss_type not in AGGREGATING_LOSS_TYPES:
            trl_aggregation(self.loss_type, torch.zeros(1, 1), accumulation=1, max_completion_length=1)  # raises
        for name, bad in (
            ("delta", a.delta is not None),
            ("off_policy_mask_threshold", getattr(a, "off_policy_mask_threshold", None) is not None),
            (
                "importance_sampling_level='sequence' (use policy_loss='gspo')",
                self.importance_sampling_level != "token",
            ),
        ):
            if bad:
                raise ValueError(f"EntropyGRPOTrainer does not support GRPOConfig {name}")
        if "eps_low" in params and "eps_low" not in loss_kwargs and policy_loss != "gspo":
            loss_kwargs["eps_low"] = self.epsilon_low
        if "eps_high" in params and "eps_high" not in loss_kwargs and policy_loss != "gspo":
            loss_kwargs["eps_high"] = self.epsilon_high
        if loss_kwargs.get("global_stats") and self.accelerator.num_processes == 1:
            loss_kwargs["global_stats"] = False  # one process holds the whole batch: local statistics are global
        self.loss_kwargs = loss_kwargs
        self.regularizers = tuple(regularizers)
        self.advantage_transform = advantage_transform
        self._loss_generator = torch.Generator().manual_seed(int(a.seed) + 7919 * self.accelerator.process_index)
        if policy_loss in OLD_ENTROPY_LOSSES and a.steps_per_generation > a.gradient_accumulation_steps:
            warnings.warn(
                f"policy_loss={policy_loss!r} weights with the old policy's entropy, recorded on the first pass over "
                f"each micro-batch; with steps_per_generation ({a.steps_per_generation}) > "
                f"gradient_accumulation_steps ({a.gradient_accumulation_steps}) later micro-batches are first seen "
                "after an optimizer step, so their 'old' entropy is one or more updates newer",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------------ log-probs
    def _logps_and_entropy(self, model: Any, inputs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per-token log-probs and entropies of the completion, ``(B, T)`` each, and the MoE aux loss: TRL's fused
        head (``trl.trainer.add_fused_lm_head``, which ``GRPOTrainer`` installs with ``outputs=("log_probs",
        "entropy")``) through the model's own forward, so DDP/FSDP see a normal forward and output."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        keep = inputs["completion_ids"].size(1)
        multimodal = {k: inputs[k] for k in _MULTIMODAL if inputs.get(k) is not None}
        if multimodal or self.aux_loss_enabled:  # TRL's own slicing of images and tiles per chunk
            lp, ent, aux = self._get_per_token_logps_and_entropies(
                model, ids, am, keep, compute_entropy=True, compute_aux_loss=self.aux_loss_enabled, **multimodal
            )
            assert ent is not None
            return lp, ent, aux
        labels = ids.masked_fill(am == 0, -100)
        labels[:, :-keep] = -100
        with self.accelerator.autocast():
            out = model(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -keep:], out.entropy[:, -keep:], None

    # ----------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Tensor:
        """The entrolab policy loss on TRL's batch, aggregated as TRL's ``loss_type``; logs TRL's metrics under
        TRL's names and the loss's under ``entrolab/<name>``."""
        if return_outputs:
            raise ValueError("EntropyGRPOTrainer does not support returning outputs")
        logp, entropy, aux_loss = self._logps_and_entropy(model, inputs)
        mask_f = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask_f = mask_f * inputs["tool_mask"]
        mask = mask_f.bool()
        args: Any = self.args
        mode = "train" if self.model is not None and self.model.training else "eval"
        accumulation = float(self.current_gradient_accumulation_steps) if mode == "train" else 1.0
        agg = trl_aggregation(
            self.loss_type, mask, accumulation=accumulation, max_completion_length=int(self.max_completion_length or 1),
            num_items_in_batch=inputs.get("num_items_in_batch"), num_processes=self.accelerator.num_processes,
            steps_per_generation=args.steps_per_generation if mode == "train" else 1,
        )  # fmt: skip
        advantages = inputs["advantages"]
        if self.advantage_transform is not None:
            advantages = self.advantage_transform(advantages, entropy=entropy.detach(), mask=mask, inputs=inputs)
        old = inputs.get("old_per_token_logps")
        old = logp.detach() if old is None else old
        weights = entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(entropy, mask_f, 1 - self.top_entropy_quantile)
            weights = entropy_mask.to(logp.dtype)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            ratio = inputs["importance_sampling_ratio"]
            weights = ratio if weights is None else weights * ratio
        out = self.policy_loss_fn(
            logp, old, advantages, mask, entropy=self._loss_entropy(inputs, entropy, mode), agg=agg,
            generator=self._loss_generator, token_weights=weights, **self.loss_kwargs,
        )  # fmt: skip
        loss = out.loss
        metrics: dict[str, Tensor] = dict(out.metrics)
        if self.beta != 0.0:  # TRL's k3 to the reference, times the ratio with use_bias_correction_kl (its default)
            per_token_kl = kl_estimate(logp, inputs["ref_per_token_logps"], kind="k3")
            if args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logp - old)
            loss = loss + self.beta * aggregate(per_token_kl, mask, agg)
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask_f))
        for reg in self.regularizers:
            term = reg(logp=logp, entropy=entropy, mask=mask, agg=agg)
            loss = loss + term.loss
            metrics.update(term.metrics)
        if self._entropy_bonus_enabled:
            # TRL's policy_loss: the policy (+ KL) term before the accumulation scaling, except for dapo
            policy_loss = loss.detach() * (1.0 if self.loss_type == "dapo" else accumulation)
            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
            effective = mask_f if entropy_mask is None else mask_f * entropy_mask
            loss = loss + self._entropy_term(entropy, effective, mode, accumulation)
        if self.aux_loss_enabled and aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropy, mask_f))
        self._log_clip_ratios(mode, torch.exp(logp.detach() - old), advantages, mask_f)
        named = {f"entrolab/{k}": v for k, v in metrics.items() if k != "entropy"}
        dynamics = dynamics_metrics(old, advantages, mask, entropy=entropy)  # the sampling policy's covariance
        named.update({f"entrolab/dynamics/{k}": v for k, v in dynamics.items() if k != "entropy"})
        self._log_all(mode, named)
        return loss

    def _loss_entropy(self, inputs: dict[str, Any], entropy: Tensor, mode: str) -> Tensor:
        """The entropy the policy loss sees: the current forward's, or for :data:`OLD_ENTROPY_LOSSES` (STEER) the
        old policy's, recorded on the first pass over each micro-batch and kept in TRL's buffered batch
        (``inputs["entrolab_old_entropy"]``) for its later iterations.  The first pass happens before any update
        of the generation batch when ``steps_per_generation <= gradient_accumulation_steps`` (TRL's own condition
        for using the current log-probs as the old ones); otherwise the trainer warned at construction."""
        if self.policy_loss not in OLD_ENTROPY_LOSSES:
            return entropy
        old = inputs.get(_OLD_ENTROPY_KEY)
        if old is None or old.shape != entropy.shape:
            old = entropy.detach()
            if mode == "train":
                inputs[_OLD_ENTROPY_KEY] = old
        return old

    def _log_all(self, mode: str, values: Mapping[str, Tensor]) -> None:
        """Each value's mean over processes into TRL's metric store: one gather and one host transfer for all."""
        if not values:
            return
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])  # (n,)
        means = self.accelerator.gather(stacked.unsqueeze(0)).nanmean(0).tolist()  # (processes, n) -> (n,)
        for name, mean in zip(values, means, strict=True):
            self._metrics[mode][name].append(mean)

    def _global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x.detach() * mask).sum(), mask.sum().float()]), reduction="sum")
        return float(totals[0] / totals[1].clamp(min=1.0))

    def _log_clip_ratios(self, mode: str, ratio: Tensor, advantages: Tensor, mask: Tensor) -> None:
        """TRL's ``clip_ratio/*`` metrics (its epsilon-clip regions, whatever ``policy_loss`` clips)."""
        adv = advantages.detach().unsqueeze(1) if advantages.dim() == 1 else advantages.detach()
        low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).float()
        high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float()
        m = self._metrics[mode]
        m["clip_ratio/low_mean"].append(self._global_masked_mean(low, mask))
        m["clip_ratio/high_mean"].append(self._global_masked_mean(high, mask))
        m["clip_ratio/region_mean"].append(self._global_masked_mean(torch.maximum(low, high), mask))
        per_row = mask.sum(-1)  # a row without tokens gives NaN, skipped as TRL's nanmin/nanmax skip it
        low_min = _nan_reduce((low * mask).sum(-1) / per_row, torch.amin)  # (1,): equal shapes on every rank
        high_max = _nan_reduce((high * mask).sum(-1) / per_row, torch.amax)
        m["clip_ratio/low_min"].append(float(_nan_reduce(self.accelerator.gather(low_min), torch.amin)))
        m["clip_ratio/high_max"].append(float(_nan_reduce(self.accelerator.gather(high_max), torch.amax)))

    def _entropy_term(self, entropy: Tensor, effective: Tensor, mode: str, accumulation: float) -> Tensor:
        """TRL's entropy bonus: ``-coef * masked mean entropy / accumulation``.  With ``use_adaptive_entropy`` the
        coefficient is :class:`entrolab.control.AdaptiveEntropyCoefficient`'s, whose state lives in TRL's own
        fields (``entropy_coef`` and the last window's entropy) so that TRL's checkpoints save and restore it."""
        a: Any = self.args
        ctl: AdaptiveEntropyCoefficient | None = None
        if self.use_adaptive_entropy:
            ctl = AdaptiveEntropyCoefficient(
                target=a.entropy_target, init=self.entropy_coef, delta=a.entropy_coef_delta,
                coef_min=a.entropy_coef_min, coef_max=a.entropy_coef_max,
            )  # fmt: skip
            ctl.last_window_entropy = self._last_world_entropy
        coef = ctl.value if ctl is not None else self.entropy_coef
        term = entropy_bonus(entropy, effective.bool(), coef=coef, agg="token-mean").loss / accumulation
        if ctl is not None and mode == "train":
            stats = torch.stack([(entropy.detach() * effective).sum(), effective.sum().float()])
            window: Tensor | None = self._entropy_window_stats
            window = stats if window is None else window + stats
            if self.accelerator.sync_gradients:
                total = self.accelerator.reduce(window, reduction="sum")
                ctl.observe(float(total[0] / total[1].clamp(min=1.0)))
                self.entropy_coef, self._last_world_entropy = ctl.coef, ctl.last_window_entropy
                window = None
            self._entropy_window_stats = window  # type: ignore[assignment]
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(float(self.entropy_coef))
        return term


_OLD_ENTROPY_KEY = "entrolab_old_entropy"
_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
               "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")  # fmt: skip


def _nan_reduce(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` over the non-NaN entries of ``x`` as a ``(1,)`` tensor; NaN when there are none."""
    kept = x[~torch.isnan(x)]
    return fn(kept).reshape(1) if kept.numel() else x.new_full((1,), float("nan"))
