"""A point mass on a table, pushed to the middle: an environment bayes_mbrl does not ship.

The test fixture of ``tests/test_own_env.py``: a gymnasium env class, its batched torch
reward, termination and expected reward, and the mistakes those tests catch (a reward
of the wrong observation, a class that is not an env).

State and observation ``[x, y, vx, vy]``; action a force ``[fx, fy]`` in ``[-1, 1]``;
``v' = 0.9 v + 0.5 a``, ``p' = p + 0.1 v'``; reward ``-|p'|^2 - 0.1 |a|^2``; the episode
terminates when the mass falls off the table (``|x'|`` or ``|y'| > 1.2``).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

HALF_WIDTH = 1.2
ACTION_COST = 0.1


class PointMassEnv(gymnasium.Env):  # type: ignore[type-arg]
    """A point mass pushed on a square table of half width :data:`HALF_WIDTH`."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.state = np.zeros(4)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = np.concatenate([self.np_random.uniform(-1.0, 1.0, 2), np.zeros(2)])
        return self.state.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        v = 0.9 * self.state[2:] + 0.5 * a
        p = self.state[:2] + 0.1 * v
        self.state = np.concatenate([p, v])
        reward = -float(p @ p) - ACTION_COST * float(a @ a)
        terminated = bool(np.abs(p).max() > HALF_WIDTH)
        return self.state.astype(np.float32), reward, terminated, False, {}


def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """The env's reward, batched: ``(..., 4), (..., 2), (..., 4) -> (...)``."""
    a = action.clamp(-1.0, 1.0)
    return -next_obs[..., :2].square().sum(-1) - ACTION_COST * a.square().sum(-1)


def termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Off the table: ``(...)`` bool."""
    return next_obs[..., :2].abs().amax(-1) > HALF_WIDTH


def expected_reward(mean: Tensor, cov: Tensor, action: Tensor) -> Tensor:
    """``E[reward]`` for ``next_obs ~ N(mean, cov)``: ``-|mu_p|^2 - tr(cov_pp) - 0.1 |a|^2``."""
    a = action.clamp(-1.0, 1.0)
    trace = cov[..., 0, 0] + cov[..., 1, 1]
    return -mean[..., :2].square().sum(-1) - trace - ACTION_COST * a.square().sum(-1)


def reward_of_obs(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """A common mistake: the distance of the observation *before* the step."""
    return reward(next_obs, action, obs)


def never_terminates(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Wrong for this env: the mass does fall off the table."""
    return torch.zeros(obs.shape[:-1], dtype=torch.bool)


class NotAnEnv:
    """Has reset and step, but is no gymnasium.Env."""

    def reset(self) -> None:
        """Nothing."""

    def step(self, action: object) -> None:
        """Nothing."""
