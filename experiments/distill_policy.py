"""Evaluate a planner -> policy distillation run: the distilled policy against its planner.

Restores each ``experiment.mode = "policy_distill"`` run directory and runs, from the
same fixed starts (env seeds ``--start-seed`` onwards, which no run uses), ``--episodes``
episodes with

* the planner: MPC (the run's ``[planner]``) through the run's final dynamics model;
* the student: the distilled policy's mean action;

and reports the mean return of each, the student's as a fraction of the planner's, and
the seconds per action of each (wall time of ``act`` only).

    python experiments/distill_policy.py runs/policy_distill/dagger_t1-s0 \\
        runs/policy_distill/bc_t1-s0 --episodes 10 --out experiments/distill_policy.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_mbrl.envs import make_env
from bayes_mbrl.experiment import Experiment
from bayes_mbrl.runs import read_run_config

__all__ = ["main"]


def episodes(agent: Any, env_id: str, length: int, starts: list[int]) -> tuple[list[float], float]:
    """Returns of ``agent`` from each start, and its seconds per action."""
    returns, seconds, steps = [], 0.0, 0
    for start in starts:
        env = make_env(env_id, max_episode_steps=length)
        obs, _ = env.reset(seed=start)
        agent.reset()
        total, done = 0.0, False
        while not done:
            t = time.perf_counter()
            action = agent.act(obs)
            seconds += time.perf_counter() - t
            steps += 1
            obs, reward, term, trunc, _ = env.step(action.numpy().astype(np.float32))
            total += float(reward)
            done = term or trunc
        env.close()
        returns.append(total)
    return returns, seconds / steps


def evaluate(
    run: Path, n: int, start_seed: int, threads: int, planner_too: bool = True
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run, copy)
        config = read_run_config(copy)
        config.experiment.threads = threads
        exp = Experiment(config, copy)
        exp.restore()
        agent, learner = exp.parts.agent, exp.parts.learner
        starts = list(range(start_seed, start_seed + n))
        env_id, length = config.env.id, config.env.episode_length
        student, s_sec = episodes(agent.student, env_id, length, starts)
        planner, p_sec = (
            episodes(agent.teacher, env_id, length, starts) if planner_too else ([math.nan], 0.0)
        )
    row = {
        "run": str(run),
        "labels": len(learner.labels["obs"]),
        "dagger": config.policy_distill.dagger,
        "temperature": config.policy_distill.temperature,
        "planner_returns": [round(r, 1) for r in planner],
        "student_returns": [round(r, 1) for r in student],
        "planner_mean": float(np.mean(planner)),
        "student_mean": float(np.mean(student)),
        "student_over_planner": float(np.mean(student) / np.mean(planner)),
        "planner_seconds_per_action": p_sec,
        "student_seconds_per_action": s_sec,
        "speedup": p_sec / s_sec if planner_too else math.nan,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--start-seed", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--student-only", action="store_true", help="skip the planner's episodes (slow)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        evaluate(r, args.episodes, args.start_seed, args.threads, not args.student_only)
        for r in args.runs
    ]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {**vars(args), "runs": [str(r) for r in args.runs], "out": str(args.out)}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
