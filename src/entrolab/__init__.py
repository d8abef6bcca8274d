"""entrolab: entropy-aware learning -- measure, regularise and control entropy in training and decoding.

The entropy core lives in :mod:`entrolab.entropy`; its main functions are re-exported here.
"""

from entrolab.entropy import (
    entropy,
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
