"""Run several configurations x seeds of one preset at once, each a separate
``bayes-mbrl run`` process with ``experiment.threads`` cores, and collect their
metrics.

Meant for a machine with many cores (one run per pair of cores); on a 2-core
machine run one at a time (``--jobs 1``). Each run writes its own directory
``OUT/<label>-s<seed>``; a run that fails is reported, not fatal.

    python experiments/parallel_runs.py pendulum-partial-latent-mpc --seeds 0 1 2 \
        --variant filtering model.encoder=filtering \
        --variant single_step model.encoder=single_step \
        --jobs 6 --threads 2 --out runs/latent_partial
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["main"]


def run_one(
    preset: str, label: str, sets: list[str], seed: int, threads: int, out: Path, timeout: float
) -> dict[str, object]:
    run_dir = out / f"{label}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "bayes_mbrl.cli",
        "run",
        preset,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--no-progress",
        "--set",
        f"experiment.threads={threads}",
    ]
    for s in sets:
        cmd += ["--set", s.replace("{seed}", str(seed))]  # e.g. a per-seed run directory
    start = time.perf_counter()
    with open(out / f"{label}-s{seed}.log", "w") as log:
        try:
            rc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    return {
        "label": label,
        "seed": seed,
        "rc": rc,
        "seconds": time.perf_counter() - start,
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("LABEL", "KEY=VALUE"),
        help="a label and the --set overrides of one configuration",
    )
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variant or [["default"]]
    jobs = [(v[0], v[1:], s) for v in variants for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(
            pool.map(
                lambda j: run_one(
                    args.preset, j[0], j[1], j[2], args.threads, args.out, args.timeout
                ),
                jobs,
            )
        )
    for r in results:
        print(json.dumps(r), flush=True)
    (args.out / "parallel_runs.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
