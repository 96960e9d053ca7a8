"""Run several configurations x seeds of one preset at once, as a sweep on the local
backend (:mod:`bayes_mbrl.sweeps`): each trial a separate process with
``experiment.threads`` cores, written into ``OUT/<label>-s<seed>``.

Meant for a machine with many cores (one run per pair of cores); on a 2-core
machine run one at a time (``--jobs 1``). A run that fails is retried ``--retries``
times (resuming its directory) and then reported in ``OUT/sweep.csv``, not fatal;
running the same command again skips finished runs and resumes the others. ``{seed}``
in a value is replaced by the run's seed.

    python experiments/parallel_runs.py pendulum-partial-latent-mpc --seeds 0 1 2 \
        --variant filtering model.encoder=filtering \
        --variant single_step model.encoder=single_step \
        --jobs 6 --threads 2 --out runs/latent_partial

The same as a sweep file: ``bayes-mbrl sweep SWEEP.toml`` (see docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bayes_mbrl.config import _parse_override
from bayes_mbrl.sweeps import run_sweep, sweep_from_dict

__all__ = ["main"]


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
    parser.add_argument("--retries", type=int, default=0, help="further attempts of a failed run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = []
    for label, *sets in args.variant or [["default"]]:
        overrides = {}
        for text in sets:
            section, key, value = _parse_override(text)
            overrides[f"{section}.{key}"] = value
        variants.append({"label": label, "set": overrides})
    sweep = sweep_from_dict(
        {
            "base": args.preset,
            "seeds": args.seeds,
            "threads": args.threads,
            "timeout": args.timeout,
            "retries": args.retries,
            "list": variants,
        },
        "parallel_runs",
    )
    result = run_sweep(
        sweep, "local", jobs=args.jobs, out=args.out, log=lambda s: print(s, flush=True)
    )
    print(f"{len(result.records) - len(result.failed)} of {len(result.records)} runs finished; "
          f"summary: {args.out / 'sweep.csv'}")  # fmt: skip


if __name__ == "__main__":
    main()
