"""Entropy-aware decoding: truncation and temperature rules, sampling, and fork points for branching rollouts.

The pure functions (:mod:`entrolab.sampling.functional`, :mod:`entrolab.sampling.forks`) need only torch; the Hugging
Face ``LogitsProcessor`` wrappers (:mod:`entrolab.sampling.hf`: ``TopHLogitsProcessor``,
``AdaptiveTemperatureLogitsProcessor``, ``EntropixLogitsProcessor``, ``EpsilonLogitsProcessor``,
``TypicalLogitsProcessor``) need ``transformers`` and are imported on first use.
"""

from __future__ import annotations

from typing import Any

from entrolab.sampling.forks import (
    FORK_STRATEGIES,
    aepo_branch_probability,
    aepo_root_count,
    aepo_should_branch,
    aepo_step_entropy,
    select_fork_points,
)
from entrolab.sampling.functional import (
    ENTROPIX_REGIMES,
    adaptive_temperature,
    entropix_regime,
    entropy_varentropy,
    epsilon_mask,
    eta_mask,
    min_p_mask,
    sample,
    sample_categorical,
    top_h_mask,
    top_p_mask,
    typical_mask,
)

__all__ = [
    "ENTROPIX_REGIMES",
    "FORK_STRATEGIES",
    "AdaptiveTemperatureLogitsProcessor",
    "EntropixLogitsProcessor",
    "EpsilonLogitsProcessor",
    "TopHLogitsProcessor",
    "TypicalLogitsProcessor",
    "adaptive_temperature",
    "aepo_branch_probability",
    "aepo_root_count",
    "aepo_should_branch",
    "aepo_step_entropy",
    "entropix_regime",
    "entropy_varentropy",
    "epsilon_mask",
    "eta_mask",
    "min_p_mask",
    "sample",
    "sample_categorical",
    "select_fork_points",
    "top_h_mask",
    "top_p_mask",
    "typical_mask",
]

_HF = (
    "AdaptiveTemperatureLogitsProcessor",
    "EntropixLogitsProcessor",
    "EpsilonLogitsProcessor",
    "TopHLogitsProcessor",
    "TypicalLogitsProcessor",
)


def __getattr__(name: str) -> Any:
    if name in _HF:  # transformers is an optional dependency: import the wrappers only when asked for
        from entrolab.sampling import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'entrolab.sampling' has no attribute {name!r}")
