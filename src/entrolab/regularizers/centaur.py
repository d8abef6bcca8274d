"""Centaur: one test-time gradient step that lowers the cluster entropy of a planner's decisions.

LOW CONFIDENCE (``shared/specs/beyond_llm.md`` section 13): only the abstract was readable; the method below is a
reconstruction with every open choice an argument.  A scorer gives ``p(k | o) = softmax(score(o))`` over ``K``
candidates (trajectories, classes); a fixed ``assignment`` groups them into clusters (e.g. safe / unsafe); Cluster
Entropy is the entropy of the cluster masses (:func:`entrolab.estimators.cluster_entropy`).  Before acting on
``o_t``, :class:`TestTimeAdapter` takes one gradient step minimising the mean cluster entropy over a buffer of the
**earlier** observations, then predicts with the adapted weights.

Entropy minimisation sharpens whatever the model already believes: it helps when the majority cluster is right and
hurts when it is wrong.

References
----------
Sima et al., "Centaur: Robust End-to-End Autonomous Driving with Test-Time Training", arXiv 2503.11650.
"""

from __future__ import annotations

import copy
from collections import deque

import torch
from torch import Tensor, nn

from entrolab._validation import describe
from entrolab.estimators import cluster_entropy

__all__ = ["TestTimeAdapter", "tta_step"]


def tta_step(
    model: nn.Module,
    buffer: Tensor,
    assignment: Tensor,
    *,
    lr: float = 1e-3,
    params: list[nn.Parameter] | None = None,
) -> float:
    """One SGD step on ``params`` (default: all of ``model``'s) minimising the mean cluster entropy of
    ``softmax(model(buffer))``; returns the entropy before the step (0 and no change for an empty buffer).

    ``buffer`` ``(m, ...)`` earlier observations; ``assignment`` ``(K,)`` cluster ids of the model's ``K`` outputs.
    """
    if not isinstance(buffer, Tensor):
        raise TypeError(f"buffer must be a tensor of observations, got {describe(buffer)}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if buffer.shape[0] == 0:
        return 0.0
    chosen = list(model.parameters()) if params is None else list(params)
    probs = torch.softmax(model(buffer), dim=-1)
    ce = cluster_entropy(probs, assignment).mean()
    grads = torch.autograd.grad(ce, chosen, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(chosen, grads):
            if g is not None:
                p.sub_(lr * g)
    return float(ce.detach())


class TestTimeAdapter:
    """Predict with one cluster-entropy step over the last ``buffer_size`` observations before each prediction.

    ``predict(obs)`` adapts a copy of the weights (``reset=True``, the default: each step starts from the original
    weights) or the running weights (``reset=False``: the steps accumulate), predicts ``obs`` with them, and only
    then adds ``obs`` to the buffer: the step never sees the observation it is about to act on.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self, model: nn.Module, assignment: Tensor, *, lr: float = 1e-3, buffer_size: int = 4, reset: bool = True
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        self.original = model
        self.running = copy.deepcopy(model)
        self.assignment, self.lr, self.reset = assignment, lr, reset
        self.buffer: deque[Tensor] = deque(maxlen=buffer_size)
        self.last_entropy = 0.0

    def predict(self, obs: Tensor) -> Tensor:
        """Logits for ``obs`` ``(n, ...)`` after the step on the buffer."""
        model = copy.deepcopy(self.original) if self.reset else self.running
        past = torch.cat(list(self.buffer)) if self.buffer else obs[:0]
        self.last_entropy = tta_step(model, past, self.assignment, lr=self.lr)
        with torch.no_grad():
            out = model(obs)
        self.buffer.append(obs.detach())
        return out
