"""Task specifications, environment construction and space checks.

A :class:`TaskSpec` bundles what a model-based planner needs to imagine
transitions of a gymnasium task in batches: the observation and action sizes,
the action bounds, and batched torch reward and termination functions that
reproduce the environment's own.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from bayes_mbrl.envs.cartpole_swingup import ENV_ID as CARTPOLE_SWINGUP_ID
from bayes_mbrl.envs.cartpole_swingup import register_cartpole_swingup
from bayes_mbrl.envs.pendulum_swingup import ENV_ID as PENDULUM_SWINGUP_ID
from bayes_mbrl.envs.pendulum_swingup import register_pendulum_swingup
from bayes_mbrl.envs.rewards import (
    PENDULUM_MAX_TORQUE,
    ExpectedRewardFn,
    RewardFn,
    TerminationFn,
    cartpole_swingup_expected_reward,
    cartpole_swingup_reward,
    mountain_car_reward,
    mountain_car_termination,
    pendulum_reward,
)
from bayes_mbrl.errors import EnvError

__all__ = [
    "TaskSpec",
    "check_continuous_env",
    "get_task",
    "make_env",
    "registered_task_ids",
]


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """What a planner needs to know about a task.

    Equality is identity (``eq=False``): the tensor fields have no single truth value.

    Attributes:
        env_id: Gymnasium id, e.g. ``"Pendulum-v1"``.
        obs_dim: Observation size.
        action_dim: Action size.
        action_low: Lower action bound, float32, shape ``(action_dim,)``.
        action_high: Upper action bound, float32, shape ``(action_dim,)``.
        reward_fn: Batched reward ``(obs, action, next_obs) -> (...)``.
        termination_fn: Batched termination ``(obs, action, next_obs) -> bool (...)``,
            or ``None`` when the task never terminates (it only truncates).
        max_episode_steps: Gymnasium's time limit, or ``None`` for none.
        expected_reward_fn: Exact ``E[reward]`` under a Gaussian belief,
            ``(next_obs_mean (..., D), next_obs_cov (..., D, D), action (..., A)) -> (...)``,
            for planners that propagate beliefs analytically (moment matching), or
            ``None`` (they then approximate the expectation of ``reward_fn``).
    """

    env_id: str
    obs_dim: int
    action_dim: int
    action_low: Tensor
    action_high: Tensor
    reward_fn: RewardFn
    termination_fn: TerminationFn | None
    max_episode_steps: int | None
    expected_reward_fn: ExpectedRewardFn | None = None

    def __post_init__(self) -> None:
        """Check the sizes and the action bounds.

        Raises:
            EnvError: If a size is not positive or the bounds have the wrong
                shape, dtype, or order.
        """
        if self.obs_dim < 1 or self.action_dim < 1:
            raise EnvError(
                f"TaskSpec {self.env_id!r}: obs_dim and action_dim must be >= 1; "
                f"got {self.obs_dim} and {self.action_dim}"
            )
        for name, bound in (("action_low", self.action_low), ("action_high", self.action_high)):
            if bound.shape != (self.action_dim,) or bound.dtype != torch.float32:
                raise EnvError(
                    f"TaskSpec {self.env_id!r}: {name} must be a float32 tensor of shape "
                    f"({self.action_dim},); got {bound.dtype} {tuple(bound.shape)}"
                )
        if not bool(torch.all(self.action_low < self.action_high)):
            raise EnvError(f"TaskSpec {self.env_id!r}: action_low must be < action_high")


def _time_limit(env_id: str) -> int | None:
    """Gymnasium's registered time limit of ``env_id``.

    Args:
        env_id: A registered gymnasium id.

    Returns:
        ``max_episode_steps`` of the registration.
    """
    return gymnasium.spec(env_id).max_episode_steps


def _bounds(low: float, high: float, dim: int) -> tuple[Tensor, Tensor]:
    """Constant float32 action bounds.

    Args:
        low: Lower bound of every coordinate.
        high: Upper bound of every coordinate.
        dim: Action size.

    Returns:
        ``(low, high)`` tensors of shape ``(dim,)``.
    """
    return (
        torch.full((dim,), low, dtype=torch.float32),
        torch.full((dim,), high, dtype=torch.float32),
    )


def _pendulum(env_id: str = "Pendulum-v1") -> TaskSpec:
    """Spec of gymnasium's ``Pendulum-v1`` (or of its swing-up variant ``env_id``)."""
    low, high = _bounds(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE, 1)
    return TaskSpec(
        env_id=env_id,
        obs_dim=3,
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=pendulum_reward,
        termination_fn=None,
        max_episode_steps=_time_limit(env_id),
    )


def _pendulum_swingup() -> TaskSpec:
    """Spec of ``bayes_mbrl/PendulumSwingUp-v0`` (``Pendulum-v1`` started hanging down)."""
    register_pendulum_swingup()
    return _pendulum(PENDULUM_SWINGUP_ID)


def _mountain_car() -> TaskSpec:
    """Spec of gymnasium's ``MountainCarContinuous-v0``."""
    low, high = _bounds(-1.0, 1.0, 1)
    return TaskSpec(
        env_id="MountainCarContinuous-v0",
        obs_dim=2,
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=mountain_car_reward,
        termination_fn=mountain_car_termination,
        max_episode_steps=_time_limit("MountainCarContinuous-v0"),
    )


def _cartpole_swingup() -> TaskSpec:
    """Spec of ``bayes_mbrl/CartPoleSwingUp-v0``."""
    register_cartpole_swingup()
    low, high = _bounds(-1.0, 1.0, 1)
    return TaskSpec(
        env_id=CARTPOLE_SWINGUP_ID,
        obs_dim=5,
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=cartpole_swingup_reward,
        termination_fn=None,
        max_episode_steps=_time_limit(CARTPOLE_SWINGUP_ID),
        expected_reward_fn=cartpole_swingup_expected_reward,
    )


_TASKS: dict[str, Callable[[], TaskSpec]] = {
    "Pendulum-v1": _pendulum,
    "MountainCarContinuous-v0": _mountain_car,
    CARTPOLE_SWINGUP_ID: _cartpole_swingup,
    PENDULUM_SWINGUP_ID: _pendulum_swingup,
}


def registered_task_ids() -> list[str]:
    """Ids that :func:`get_task` knows, sorted.

    Returns:
        The supported gymnasium ids.
    """
    return sorted(_TASKS)


def _suggest(env_id: str, candidates: list[str]) -> str:
    """A "did you mean" phrase for an unknown id.

    Args:
        env_id: The unknown id.
        candidates: Known ids.

    Returns:
        ``" Did you mean 'X'?"`` for close matches, else an empty string.
    """
    by_lower = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(env_id.lower(), list(by_lower), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(by_lower[m]) for m in matches) + "?"


def get_task(env_id: str) -> TaskSpec:
    """Task specification of a supported environment.

    Args:
        env_id: One of :func:`registered_task_ids`.

    Returns:
        A fresh :class:`TaskSpec` (its tensors are not shared between calls).

    Raises:
        EnvError: If ``env_id`` is not supported; the message lists close matches. For a
            registered gymnasium env whose spaces do not fit continuous, state-based
            planning (a discrete action space, image observations) it says so.
    """
    factory = _TASKS.get(env_id)
    if factory is None:
        if env_id in gymnasium.registry:
            _probe_spaces(env_id)
        raise EnvError(
            f"no task spec for env id {env_id!r}.{_suggest(env_id, registered_task_ids())} "
            f"Supported tasks: {', '.join(registered_task_ids())}."
        )
    return factory()


def _probe_spaces(env_id: str) -> None:
    """Raise :class:`EnvError` if a registered env's spaces do not fit continuous planners.

    An env that cannot even be built here (a missing optional dependency) is let pass:
    the caller then reports the missing task spec.
    """
    try:
        env = gymnasium.make(env_id)
    except Exception:  # any construction failure: report the missing spec instead
        return
    try:
        check_continuous_env(env)
    finally:
        env.close()


def check_continuous_env(env: gymnasium.Env[Any, Any]) -> None:
    """Check that an env fits continuous-action, state-based planners.

    The action space must be a bounded 1-D float :class:`gymnasium.spaces.Box`
    and the observation space a 1-D ``Box``.

    Args:
        env: The environment (wrapped or not).

    Raises:
        EnvError: If a space does not fit; the message names the space and the fix.
    """
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    act = env.action_space
    if not isinstance(act, spaces.Box):
        raise EnvError(
            f"{name}: continuous planners need a Box action space; got {act!r}. "
            "Use a continuous-action environment (e.g. Pendulum-v1) or a discrete-action "
            "algorithm."
        )
    if len(act.shape) != 1:
        raise EnvError(
            f"{name}: continuous planners need a 1-D Box action space; got shape {act.shape}. "
            "Flatten it with an action wrapper."
        )
    if not np.issubdtype(act.dtype, np.floating):
        raise EnvError(
            f"{name}: continuous planners need a float Box action space; got dtype {act.dtype}."
        )
    if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
        raise EnvError(
            f"{name}: continuous planners need a bounded Box action space; got "
            f"{act!r}. Wrap the env to clip/rescale actions to finite bounds "
            "(e.g. gymnasium.wrappers.RescaleAction after clipping)."
        )
    obs = env.observation_space
    if not isinstance(obs, spaces.Box):
        raise EnvError(
            f"{name}: state models need a flat Box observation; got {obs!r}. "
            "Flatten it (gymnasium.wrappers.FlattenObservation)."
        )
    if len(obs.shape) != 1:
        raise EnvError(
            f"{name}: state models need a flat Box observation; got shape {obs.shape} "
            "(images?). Use a pixel wrapper/latent model, or flatten the observation."
        )


def make_env(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gymnasium.Env[Any, Any]:
    """Build a gymnasium env for continuous-action, state-based planning.

    Args:
        env_id: A registered gymnasium id (``import bayes_mbrl.envs`` registers
            ``bayes_mbrl/CartPoleSwingUp-v0``).
        render_mode: Passed to :func:`gymnasium.make`.
        **kwargs: Passed to :func:`gymnasium.make` (env constructor arguments,
            ``max_episode_steps``, ...).

    Returns:
        The env, wrapped as :func:`gymnasium.make` wraps it.

    Raises:
        EnvError: If the id is unknown (the message lists close matches), the env
            cannot be built with the given arguments, or its spaces do not pass
            :func:`check_continuous_env`.
    """
    register_cartpole_swingup()
    if env_id not in gymnasium.registry:
        known = list(gymnasium.registry)
        raise EnvError(
            f"unknown gymnasium env id {env_id!r}.{_suggest(env_id, known)} "
            f"Tasks with batched rewards: {', '.join(registered_task_ids())}."
        )
    try:
        env = gymnasium.make(env_id, render_mode=render_mode, **kwargs)
    except gymnasium.error.Error as exc:
        raise EnvError(f"cannot build {env_id!r}: {exc}") from exc
    except TypeError as exc:
        raise EnvError(f"cannot build {env_id!r} with arguments {sorted(kwargs)}: {exc}") from exc
    try:
        check_continuous_env(env)
    except EnvError:
        env.close()
        raise
    return env
