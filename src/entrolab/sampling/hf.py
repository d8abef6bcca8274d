"""Hugging Face ``LogitsProcessor`` wrappers of :mod:`entrolab.sampling.functional` (needs ``transformers``).

They follow transformers' conventions (``shared/specs/decoding.md`` section 8): arguments validated in ``__init__``
with a ``ValueError`` naming the argument and value, ``filter_value`` and ``min_tokens_to_keep``, ``scores`` never
modified in place (a new tensor of the same dtype is returned), two-argument ``__call__`` with any state on the object.

Order inside ``generate()``: processors passed as ``logits_processor=LogitsProcessorList([...])`` run **after** the
built-in warpers (temperature, top-k, top-p, min-p, ...), so they see temperature-scaled, already filtered scores.

Example::

    from transformers import LogitsProcessorList
    from entrolab.sampling.hf import TopHLogitsProcessor
    out = model.generate(ids, do_sample=True, temperature=1.2,
                         logits_processor=LogitsProcessorList([TopHLogitsProcessor(alpha=0.4)]))
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from entrolab.sampling.functional import (
    _number,
    _positive_int,
    _rows,
    _top_h_selection,
    adaptive_temperature,
    entropix_regime,
    epsilon_mask,
    typical_mask,
)

__all__ = [
    "AdaptiveTemperatureLogitsProcessor",
    "EntropixLogitsProcessor",
    "EpsilonLogitsProcessor",
    "TopHLogitsProcessor",
    "TypicalLogitsProcessor",
]


def _filter_value(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or value == math.inf:
        raise ValueError(f"`filter_value` has to be a float below +inf (usually -inf), but is {value!r}")
    return float(value)


class TopHLogitsProcessor(LogitsProcessor):
    """Top-H truncation (:func:`~entrolab.sampling.top_h_mask`): keep the most probable tokens while their cumulative
    entropy terms stay within ``alpha`` times the entropy over the candidates; ``filter_value`` elsewhere.

    Args:
        alpha (`float`, defaults to 0.4): in (0, 1]; the authors suggest 0.3-0.5.
        top_n (`int`, *optional*, defaults to 100): candidate-set size, the authors' and transformers' value (the
            published results use it); None is the exact full-vocabulary rule, which keeps far more tokens on real
            vocabularies.  transformers' own ``TopHLogitsWarper`` is ``rule="hf"`` with the default ``top_n``.
        rule (`str`, defaults to "paper"): "paper" (the authors' rule) or "hf" (transformers' warper).
        filter_value (`float`, defaults to -inf), min_tokens_to_keep (`int`, defaults to 1).

    Paper: Potraghloo et al., arXiv 2509.02510.  Unlike transformers' warper: the authors' rule over full-vocabulary
    probabilities by default, ``min_tokens_to_keep``, no NaN at zero-probability candidates; unlike the authors'
    processor: any batch size and no ``IndexError`` at ``alpha = 1`` (all ``top_n`` candidates are kept).
    """

    supports_continuous_batching = True

    def __init__(
        self,
        alpha: float = 0.4,
        *,
        top_n: int | None = 100,
        rule: str = "paper",
        filter_value: float = -math.inf,
        min_tokens_to_keep: int = 1,
    ) -> None:
        self.alpha = _number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.top_n = None if top_n is None else _positive_int("top_n", top_n)
        if rule not in ("paper", "hf"):
            raise ValueError(f"`rule` has to be 'paper' or 'hf', but is {rule!r}")
        self.rule = rule
        self.filter_value = _filter_value(filter_value)
        self.min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        z, _ = _rows(scores, "scores", validate=False)  # _top_h_selection checks the row maxima
        selection = _top_h_selection(
            z, self.alpha, top_n=self.top_n, temperature=1.0, min_tokens_to_keep=self.min_tokens_to_keep,
            rule=self.rule, name="scores",
        )  # fmt: skip
        if selection is None:  # alpha = 1 over the whole vocabulary keeps every token of non-zero probability
            return scores.masked_fill(torch.isneginf(scores), self.filter_value)
        idx, sel = selection
        # a new tensor of filter_value with the kept scores scattered in: no (B, V) mask, never in place
        kept = torch.where(sel, scores.gather(-1, idx), torch.tensor(self.filter_value, dtype=scores.dtype))
        return torch.full_like(scores, self.filter_value).scatter_(-1, idx, kept)


class _MaskProcessor(LogitsProcessor):
    """A keep-mask rule as a processor: ``filter_value`` outside the mask, a new tensor (never in place)."""

    supports_continuous_batching = True
    filter_value: float

    def _mask(self, scores: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        return scores.masked_fill(~self._mask(scores), self.filter_value)


class EpsilonLogitsProcessor(_MaskProcessor):
    """Epsilon-sampling (:func:`~entrolab.sampling.epsilon_mask`): ``filter_value`` on tokens with ``p < epsilon``
    unless their score is among the ``min_tokens_to_keep`` largest; transformers' ``EpsilonLogitsWarper`` rule,
    computed in float32 for half-precision scores.

    Args:
        epsilon (`float`): in (0, 1); 3e-4 to 4e-3 by model size (transformers' docstring).
        filter_value (`float`, defaults to -inf), min_tokens_to_keep (`int`, defaults to 1).

    Appended to ``generate``'s list, it sees temperature-scaled, already top-k/top-p-filtered scores.
    Paper: Hewitt et al., arXiv 2210.15191.
    """

    def __init__(self, epsilon: float, *, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        self.epsilon = _number("epsilon", epsilon, low=0.0, high=1.0, low_open=True, high_open=True)
        self.filter_value = _filter_value(filter_value)
        self.min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def _mask(self, scores: Tensor) -> Tensor:
        return epsilon_mask(scores, self.epsilon, min_tokens_to_keep=self.min_tokens_to_keep)


class TypicalLogitsProcessor(_MaskProcessor):
    """Locally typical sampling (:func:`~entrolab.sampling.typical_mask`): keep the tokens whose surprisal is closest
    to the entropy up to probability ``mass``; transformers' ``TypicalLogitsWarper`` rule, in float32 for half
    precision.

    Args:
        mass (`float`, defaults to 0.9): in (0, 1).
        filter_value (`float`, defaults to -inf), min_tokens_to_keep (`int`, defaults to 1).

    Appended to ``generate``'s list, it sees temperature-scaled, already top-k/top-p-filtered scores.
    Paper: Meister et al., arXiv 2202.00666.
    """

    def __init__(self, mass: float = 0.9, *, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        self.mass = _number("mass", mass, low=0.0, high=1.0, low_open=True, high_open=True)
        self.filter_value = _filter_value(filter_value)
        self.min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def _mask(self, scores: Tensor) -> Tensor:
        return typical_mask(scores, self.mass, min_tokens_to_keep=self.min_tokens_to_keep)


class AdaptiveTemperatureLogitsProcessor(LogitsProcessor):
    """HAPO's per-token temperature (:func:`~entrolab.sampling.adaptive_temperature`): each row of ``scores`` is
    divided by ``1 + tau * clamp(h_hat, -1, 1)``, its normalised log-entropy against the previous training batch's
    statistics, so forking positions are sampled hotter and confident ones colder.

    The base temperature is ``generate(temperature=...)`` (applied before this processor), and the entropy is that of
    the scores it receives.  ``stats`` (a :class:`~entrolab.losses.HapoEntropyStats`) is plain state: assign
    ``processor.stats`` after each training step.

    Args:
        stats (`HapoEntropyStats`), tau (`float`, defaults to 0.05, in [0, 1)), compat ("paper" or "code": the
        released code's sign bug).

    Paper: Liu et al., arXiv 2509.16591 (HAPO), section 3.2.
    """

    supports_continuous_batching = True

    def __init__(self, stats: Any, *, tau: float = 0.05, compat: str = "paper") -> None:
        self.tau = _number("tau", tau, low=0.0, high=1.0, low_open=False, high_open=True)
        if compat not in ("paper", "code"):
            raise ValueError(f"`compat` has to be 'paper' or 'code', but is {compat!r}")
        self.compat = compat
        adaptive_temperature(torch.zeros(1, 2), stats)  # validates the statistics now, not at the first token
        self.stats = stats

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        factor = adaptive_temperature(scores, self.stats, tau=self.tau, compat=self.compat)
        return (scores.float() / factor.unsqueeze(-1)).to(scores.dtype)


class EntropixLogitsProcessor(LogitsProcessor):
    """entropix's classic entropy/varentropy regimes (:func:`~entrolab.sampling.entropix_regime`) as a reference
    heuristic, without attention statistics.

    Per row: ``LELV`` (confident) keeps only the argmax; ``HELV`` emits ``clarifying_token_id`` unless it was the
    previous token (when given; otherwise, and then, samples 1.3x hotter); ``LEHV`` samples 1.2x hotter; ``HEHV`` 2x
    hotter; ``adaptive`` leaves the scores as they are (entropix draws several samples there and picks one, which a
    logits processor cannot do).  The hotter factors are the classic rules with the attention terms at 0, relative to
    the temperature already applied by ``generate()``.  Not a paper: xjdr-alt/entropix ``torch_sampler.py`` at
    commit 1eeacc3.

    Args:
        clarifying_token_id (`int`, *optional*): tokenizer-specific (entropix hard-codes 2564 for Llama 3).
        filter_value (`float`, defaults to -inf); the thresholds of :func:`~entrolab.sampling.entropix_regime`.
    """

    supports_continuous_batching = True

    def __init__(
        self,
        *,
        clarifying_token_id: int | None = None,
        filter_value: float = -math.inf,
        **thresholds: float,
    ) -> None:
        if clarifying_token_id is not None and (
            isinstance(clarifying_token_id, bool)
            or not isinstance(clarifying_token_id, numbers.Integral)
            or clarifying_token_id < 0
        ):
            raise ValueError(f"`clarifying_token_id` has to be None or an int >= 0, but is {clarifying_token_id!r}")
        self.clarifying_token_id = None if clarifying_token_id is None else int(clarifying_token_id)
        self.filter_value = _filter_value(filter_value)
        entropix_regime(torch.zeros(1, 2), **thresholds)  # validates the thresholds (and their names)
        self.thresholds = thresholds

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        regime = entropix_regime(scores, **self.thresholds)  # (B,)
        z = scores.float()
        factor = torch.ones_like(z[:, 0])
        factor = torch.where(regime == 1, 1.3, factor)
        factor = torch.where(regime == 2, 1.2, factor)
        factor = torch.where(regime == 3, 2.0, factor)
        out = z / factor.unsqueeze(-1)
        argmax = torch.zeros_like(z, dtype=torch.bool).scatter(-1, z.argmax(-1, keepdim=True), True)
        out = torch.where((regime == 0).unsqueeze(-1) & ~argmax, self.filter_value, out)
        if self.clarifying_token_id is not None and self.clarifying_token_id < z.shape[-1]:
            last = input_ids[:, -1] if input_ids.shape[-1] else torch.full_like(regime, -1)
            clarify = (regime == 1) & (last != self.clarifying_token_id)
            only = torch.zeros_like(argmax)
            only[:, self.clarifying_token_id] = True
            out = torch.where(clarify.unsqueeze(-1) & ~only, self.filter_value, out)
            out = torch.where(clarify.unsqueeze(-1) & only, 0.0, out)
        return out.to(scores.dtype)
