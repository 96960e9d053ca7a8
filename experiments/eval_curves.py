"""Learning curves from evaluation episodes, and the environment steps to a target.

Reads each run directory's ``metrics.csv`` (grouped by label: the directory name
without its ``-s<seed>`` suffix). A run with evaluation episodes
(``experiment.eval_episodes``) is read from them: the point ``(eval_at_steps,
eval_return)`` is the policy trained on that many steps; a run without (an MPC run, whose
planner acts without exploration noise) from its training episodes ``(env_steps,
return)``. Reports per run the first step count whose return reaches ``--target``
(and the first from which it stays there until the run's end) and the run's wall time
(``timings.csv``), per label the mean over seeds; plots each label's mean curve over
the seeds with the seeds' spread.

    python experiments/eval_curves.py runs/mbpo/mbpo-s0 ... runs/mbpo/sac-s0 ... \\
        --target -200 --out experiments/mbpo_pendulum.json --plot experiments/mbpo_pendulum.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["curve", "main", "steps_to", "steps_to_stay"]


def curve(run: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(steps, returns, source)`` of a run: its evaluations, else its training episodes."""
    m = pd.read_csv(run / "metrics.csv")
    if "eval_return" in m and m["eval_return"].notna().any():
        e = m[m["eval_return"].notna()]
        return e["eval_at_steps"].to_numpy(int), e["eval_return"].to_numpy(float), "eval"
    planned = m[m["policy"] != "random"]
    return planned["env_steps"].to_numpy(int), planned["return"].to_numpy(float), "train"


def steps_to(steps: np.ndarray, returns: np.ndarray, target: float) -> int | None:
    """The first step count whose return is at least ``target``."""
    hit = np.flatnonzero(returns >= target)
    return int(steps[hit[0]]) if len(hit) else None


def steps_to_stay(steps: np.ndarray, returns: np.ndarray, target: float) -> int | None:
    """The first step count from which every later return is at least ``target``."""
    below = np.flatnonzero(returns < target)
    if not len(below):
        return int(steps[0]) if len(steps) else None
    return int(steps[below[-1] + 1]) if below[-1] + 1 < len(steps) else None


def _label(run: Path) -> tuple[str, int]:
    m = re.fullmatch(r"(.*)-s(\d+)", run.name)
    return (m.group(1), int(m.group(2))) if m else (run.name, 0)


def _mean(values: list[int | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--order", nargs="*", default=[], help="labels in this order first")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--name", nargs="*", default=[], metavar="LABEL=TEXT", help="legend text for a label"
    )
    args = parser.parse_args()
    names = dict(n.split("=", 1) for n in args.name)
    rows: list[dict[str, Any]] = []
    for run in args.runs:
        steps, returns, source = curve(run)
        label, seed = _label(run)
        timings = pd.read_csv(run / "timings.csv")
        rows.append(
            {
                "run": str(run),
                "label": label,
                "seed": seed,
                "source": source,
                "steps": steps.tolist(),
                "returns": [round(float(r), 1) for r in returns],
                "steps_to_target": steps_to(steps, returns, args.target),
                "steps_to_stay": steps_to_stay(steps, returns, args.target),
                "wall_seconds": round(float(timings["episode_seconds"].sum()), 1),
                "episodes": len(timings),
            }
        )
    labels = sorted(
        {r["label"] for r in rows},
        key=lambda x: (x not in args.order, args.order.index(x) if x in args.order else 0, x),
    )
    summary = {}
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        reached = [r["steps_to_target"] for r in mine]
        summary[label] = {
            "seeds": [r["seed"] for r in mine],
            "steps_to_target": reached,
            "mean_steps_to_target": _mean(reached),
            "steps_to_stay": [r["steps_to_stay"] for r in mine],
            "mean_steps_to_stay": _mean([r["steps_to_stay"] for r in mine]),
            "wall_seconds": [r["wall_seconds"] for r in mine],
            "last_return_mean": float(np.mean([r["returns"][-1] for r in mine])),
        }
        print(label, json.dumps(summary[label]))
    args.out.write_text(
        json.dumps({"target": args.target, "summary": summary, "runs": rows}, indent=1)
    )
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label in labels:
            mine = [r for r in rows if r["label"] == label]
            grid = sorted({s for r in mine for s in r["steps"]})
            # each seed's curve held constant between its points (at its last point after)
            values = np.array(
                [np.interp(grid, r["steps"], r["returns"]) for r in mine], dtype=float
            )
            text = names.get(label, label)
            line = ax.plot(grid, values.mean(0), label=f"{text} ({mine[0]['source']})")[0]
            ax.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
        ax.axhline(args.target, color="k", ls=":", lw=1)
        ax.set(
            xlabel="environment steps",
            ylabel="return (mean of seeds; band: min-max)",
            title=args.title,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
