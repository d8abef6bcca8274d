"""One registry of policy losses, keyed by name, with one uniform signature (:class:`entrolab._typing.LossFn`)."""

from __future__ import annotations

from collections.abc import Callable

from entrolab._typing import LossFn

__all__ = ["OLD_ENTROPY_LOSSES", "get_policy_loss", "policy_losses", "register_policy_loss"]

_POLICY_LOSSES: dict[str, LossFn] = {}

OLD_ENTROPY_LOSSES = frozenset({"steer"})
"""Losses whose ``entropy=`` is the **old** (sampling) policy's token entropy, recorded with the old log-probs
(STEER's Omega, arXiv 2510.10150 section 4); every other loss takes the current forward's.  The lab passes the
sampling pass's entropy to these, the TRL trainer the entropy of the first pass over each micro-batch, the verl
plug-in the old-log-prob pass's ``entropy`` column when the batch carries it."""


def register_policy_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator registering a policy loss under ``name``; registering an existing name raises ``ValueError``.

    Examples
    --------
    >>> @register_policy_loss("my_doc_example_loss")
    ... def my_loss(logp, old_logp, advantages, mask, *, entropy=None, agg="token-mean", generator=None):
    ...     ...
    >>> "my_doc_example_loss" in policy_losses()
    True
    >>> _ = _POLICY_LOSSES.pop("my_doc_example_loss")  # keep the doctest side-effect free
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a policy loss name must be a non-empty string, got {name!r}")

    def decorator(fn: LossFn) -> LossFn:
        if name in _POLICY_LOSSES:
            raise ValueError(f"a policy loss named {name!r} is already registered")
        _POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> LossFn:
    """The policy loss registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return _POLICY_LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy loss {name!r}; valid names: {', '.join(policy_losses())}") from None


def policy_losses() -> list[str]:
    """The registered names, sorted."""
    return sorted(_POLICY_LOSSES)
