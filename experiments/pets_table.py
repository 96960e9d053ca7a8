"""The PETS comparison table: mean return of the last episodes per variant and seed.

Runs are grouped by variant, the directory name before ``-s<seed>`` (as
``experiments/parallel_runs.py`` names them). For each variant: the mean return of
the last ``--last`` episodes of each seed, their mean over seeds, and the planning
seconds per step (from ``timings.csv``). Prints a markdown table, and with ``--plot``
draws one point per seed and a bar per variant.

    python experiments/pets_table.py runs/pets_pendulum/*-s? --last 5 \
        --order ts_inf ts_1 expectation --out experiments/pets_pendulum.json \
        --plot experiments/pets_pendulum.png
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_run(run_dir: Path, last: int) -> dict[str, Any]:
    """Returns and planning seconds of one run."""
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    returns = [float(r["return"]) for r in rows]
    steps = [int(r["env_steps"]) for r in rows]
    plan_seconds = 0.0
    if (run_dir / "timings.csv").exists():
        with open(run_dir / "timings.csv") as f:
            plan_seconds = sum(float(r["plan_seconds"]) for r in csv.DictReader(f))
    planned_steps = steps[-1] - (steps[0] if rows and rows[0]["policy"] == "random" else 0)
    with open(run_dir / "config.toml", "rb") as f:
        episodes = int(tomllib.load(f)["experiment"]["episodes"])
    finished = len(returns) >= episodes
    return {
        "returns": returns,
        "episodes": len(returns),
        "last_mean": statistics.fmean(returns[-last:]) if finished else None,
        "plan_seconds_per_step": plan_seconds / planned_steps if planned_steps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--last", type=int, default=5, help="episodes averaged at the end")
    parser.add_argument("--order", nargs="*", default=[], help="variants in this order first")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--curves", type=Path, help="learning curves, one colour per variant")
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--recorded",
        nargs="*",
        default=[],
        metavar="NAME=V0,V1,...",
        help="a variant whose runs are gone, from its recorded per-seed means (drawn hatched)",
    )
    args = parser.parse_args()
    recorded = {
        name: [float(v) for v in values.split(",")]
        for name, values in (r.split("=", 1) for r in args.recorded)
    }
    variants: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for run in sorted(args.runs):
        if not (run / "metrics.csv").exists():
            continue
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        variant, seed = (match.group(1), match.group(2)) if match else (run.name, "?")
        variants[variant][seed] = read_run(run, args.last)
    known = set(variants) | set(recorded)
    names = [v for v in args.order if v in known] + sorted(known - set(args.order))
    summary: dict[str, Any] = {}
    print(f"| variant | seeds | mean of the last {args.last} episodes per seed | mean | "
          "plan s/step |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        if name in recorded:
            vals = recorded[name]
            summary[name] = {"recorded": vals, "mean": statistics.fmean(vals)}
            per_seed = ", ".join(f"{v:.1f}" for v in vals)
            mean = statistics.fmean(vals)
            print(f"| {name} (recorded) | {len(vals)} seeds | {per_seed} | {mean:.1f} |  |")
            continue
        seeds = variants[name]
        done = {s: r for s, r in seeds.items() if r["last_mean"] is not None}
        per_seed = [done[s]["last_mean"] for s in sorted(done)]
        mean = statistics.fmean(per_seed) if per_seed else None
        secs = [r["plan_seconds_per_step"] for r in done.values() if r["plan_seconds_per_step"]]
        summary[name] = {"seeds": seeds, "mean": mean}
        unfinished = sorted(set(seeds) - set(done))
        note = f" (unfinished: {', '.join(unfinished)})" if unfinished else ""
        print(
            f"| {name} | {', '.join(sorted(done))}{note} | "
            f"{', '.join(f'{v:.1f}' for v in per_seed)} | "
            f"{'' if mean is None else f'{mean:.1f}'} | "
            f"{'' if not secs else f'{statistics.fmean(secs):.3f}'} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"last": args.last, "variants": summary}, indent=1))
    if args.plot:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names)), 3.5))
        for i, name in enumerate(names):
            if name in recorded:
                vals, hatch = recorded[name], "//"
            else:
                runs = variants[name].values()
                vals, hatch = [r["last_mean"] for r in runs if r["last_mean"] is not None], ""
            if vals:
                ax.bar(i, statistics.fmean(vals), color="0.8", hatch=hatch)
                ax.plot([i] * len(vals), vals, "o", color="C0")
        labels = [f"{n} (recorded)" if n in recorded else n for n in names]
        ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
        ax.set_ylabel(f"mean return, last {args.last} episodes")
        ax.set_title(args.title)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    if args.curves:
        fig, ax = plt.subplots(figsize=(6.0, 3.5))
        for i, name in enumerate(names):
            for j, run in enumerate(variants[name].values()):
                episodes = range(1, len(run["returns"]) + 1)
                label = name if j == 0 else None
                ax.plot(episodes, run["returns"], "-o", ms=3, color=f"C{i}", alpha=0.7, label=label)
        ax.set_xlabel("episode")
        ax.set_ylabel("return")
        ax.set_title(args.title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.curves, dpi=120)


if __name__ == "__main__":
    main()
