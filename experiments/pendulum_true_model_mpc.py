"""Reference for the Pendulum results: the same CEM MPC with the *true* dynamics as the model.

Pendulum-v1's equations written as a user-defined :class:`DynamicsModel` (one
deterministic function), planned through with the default planner settings. It
tells how much of the learned-model return gap is the model and how much is the
planner (horizon, population) and the start state.

Run: ``python experiments/pendulum_true_model_mpc.py --horizon 30 --population 200 --starts 8``
"""

from __future__ import annotations

import argparse
import statistics

import gymnasium as gym
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.algorithms import MPCAgent
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import get_task
from bayes_mbrl.models import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.planning import CEMPlanner, RolloutEvaluator

G, M, L, DT, MAX_SPEED, MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0


def pendulum_step(obs: Tensor, action: Tensor) -> Tensor:
    """Gymnasium's Pendulum-v1 step on ``(..., 3)`` observations and ``(..., 1)`` torques."""
    th, thdot = torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]
    u = action[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
    new_thdot = (thdot + (3 * G / (2 * L) * torch.sin(th) + 3.0 / (M * L**2) * u) * DT).clamp(
        -MAX_SPEED, MAX_SPEED
    )
    new_th = th + new_thdot * DT
    return torch.stack([new_th.cos(), new_th.sin(), new_thdot], -1)


class TrueFunctions(FunctionSample):
    """``n`` copies of the true dynamics (no uncertainty)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = pendulum_step(obs, action)
        return Independent(Normal(mean, torch.full_like(mean, 1e-6)), 1)


class TruePendulum(DynamicsModel):
    """The known physics as a (degenerate) posterior over functions."""

    obs_dim, action_dim = 3, 1

    def fit(self, data: ReplayBuffer, generator: torch.Generator | None = None) -> FitReport:
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        return TrueFunctions(n)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        mean = pendulum_step(obs, action)
        return Predictive(mean, torch.zeros_like(mean), torch.full_like(mean, 1e-12))

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        return TrueFunctions(num_functions or 1)(obs[None], action[None]).log_prob(next_obs[None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--starts", type=int, default=8)
    args = parser.parse_args()
    task = get_task("Pendulum-v1")
    g = torch.Generator().manual_seed(0)
    evaluator = RolloutEvaluator(TruePendulum(), task.reward_fn, args.horizon, 1, generator=g)
    planner = CEMPlanner(
        task.action_low, task.action_high, args.horizon, args.population, 5, generator=g
    )
    agent = MPCAgent(planner, evaluator)
    env = gym.make("Pendulum-v1")
    returns = []
    for start in range(args.starts):
        obs, _ = env.reset(seed=start)
        agent.reset()
        total = 0.0
        for _ in range(200):
            obs, reward, _, _, _ = env.step(agent.act(obs).numpy())
            total += float(reward)
        returns.append(total)
    print(
        f"horizon {args.horizon}, population {args.population}: returns "
        f"{', '.join(f'{r:.1f}' for r in returns)}; mean {statistics.mean(returns):.1f}"
    )


if __name__ == "__main__":
    main()
