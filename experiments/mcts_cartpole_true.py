"""MCTS with CartPole-v1's true dynamics: mean (UCT) against max (MaxUCT) backups.

The planner searches through the env's own equations (gymnasium's CartPole-v1, Euler
step, written in torch below as a one-function "posterior") with the task's reward and
termination; the episodes run in the real env from seeded starts. What it separates:
whether a failure of the learned-model runs is the model's or the search's.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/mcts_cartpole_true.py
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.envs import get_task
from bayes_mbrl.models.base import FunctionSample
from bayes_mbrl.planning.mcts import MCTSPlanner


class CartPoleStep(FunctionSample):
    """CartPole-v1's equations (gymnasium), deterministic, for ``n`` identical draws."""

    def __init__(self, n: int) -> None:
        self.n = n

    def sample(self, obs: Tensor, action: Tensor, generator: torch.Generator | None) -> Tensor:
        x, x_dot, theta, theta_dot = obs.unbind(-1)
        force = torch.where(action[..., 1] > 0.5, 10.0, -10.0)
        gravity, cart, pole, half_length, tau = 9.8, 1.0, 0.1, 0.5, 0.02
        total, pole_ml = cart + pole, pole * half_length
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + pole_ml * theta_dot**2 * sin) / total
        theta_acc = (gravity * sin - cos * temp) / (
            half_length * (4.0 / 3.0 - pole * cos**2 / total)
        )
        x_acc = temp - pole_ml * theta_acc * cos / total
        return torch.stack(
            [x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot,
             theta_dot + tau * theta_acc], -1,
        )  # fmt: skip

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        return Independent(Normal(self.sample(obs, action, None), 1e-6), 1)


class TrueCartPole:
    obs_dim, action_dim = 4, 2

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> CartPoleStep:
        return CartPoleStep(n)


def main(episodes: int, simulations: int, out: str) -> dict[str, object]:
    task = get_task("CartPole-v1")
    result: dict[str, object] = {"simulations": simulations, "episodes": episodes}
    for backup in ("mean", "max"):
        planner = MCTSPlanner(
            TrueCartPole(), task.reward_fn, task.termination_fn, functions=1,
            simulations=simulations, backup=backup,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        env = gym.make("CartPole-v1")
        runs = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            total, terminated, truncated = 0.0, False, False
            while not (terminated or truncated):
                action = planner.plan(torch.as_tensor(obs, dtype=torch.float32), gen).index
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total += float(reward)
            runs.append({"return": total, "final_x": float(obs[0]), "final_theta": float(obs[2])})
            print(backup, runs[-1], flush=True)
        result[backup] = runs
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--simulations", type=int, default=64)
    parser.add_argument("--out", default="experiments/mcts_cartpole_true.json")
    a = parser.parse_args()
    main(a.episodes, a.simulations, a.out)
