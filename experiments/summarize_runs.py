"""Summarize and plot several runs of one configuration (one run per seed).

Reads ``metrics.csv`` from each run directory, prints per-seed and pooled means
of the return over an episode window, the whole-run wall time, and writes one
learning-curve figure with every seed and their mean.

Run: ``python experiments/summarize_runs.py RUN_DIR [RUN_DIR ...] --window 4 8 --out FIG.png``
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``run_dir/metrics.csv``, joined with ``timings.csv`` (runs written
    before the split carry the timing columns in ``metrics.csv`` itself)."""
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if (run_dir / "timings.csv").exists():
        with open(run_dir / "timings.csv") as f:
            for row, timing in zip(rows, csv.DictReader(f), strict=True):
                row.update(timing)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", nargs=2, type=int, default=(4, 8), metavar=("FIRST", "LAST"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    first, last = args.window
    pooled: list[float] = []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    curves = []
    for run in args.runs:
        rows = read(run)
        episodes = [int(r["episode"]) for r in rows]
        returns = [float(r["return"]) for r in rows]
        window = [ret for ep, ret in zip(episodes, returns, strict=True) if first <= ep <= last]
        seconds = sum(float(r["episode_seconds"]) for r in rows)
        plan = sum(float(r["plan_seconds"]) for r in rows)
        fit = sum(float(r["fit_seconds"]) for r in rows)
        pooled += window
        curves.append(returns)
        print(
            f"{run}: episodes {first}-{last} mean return {statistics.mean(window):8.1f} "
            f"(n={len(window)}, min {min(window):.1f}, max {max(window):.1f}) | "
            f"run {seconds:.0f} s (plan {plan:.0f} s, fit {fit:.0f} s) | "
            f"returns {', '.join(f'{r:.0f}' for r in returns)}"
        )
        ax.plot(episodes, returns, marker="o", alpha=0.5, label=run.name)
    print(
        f"pooled over {len(args.runs)} runs: episodes {first}-{last} mean return "
        f"{statistics.mean(pooled):.1f} (n={len(pooled)})"
    )
    if args.out is not None:
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        ax.plot(range(1, n + 1), mean, color="black", linewidth=2.5, label="mean over seeds")
        ax.axvspan(first - 0.5, last + 0.5, color="tab:green", alpha=0.08, label="judged window")
        ax.set_xlabel("episode")
        ax.set_ylabel("return")
        ax.set_title(args.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"figure written to {args.out}")


if __name__ == "__main__":
    main()
