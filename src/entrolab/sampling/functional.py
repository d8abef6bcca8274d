"""Entropy-aware truncation and temperature rules as pure functions of a batch of next-token logits.

Each rule returns a boolean keep-mask ``(B, V)`` (or per-row temperatures, or regime ids) and never modifies its
input; the Hugging Face ``LogitsProcessor`` wrappers in :mod:`entrolab.sampling.hf` apply them.  Everything is
computed in float32 whatever the input dtype (float64 stays float64), vectorised over the batch: no Python loop over
rows or tokens.  Formulas, defaults and worked examples: ``shared/specs/decoding.md``.

Bad input raises: logits must be floating, ``(B, V)`` or ``(V,)``, with no NaN or ``+inf`` (``-inf`` marks a
filtered token) and at least one finite entry per row; every knob is range-checked and named in the error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from entrolab._validation import check_temperature, describe

__all__ = [
    "ENTROPIX_REGIMES",
    "adaptive_temperature",
    "entropix_regime",
    "entropy_varentropy",
    "eta_mask",
    "min_p_mask",
    "sample",
    "sample_categorical",
    "top_h_mask",
    "top_p_mask",
]

ENTROPIX_REGIMES = ("LELV", "HELV", "LEHV", "HEHV", "adaptive")
"""Regime names by the ids :func:`entropix_regime` returns (0 .. 4)."""


# ------------------------------------------------------------------------------------------------------ checks
def _number(name: str, value: object, *, low: float, high: float, low_open: bool, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a real number, got {describe(value)}")
    v = float(value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {v!r}")
    return v


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {describe(value)}")
    return int(value)


def _check_row_max(row_max: Tensor, name: str) -> None:
    """Errors from each row's maximum: NaN with a NaN in the row, +inf with a +inf (``max`` and ``topk`` both put
    NaN first), -inf when the whole row is -inf."""
    if row_max.numel() and not bool(torch.isfinite(row_max).all()):
        if bool(torch.isnan(row_max).any() | torch.isposinf(row_max).any()):
            raise ValueError(f"{name} must not contain NaN or +inf")
        raise ValueError(f"{name} has a row where every entry is -inf")


def _rows(logits: object, name: str = "logits", *, validate: bool = True) -> tuple[Tensor, tuple[int, ...]]:
    """``logits`` as float32 (float64 kept) ``(B, V)`` rows, validated (``validate=False``: the caller checks the
    row maxima itself, e.g. from a top-k it computes anyway); and the shape to return masks in."""
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.Tensor, got {describe(logits)}")
    if logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (B, V) or (V,) with V >= 1, got {tuple(logits.shape)}")
    z = logits.detach().reshape(-1, logits.shape[-1])
    z = z if z.dtype == torch.float64 else z.float()
    if validate and z.numel():  # one reduction finds every problem
        _check_row_max(z.amax(-1), name)
    return z, tuple(logits.shape)


def _neg_entropy_terms(logp: Tensor) -> Tensor:
    """``-p log p`` elementwise from log-probabilities, exactly 0 where ``p = 0`` (no ``0 * -inf``)."""
    return torch.where(torch.isneginf(logp), 0.0, -logp.exp() * logp)


def _keep_top(keep: Tensor, z: Tensor, m: int) -> Tensor:
    """``keep`` with the ``m`` largest entries of each row of ``z`` forced on (HF's ``min_tokens_to_keep``)."""
    idx = torch.topk(z, min(m, z.shape[-1]), dim=-1).indices
    return keep.scatter(-1, idx, True)


# ------------------------------------------------------------------------------------------------------- Top-H
def top_h_mask(
    logits: Tensor,
    alpha: float = 0.4,
    *,
    top_n: int | None = 100,
    temperature: float = 1.0,
    min_tokens_to_keep: int = 1,
    rule: str = "paper",
) -> Tensor:
    r"""Top-H keep-mask: the most probable tokens whose cumulative entropy terms stay within ``alpha`` times the
    entropy over the candidate set.

    With ``p = softmax(logits / temperature)`` and the ``n`` most probable tokens ``p_1 >= ... >= p_n``
    (``n = min(top_n, V)``, default 100; ``n = V`` when ``top_n`` is None):

    - ``rule="paper"`` (the authors' rule): ``h_i = -p_i log p_i`` over **full-vocabulary** probabilities,
      ``tau = alpha * sum_{i<=n} h_i``; keep the sorted prefix with ``sum_{j<=i} h_j <= tau``.
    - ``rule="hf"`` (transformers' ``TopHLogitsWarper``, which is this rule with ``top_n=100``): ``q`` = softmax over
      the top-``n`` logits only, ``tau = alpha * H(q)``; keep the prefix with ``sum_{j<=i} -q_j ln q_j <= tau``.

    The most probable token is always kept, and at least ``min_tokens_to_keep``.

    Parameters
    ----------
    logits : Tensor
        ``(B, V)`` or ``(V,)`` next-token logits; ``-inf`` marks tokens already filtered.
    alpha : float
        In ``(0, 1]``; the authors suggest 0.3-0.5.  ``alpha = 1`` keeps all ``n`` candidates (the authors' code
        raises ``IndexError`` there: its loop never fails the test and runs past the ``n`` candidates).
    top_n : int, optional
        Candidate-set size, default 100: the authors' code and transformers' warper both take the top 100, and the
        published results come from that.  ``tau`` is then ``alpha`` times the top-100 tokens' summed terms, which on
        a real vocabulary is far smaller than the full entropy: on a 32k-token row the full-vocabulary rule keeps
        about 119 tokens where the top-100 rule keeps 7, and on flat rows thousands against 1.  ``None`` is the
        exact full-vocabulary rule of the paper's Algorithm 1 (``tau = alpha H(p)``; the partial sort grows only as
        far as the stopping rule needs).
    temperature : float
        Selection temperature (``> 0``): it changes which tokens are kept, not the logits the caller samples from (the
        authors' ``temperature``).  In an HF pipeline the scores usually arrive already temperature-scaled; leave 1.
    min_tokens_to_keep : int
        ``>= 1``.
    rule : {"paper", "hf"}

    Returns
    -------
    Tensor
        Boolean keep-mask of ``logits``' shape.

    Notes
    -----
    Departures from the authors' code (spec section 1.5): no crash when the threshold is never exceeded (``alpha = 1``,
    all-zero terms, fewer than ``n`` non-zero probabilities: all ``n`` are kept), ``0 log 0 = 0``, any batch size, and
    ``top_n`` may exceed ``V``.  The ``"paper"`` rule's running entropy and threshold are computed in float64 from
    the logits (whatever their dtype), so confident rows (top probability 0.99997 and above) cut where a float64
    reference cuts; in float32 the cumulative sum drifted by several tokens.  From transformers' warper:
    zero-probability candidates contribute 0 instead of NaN (they are then inside the mask, still at probability 0),
    and ``min_tokens_to_keep`` exists.

    References
    ----------
    Potraghloo et al., "Top-H Decoding: Adapting the Creativity and Coherence with Bounded Entropy in Text
    Generation", arXiv 2509.02510, Algorithm 1; ``shared/specs/decoding.md`` section 1.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]).log()
    >>> [int(top_h_mask(logits, a).sum()) for a in (0.4, 0.7, 0.9, 1.0)]
    [1, 2, 4, 5]
    """
    z, shape = _rows(logits, validate=False)  # _top_h_selection checks the row maxima
    selection = _top_h_selection(
        z, alpha, top_n=top_n, temperature=temperature, min_tokens_to_keep=min_tokens_to_keep, rule=rule
    )
    if selection is None:  # alpha = 1 over the whole vocabulary: every token of non-zero probability
        return (~torch.isneginf(z)).reshape(shape)
    idx, sel = selection
    keep = torch.zeros(z.shape, dtype=torch.bool, device=z.device).scatter(-1, idx, sel)
    return keep.reshape(shape)


def _top_h_selection(
    z: Tensor,
    alpha: object,
    *,
    top_n: object,
    temperature: object,
    min_tokens_to_keep: object,
    rule: object,
    name: str = "logits",
) -> tuple[Tensor, Tensor] | None:
    """Top-H on ``(B, V)`` rows as ``(candidate indices (B, k), kept (B, k))``; ``None`` when every token of non-zero
    probability is kept.  The processor scatters the kept scores from it without a ``(B, V)`` mask.  It validates
    the rows (NaN, +inf, all -inf) from the row maxima: those of the top-k it computes when it has one, so the
    top-``n`` paths read the logits no more often than transformers' warper does."""
    alpha = _number("alpha", alpha, low=0.0, high=1.0, low_open=True)
    temperature = _number("temperature", temperature, low=0.0, high=math.inf, low_open=True, high_open=True)
    m = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    n_top = None if top_n is None else _positive_int("top_n", top_n)
    if rule not in ("paper", "hf"):
        raise ValueError(f"rule must be 'paper' or 'hf', got {rule!r}")
    b, v = z.shape
    if b == 0:
        return torch.zeros((0, 1), dtype=torch.long, device=z.device), torch.zeros((0, 1), dtype=torch.bool)
    z = z / temperature if temperature != 1.0 else z
    n = v if n_top is None else min(n_top, v)
    if n == v and rule != "hf":  # full vocabulary: one reduction validates
        _check_row_max(z.amax(-1), name)
    if alpha == 1.0 and rule == "paper":  # the threshold is the whole sum, never exceeded: all n candidates
        if n == v:
            return None
        top, idx = torch.topk(z, max(n, min(m, v)), dim=-1)
        _check_row_max(top[:, 0], name)
        sel = ~torch.isneginf(top)
        sel[:, : min(m, v)] = True
        return idx, sel
    if rule == "hf":
        top, idx = torch.topk(z, n, dim=-1)  # sorted
        _check_row_max(top[:, 0], name)
        dist = torch.distributions.Categorical(logits=top)
        terms = _neg_entropy_terms(torch.log_softmax(top, -1))
        tau = (dist.entropy() * alpha).unsqueeze(-1)
        sel = (terms.cumsum(-1) <= tau) & ~torch.isneginf(top)  # a filtered token is never brought back
    else:
        # full-vocabulary probabilities of the candidates, and their running entropy, in float64: in float32 the
        # cumulative sum of many tiny terms (a top probability of 0.99997 and more) drifts by ulps of tau, which
        # moves the cut by several tokens
        lse = torch.logsumexp(z.double(), -1, keepdim=True)  # (B, 1)
        if n == v:
            tau = _neg_entropy_terms(z.double() - lse).sum(-1, keepdim=True) * alpha  # alpha H(p)
            # first guess of the prefix length: alpha exp(H) tokens (exact for a uniform row), at least 256
            k = min(v, max(256, int(1.25 * alpha * math.exp(min(float(tau.max()) / alpha, 50.0))) + 16))
            while True:  # grow a partial top-k until every row's prefix crosses tau (a full sort at worst)
                top, idx = torch.topk(z, k, dim=-1)
                cum = _neg_entropy_terms(top.double() - lse).cumsum(-1)  # (B, k)
                if k == v or bool((cum[:, -1] > tau[:, 0]).all()):
                    break
                k = min(v, 8 * k)
        else:
            top, idx = torch.topk(z, n, dim=-1)
            _check_row_max(top[:, 0], name)
            cum = _neg_entropy_terms(top.double() - lse).cumsum(-1)  # (B, n)
            tau = cum[:, -1:] * alpha  # alpha times the candidates' summed terms
        sel = (cum <= tau) & ~torch.isneginf(top)  # a filtered token is never brought back
    if m > sel.shape[-1]:  # min_tokens_to_keep beyond the candidates: widen to the m most probable
        _, idx = torch.topk(z, min(m, v), dim=-1)
        sel = torch.cat([sel, torch.zeros_like(sel[:, :1]).expand(b, idx.shape[-1] - sel.shape[-1])], -1)
    sel[:, : min(m, sel.shape[-1])] = True  # the most probable token always
    return idx, sel


# ------------------------------------------------------------------------------------------------- min-p, eta
def min_p_mask(logits: Tensor, min_p: float, *, temperature: float = 1.0, min_tokens_to_keep: int = 1) -> Tensor:
    """Min-p keep-mask: tokens with ``p_i >= min_p * max_j p_j``, ``p = softmax(logits / temperature)``
    (temperature first, as transformers and vLLM), plus the ``min_tokens_to_keep`` most probable.

    Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs", arXiv 2407.01082;
    ``shared/specs/decoding.md`` section 2.

    >>> import torch
    >>> min_p_mask(torch.tensor([0.6, 0.25, 0.1, 0.05]).log(), 0.1).tolist()
    [True, True, True, False]
    """
    min_p = _number("min_p", min_p, low=0.0, high=1.0, low_open=False)
    temperature = _number("temperature", temperature, low=0.0, high=math.inf, low_open=True, high_open=True)
    min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    z, shape = _rows(logits)
    if z.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.bool, device=logits.device)
    logp = torch.log_softmax(z / temperature, -1)
    # p_i >= min_p * p_max  <=>  log p_i >= log min_p + log p_max (log 0 = -inf keeps everything at min_p = 0)
    keep = logp >= logp.amax(-1, keepdim=True) + (math.log(min_p) if min_p > 0 else -math.inf)
    return _keep_top(keep, z, min_tokens_to_keep).reshape(shape)


def top_p_mask(logits: Tensor, top_p: float, *, min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus (top-p) keep-mask: the most probable tokens up to and including the one whose cumulative probability
    reaches ``top_p``, and at least ``min_tokens_to_keep`` (the baseline the other rules are compared with).

    Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv 1904.09751; transformers'
    ``TopPLogitsWarper`` up to ties at the boundary.

    >>> import torch
    >>> top_p_mask(torch.tensor([0.6, 0.25, 0.1, 0.05]).log(), 0.8).tolist()
    [True, True, False, False]
    """
    top_p = _number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    z, shape = _rows(logits)
    if z.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.bool, device=logits.device)
    probs, idx = torch.sort(torch.softmax(z, -1), dim=-1, descending=True)
    before = probs.cumsum(-1) - probs  # mass of the more probable tokens
    sel = before < top_p
    sel[:, : min(min_tokens_to_keep, sel.shape[-1])] = True
    return torch.zeros_like(sel).scatter(-1, idx, sel).reshape(shape)


def eta_mask(logits: Tensor, epsilon: float, *, min_tokens_to_keep: int = 1) -> Tensor:
    """Eta-sampling keep-mask: drop tokens with ``p < eta``, ``eta = min(epsilon, sqrt(epsilon) exp(-H))`` (``H`` the
    entropy of ``p = softmax(logits)`` in nats); the ``min_tokens_to_keep`` most probable always stay.  A token at
    ``p = eta`` up to softmax's rounding (relative 1e-6) is kept.

    Hewitt et al., "Truncation Sampling as Language Model Desmoothing", arXiv 2210.15191, eq. (4); transformers'
    ``EtaLogitsWarper``; ``shared/specs/decoding.md`` section 3.

    >>> import torch
    >>> eta_mask(torch.tensor([0.6, 0.25, 0.1, 0.05]).log(), 0.2).tolist()
    [True, True, False, False]
    """
    epsilon = _number("epsilon", epsilon, low=0.0, high=1.0, low_open=True, high_open=True)
    min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    z, shape = _rows(logits)
    if z.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.bool, device=logits.device)
    logp = torch.log_softmax(z, -1)
    entropy = _neg_entropy_terms(logp).sum(-1, keepdim=True)
    eta = torch.minimum(torch.full_like(entropy, epsilon), math.sqrt(epsilon) * torch.exp(-entropy))
    # p = eta exactly (up to the rounding of softmax) is kept: a relative slack of a few float32 ulps
    return _keep_top(logp.exp() >= eta * (1 - 1e-6), z, min_tokens_to_keep).reshape(shape)


def epsilon_mask(logits: Tensor, epsilon: float, *, min_tokens_to_keep: int = 1) -> Tensor:
    """Epsilon-sampling keep-mask: drop tokens with ``p < epsilon``, ``p = softmax(logits)``; a token whose logit is
    at least the ``min_tokens_to_keep``-th largest always stays (transformers' ``EpsilonLogitsWarper`` rule, ties at
    that logit included).

    Hewitt et al., "Truncation Sampling as Language Model Desmoothing", arXiv 2210.15191, section 4;
    ``shared/specs/decoding.md`` section 3.  Computed in float32 (float64 kept) whatever the input dtype.

    >>> import torch
    >>> epsilon_mask(torch.tensor([0.6, 0.25, 0.1, 0.05]).log(), 0.08).tolist()
    [True, True, True, False]
    """
    epsilon = _number("epsilon", epsilon, low=0.0, high=1.0, low_open=True, high_open=True)
    min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    z, shape = _rows(logits)
    if z.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.bool, device=logits.device)
    probs = torch.softmax(z, -1)  # (B, V)
    kth = torch.topk(z, min(min_tokens_to_keep, z.shape[-1]), dim=-1).values[:, -1:]  # the m-th largest logit
    return ((probs >= epsilon) | (z >= kth)).reshape(shape)


def typical_mask(logits: Tensor, mass: float = 0.9, *, min_tokens_to_keep: int = 1) -> Tensor:
    """Locally typical keep-mask: order tokens by ``s_i = |-log p_i - H|`` (closest to the entropy first), keep the
    shortest such prefix whose probability reaches ``mass``, and every token tied with its last ``s``; the first
    ``min_tokens_to_keep`` in that order always stay.  The most probable token can be dropped.

    transformers' ``TypicalLogitsWarper`` rule: ``last`` = number of prefix sums below ``mass`` (at most ``V - 1``),
    keep ``s_i <= s_(last)``.  Meister et al., "Locally Typical Sampling", arXiv 2202.00666, eq. (6);
    ``shared/specs/decoding.md`` section 4.  Computed in float32 (float64 kept) whatever the input dtype.

    >>> import torch
    >>> typical_mask(torch.tensor([0.6, 0.25, 0.1, 0.05]).log(), 0.9).tolist()
    [True, True, True, False]
    """
    mass = _number("mass", mass, low=0.0, high=1.0, low_open=True, high_open=True)
    min_tokens_to_keep = _positive_int("min_tokens_to_keep", min_tokens_to_keep)
    z, shape = _rows(logits)
    if z.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.bool, device=logits.device)
    logp = torch.log_softmax(z, -1)  # (B, V)
    entropy = _neg_entropy_terms(logp).sum(-1, keepdim=True)  # (B, 1) nats; -inf entries contribute 0
    s = (-logp - entropy).abs()  # (B, V) distance to the entropy: +inf for filtered tokens
    s_sorted, order = torch.sort(s, dim=-1)  # closest first
    cum = z.gather(-1, order).softmax(-1).cumsum(-1)  # (B, V) probability of each prefix (as transformers sums it)
    last = (cum < mass).sum(-1, keepdim=True).clamp_max(z.shape[-1] - 1)  # (B, 1)
    keep_sorted = s_sorted <= s_sorted.gather(-1, last)  # ties with the last kept distance stay
    keep_sorted[:, : min(min_tokens_to_keep, z.shape[-1])] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted).reshape(shape)


# ------------------------------------------------------------------------------------------ entropy statistics
def entropy_varentropy(logits: Tensor, *, base: float | None = 2.0) -> tuple[Tensor, Tensor]:
    """Entropy ``H = -sum p log p`` and varentropy ``V = sum p (log p + H)^2`` of each row of ``softmax(logits)``,
    ``(B,)`` each, in bits by default (entropix's unit; ``base=None`` for nats).  ``-inf`` entries contribute 0.

    >>> import torch
    >>> h, v = entropy_varentropy(torch.tensor([[0.5, 0.25, 0.25]]).log())
    >>> round(float(h), 6), round(float(v), 6)
    (1.5, 0.25)
    """
    if base is not None:
        base = _number("base", base, low=1.0, high=math.inf, low_open=True, high_open=True)
    z, _ = _rows(logits)
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    if base is not None:
        logp = logp / math.log(base)
    # entries with p = 0 contribute nothing; testing p (not logp = -inf) also drops a finite but hugely negative
    # log-prob (logits 1e30 apart), whose squared surprisal would overflow to inf and give 0 * inf = NaN
    live = p > 0
    h = torch.where(live, -p * logp, 0.0).sum(-1)
    var = torch.where(live, p * (logp + h.unsqueeze(-1)) ** 2, 0.0).sum(-1)
    return h.clamp_min(0.0), var.clamp_min(0.0)


def entropix_regime(
    logits: Tensor,
    *,
    low_entropy: float = 0.1,
    high_entropy: float = 3.0,
    low_varentropy: float = 0.1,
    high_varentropy: float = 5.0,
    very_high_entropy: float = 5.0,
) -> Tensor:
    """entropix's classic regime of each row, as ids into :data:`ENTROPIX_REGIMES` ``(B,)`` (int64).

    In bits, checked in this order: ``LELV`` (0) ``H < low_entropy`` and ``V < low_varentropy`` (argmax);
    ``HELV`` (1) ``H > high_entropy`` and ``V < low_varentropy`` (clarify or sample hotter); ``LEHV`` (2)
    ``H < very_high_entropy`` and ``V > high_varentropy`` (hotter, wider top-k); ``HEHV`` (3)
    ``H > very_high_entropy`` and ``V > high_varentropy`` (much hotter); otherwise ``adaptive`` (4).  Defaults: the
    classic thresholds of xjdr-alt/entropix ``torch_sampler.py`` at commit 1eeacc3 (a heuristic, not a paper).

    >>> import torch
    >>> entropix_regime(torch.tensor([[0.0, -30.0, -30.0], [1.0, 1.0, 1.0]])).tolist()  # one-hot-ish, uniform
    [0, 4]
    """
    values = {
        "low_entropy": low_entropy,
        "high_entropy": high_entropy,
        "low_varentropy": low_varentropy,
        "high_varentropy": high_varentropy,
        "very_high_entropy": very_high_entropy,
    }
    for name, value in values.items():
        _number(name, value, low=0.0, high=math.inf, low_open=False, high_open=True)
    h, v = entropy_varentropy(logits)
    regime = torch.full(h.shape, 4, dtype=torch.int64, device=h.device)
    for rid, cond in reversed(
        [
            (0, (h < low_entropy) & (v < low_varentropy)),
            (1, (h > high_entropy) & (v < low_varentropy)),
            (2, (h < very_high_entropy) & (v > high_varentropy)),
            (3, (h > very_high_entropy) & (v > high_varentropy)),
        ]
    ):  # the first matching condition wins: apply them last-to-first
        regime = torch.where(cond, rid, regime)
    return regime


def adaptive_temperature(
    logits: Tensor,
    stats: Any,
    *,
    base_temperature: float = 1.0,
    tau: float = 0.05,
    compat: str = "paper",
) -> Tensor:
    r"""HAPO's per-token sampling temperature ``T_t = T (1 + tau clamp(h_hat_t, -1, 1))``, ``(B,)``.

    ``H_t`` is the entropy (nats) of ``softmax(logits / base_temperature)``; ``h_hat_t`` normalises ``log H_t`` with
    the statistics of the previous training batch (``stats``, a :class:`~entrolab.losses.HapoEntropyStats` from
    :func:`~entrolab.losses.hapo.hapo_normalized_entropy`): ``h = (log max(H, 1e-8) - pivot) / scale``, divided by
    ``pos_max`` where positive and by ``|neg_min|`` where not.  High-entropy (forking) positions are sampled slightly
    hotter, confident ones slightly colder.  ``compat="code"`` reproduces the released sampler patch: (1) its sign
    bug (negative ``h`` divided by the negative ``neg_min`` becomes positive: confident tokens get hotter), and (2)
    ``H_t`` measured on the **raw** logits (temperature 1) rather than at ``base_temperature`` (at ``T = 0.7`` the
    two entropies of a row differ, so the temperatures do too; identical at ``T = 1``).

    References
    ----------
    Liu et al., arXiv 2509.16591, section 3.2 (the vLLM sampler patch); ``shared/specs/decoding.md`` section 6.

    Examples
    --------
    >>> import math, torch
    >>> from entrolab.losses.hapo import HapoEntropyStats
    >>> one = torch.tensor(1.0)
    >>> neutral = torch.tensor(math.log(math.log(2)))  # pivot: H = ln 2 nats (a fair coin) is neutral
    >>> stats = HapoEntropyStats(neutral, one, one, -one)
    >>> logits = torch.tensor([[0.0, -40.0], [0.0, 0.0]])  # confident, and a fair coin
    >>> [round(t, 4) for t in adaptive_temperature(logits, stats).tolist()]
    [0.95, 1.0]
    """
    from entrolab.losses.hapo import HapoEntropyStats

    if not isinstance(stats, HapoEntropyStats):
        raise TypeError(f"stats must be a HapoEntropyStats (from hapo_normalized_entropy), got {describe(stats)}")
    base_temperature = check_temperature("base_temperature", base_temperature, torch.float32)
    tau = _number("tau", tau, low=0.0, high=1.0, low_open=False, high_open=True)
    if compat not in ("paper", "code"):
        raise ValueError(f"compat must be 'paper' or 'code', got {compat!r}")
    scale, pos_max, neg_min = (float(x) for x in (stats.scale, stats.pos_max, stats.neg_min))
    if not (scale > 0 and pos_max > 0 and neg_min < 0) or not all(map(math.isfinite, (scale, pos_max, neg_min))):
        raise ValueError(f"stats must have scale > 0, pos_max > 0 and neg_min < 0 (finite), got {stats}")
    z, shape = _rows(logits)
    measured_at = 1.0 if compat == "code" else base_temperature  # the released patch reads the raw logits
    logp = torch.log_softmax(z / measured_at, -1)
    entropy = _neg_entropy_terms(logp).sum(-1)
    h = (torch.log(entropy.clamp_min(1e-8)) - float(stats.pivot_value)) / scale
    neg_scale = neg_min if compat == "code" else -neg_min
    h_hat = (h.clamp_min(0) / pos_max + h.clamp_max(0) / neg_scale).clamp(-1.0, 1.0)
    out = base_temperature * (1 + tau * h_hat)
    return out.reshape(shape[:-1]) if len(shape) == 1 else out


# ------------------------------------------------------------------------------------------------- sampling
def sample_categorical(probs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``probs`` ``(B, V)`` (non-negative, each row with a positive sum): ``(B,)`` int64.

    Inverse-CDF sampling: one uniform per row against the float64 running sum of the row.  It draws from the same
    distribution as ``torch.multinomial(probs, 1)`` (tested) but reads each row once, where the CPU ``multinomial``
    makes several passes (``bench/sampling.py`` compares them).  Zero-probability entries are never drawn.
    """
    if not isinstance(probs, Tensor) or not probs.dtype.is_floating_point or probs.ndim != 2:
        raise ValueError(f"probs must be a floating (B, V) tensor, got {describe(probs)}")
    if probs.shape[1] == 0:
        if probs.shape[0]:
            raise ValueError(f"probs has an empty vocabulary axis (shape {tuple(probs.shape)}): nothing to draw")
        return torch.zeros(0, dtype=torch.int64, device=probs.device)
    cdf = torch.cumsum(probs, -1, dtype=torch.float64)  # (B, V)
    total = cdf[:, -1]
    if probs.numel() and not bool((total > 0).all() & torch.isfinite(total).all() & (probs.amin() >= 0)):
        raise ValueError("probs must be finite and non-negative, with a positive sum in every row")
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_max(probs.shape[1] - 1)


def sample(
    logits: Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float | Tensor = 1.0,
    processors: Sequence[Callable[[Tensor], Tensor]] = (),
) -> Tensor:
    """Draw one token per row: ``logits / temperature``, then each processor in order, then a categorical draw.

    Parameters
    ----------
    logits : Tensor
        ``(B, V)``.
    generator : torch.Generator, optional
        Seed it for reproducible draws.
    temperature : float or Tensor
        ``> 0``; a ``(B,)`` tensor gives each row its own (e.g. :func:`adaptive_temperature`).
    processors : sequence of callables
        Each maps ``(B, V)`` logits to filtered logits (``-inf`` where dropped), e.g.
        ``lambda z: z.masked_fill(~top_h_mask(z, 0.4), -inf)``.

    Returns
    -------
    Tensor
        ``(B,)`` int64 token ids.

    >>> import torch
    >>> z = torch.tensor([[0.0, 0.0, -math.inf], [5.0, -math.inf, -math.inf]])
    >>> sample(z, generator=torch.Generator().manual_seed(0)).tolist()[1]
    0
    """
    z, _ = _rows(logits)
    if z.ndim != 2 or logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    if isinstance(temperature, Tensor):
        if temperature.shape != (z.shape[0],) or not bool((temperature > 0).all() & torch.isfinite(temperature).all()):
            raise ValueError(f"temperature must be > 0, a number or a (B,) tensor, got {describe(temperature)}")
        z = z / temperature.to(z).unsqueeze(-1)
    else:
        t = _number("temperature", temperature, low=0.0, high=math.inf, low_open=True, high_open=True)
        z = z / t if t != 1.0 else z
    for proc in processors:
        z = proc(z)
        if bool(torch.isneginf(z).all(-1).any()) or bool(torch.isnan(z).any()):
            raise ValueError(f"processor {proc!r} left a row with no finite logit (or NaN)")
    return sample_categorical(torch.softmax(z, -1), generator=generator)
