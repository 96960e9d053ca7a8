"""iLQR-MPC with the *true* Pendulum-v1 dynamics: the swing-up from hanging down, and
returns from random starts next to CEM's with the same (true) model.

The physics is ``experiments/pendulum_true_model_mpc.py``'s ``TruePendulum`` (one
deterministic function), planned through the rollout evaluator like any model.

Run:
``python experiments/ilqr_pendulum_true.py --starts 8 --out experiments/ilqr_pendulum_true.json``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pendulum_true_model_mpc import TruePendulum

from bayes_mbrl.algorithms import MPCAgent
from bayes_mbrl.envs import get_task
from bayes_mbrl.planning import PLANNERS, RolloutEvaluator


def episode(agent: MPCAgent, env: gym.Env, seed: int, hanging: bool) -> dict[str, float]:
    """One 200-step episode; from hanging down at rest when ``hanging``."""
    obs, _ = env.reset(seed=seed)
    if hanging:
        env.unwrapped.state = np.array([math.pi, 0.0])  # type: ignore[attr-defined]
        obs = env.unwrapped._get_obs()  # type: ignore[attr-defined]
    agent.reset()
    total, angles = 0.0, []
    start = time.perf_counter()
    for _ in range(200):
        obs, reward, _, _, _ = env.step(agent.act(obs).numpy())
        total += float(reward)
        angles.append(abs(math.atan2(float(obs[1]), float(obs[0]))))
    seconds = time.perf_counter() - start
    upright = next((i for i in range(200) if max(angles[i:]) < 0.1), None)
    return {
        "return": total,
        "max_angle_last_50": max(angles[-50:]),
        "upright_from_step": -1 if upright is None else upright + 1,
        "seconds_per_action": seconds / 200,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    task = get_task("Pendulum-v1")
    env = gym.make("Pendulum-v1")
    results: dict[str, dict[str, object]] = {}
    for kind, options in (("ilqr", {"iterations": 10}), ("cem", {"iterations": 5})):
        g = torch.Generator().manual_seed(0)
        evaluator = RolloutEvaluator(
            TruePendulum(), task.reward_fn, args.horizon, 1, propagation="expectation", generator=g
        )
        planner = PLANNERS[kind](
            task.action_low, task.action_high, args.horizon, 200, generator=g, **options
        )
        agent = MPCAgent(planner, evaluator)
        hanging = episode(agent, env, 0, hanging=True)
        random_starts = [episode(agent, env, s, hanging=False) for s in range(args.starts)]
        returns = [r["return"] for r in random_starts]
        results[kind] = {
            "hanging_down": hanging,
            "random_start_returns": returns,
            "random_start_mean": statistics.mean(returns),
        }
        print(
            f"{kind}: from hanging down return {hanging['return']:.1f}, upright (|angle| < 0.1 "
            f"for good) from step {hanging['upright_from_step']}; random starts "
            f"{', '.join(f'{r:.1f}' for r in returns)} (mean {statistics.mean(returns):.1f})",
            flush=True,
        )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
