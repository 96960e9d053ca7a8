"""Run directories written by an earlier version resume with this one.

Four short runs (ensemble, exact GP, BNN, PILCO; 3 episodes) are made by the OLD code
twice: stopped after episode 2, and uninterrupted. The NEW code then resumes the
stopped ones (their ``config.toml`` in the old flat ``[model]`` format, their
checkpoints written by the old models); each finished run must be byte-identical to
the old uninterrupted one in ``metrics.csv`` and ``transitions.f32``::

    git worktree add /tmp/old <old commit>
    PYTHONPATH=/tmp/old python experiments/compat_resume.py make /tmp/compat
    python experiments/compat_resume.py resume /tmp/compat

(With an editable install of the new code, ``PYTHONPATH`` puts the old package
first; the script prints which package it imported.)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import bayes_mbrl
from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import Callback, resume_experiment, run_experiment

COMMON = [
    "experiment.episodes=3",
    "experiment.progress=false",
    "planner.population=20",
    "planner.iterations=1",
    "planner.horizon=5",
]
CASES = {
    "ensemble": (
        None,
        [
            "env.episode_length=20",
            "model.num_members=2",
            "model.hidden_sizes=[16]",
            "model.max_epochs=3",
        ],
    ),
    "gp": (
        "pendulum-gp-mpc",
        ["env.episode_length=20", "model.num_steps=5", "model.num_features=64"],
    ),
    "pilco": (
        "cartpole-swingup-pilco",
        [
            "env.episode_length=10",
            "model.num_steps=5",
            "pilco.opt_iterations=2",
            "pilco.num_basis=5",
        ],
    ),
    "bnn": (
        "pendulum-bnn-mpc",
        ["env.episode_length=20", "model.hidden_sizes=[16]", "model.max_epochs=3"],
    ),
}


class _StopAfterTwo(Callback):
    def _on_episode_end(self, experiment: object, row: dict[str, object]) -> bool:
        return int(row["episode"]) < 2  # type: ignore[call-overload]


def make(root: Path) -> None:
    for name, (preset, overrides) in CASES.items():
        config = load_config(preset, [*COMMON, *overrides])
        run_experiment(config, root / "stopped" / name, callbacks=[_StopAfterTwo()])
        run_experiment(config, root / "full" / name)


def resume(root: Path) -> int:
    failed = 0
    for name in CASES:
        resume_experiment(root / "stopped" / name, progress=False)
        same = all(
            (root / "stopped" / name / f).read_bytes() == (root / "full" / name / f).read_bytes()
            for f in ("metrics.csv", "transitions.f32")
        )
        failed += not same
        print(f"{name:9s} {'identical' if same else 'DIFFERS'}")
    print(f"{len(CASES) - failed} identical, {failed} differ")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["make", "resume"])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    print(f"bayes_mbrl from {Path(bayes_mbrl.__file__).parent}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.step == "make":
            make(args.root)
            return 0
        return resume(args.root)


if __name__ == "__main__":
    sys.exit(main())
