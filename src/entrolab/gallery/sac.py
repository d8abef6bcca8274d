"""Gallery entry ``sac``: our single-file SAC with the Lagrangian temperature against stable-baselines3's SAC.

Both train on gymnasium's ``Pendulum-v1`` with the same seed, step budget and defaults (Adam 3e-4, batch 256, two
256-unit layers, gamma 0.99, tau 0.005, 100 random warm-up steps, target entropy ``-dim(A) = -1``); both are
evaluated with the deterministic (mean) action over 5 episodes every 1,000 steps.  Ours uses the paper's temperature
loss, SB3 the log-alpha form (``shared/specs/beyond_llm.md`` section 17: same fixed point, different step size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrolab._stats import format_interval, mean_interval
from entrolab.gallery._common import pyplot, save_figure

TITLE = "Soft Actor-Critic: an entropy target instead of a fixed temperature"
PAPER = "arXiv 1812.05905"
CLAIM = (
    "Tuning the temperature so that the policy's entropy meets a target (-dim(A)) removes SAC's most sensitive "
    "hyperparameter and matches tuned fixed temperatures; SAC solves Pendulum (return above about -200) within a "
    "few thousand steps."
)
STEPS, QUICK_STEPS = 15_000, 1_200
EVAL_EVERY, QUICK_EVAL_EVERY = 1_000, 600
TARGET_RETURN = -250.0


def setup(quick: bool) -> str:
    steps = QUICK_STEPS if quick else STEPS
    return (
        f"Pendulum-v1, {steps:,} environment steps, one gradient step per step after 100 random ones; "
        "entrolab's examples/sac_continuous.py (LagrangianTemperature, paper loss) against stable-baselines3 SAC "
        "(ent_coef='auto'), same seeds; deterministic evaluation over 5 episodes."
    )


def _sb3(seed: int, steps: int, eval_every: int) -> dict[str, Any] | None:
    try:
        import gymnasium as gym
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        return None
    import time

    import numpy as np

    def evaluate(model: Any) -> float:
        env, total = gym.make("Pendulum-v1"), 0.0
        for k in range(5):
            obs, _ = env.reset(seed=10_000 + seed + k)
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = term or trunc
        env.close()
        return total / 5

    curve: list[list[float]] = []
    alpha: list[list[float]] = []

    class Every(BaseCallback):
        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n % eval_every == 0 or n == steps:
                curve.append([n, evaluate(self.model)])
                model: Any = self.model
                alpha.append([n, float(np.exp(model.log_ent_coef.detach().item()))])
            return True

    t0 = time.perf_counter()
    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), seed=seed, learning_starts=100, verbose=0, device="cpu")
    model.learn(total_timesteps=steps, callback=Every())
    return {"returns": curve, "alpha": alpha, "final_return": curve[-1][1], "seconds": time.perf_counter() - t0}


def run(seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """One seed: ``{"ours": ..., "sb3": ... or None}`` with return curves, temperature and entropy trajectories."""
    from entrolab.gallery.sac_continuous import train

    steps = QUICK_STEPS if quick else STEPS
    every = QUICK_EVAL_EVERY if quick else EVAL_EVERY
    ours = train("Pendulum-v1", steps=steps, seed=seed, eval_every=every, eval_episodes=2 if quick else 5)
    return {"seed": seed, "steps": steps, "ours": ours, "sb3": _sb3(seed, steps, every)}


def summarize(results: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], str]:
    ours = [r["ours"]["final_return"] for r in results]
    sb3 = [r["sb3"]["final_return"] for r in results if r.get("sb3")]
    rows = [
        (
            "final return",
            format_interval(*mean_interval(ours), digits=1),
            format_interval(*mean_interval(sb3), digits=1),
        ),
        (
            "final temperature alpha",
            format_interval(*mean_interval([r["ours"]["alpha"][-1][1] for r in results]), digits=4),
            format_interval(*mean_interval([r["sb3"]["alpha"][-1][1] for r in results if r.get("sb3")]), digits=4),
        ),
        (
            "final policy entropy (target -1)",
            format_interval(*mean_interval([r["ours"]["entropy"][-1][1] for r in results]), digits=3),
            "-",
        ),
        (
            "seconds per run",
            format_interval(*mean_interval([r["ours"]["seconds"] for r in results]), digits=0),
            format_interval(*mean_interval([r["sb3"]["seconds"] for r in results if r.get("sb3")]), digits=0),
        ),
    ]
    steps = results[0]["steps"]
    mean_ours = sum(ours) / len(ours)
    above = sum(v > TARGET_RETURN for v in ours)
    if sb3:
        lo, hi = min(sb3), max(sb3)
        within = lo <= mean_ours <= hi or (min(ours) <= hi and max(ours) >= lo)
        verdict = (
            f"Ours: mean final return {mean_ours:.1f} after {steps:,} steps, {'within' if within else 'outside'} the "
            f"spread of stable-baselines3's seeds [{lo:.1f}, {hi:.1f}]; above {TARGET_RETURN:.0f} in {above} of "
            f"{len(ours)} seeds."
        )
    else:
        verdict = (
            f"Ours: mean final return {mean_ours:.1f} after {steps:,} steps, above {TARGET_RETURN:.0f} in {above} of "
            f"{len(ours)} seeds; stable-baselines3 is not installed, so there is no baseline in this run."
        )
    return rows, verdict


def figure(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in results:
        s, v = zip(*r["ours"]["returns"])
        axes[0].plot(s, v, color="C0", alpha=0.8, label="entrolab SAC" if r is results[0] else None)
        a_s, a_v = zip(*r["ours"]["alpha"])
        axes[1].plot(a_s, a_v, color="C0", alpha=0.8, label="entrolab" if r is results[0] else None)
        if r.get("sb3"):
            s, v = zip(*r["sb3"]["returns"])
            axes[0].plot(s, v, color="C1", alpha=0.8, label="stable-baselines3 SAC" if r is results[0] else None)
            a_s, a_v = zip(*r["sb3"]["alpha"])
            axes[1].plot(a_s, a_v, color="C1", alpha=0.8, label="stable-baselines3" if r is results[0] else None)
    axes[0].axhline(TARGET_RETURN, color="grey", lw=0.8, ls="--")
    axes[0].set(xlabel="environment step", ylabel="evaluation return", title="Pendulum-v1 (one line per seed)")
    axes[1].set(xlabel="environment step", ylabel="alpha", yscale="log", title="temperature")
    save_figure(fig, axes, path)
