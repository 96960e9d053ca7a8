"""Boundary violations and returns of runs on ``bayes_mbrl/NoisyCliff-v0``.

Reads each run's ``transitions.f32`` and counts, per episode, the steps that ended
beyond the cliff edge (``x' > EDGE``). Runs are grouped by variant, the directory
name before ``-s<seed>`` (as ``experiments/parallel_runs.py`` names them).

    python experiments/risk_cliff.py runs/cliff/*-s? --early 2 3 --late 6 7 8 \
        --out experiments/risk_cliff.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bayes_mbrl.envs.noisy_cliff import EDGE
from bayes_mbrl.runs import TransitionLog


def episodes_of(run_dir: Path) -> list[dict[str, float]]:
    """Per finished episode (1-based, as in metrics.csv): return, violations, mean position."""
    log = TransitionLog(run_dir / "transitions.f32", 1, 1)
    _, _, reward, next_obs, _, _, episode = log.split_row(log.read())
    with open(run_dir / "metrics.csv") as f:
        finished = len(f.read().strip().splitlines()) - 1
    out = []
    for e in np.unique(episode)[:finished]:
        m = episode == e
        x = next_obs[m, 0]
        out.append(
            {
                "episode": int(e) + 1,
                "return": float(reward[m].sum()),
                "violations": int((x > EDGE).sum()),
                "mean_x_last_half": float(x[len(x) // 2 :].mean()),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--early", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--late", nargs="+", type=int, default=[6, 7, 8])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    by_variant: dict[str, dict[str, Any]] = defaultdict(dict)
    for run in sorted(args.runs):
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        variant, seed = (match.group(1), match.group(2)) if match else (run.name, "?")
        by_variant[variant][seed] = episodes_of(run)
    summary: dict[str, Any] = {}
    print(f"{'variant':<16} {'seeds':<7} {'viol early':>10} {'viol late':>10} {'ret early':>10} "
          f"{'ret late':>10} {'x late':>7}")  # fmt: skip
    for variant, seeds in by_variant.items():
        row: dict[str, Any] = {"seeds": seeds}
        for part, which in (("early", args.early), ("late", args.late)):
            eps = [e for s in seeds.values() for e in s if e["episode"] in which]
            row[f"violations_per_episode_{part}"] = float(np.mean([e["violations"] for e in eps]))
            row[f"return_{part}"] = float(np.mean([e["return"] for e in eps]))
            row[f"mean_x_{part}"] = float(np.mean([e["mean_x_last_half"] for e in eps]))
            row[f"episodes_{part}"] = len(eps)
        summary[variant] = row
        print(
            f"{variant:<16} {','.join(seeds):<7} {row['violations_per_episode_early']:>10.2f} "
            f"{row['violations_per_episode_late']:>10.2f} {row['return_early']:>10.1f} "
            f"{row['return_late']:>10.1f} {row['mean_x_late']:>7.3f}"
        )
    if args.out:
        result = {"early": args.early, "late": args.late, **summary}
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
