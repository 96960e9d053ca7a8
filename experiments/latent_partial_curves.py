"""Learning curves of latent-model runs (partially observed or pixel pendulum), one
line per run directory, and the mean return over an episode window per run.

    python experiments/latent_partial_curves.py runs/latent_partial/filtering-s0 \
        runs/latent_partial/single_step-s0 runs/latent_partial/latent_ac-s0 \
        --window 6 10 --out experiments/latent_partial_seed0.png

``--random N`` also measures the uniform random policy on the first run's env over
``N`` episodes (env seeds 10000 .. 10000 + N - 1, action seeds the same) and draws
its mean with the line ``mean + 300``; ``--target`` draws a fixed target instead of
the partial-observation one (-250); ``--title`` names the plot.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", nargs=2, type=int, default=(6, 10))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--random", type=int, default=0, help="random-policy episodes")
    parser.add_argument("--target", type=float, default=-250.0)
    parser.add_argument(
        "--title",
        default="PendulumPartial-v0 (noisy angle only): latent MPC and latent actor-critic",
    )
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    first, last = args.window
    for run in args.runs:
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        episodes = [int(r["episode"]) for r in rows]
        returns = [float(r["return"]) for r in rows]
        window = [g for e, g in zip(episodes, returns, strict=True) if first <= e <= last]
        mean = sum(window) / len(window) if window else float("nan")
        print(f"{run.name}: episodes {first}-{last} mean {mean:.1f} over {len(window)}; "
              f"returns {[round(g, 1) for g in returns]}")  # fmt: skip
        ax.plot(episodes, returns, marker="o", label=f"{run.name} (eps {first}-{last}: {mean:.0f})")
    if args.random:
        base = random_policy_mean(args.runs[0], args.random)
        ax.axhline(base, color="black", ls="--", label=f"random policy ({base:.0f})")
        ax.axhline(base + 300, color="gray", ls=":", label=f"random + 300 ({base + 300:.0f})")
    else:
        ax.axhline(args.target, color="gray", ls=":", label=f"target {args.target:g}")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(args.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


def random_policy_mean(run: Path, episodes: int) -> float:
    """Mean return of uniformly random actions on ``run``'s env over ``episodes``."""
    import numpy as np

    from bayes_mbrl.envs import make_env
    from bayes_mbrl.runs import read_run_config

    cfg = read_run_config(run)
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.episode_length)
    returns = []
    for k in range(episodes):
        env.reset(seed=10000 + k)
        env.action_space.seed(10000 + k)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    mean, sd = float(np.mean(returns)), float(np.std(returns, ddof=1))
    print(f"random policy on {cfg.env.id}: mean {mean:.1f} (sd {sd:.1f}) over {episodes} episodes")
    return mean


if __name__ == "__main__":
    main()
