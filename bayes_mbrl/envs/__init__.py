"""Gymnasium tasks with batched torch reward and termination functions.

Model-based planners imagine transitions in batches and score them with the
task's :class:`TaskSpec` reward and termination functions, which reproduce the
environment's own. Supported tasks: ``Pendulum-v1``, ``MountainCarContinuous-v0``
``bayes_mbrl/CartPoleSwingUp-v0`` (PILCO's cart-pole swing-up) and
``bayes_mbrl/PendulumSwingUp-v0`` (``Pendulum-v1`` started hanging down), the
last two registered with gymnasium on import of this package, as is
``bayes_mbrl/NoisyCliff-v0`` (a point mass by a cliff under large process noise, for
risk-averse planning), and ``bayes_mbrl/DynaMaze-v0`` (Sutton & Barto's Dyna maze
and its blocking and shortcut variants, discrete, for tabular Dyna). For latent models,
``bayes_mbrl/PendulumPartial-v0`` (noisy ``[cos theta, sin theta]``, no velocity) and
``bayes_mbrl/PendulumPixels-v0`` (flattened 32 x 32 frames), also registered here,
observe ``Pendulum-v1`` through :class:`PartialObservation` and
:class:`PixelObservation` (``bayes_mbrl.envs.observations``); their reward is not a
function of the observation (``TaskSpec.observation`` is ``"partial"`` /
``"pixels"``). For your own env,
``TaskSpec.from_env(env, reward_fn)`` reads the sizes, action bounds and time limit
from it (``docs/api_loop.md``).

Examples:
    >>> import torch
    >>> from bayes_mbrl.envs import get_task
    >>> task = get_task("Pendulum-v1")
    >>> obs = torch.zeros(8, 3); obs[:, 0] = 1.0
    >>> task.reward_fn(obs, torch.zeros(8, 1), obs).shape
    torch.Size([8])
"""

from __future__ import annotations

from bayes_mbrl.envs.cartpole_swingup import (
    CartPoleSwingUpEnv,
    cartpole_swingup_step,
    register_cartpole_swingup,
)
from bayes_mbrl.envs.dyna_maze import DynaMazeEnv, MazeLayout, register_dyna_maze
from bayes_mbrl.envs.noisy_cliff import NoisyCliffEnv, register_noisy_cliff
from bayes_mbrl.envs.observations import (
    PENDULUM_PARTIAL_ID,
    PENDULUM_PIXELS_ID,
    PartialObservation,
    PixelObservation,
    register_observation_envs,
)
from bayes_mbrl.envs.pendulum_swingup import PendulumSwingUpEnv, register_pendulum_swingup
from bayes_mbrl.envs.rewards import RewardFn, TerminationFn
from bayes_mbrl.envs.tasks import (
    OBSERVATION_KINDS,
    BoundLike,
    TaskSpec,
    check_continuous_env,
    get_task,
    make_env,
    registered_task_ids,
)

register_cartpole_swingup()
register_pendulum_swingup()
register_observation_envs()
register_noisy_cliff()
register_dyna_maze()

__all__ = [
    "OBSERVATION_KINDS",
    "PENDULUM_PARTIAL_ID",
    "PENDULUM_PIXELS_ID",
    "BoundLike",
    "CartPoleSwingUpEnv",
    "DynaMazeEnv",
    "MazeLayout",
    "NoisyCliffEnv",
    "PartialObservation",
    "PendulumSwingUpEnv",
    "PixelObservation",
    "RewardFn",
    "TaskSpec",
    "TerminationFn",
    "cartpole_swingup_step",
    "check_continuous_env",
    "get_task",
    "make_env",
    "registered_task_ids",
]
