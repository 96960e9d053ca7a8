"""A point mass next to a cliff, pushed by process noise that grows near it: a task for risk.

``bayes_mbrl/NoisyCliff-v0``: a point on a line, ``x`` its position (the observation,
1-D), moved by ``a`` in ``[-1, 1]`` with noise whose scale grows towards the edge::

    x' = x + MAX_MOVE * a + noise_std(x) * eps,   eps ~ N(0, 1),   MAX_MOVE = 0.25
    noise_std(x) = 0.01 + 0.09 * clip((x - 0.5) / 0.4, 0, 1)     (0.01 up to 0.5, 0.1 at 0.9)

The reward prefers the goal ``GOAL = 0.9``, a little short of the cliff edge
``EDGE = 1.0``, where the noise is largest; every step that ends beyond the edge costs
``PENALTY = 1`` more::

    r = -|x' - GOAL| - PENALTY * [x' > EDGE]

The episode goes on after a violation (the point can walk back), so the count of
violations per episode measures how much risk a controller takes. Aiming each step
at ``m = x + MAX_MOVE * a`` (with the noise of ``m``), the expected reward is best at
``m = 0.82``, where 1.2% of steps violate (about one per 100-step episode); a
controller averse to the noise aims further back, where the noise is smaller, and
pays ``E|x' - GOAL|`` for it (at ``m = 0.75``, 0.008% of steps violate and each step
costs 0.04 more). Episodes start at ``x ~ N(0, 0.05^2)`` and are truncated after
100 steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from torch import Tensor

from bayes_mbrl.envs.rewards import _batch_shape, _check_dims

__all__ = [
    "EDGE",
    "ENV_ID",
    "GOAL",
    "MAX_EPISODE_STEPS",
    "MAX_MOVE",
    "PENALTY",
    "NoisyCliffEnv",
    "noise_std",
    "noisy_cliff_reward",
    "register_noisy_cliff",
]

ENV_ID = "bayes_mbrl/NoisyCliff-v0"
MAX_EPISODE_STEPS = 100
MAX_MOVE = 0.25
GOAL = 0.9
EDGE = 1.0
PENALTY = 1.0


def noise_std(x: float | np.ndarray) -> float | np.ndarray:
    """The process noise's scale at position ``x``: 0.01 up to 0.5, rising to 0.1 at 0.9."""
    return 0.01 + 0.09 * np.clip((np.asarray(x) - 0.5) / 0.4, 0.0, 1.0)


def noisy_cliff_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Batched reward of ``bayes_mbrl/NoisyCliff-v0``: ``-|x' - GOAL| - PENALTY [x' > EDGE]``.

    Raises:
        DataError: a trailing dimension is not the task's (1 for each).
    """
    _check_dims(ENV_ID, obs, action, next_obs, 1, 1)
    x = next_obs[..., 0]
    reward = -(x - GOAL).abs() - PENALTY * (x > EDGE).to(x.dtype)
    return torch.broadcast_to(reward, _batch_shape(obs, action, next_obs))


class NoisyCliffEnv(gymnasium.Env[NDArray[np.float32], NDArray[np.float32]]):
    """The point mass next to a cliff (see the module docstring).

    ``info["violation"]`` says whether the step ended beyond the edge.

    Args:
        noise_scale: multiplies the process noise (0: deterministic).
        render_mode: unused (no rendering).
    """

    # gymnasium.Env declares ``metadata`` as a plain attribute, so no ClassVar here.
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, noise_scale: float = 1.0, render_mode: str | None = None) -> None:
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale = noise_scale
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        self.x = float(self.np_random.normal(0.0, 0.05))
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        scale = self.noise_scale * float(noise_std(self.x))
        self.x = self.x + MAX_MOVE * a + scale * float(self.np_random.normal())
        violation = self.x > EDGE
        reward = -abs(self.x - GOAL) - PENALTY * float(violation)
        return np.array([self.x], dtype=np.float32), reward, False, False, {"violation": violation}


def register_noisy_cliff() -> None:
    """Register ``bayes_mbrl/NoisyCliff-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="bayes_mbrl.envs.noisy_cliff:NoisyCliffEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
