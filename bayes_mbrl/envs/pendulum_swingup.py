"""Pendulum swing-up: gymnasium's ``Pendulum-v1`` dynamics started hanging down.

``bayes_mbrl/PendulumSwingUp-v0`` has ``Pendulum-v1``'s dynamics (mass 1 kg,
length 1 m, ``g = 10``, torque in ``[-2, 2]`` N m, integration step 0.05 s, speed
clipped to 8 rad/s), observation ``[cos theta, sin theta, theta_dot]`` with
``theta = 0`` upright, and reward, with two changes for the swing-up task PILCO
studies:

- the start is hanging down: ``theta ~ pi + N(0, init_std^2)``,
  ``theta_dot ~ N(0, init_std^2)``, instead of ``Pendulum-v1``'s uniform start;
- each action is held for ``frame_skip`` (default 2) ``Pendulum-v1`` steps, a
  control interval of 0.1 s (the reward is the sum over those steps).

Episodes are truncated after 50 actions (5 s).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from numpy.typing import NDArray

from bayes_mbrl.errors import EnvError

__all__ = ["ENV_ID", "MAX_EPISODE_STEPS", "PendulumSwingUpEnv", "register_pendulum_swingup"]

ENV_ID = "bayes_mbrl/PendulumSwingUp-v0"
"""Gymnasium id under which the env is registered."""

MAX_EPISODE_STEPS = 50
"""Time limit of the registered env (5 s at a 0.1 s control interval)."""


class PendulumSwingUpEnv(PendulumEnv):
    """``Pendulum-v1`` started hanging down (see the module docstring).

    Args:
        render_mode: as ``Pendulum-v1``.
        g: gravity.
        init_std: standard deviation of the start angle (around ``pi``) and velocity.
        frame_skip: ``Pendulum-v1`` steps (of 0.05 s) per action.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        g: float = 10.0,
        init_std: float = 0.1,
        frame_skip: int = 2,
    ):
        if init_std < 0 or frame_skip < 1:
            raise EnvError(f"need init_std >= 0 and frame_skip >= 1, got {init_std}, {frame_skip}")
        super().__init__(render_mode=render_mode, g=g)
        self.init_std = init_std
        self.frame_skip = frame_skip

    def step(self, u: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Hold ``u`` for ``frame_skip`` ``Pendulum-v1`` steps; the reward is their sum."""
        total = 0.0
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = super().step(u)
            total += float(reward)
        return obs, total, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start at ``(pi, 0) + N(0, init_std^2 I)`` (``options`` are not used)."""
        gymnasium.Env.reset(self, seed=seed)
        noise = self.np_random.normal(0.0, self.init_std, size=2)
        self.state = np.array([np.pi, 0.0]) + noise
        self.last_u = None
        if self.render_mode == "human":
            self.render()
        obs: NDArray[np.float32] = self._get_obs()
        return obs, {}


def register_pendulum_swingup() -> None:
    """Register :data:`ENV_ID` with gymnasium unless it is already registered."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="bayes_mbrl.envs.pendulum_swingup:PendulumSwingUpEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
