"""MCTS with a learned ensemble on CartPole-v1: the preset ``cartpole-mcts`` for several
seeds, one after the other, summarized in a JSON file and a learning-curve figure.

Each seed runs ``bayes-mbrl run cartpole-mcts --seed N`` (one random episode, then UCT
over the probabilistic ensemble's members, refitted after every episode); the run
directories go under ``runs/``.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/mcts_cartpole.py
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import run_experiment


def main(seeds: int, out: str, plot: str, runs: str, last: int) -> dict[str, object]:
    results = []
    for seed in range(seeds):
        run_dir = Path(runs) / f"mcts_cartpole-seed{seed}"
        if not (run_dir / "metrics.csv").exists():  # a finished run is summarized again
            overrides = ["experiment.progress=false", "experiment.threads=1"]
            run_experiment(load_config("cartpole-mcts", overrides, seed=seed), run_dir)
        rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
        returns = [float(r["return"]) for r in rows]
        timings = list(csv.DictReader(open(run_dir / "timings.csv")))
        steps = [int(r["env_steps"]) for r in rows]
        plan = [float(t["plan_seconds"]) for t in timings]
        results.append({
            "seed": seed,
            "returns": returns,
            "policy": [r["policy"] for r in rows],
            "plan_seconds_per_step": [
                p / max(1, s - s0) for p, s, s0 in zip(plan, steps, [0, *steps[:-1]], strict=True)
            ],
        })  # fmt: skip
        print(seed, returns, flush=True)
    tail = [x for r in results for x in r["returns"][-last:]]  # type: ignore[index]
    summary = {
        "preset": "cartpole-mcts",
        "runs": results,
        "last_episodes": last,
        "mean_return_last_episodes": sum(tail) / len(tail),
        "episodes_at_500_last": sum(x >= 500 for x in tail),
        "episodes_last_total": len(tail),
    }
    Path(out).write_text(json.dumps(summary, indent=1))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        returns = r["returns"]
        ax.plot(range(1, len(returns) + 1), returns, marker="o", label=f"seed {r['seed']}")
    ax.axhline(500, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("episode (1: random)")
    ax.set_ylabel("return")
    ax.set_title("CartPole-v1: MCTS over a learned ensemble")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--last", type=int, default=5, help="episodes averaged at the end")
    parser.add_argument("--out", default="experiments/mcts_cartpole.json")
    parser.add_argument("--plot", default="experiments/mcts_cartpole.png")
    parser.add_argument("--runs", default="runs")
    a = parser.parse_args()
    main(a.seeds, a.out, a.plot, a.runs, a.last)
