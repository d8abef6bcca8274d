"""Shared types and the glossary of shapes.

Shapes used in every docstring:

=====  ===========================================================
``B``  sequences (responses) in the tensors handed to a function
``T``  padded response length
``V``  vocabulary size
``H``  hidden size (the LM head is ``(V, H)``)
``N``  number of scored tokens (flattened ``B * T`` or valid tokens)
``G``  group size (responses per prompt)
=====  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

__all__ = ["LossFn", "LossOutput"]


class LossOutput(NamedTuple):
    """A scalar loss to minimise and its diagnostics.

    ``metrics`` maps names to detached 0-d tensors (clip fractions, KL estimates, ...); library code never calls
    ``.item()``, so computing them costs no host sync.  Unpacks as ``loss, metrics = out``.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


LossFn = Callable[..., LossOutput]
"""The type of every registered policy loss.  Its signature (by convention; type checkers cannot express the
method-specific keywords) is::

    fn(logp, old_logp, advantages, mask, *, entropy=None, agg="token-mean", generator=None, **hyperparameters)
        -> LossOutput
"""
