"""Entropy and KL controllers behind one small protocol.

A controller reads a statistic once per window (an optimizer step), and exposes the coefficient to use now as
``value``.  It is plain state: ``state_dict()`` is JSON-serialisable and ``load_state_dict`` restores it exactly, so
a resumed run continues the same schedule.  Evaluation never calls ``observe``; reading ``value`` never mutates.

Micro-batches (gradient accumulation, several ranks) are handled with ``accumulate(entropy, mask)`` on each
micro-batch and one ``observe()`` at the optimizer-step boundary; with ``process_group`` the window's sums are
all-reduced across ranks, so every rank takes the same decision.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from entrolab._validation import as_mask, check_choice, check_number, describe

__all__ = [
    "AdaptiveEntropyCoefficient",
    "AdaptiveKLCoefficient",
    "BucketKLController",
    "Controller",
    "DualAscentMultiplier",
    "LagrangianTemperature",
]


@runtime_checkable
class Controller(Protocol):
    """What every controller offers."""

    @property
    def value(self) -> Any:
        """The coefficient to apply now."""
        ...

    def observe(self, *args: Any, **kwargs: Any) -> None:
        """Close one window with its statistic and update the state."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _window_sums(entropy: Tensor | float, mask: Tensor | None) -> tuple[float, float]:
    """``(sum H m, sum m)`` of one micro-batch (a scalar counts as one token of that value)."""
    if isinstance(entropy, Tensor):
        if not entropy.dtype.is_floating_point:
            raise TypeError(f"entropy must be floating, got {describe(entropy)}")
        if mask is None:
            if entropy.numel() == 1:
                h = float(entropy.detach())
                if not math.isfinite(h):
                    raise ValueError(f"entropy must be finite, got {h}")
                return h, 1.0
            mask = torch.ones(entropy.shape, dtype=torch.bool, device=entropy.device)
        m = as_mask(mask, entropy.shape)
        if bool((m & ~torch.isfinite(entropy)).any()):
            raise ValueError("entropy is not finite at a valid position")
        e = entropy.detach()
        return float(torch.where(m, e, 0.0).to(torch.float64).sum()), float(m.sum())
    if mask is not None:
        raise ValueError("mask is only meaningful with a tensor of token entropies")
    h = check_number("entropy", entropy)
    if not math.isfinite(h):
        raise ValueError(f"entropy must be finite, got {h}")
    return h, 1.0


def _reduce(pair: tuple[float, float], process_group: Any) -> tuple[float, float]:
    if process_group is None:
        return pair
    import torch.distributed as dist

    t = torch.tensor(pair, dtype=torch.float64)
    dist.all_reduce(t, group=process_group)
    return float(t[0]), float(t[1])


class AdaptiveEntropyCoefficient:
    r"""The Skywork-OR1 adaptive entropy coefficient, as TRL implements it.

    ::

        applied = coef if last_window_entropy <= target else 0        # value, used for the whole window
        at each window end, with e the token-weighted mean entropy of the window (all micro-batches, all ranks):
            coef = min(coef + delta, coef_max) if e <= target else max(coef - delta, coef_min)
            last_window_entropy = e

    The first window never applies a bonus (``last_window_entropy`` starts at ``+inf``).

    Parameters
    ----------
    target : float
        Target entropy in nats (required: TRL's 0.2 default rarely triggers; set it near early-training entropy).
    init : float
        Initial coefficient (TRL ``entropy_coef`` 0.0).
    delta : float
        Step (``entropy_coef_delta`` 0.005).
    coef_min, coef_max : float
        Bounds (0.0, 1.0).
    process_group : optional
        All-reduce the window sums over this ``torch.distributed`` group at ``observe``.

    References
    ----------
    He et al., "Skywork Open Reasoner 1 Technical Report", arXiv 2505.22312, section 3.2.3 (adaptive entropy
    control); TRL 1.16's implementation; ``shared/specs/llm_rl.md`` section 10.

    Examples
    --------
    >>> ctl = AdaptiveEntropyCoefficient(target=0.2)
    >>> applied = []
    >>> for e in (0.35, 0.25, 0.18, 0.15, 0.19, 0.22):
    ...     applied.append(ctl.value)
    ...     ctl.observe(e)
    >>> applied, round(ctl.coef, 3)
    ([0.0, 0.0, 0.0, 0.005, 0.01, 0.015], 0.01)
    """

    def __init__(
        self,
        target: float,
        *,
        init: float = 0.0,
        delta: float = 0.005,
        coef_min: float = 0.0,
        coef_max: float = 1.0,
        process_group: Any = None,
    ) -> None:
        self.target = check_number("target", target, low=0.0)
        self.delta = check_number("delta", delta, low=0.0)
        self.coef_min = check_number("coef_min", coef_min, low=0.0)
        self.coef_max = check_number("coef_max", coef_max, low=self.coef_min)
        self.coef = check_number("init", init, low=self.coef_min, high=self.coef_max)
        self.last_window_entropy = math.inf
        self.process_group = process_group
        self._sum = 0.0
        self._count = 0.0

    @property
    def value(self) -> float:
        """The coefficient to apply in the current window (0 while the last window was above target)."""
        return self.coef if self.last_window_entropy <= self.target else 0.0

    def accumulate(self, entropy: Tensor | float, mask: Tensor | None = None) -> None:
        """Add one micro-batch's token entropies (or a scalar) to the current window."""
        s, n = _window_sums(entropy, mask)
        self._sum += s
        self._count += n

    def observe(self, entropy: Tensor | float | None = None, mask: Tensor | None = None) -> None:
        """Close the window: with ``entropy`` (a window mean, or token entropies with ``mask``) or with what
        :meth:`accumulate` gathered.  A window with no tokens leaves the state unchanged."""
        if entropy is not None:
            if self._count:
                raise ValueError("observe(entropy) after accumulate(): call observe() with no arguments")
            self.accumulate(entropy, mask)
        s, n = _reduce((self._sum, self._count), self.process_group)
        self._sum = self._count = 0.0
        if n == 0:
            return
        e = s / n
        if e <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.coef = round(self.coef, 15)
        self.last_window_entropy = e

    def state_dict(self) -> dict[str, Any]:
        return {
            "coef": self.coef,
            "last_window_entropy": None if math.isinf(self.last_window_entropy) else self.last_window_entropy,
            "pending_sum": self._sum,
            "pending_count": self._count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = float(state["coef"])
        last = state.get("last_window_entropy")
        self.last_window_entropy = math.inf if last is None else float(last)
        self._sum = float(state.get("pending_sum", 0.0))
        self._count = float(state.get("pending_count", 0.0))

    def __repr__(self) -> str:
        return (
            f"AdaptiveEntropyCoefficient(target={self.target}, coef={self.coef}, "
            f"last_window_entropy={self.last_window_entropy})"
        )


class AdaptiveKLCoefficient:
    r"""Proportional KL controller: ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta (1 + e n / horizon)``.

    References
    ----------
    Ziegler et al., "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, section 2.2 (verl's
    ``AdaptiveKLController``); ``shared/specs/llm_rl.md`` section 6.

    Examples
    --------
    >>> c = AdaptiveKLCoefficient(init=0.1, target=0.01, horizon=100); c.observe(0.02, n_steps=10); round(c.value, 4)
    0.102
    """

    def __init__(self, *, init: float, target: float, horizon: float) -> None:
        self.beta = check_number("init", init, low=0.0)
        self.target = check_number("target", target, low=0.0, low_open=True)
        self.horizon = check_number("horizon", horizon, low=0.0, low_open=True)

    @property
    def value(self) -> float:
        return self.beta

    def observe(self, kl: float | Tensor, n_steps: int = 1) -> None:
        kl_v = float(kl.detach()) if isinstance(kl, Tensor) else check_number("kl", kl)
        if not math.isfinite(kl_v):
            raise ValueError(f"kl must be finite, got {kl_v}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
        err = min(max(kl_v / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


class BucketKLController:
    r"""ARES's per-difficulty-bucket adaptive KL coefficient, adapted in log space.

    For each bucket: ``ema_kl <- 0.97 ema_kl + 0.03 KL`` (the first observation initialises it),
    ``err = ema_kl / target - 1``, ``ema_err <- 0.97 ema_err + 0.03 err``; every ``update_every`` observations of the
    bucket, if ``|ema_err| > dead_zone``: ``log beta += step clip(ema_err, -max_err, max_err)``, and ``beta`` is
    clamped to ``[beta_min, beta_max]``.  ``value`` maps bucket -> beta; the applied per-token KL weight is
    ``kl_coef * beta[bucket]``.

    References
    ----------
    "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping", arXiv 2510.08457,
    section 3.3 (dynamic KL); ``shared/specs/llm_rl.md`` section 22 (medium-high confidence: the EMA placement is the
    spec's reading of the code).

    Examples
    --------
    >>> c = BucketKLController(update_every=1)
    >>> for _ in range(3): c.observe(0.05, bucket="hard")
    >>> c.value["hard"] > 1.0, c.value["easy"]
    (True, 1.0)
    """

    def __init__(
        self,
        buckets: tuple[str, ...] = ("easy", "medium", "hard"),
        *,
        init: float = 1.0,
        target: float = 0.01,
        ema: float = 0.97,
        dead_zone: float = 0.02,
        update_every: int = 100,
        step: float = 0.05,
        max_err: float = 0.2,
        beta_min: float = 1e-4,
        beta_max: float = 1e2,
    ) -> None:
        if not buckets or not all(isinstance(b, str) for b in buckets) or len(set(buckets)) != len(buckets):
            raise ValueError(f"buckets must be distinct names, got {buckets!r}")
        self.buckets = tuple(buckets)
        self.target = check_number("target", target, low=0.0, low_open=True)
        self.ema = check_number("ema", ema, low=0.0, high=1.0)
        self.dead_zone = check_number("dead_zone", dead_zone, low=0.0)
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        self.update_every = update_every
        self.step = check_number("step", step, low=0.0)
        self.max_err = check_number("max_err", max_err, low=0.0)
        self.beta_min = check_number("beta_min", beta_min, low=0.0, low_open=True)
        self.beta_max = check_number("beta_max", beta_max, low=self.beta_min)
        init = check_number("init", init, low=self.beta_min, high=self.beta_max)
        self._log_beta = {b: math.log(init) for b in self.buckets}
        self._ema_kl: dict[str, float | None] = {b: None for b in self.buckets}
        self._ema_err = {b: 0.0 for b in self.buckets}
        self._calls = {b: 0 for b in self.buckets}

    @property
    def value(self) -> dict[str, float]:
        return {b: math.exp(v) for b, v in self._log_beta.items()}

    def observe(self, kl: float | Tensor, *, bucket: str) -> None:
        bucket = check_choice("bucket", bucket, self.buckets)
        kl_v = float(kl.detach()) if isinstance(kl, Tensor) else check_number("kl", kl)
        if not math.isfinite(kl_v):
            raise ValueError(f"kl must be finite, got {kl_v}")
        prev = self._ema_kl[bucket]
        ema_kl = kl_v if prev is None else self.ema * prev + (1 - self.ema) * kl_v
        self._ema_kl[bucket] = ema_kl
        err = ema_kl / self.target - 1
        self._ema_err[bucket] = self.ema * self._ema_err[bucket] + (1 - self.ema) * err
        self._calls[bucket] += 1
        if self._calls[bucket] % self.update_every == 0 and abs(self._ema_err[bucket]) > self.dead_zone:
            e = min(max(self._ema_err[bucket], -self.max_err), self.max_err)
            lb = self._log_beta[bucket] + self.step * e
            self._log_beta[bucket] = min(max(lb, math.log(self.beta_min)), math.log(self.beta_max))

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_beta": dict(self._log_beta),
            "ema_kl": dict(self._ema_kl),
            "ema_err": dict(self._ema_err),
            "calls": dict(self._calls),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("log_beta", "ema_kl", "ema_err", "calls"):
            if set(state[key]) != set(self.buckets):
                raise ValueError(f"state {key!r} has buckets {sorted(state[key])}, expected {sorted(self.buckets)}")
        self._log_beta = {b: float(v) for b, v in state["log_beta"].items()}
        self._ema_kl = {b: None if v is None else float(v) for b, v in state["ema_kl"].items()}
        self._ema_err = {b: float(v) for b, v in state["ema_err"].items()}
        self._calls = {b: int(v) for b, v in state["calls"].items()}


ALPHA_LOSSES = ("paper", "log_alpha")


class LagrangianTemperature:
    r"""SAC's automatic temperature: a learnable ``log alpha`` pushed so that the policy's entropy meets a target.

    ``J(alpha) = E[-alpha (log pi(a|s) + H_target)]`` minimised over ``log alpha`` with Adam: ``alpha`` rises when
    the entropy ``-E[log pi]`` falls below ``H_target`` and falls when it is above; at the target it stays.

    Parameters
    ----------
    target_entropy : float or "auto"
        ``H_target`` in nats.  ``"auto"``: ``-action_dim`` for continuous actions (the paper's ``-dim(A)``), or
        ``discrete_fraction * log(num_actions)`` for discrete ones.
    action_dim : int, optional
        Continuous action dimension (``prod(action_space.shape)``); with ``"auto"``, give it or ``num_actions``.
    num_actions : int, optional
        Number of discrete actions.
    discrete_fraction : float
        In ``(0, 1]``; 0.98 (SAC-discrete, Christodoulou, arXiv 1910.07207).
    init : float
        Initial ``alpha > 0`` (stable-baselines3: 1.0).
    lr : float
        Adam learning rate of ``log alpha`` (3e-4).
    alpha_loss : {"paper", "log_alpha"}
        ``"paper"`` differentiates ``J`` through ``alpha = exp(log alpha)`` (gradient ``-alpha E[log pi + H]``);
        ``"log_alpha"`` minimises ``-log alpha E[log pi + H]`` as softlearning and stable-baselines3 do (gradient
        without the factor ``alpha``).  Same fixed point, different step size.

    Notes
    -----
    The protocol of :mod:`entrolab.control`: ``value`` (the current ``alpha``, a float), ``observe(log_prob)`` (one
    Adam step from a batch of ``log pi(a|s)`` of freshly sampled actions; returns nothing), ``state_dict()`` (JSON,
    Adam moments included) and ``load_state_dict()``.  :meth:`loss` gives the differentiable ``J`` for callers that
    step their own optimizer.

    References
    ----------
    Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", arXiv 1812.05905, eq. (18) and section 5;
    ``shared/specs/beyond_llm.md`` section 17.

    Examples
    --------
    >>> import torch
    >>> t = LagrangianTemperature(action_dim=6, init=0.2)
    >>> t.target_entropy
    -6.0
    >>> round(float(t.log_alpha_grad(torch.full((4,), 8.0))), 4)  # entropy -8 < -6: descent raises alpha
    -0.4
    >>> a0 = t.value; t.observe(torch.full((4,), 8.0)); t.value > a0
    True
    """

    def __init__(
        self,
        target_entropy: float | str = "auto",
        *,
        action_dim: int | None = None,
        num_actions: int | None = None,
        discrete_fraction: float = 0.98,
        init: float = 1.0,
        lr: float = 3e-4,
        alpha_loss: str = "paper",
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        self.alpha_loss = check_choice("alpha_loss", alpha_loss, ALPHA_LOSSES)
        init = check_number("init", init, low=0.0, low_open=True)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        fraction = check_number("discrete_fraction", discrete_fraction, low=0.0, high=1.0, low_open=True)
        for name, v in (("action_dim", action_dim), ("num_actions", num_actions)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if num_actions is not None and num_actions < 2:
            raise ValueError(f"num_actions must be >= 2 (one action has no entropy to control), got {num_actions}")
        if target_entropy == "auto":
            if (action_dim is None) == (num_actions is None):
                raise ValueError('target_entropy="auto" needs exactly one of action_dim (continuous) or num_actions')
            if action_dim is not None:
                self.target_entropy = -float(action_dim)
            else:
                assert num_actions is not None
                self.target_entropy = fraction * math.log(float(num_actions))
        elif isinstance(target_entropy, str):
            raise ValueError(f'target_entropy must be a number or "auto", got {target_entropy!r}')
        else:
            self.target_entropy = check_number("target_entropy", target_entropy)
            if not math.isfinite(self.target_entropy):
                raise ValueError(f"target_entropy must be finite, got {target_entropy!r}")
        self._log_alpha = torch.tensor(math.log(init), dtype=torch.float64, requires_grad=True)
        self._opt = torch.optim.Adam([self._log_alpha], lr=self.lr, betas=betas)

    @property
    def value(self) -> float:
        """The current temperature ``alpha``."""
        return float(self._log_alpha.detach().exp())

    @property
    def log_alpha(self) -> float:
        return float(self._log_alpha.detach())

    def _mean_log_prob(self, log_prob: Tensor) -> Tensor:
        if not isinstance(log_prob, Tensor) or not log_prob.dtype.is_floating_point or log_prob.numel() == 0:
            raise TypeError(f"log_prob must be a non-empty floating tensor, got {describe(log_prob)}")
        if not bool(torch.isfinite(log_prob).all()):
            raise ValueError("log_prob must be finite")
        return log_prob.detach().to(torch.float64).mean()

    def loss(self, log_prob: Tensor) -> Tensor:
        """``J`` on a batch of ``log pi(a|s)`` (any shape; the bracket is detached), differentiable in ``log alpha``."""
        bracket = self._mean_log_prob(log_prob) + self.target_entropy
        if self.alpha_loss == "paper":
            return -(self._log_alpha.exp() * bracket)
        return -(self._log_alpha * bracket)

    def log_alpha_grad(self, log_prob: Tensor) -> Tensor:
        """``dJ / d log alpha`` on this batch (no state change)."""
        (g,) = torch.autograd.grad(self.loss(log_prob), self._log_alpha)
        return g

    def observe(self, log_prob: Tensor) -> None:
        """One Adam step on ``log alpha`` from a batch of ``log pi(a|s)``."""
        self._opt.zero_grad(set_to_none=True)
        self.loss(log_prob).backward()
        self._opt.step()

    def state_dict(self) -> dict[str, Any]:
        state = self._opt.state.get(self._log_alpha, {})
        return {
            "log_alpha": self.log_alpha,
            "target_entropy": self.target_entropy,
            "alpha_loss": self.alpha_loss,
            "lr": self.lr,
            "step": float(state["step"]) if "step" in state else 0.0,
            "exp_avg": float(state["exp_avg"]) if "exp_avg" in state else 0.0,
            "exp_avg_sq": float(state["exp_avg_sq"]) if "exp_avg_sq" in state else 0.0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self._log_alpha.fill_(float(state["log_alpha"]))
        self.target_entropy = float(state["target_entropy"])
        self.alpha_loss = check_choice("alpha_loss", state.get("alpha_loss", "paper"), ALPHA_LOSSES)
        betas = self._opt.defaults["betas"]
        self._opt = torch.optim.Adam([self._log_alpha], lr=float(state.get("lr", self.lr)), betas=betas)
        if float(state.get("step", 0.0)) > 0:
            self._opt.state[self._log_alpha] = {
                "step": torch.tensor(float(state["step"])),
                "exp_avg": torch.tensor(float(state["exp_avg"]), dtype=torch.float64),
                "exp_avg_sq": torch.tensor(float(state["exp_avg_sq"]), dtype=torch.float64),
            }

    def __repr__(self) -> str:
        return f"LagrangianTemperature(alpha={self.value:.4g}, target_entropy={self.target_entropy})"


class DualAscentMultiplier:
    r"""A Lagrange multiplier for a constraint ``c <= epsilon``, by projected dual ascent:
    ``lambda <- max(0, lambda + lr (c - epsilon))`` (InfoPower's posterior/prior KL constraint).

    ``value`` is ``lambda``; ``observe(c)`` takes one step from the measured constraint (a float or a tensor, whose
    mean is used).

    References
    ----------
    Bharadhwaj et al., arXiv 2204.08585 (InfoPower's primal-dual KL constraint, LOW CONFIDENCE on the details);
    ``shared/specs/beyond_llm.md`` section 16.

    Examples
    --------
    >>> m = DualAscentMultiplier(epsilon=1.0, lr=0.5, init=0.2)
    >>> m.observe(3.0); m.value
    1.2
    >>> m.observe(0.0); m.value  # below the bound: decreases
    0.7
    >>> m.observe(-5.0); m.value  # projected to >= 0
    0.0
    """

    def __init__(self, *, epsilon: float, lr: float = 0.01, init: float = 1.0) -> None:
        self.epsilon = check_number("epsilon", epsilon)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.multiplier = check_number("init", init, low=0.0)

    @property
    def value(self) -> float:
        return self.multiplier

    def observe(self, constraint: Tensor | float) -> None:
        c = float(constraint.detach().to(torch.float64).mean()) if isinstance(constraint, Tensor) else constraint
        c = check_number("constraint", c)
        if not math.isfinite(c):
            raise ValueError(f"constraint must be finite, got {c}")
        self.multiplier = round(max(0.0, self.multiplier + self.lr * (c - self.epsilon)), 15)

    def state_dict(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "epsilon": self.epsilon, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier = float(state["multiplier"])
        self.epsilon = float(state["epsilon"])
        self.lr = float(state["lr"])
