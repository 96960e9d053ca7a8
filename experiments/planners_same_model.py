"""Planners compared on the same learned model: restore an MPC run's final model and
plan through it with each ``--planner`` setting from the same fixed starts.

Removes the data-collection noise of comparing whole runs (each run's planner also
chose the data its model learned from): every planner here acts through one model per
run. Each setting is a list of ``planner.key=value`` overrides; the run's own
``[planner]`` fills the rest.

    python experiments/planners_same_model.py runs/icem/icem100-s0 --episodes 5 \\
        --planner cem planner.kind=cem planner.population=200 planner.iterations=5 \\
        --planner icem planner.kind=icem planner.population=100 planner.iterations=3 \\
        --out experiments/planners_same_model_s0.json

``--plot FIG.png`` draws each planner's mean return per run (and over the runs) from
``--out``; with no runs given it only draws an existing ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from distill_policy import episodes

from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import Experiment
from bayes_mbrl.runs import CONFIG_FILE, check_run_dir

__all__ = ["main"]


def evaluate(run: Path, overrides: list[str], n: int, start_seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run, copy)
        check_run_dir(copy)
        config = load_config(copy / CONFIG_FILE, [*overrides, "experiment.threads=1"])
        exp = Experiment(config, copy)
        exp.restore()
        starts = list(range(start_seed, start_seed + n))
        env_id, length = config.env.id, config.env.episode_length
        returns, seconds = episodes(exp.parts.agent, env_id, length, starts)
    return {"returns": [round(r, 1) for r in returns], "mean": float(np.mean(returns)),
            "seconds_per_action": seconds}  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars: each planner's mean return on each run's model, and the mean over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planners = list(dict.fromkeys(r["planner"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(planners), 3.6))
    width = 0.8 / (len(runs) + 1)
    for j, run in enumerate([*runs, "mean"]):
        values = []
        for p in planners:
            means = [r["mean"] for r in rows if r["planner"] == p and run in (r["run"], "mean")]
            values.append(float(np.mean(means)) if means else np.nan)
        x = np.arange(len(planners)) + (j - len(runs) / 2) * width
        label = "mean over runs" if run == "mean" else Path(run).name
        ax.bar(x, values, width, label=label, color="k" if run == "mean" else None)
    ax.set_xticks(np.arange(len(planners)), planners, rotation=20)
    ax.set_ylabel("mean return from the fixed starts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--planner", nargs="+", action="append", default=[],
                        metavar=("NAME", "KEY=VALUE"))  # fmt: skip
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--start-seed", type=int, default=20000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if not args.runs:
        if args.plot is None:
            parser.error("give run directories and --planner settings, or --plot")
        plot(json.loads(args.out.read_text()), args.plot)
        return
    if not args.planner:
        parser.error("give at least one --planner NAME KEY=VALUE ...")
    rows = []
    for run in args.runs:
        for name, *overrides in args.planner:
            row = {"run": str(run), "planner": name, "overrides": overrides}
            row.update(evaluate(run, overrides, args.episodes, args.start_seed))
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.write_text(json.dumps(rows, indent=1))
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
