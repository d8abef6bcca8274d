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
accumulation, accelerate/DeepSpeed/FSDP, logging.  What changes is :meth:`EntropyGRPOTrainer._compute_loss`:

- **Log-probs and entropy** come from :func:`entrolab.entropy.linear_logprob_and_entropy` on the backbone's final
  hidden states, inside the model's forward (so DDP/FSDP wrappers see a normal forward), with gradient through both,
  only at completion positions; models whose logits are not ``hidden @ W.T (+ b)`` (soft-capping, logit scales) and
  multimodal or MoE-aux batches use TRL's own fused head instead (the ``entrolab/entropy_backend`` metric says which:
  1 entrolab, 0 TRL).  Old and reference log-probs go through the same path, so the ratio is exactly 1 on-policy.
- **The policy loss** is ``get_policy_loss(policy_loss)`` with ``loss_kwargs``; ``eps_low``/``eps_high`` default to
  TRL's ``epsilon``/``epsilon_high`` when the loss has them.
- **Aggregation keeps TRL's semantics for each** ``loss_type`` (tested against TRL's ``_compute_loss``):
  ``grpo`` per-sequence token mean, ``bnpo`` local token mean, ``dr_grpo`` token sum over ``B x
  max_completion_length``, ``dapo`` token sum over the generation batch's tokens per process and accumulation
  window, ``luspo`` per-sequence token sum; each scaled for gradient accumulation as TRL does.  TRL's own loss forms
  (``cispo``, ``sapo``, ``vespo``) are refused: choose ``policy_loss="cispo"`` etc. instead.
- TRL's ``beta`` (k3 KL to the reference, times the ratio under ``use_bias_correction_kl``),
  ``top_entropy_quantile`` (the 80/20 mask, as token weights), vLLM importance-sampling correction,
  ``entropy_coef`` and the adaptive entropy controller (``use_adaptive_entropy``:
  :class:`entrolab.control.AdaptiveEntropyCoefficient`, saved with checkpoints) work as in TRL.  ``regularizers``
  add more terms; ``advantage_transform`` reshapes advantages per token (EMPG-style).
- **Metrics**: every loss metric under ``entrolab/<name>`` (mean over processes), plus TRL's ``entropy``, ``kl``
  and ``entropy_coef``, through TRL's own metric logging.

Refused with a clear error: ``delta``, ``off_policy_mask_threshold`` and ``importance_sampling_level="sequence"``
(use ``policy_loss="gspo"``).
"""

from __future__ import annotations

import inspect
import json
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from entrolab._typing import LossOutput
from entrolab.control import AdaptiveEntropyCoefficient
from entrolab.entropy import linear_logprob_and_entropy
from entrolab.losses import Aggregation, aggregate, entropy_bonus, get_policy_loss, kl_estimate

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

_STATE_FILE = "entrolab_state.json"


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


class _EntrolabHeadOutput:
    def __init__(self, log_probs: Tensor, entropy: Tensor) -> None:
        self.log_probs, self.entropy = log_probs, entropy


def _entrolab_head_supported(model: Any) -> bool:
    """Whether the logits are exactly ``hidden @ W.T (+ b)`` divided by the temperature (no soft-capping or scale)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return False
    for key in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return False
    return model.config is cfg and hasattr(model, "base_model") and model.get_output_embeddings() is not None


def _add_entrolab_head(model: Any, temperature: float) -> None:
    """Patch ``model.forward`` to accept ``entrolab_head=True``: run the backbone, then entrolab's tiled
    log-prob/entropy at the positions whose next-token label is not -100; anything else goes to the previous
    forward (TRL's fused head, or the original)."""
    previous = model.forward

    def forward(self: Any, *args: Any, entrolab_head: bool = False, labels: Tensor | None = None, **kwargs: Any) -> Any:
        if not entrolab_head:
            if labels is not None:
                kwargs["labels"] = labels
            return previous(*args, **kwargs)
        assert labels is not None
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]  # (B, L - 1, d): predicts token t + 1
        target = labels[:, 1:]
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor shards
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        valid = target != -100
        h = hidden[valid].to(weight.dtype)
        lp, ent = linear_logprob_and_entropy(h, weight, target[valid], bias=bias, temperature=temperature)
        assert lp is not None
        zeros = lp.new_zeros(valid.shape)
        return _EntrolabHeadOutput(zeros.masked_scatter(valid, lp), zeros.masked_scatter(valid, ent))

    model.forward = types.MethodType(forward, model)


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
        The loss's hyperparameters; unknown ones raise ``ValueError`` naming the valid ones.
    regularizers : sequence of callables, optional
        Extra terms, :data:`Regularizer`.
    advantage_transform : callable, optional
        ``fn(advantages, *, entropy, mask, inputs) -> Tensor``: maps TRL's ``(B,)`` advantages to ``(B,)`` or
        ``(B, T)`` ones (``entropy`` detached, ``(B, T)``).
    entropy_backend : {"auto", "entrolab", "trl"}
        ``auto`` (default): entrolab's head when the model supports it, else TRL's fused head.
    """

    def __init__(
        self,
        *args: Any,
        policy_loss: str = "ppo",
        loss_kwargs: Mapping[str, Any] | None = None,
        regularizers: Sequence[Regularizer] = (),
        advantage_transform: Callable[..., Tensor] | None = None,
        entropy_backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.policy_loss_fn = get_policy_loss(policy_loss)
        self.policy_loss = policy_loss
        params = inspect.signature(self.policy_loss_fn).parameters
        reserved = {"logp", "old_logp", "advantages", "mask", "entropy", "agg", "generator", "token_weights"}
        loss_kwargs = dict(loss_kwargs or {})
        for key in loss_kwargs:
            if key not in params or key in reserved:
                valid = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in reserved)
                raise ValueError(
                    f"policy loss {policy_loss!r} has no hyperparameter {key!r}; valid: {', '.join(valid)}"
                )
        if entropy_backend not in ("auto", "entrolab", "trl"):
            raise ValueError(f"entropy_backend must be 'auto', 'entrolab' or 'trl', got {entropy_backend!r}")
        if not all(callable(r) for r in regularizers):
            raise TypeError("regularizers must be callables fn(*, logp, entropy, mask, agg) -> LossOutput")
        if advantage_transform is not None and not callable(advantage_transform):
            raise TypeError(f"advantage_transform must be callable, got {advantage_transform!r}")
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
        self.loss_kwargs = loss_kwargs
        self.regularizers = tuple(regularizers)
        self.advantage_transform = advantage_transform
        self._loss_generator = torch.Generator().manual_seed(int(a.seed) + 7919 * self.accelerator.process_index)
        self._entropy_ctl: AdaptiveEntropyCoefficient | None = None
        if self.use_adaptive_entropy:
            self._entropy_ctl = AdaptiveEntropyCoefficient(
                target=a.entropy_target, init=a.entropy_coef, delta=a.entropy_coef_delta,
                coef_min=a.entropy_coef_min, coef_max=a.entropy_coef_max,
            )  # fmt: skip
        self._window: Tensor | None = None
        model: Any = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        supported = _entrolab_head_supported(base)
        if entropy_backend == "entrolab" and not supported:
            raise ValueError(
                "entropy_backend='entrolab' needs logits = hidden @ W.T (+ b): this model scales or caps them"
            )
        self._use_entrolab_head = supported and entropy_backend != "trl"
        if self._use_entrolab_head:
            _add_entrolab_head(base, self.temperature)
            if self.ref_model is not None:
                _add_entrolab_head(self.ref_model, self.temperature)

    # -------------------------------------------------------------------------------------------- log-probs
    def _get_per_token_logps_and_entropies(  # type: ignore[override]
        self,
        model: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **multimodal: Any,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if not self._use_entrolab_head or compute_aux_loss or any(v is not None for v in multimodal.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal,
            )  # fmt: skip
        batch_size = batch_size or input_ids.size(0)
        logps, ents = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, am = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            labels = ids.masked_fill(am == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                out = model(input_ids=ids, attention_mask=am, labels=labels, entrolab_head=True)
            logps.append(out.log_probs[:, -logits_to_keep:])
            ents.append(out.entropy[:, -logits_to_keep:])
        return torch.cat(logps), (torch.cat(ents) if compute_entropy else None), None

    # ------------------------------------------------------------------------------------------------- loss
    def _log(self, mode: str, name: str, value: Tensor) -> None:
        v = value.detach().float().reshape(1)
        self._metrics[mode][name].append(self.accelerator.gather(v).nanmean().item())

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:  # type: ignore[override]
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask_f = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        multimodal = {
            k: inputs.get(k)
            for k in ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                      "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
        }  # fmt: skip
        logp, entropy, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **multimodal,
        )  # fmt: skip
        assert entropy is not None
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
        weights = None
        entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(entropy, mask_f, 1 - self.top_entropy_quantile)
            weights = entropy_mask.to(logp.dtype)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            ratio = inputs["importance_sampling_ratio"]
            weights = ratio if weights is None else weights * ratio
        out = self.policy_loss_fn(
            logp, old, advantages, mask, entropy=entropy, agg=agg, generator=self._loss_generator,
            token_weights=weights, **self.loss_kwargs,
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
            effective = mask_f if entropy_mask is None else mask_f * entropy_mask
            loss = loss + self._entropy_term(entropy, effective, mode, accumulation)
        if self.aux_loss_enabled and aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropy, mask_f))
        for k, v in metrics.items():
            if k != "entropy":
                self._log(mode, f"entrolab/{k}", v)
        self._metrics[mode]["entrolab/entropy_backend"].append(float(self._use_entrolab_head))
        return loss

    def _global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x.detach() * mask).sum(), mask.sum().float()]), reduction="sum")
        return float(totals[0] / totals[1].clamp(min=1.0))

    def _entropy_term(self, entropy: Tensor, effective: Tensor, mode: str, accumulation: float) -> Tensor:
        """TRL's entropy bonus: ``-coef * masked mean entropy / accumulation``; the adaptive coefficient is the one
        of the last completed window, updated from the window's token-weighted global mean entropy."""
        coef = self._entropy_ctl.value if self._entropy_ctl is not None else self.entropy_coef
        term = entropy_bonus(entropy, effective.bool(), coef=coef, agg="token-mean").loss / accumulation
        if self._entropy_ctl is not None and mode == "train":
            stats = torch.stack([(entropy.detach() * effective).sum(), effective.sum().float()])
            self._window = stats if self._window is None else self._window + stats
            if self.accelerator.sync_gradients:
                total = self.accelerator.reduce(self._window, reduction="sum")
                self._entropy_ctl.observe(float(total[0] / total[1].clamp(min=1.0)))
                self._window = None
            self.entropy_coef = self._entropy_ctl.coef
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(float(coef))
        return term

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self._entropy_ctl is None or not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, _STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"entropy_controller": self._entropy_ctl.state_dict()}, f)
        os.replace(tmp, os.path.join(folder, _STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self._entropy_ctl is None:
            return
        path = os.path.join(checkpoint, _STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                self._entropy_ctl.load_state_dict(json.load(f)["entropy_controller"])
            self.entropy_coef = self._entropy_ctl.coef
