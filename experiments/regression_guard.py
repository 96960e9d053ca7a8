"""Regression guard: short seeded runs of every preset (and of the other model kinds,
planners, propagations and modes) whose ``metrics.csv`` must stay byte-identical
across refactors.

    python experiments/regression_guard.py --write experiments/regression_guard.json   # record
    python experiments/regression_guard.py --check experiments/regression_guard.json   # compare

Each case is a preset plus small settings (2 episodes: one random, one fitted and
planned), run through the public API from the repository root (the grey-box preset
names its Pyro model by a path relative to it). ``--check`` prints one line per case
and exits 1 when any ``metrics.csv`` differs from the record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import run_experiment

COMMON = ["experiment.episodes=2", "experiment.seed_episodes=1", "experiment.progress=false"]
SMALL_PLAN = ["planner.horizon=8", "planner.population=40", "planner.iterations=2"]
SMALL_NET = ["model.max_epochs=5", "model.hidden_sizes=[32, 32]"]
SMALL_GP = ["model.num_steps=10", "model.num_features=64"]
SMALL_PILCO = ["model.num_steps=10", "pilco.opt_iterations=3", "pilco.num_basis=10"]

CASES: dict[str, tuple[str, list[str]]] = {
    "cartpole-swingup-ensemble-mpc": (
        "cartpole-swingup-ensemble-mpc",
        ["env.episode_length=20", *SMALL_NET, *SMALL_PLAN],
    ),
    "cartpole-swingup-pilco": ("cartpole-swingup-pilco", ["env.episode_length=15", *SMALL_PILCO]),
    "mountaincar-ensemble-mpc": (
        "mountaincar-ensemble-mpc",
        ["env.episode_length=30", *SMALL_NET, *SMALL_PLAN],
    ),
    "pendulum-bnn-mpc": ("pendulum-bnn-mpc", ["env.episode_length=30", *SMALL_NET, *SMALL_PLAN]),
    "pendulum-ensemble-mpc-bf16": (
        "pendulum-ensemble-mpc-bf16",
        ["env.episode_length=20", *SMALL_NET, *SMALL_PLAN],
    ),
    "pendulum-ensemble-mpc": (
        "pendulum-ensemble-mpc",
        ["env.episode_length=30", *SMALL_NET, *SMALL_PLAN],
    ),
    "pendulum-gp-mpc": ("pendulum-gp-mpc", ["env.episode_length=30", *SMALL_GP, *SMALL_PLAN]),
    "pendulum-greybox-mpc": (
        "pendulum-greybox-mpc",
        ["env.episode_length=30", "model.num_samples=20", "model.warmup_steps=20", *SMALL_PLAN],
    ),
    "pendulum-swingup-pilco": ("pendulum-swingup-pilco", ["env.episode_length=15", *SMALL_PILCO]),
    # the other kinds, planners, propagations and modes
    "sparse-gp": (
        "pendulum-gp-mpc",
        [
            "env.episode_length=30",
            "model.kind=sparse_gp",
            "model.max_epochs=3",
            "model.num_inducing=16",
            "model.num_features=64",
            # the gp preset's values, which the sparse GP took before [model] was per kind
            "model.batch_size=64",
            "model.learning_rate=0.05",
            *SMALL_PLAN,
        ],
    ),
    "gp-moment-matching": (
        "pendulum-gp-mpc",
        ["env.episode_length=20", *SMALL_GP, *SMALL_PLAN, "planner.propagation=moment_matching"],
    ),
    "bnn-nuts": (
        "pendulum-bnn-mpc",
        [
            "env.episode_length=20",
            "model.hidden_sizes=[8]",
            "model.inference=nuts",
            "model.num_samples=10",
            "model.warmup_steps=10",
            "model.max_tree_depth=4",
            *SMALL_PLAN,
        ],
    ),
    "pyro-svi": (
        "pendulum-greybox-mpc",
        ["env.episode_length=30", "model.inference=svi", "model.num_steps=50", *SMALL_PLAN],
    ),
    "ensemble-mppi": (
        "pendulum-ensemble-mpc",
        ["env.episode_length=30", *SMALL_NET, *SMALL_PLAN, "planner.kind=mppi"],
    ),
    "ensemble-random-shooting-ts1": (
        "pendulum-ensemble-mpc",
        [
            "env.episode_length=30",
            *SMALL_NET,
            *SMALL_PLAN,
            "planner.kind=random_shooting",
            "planner.propagation=ts_1",
        ],
    ),
    "ensemble-expectation-cvar-v10": (
        "pendulum-ensemble-mpc",
        [
            "env.episode_length=30",
            *SMALL_NET,
            *SMALL_PLAN,
            "planner.propagation=expectation",
            "planner.objective=cvar",
            "experiment.mode=v1.0",
        ],
    ),
    "ensemble-v05-3-episodes": (
        "pendulum-ensemble-mpc",
        [
            "env.episode_length=20",
            *SMALL_NET,
            *SMALL_PLAN,
            "experiment.mode=v0.5",
            "planner.objective=mean_minus_std",
            "experiment.episodes=3",
        ],
    ),
}


def run_case(name: str, root: Path) -> dict[str, object]:
    preset, overrides = CASES[name]
    config = load_config(preset, [*COMMON, *overrides], seed=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_experiment(config, root / name)
    text = (root / name / "metrics.csv").read_text()
    return {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "metrics": text,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="record the metrics of every case")
    group.add_argument("--check", type=Path, help="compare with a record")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    names = args.only or list(CASES)
    record = json.loads(args.check.read_text()) if args.check else {}
    results: dict[str, object] = {}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = run_case(name, Path(tmp))
            results[name] = out
            if args.check:
                want = record.get(name, {}).get("sha256")
                same = want == out["sha256"]
                failed += not same
                status = "identical" if same else f"DIFFERS (record {str(want)[:12]})"
                print(f"{name:34s} {status} ({out['seconds']} s)", flush=True)
                if not same:
                    print("  now:\n    " + str(out["metrics"]).replace("\n", "\n    "))
                    print(
                        "  record:\n    "
                        + str(record.get(name, {}).get("metrics", "")).replace("\n", "\n    ")
                    )
            else:
                print(f"{name:34s} {str(out['sha256'])[:12]} ({out['seconds']} s)", flush=True)
    if args.write:
        args.write.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.check:
        print(f"{len(names) - failed} identical, {failed} differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
