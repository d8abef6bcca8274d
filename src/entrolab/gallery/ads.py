"""Gallery entry ``ads``: which pixel to measure next? Maximum particle entropy against random and exact variance.

The spec's demo without diffusion (``shared/specs/beyond_llm.md`` section 10): a 10-component full-covariance
Gaussian mixture fitted to 1,500 of scikit-learn's 8 x 8 digits (scaled to [0, 1]) is the prior; under noiseless
pixel observations the posterior is again a Gaussian mixture (exact).  For 100 held-out digits, 10 pixels are
acquired one at a time by (a) random choice, (b) the largest exact posterior variance, (c) the largest particle
entropy of 16 posterior samples (:func:`entrolab.selection.max_entropy_measurement`, sigma 0.1, the paper's
criterion) and (d) the authors' positive-exponent score.  Metric: MSE of the posterior mean over the whole image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from entrolab._stats import format_interval, mean_interval
from entrolab.gallery._common import pyplot, run_variants, save_figure
from entrolab.selection import max_entropy_measurement

TITLE = "Active subsampling: maximum-entropy measurement under posterior particles"
PAPER = "arXiv 2406.14388"
CLAIM = (
    "Choosing the next measurement where the posterior particles disagree most (maximum entropy) reconstructs a "
    "signal from far fewer measurements than random or fixed masks."
)
VARIANTS = ("particle_entropy", "random", "posterior_variance", "code_score")
PIXELS, PARTICLES, SIGMA, DIGITS, QUICK_DIGITS = 10, 16, 0.1, 100, 6


def setup(quick: bool) -> str:
    digits = QUICK_DIGITS if quick else DIGITS
    return (
        "a 10-component full-covariance Gaussian mixture fitted to 1,500 scikit-learn digits (8 x 8) as the prior, "
        f"exact mixture posteriors; {PIXELS} pixels acquired for each of {digits} held-out digits by particle "
        f"entropy ({PARTICLES} particles, sigma {SIGMA}), random choice, exact posterior variance and the code's "
        "positive-exponent score."
    )


class _Prior:
    def __init__(self, seed: int) -> None:
        from sklearn.datasets import load_digits
        from sklearn.mixture import GaussianMixture

        data = load_digits().data / 16.0
        rng = torch.Generator().manual_seed(seed)
        order = torch.randperm(data.shape[0], generator=rng).numpy()
        self.train, self.test = data[order[:1500]], data[order[1500:]]
        gmm = GaussianMixture(10, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(self.train)
        self.w = torch.tensor(gmm.weights_)
        self.mu = torch.tensor(gmm.means_)
        self.cov = torch.tensor(gmm.covariances_)

    def posterior(self, obs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Component weights ``(K,)``, conditional means ``(K, D)`` and covariances ``(K, D, D)`` (observed pixels
        fixed at their values)."""
        if obs.numel() == 0:
            return self.w, self.mu, self.cov
        s_oo = self.cov[:, obs][:, :, obs]
        s_ao = self.cov[:, :, obs]
        diff = y - self.mu[:, obs]  # (K, o)
        chol = torch.linalg.cholesky(s_oo)
        alpha = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)
        loglik = -0.5 * (diff * alpha).sum(-1) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        loglik = loglik - 0.5 * obs.numel() * math.log(2 * math.pi)
        w = torch.softmax(torch.log(self.w) + loglik, 0)
        mean = self.mu + (s_ao @ alpha.unsqueeze(-1)).squeeze(-1)
        cov = self.cov - s_ao @ torch.cholesky_solve(s_ao.transpose(1, 2), chol)
        return w, mean, cov


def _reconstruct(prior: _Prior, x: torch.Tensor, strategy: str, gen: torch.Generator) -> float:
    d = x.shape[0]
    measured = torch.zeros(d, dtype=torch.bool)
    for _ in range(PIXELS):
        obs = measured.nonzero().squeeze(1)
        w, mean, cov = prior.posterior(obs, x[obs])
        if strategy == "random":
            free = (~measured).nonzero().squeeze(1)
            pick = int(free[torch.randint(free.numel(), (1,), generator=gen)])
        elif strategy == "posterior_variance":
            m = (w.unsqueeze(1) * mean).sum(0)
            var = (w.unsqueeze(1) * (torch.diagonal(cov, dim1=-2, dim2=-1) + mean**2)).sum(0) - m**2
            pick = int(torch.where(measured, -math.inf, var).argmax())
        else:
            comp = torch.multinomial(w, PARTICLES, replacement=True, generator=gen)
            eye = 1e-9 * torch.eye(d, dtype=cov.dtype)
            chol = torch.linalg.cholesky(cov[comp] + eye)
            eps = torch.randn(PARTICLES, d, 1, generator=gen, dtype=cov.dtype)
            particles = mean[comp] + (chol @ eps).squeeze(-1)  # (N, D)
            sign = 1 if strategy == "code_score" else -1
            pick, _ = max_entropy_measurement(particles, measured, sigma=SIGMA, exponent_sign=sign)
        measured[pick] = True
    obs = measured.nonzero().squeeze(1)
    w, mean, _ = prior.posterior(obs, x[obs])
    return float((((w.unsqueeze(1) * mean).sum(0) - x) ** 2).mean())


def train_variant(variant: str, *, seed: int, updates: int) -> dict[str, Any]:
    prior = _Prior(seed)
    gen = torch.Generator().manual_seed(seed)
    test = torch.tensor(prior.test[:updates])
    errors = [_reconstruct(prior, x, variant, gen) for x in test]
    return {"mse": sum(errors) / len(errors)}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    return run_variants(train_variant, VARIANTS, seed=seed, updates=QUICK_DIGITS if quick else DIGITS)


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    def col(v: str) -> list[float]:
        return [r[v]["mse"] for r in results]

    def f(v: str) -> str:
        return format_interval(*mean_interval(col(v)), digits=4)

    rows = [
        (f"posterior-mean MSE after {PIXELS} pixels: vs random", f("particle_entropy"), f("random")),
        ("... vs exact posterior variance", f("particle_entropy"), f("posterior_variance")),
        ("... vs the code's positive-exponent score", f("particle_entropy"), f("code_score")),
    ]
    mean = {v: sum(col(v)) / len(results) for v in VARIANTS}
    ratio = mean["random"] / max(mean["particle_entropy"], 1e-12)
    verdict = (
        f"Maximum particle entropy reaches MSE {mean['particle_entropy']:.4f} against {mean['random']:.4f} for "
        f"random pixels ({ratio:.1f}x lower), {mean['posterior_variance']:.4f} for the exact posterior variance and "
        f"{mean['code_score']:.4f} for the code's score."
    )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, v in enumerate(VARIANTS):
        vals = [r[v]["mse"] for r in results]
        ax.scatter([k] * len(vals), vals, color=f"C{k}")
    ax.set_xticks(range(len(VARIANTS)), ["particle\nentropy", "random", "posterior\nvariance", "code\nscore"])
    ax.set(ylabel=f"MSE after {PIXELS} pixels", title="one point per seed (100 digits each)")
    save_figure(fig, [ax], path)
