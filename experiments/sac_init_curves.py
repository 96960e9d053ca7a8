"""Learning curves of SAC runs, and the environment steps each needs to reach a return.

Reads the ``metrics.csv`` of each run directory (grouped by label: the directory name
without its ``-s<seed>`` suffix) and reports, per run, the environment steps at which
the mean return of ``--window`` consecutive episodes first reaches ``--target``. For a
run started from a distilled policy (``sac.init_policy``), the steps the distillation
run took (its own ``env_steps``) are reported too, added to the SAC run's, since that
policy was learned from them. Plots every run's curve (rolling mean) per label.

    python experiments/sac_init_curves.py runs/sac_init/init-s0 runs/sac_init/init-s1 \\
        runs/sac_init/scratch-s0 ... --out experiments/sac_init.json \\
        --plot experiments/sac_init_curves.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayes_mbrl.runs import read_run_config

__all__ = ["main", "steps_to_target"]


def steps_to_target(
    returns: np.ndarray, env_steps: np.ndarray, target: float, window: int
) -> int | None:
    """Env steps at the end of the first ``window`` episodes whose mean is >= target."""
    for end in range(window, len(returns) + 1):
        if returns[end - window : end].mean() >= target:
            return int(env_steps[end - 1])
    return None


def summarize(run: Path, target: float, window: int) -> dict[str, Any]:
    metrics = pd.read_csv(run / "metrics.csv")
    returns = metrics["return"].to_numpy(float)
    steps = metrics["env_steps"].to_numpy(int)
    config = read_run_config(run)
    init = config.sac.init_policy
    prior = 0
    if init:
        prior = int(pd.read_csv(Path(init) / "metrics.csv")["env_steps"].iloc[-1])
    reached = steps_to_target(returns, steps, target, window)
    return {
        "run": str(run),
        "label": re.sub(r"-s\d+$", "", run.name),
        "seed": config.experiment.seed,
        "init_policy": init,
        "distillation_env_steps": prior,
        "steps_to_target": reached,
        "steps_to_target_with_distillation": None if reached is None else reached + prior,
        "returns": [round(float(r), 1) for r in returns],
        "env_steps": steps.tolist(),
    }


def plot(rows: list[dict[str, Any]], window: int, target: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in rows:
        ret = pd.Series(r["returns"]).rolling(window, min_periods=1).mean()
        first = r["seed"] == min(x["seed"] for x in rows)
        label = r["label"] if first else None
        ax.plot(r["env_steps"], ret, color=colors[r["label"]], alpha=0.8, label=label)
    ax.axhline(target, color="k", lw=0.8, ls="--")
    ax.set_xlabel("environment steps of the SAC run")
    ax.set_ylabel(f"return, mean of the last {window} episodes")
    ax.legend()
    ax.set_title("SAC on Pendulum-v1: from scratch and from the distilled MPC policy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--target", type=float, default=-200.0)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    rows = [summarize(r, args.target, args.window) for r in args.runs]
    for r in rows:
        print(
            f"{r['label']:>14} s{r['seed']}: steps to {args.target:g} "
            f"{r['steps_to_target']} (with distillation {r['steps_to_target_with_distillation']})"
        )
    if args.out:
        meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        meta["runs"] = [str(r) for r in args.runs]
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.window, args.target, args.plot)


if __name__ == "__main__":
    main()
