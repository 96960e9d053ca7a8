"""Plugin: ``bayes_mbrl/PendulumPartialNoiseFree-v0``, the partially observed pendulum
(``[cos theta, sin theta]``, no velocity) without observation noise.

It separates the two things that make ``bayes_mbrl/PendulumPartial-v0`` hard for latent
MPC: inferring the velocity from positions (both tasks) and acting on a noisy angle
(only the noisy one). Name it in a run's plugins::

    bayes-mbrl run pendulum-partial-latent-mpc --seed 1 --out runs/noise_free-s1 \\
        --set 'experiment.plugins=["experiments/plugins/pendulum_partial_noise_free.py"]' \\
        --set env.id=bayes_mbrl/PendulumPartialNoiseFree-v0

The task table has no public seam for a new env yet (the "your own environment"
issue adds one), so this plugin adds its spec to it directly.
"""

from __future__ import annotations

import dataclasses

import gymnasium

from bayes_mbrl.envs import tasks
from bayes_mbrl.envs.observations import MAX_EPISODE_STEPS, PENDULUM_PARTIAL_ID

ENV_ID = "bayes_mbrl/PendulumPartialNoiseFree-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="bayes_mbrl.envs.observations:make_pendulum_partial",
        max_episode_steps=MAX_EPISODE_STEPS,
        kwargs={"noise_std": 0.0},
    )


def _spec() -> tasks.TaskSpec:
    spec = tasks.get_task(PENDULUM_PARTIAL_ID)
    return dataclasses.replace(spec, env_id=ENV_ID)


tasks._TASKS[ENV_ID] = _spec
