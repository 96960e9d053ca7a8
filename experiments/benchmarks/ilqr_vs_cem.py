"""Planning time per action of iLQR against CEM (and iCEM) through the same fitted model.

Loads a run's fitted model (``bayes_mbrl.runs.load_run``), then runs MPC episodes of
Pendulum-v1 from the same start states with each planner in turn, in one process, so
that the times compare on one machine at one moment. Each planner is used as its
preset configures it (``planner.*`` of the run's config with ``kind`` replaced and the
given iterations). Reports, per planner, the mean return over the starts and the
seconds of planning per action (median over the episodes' per-action means).

Run on a quiet machine:
``python experiments/benchmarks/ilqr_vs_cem.py RUN_DIR --starts 5 --out OUT.json``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
from pathlib import Path

import gymnasium as gym
import torch

from bayes_mbrl.algorithms import MPCAgent
from bayes_mbrl.algorithms.mpc import build_evaluator
from bayes_mbrl.envs import get_task
from bayes_mbrl.planning import PLANNERS
from bayes_mbrl.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--planners", nargs="+", default=["ilqr", "ilqr:functions", "cem", "icem"])
    parser.add_argument("--ilqr-iterations", type=int, default=10)
    parser.add_argument("--cem-iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    task = get_task(run.config.env.id)
    env = gym.make(run.config.env.id)
    length = run.config.env.episode_length
    results: dict[str, object] = {
        "run_dir": str(args.run_dir),
        "episodes_done": run.episodes_done,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    for name in args.planners:
        # "ilqr:functions" is iLQR differentiating every posterior function
        kind, _, dynamics = name.partition(":")
        iterations = args.ilqr_iterations if kind == "ilqr" else args.cem_iterations
        pcfg = dataclasses.replace(
            run.config.planner,
            kind=kind,
            iterations=iterations,
            ilqr_dynamics=dynamics or "mean",
            ilqr_restarts=0,
        )
        config = dataclasses.replace(run.config, planner=pcfg)
        g = torch.Generator().manual_seed(0)
        planner = PLANNERS[kind].from_config(pcfg, task.action_low, task.action_high, g)
        agent = MPCAgent(planner, build_evaluator(config, run.model, task, g))
        returns, per_action = [], []
        for start in range(args.starts):
            obs, _ = env.reset(seed=1000 + start)
            agent.reset()
            total = 0.0
            for _ in range(length):
                obs, reward, terminated, truncated, _ = env.step(agent.act(obs).numpy())
                total += float(reward)
                if terminated or truncated:
                    break
            returns.append(total)
            per_action.append(agent.plan_seconds / length)
        results[name] = {
            "iterations": iterations,
            "returns": returns,
            "mean_return": statistics.mean(returns),
            "plan_seconds_per_action": statistics.median(per_action),
        }
        print(
            f"{name} ({iterations} iterations): mean return {statistics.mean(returns):.1f} "
            f"({', '.join(f'{r:.1f}' for r in returns)}); planning "
            f"{1000 * statistics.median(per_action):.1f} ms per action",
            flush=True,
        )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
