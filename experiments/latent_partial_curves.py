"""Learning curves of runs on the partially observed pendulum, one line per run
directory, and the mean return over an episode window per run.

    python experiments/latent_partial_curves.py runs/latent_partial/filtering-s0 \
        runs/latent_partial/single_step-s0 runs/latent_partial/latent_ac-s0 \
        --window 6 10 --out experiments/latent_partial_seed0.png
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
    ax.axhline(-250, color="gray", ls=":", label="target -250")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title("PendulumPartial-v0 (noisy angle only): latent MPC and latent actor-critic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
