"""entrolab: entropy-aware learning -- measure, regularise and control entropy in training and decoding.

The entropy core lives in :mod:`entrolab.entropy`; its main functions are re-exported here.  ``entrolab.entropy`` is
that package, callable as the categorical :func:`entrolab.entropy.entropy`, so a function of the same name does not
hide it (``entrolab.entropy.debug_checks()`` and ``import entrolab.entropy.reference`` work).
"""

from entrolab import entropy
from entrolab.entropy import (
    linear_logprob_and_entropy,
    token_logprob_and_entropy,
    varentropy,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "entropy",
    "linear_logprob_and_entropy",
    "token_logprob_and_entropy",
    "varentropy",
]
