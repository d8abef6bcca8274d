"""The entropy core: per-token log-probabilities and entropies, from logits or straight from hidden states.

Public API (names fixed; the losses, the lab and the engine plug-ins build on them):

- :func:`token_logprob_and_entropy` -- from materialised logits ``(..., V)``.
- :func:`linear_logprob_and_entropy` -- from hidden states ``(..., H)`` and the LM head ``(V, H)``, never
  materialising the logits.
- :func:`entropy`, :func:`varentropy` -- general categorical estimators with ``dim`` and ``base``.
- :func:`debug_checks` -- a context manager that asserts ``logp <= 0`` and ``0 <= H <= log V`` on every output.

Float64 references for tests live in :mod:`entrolab.entropy.reference`.

The package itself is callable: ``entrolab.entropy(p)`` is :func:`entropy`.  So ``from entrolab import entropy``
gives something that computes entropies *and* is this package (``entrolab.entropy.debug_checks()``, ``import
entrolab.entropy.reference``): a top-level function of the same name would hide the package.
"""

import sys
import types
from typing import Any

from entrolab.entropy._rows import debug_checks
from entrolab.entropy.categorical import entropy, varentropy
from entrolab.entropy.from_logits import token_logprob_and_entropy
from entrolab.entropy.fused_linear import linear_logprob_and_entropy

__all__ = [
    "debug_checks",
    "entropy",
    "linear_logprob_and_entropy",
    "token_logprob_and_entropy",
    "varentropy",
]


class _CallablePackage(types.ModuleType):
    """The ``entrolab.entropy`` package, callable as :func:`entropy`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return entropy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
