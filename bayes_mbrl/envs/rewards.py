"""Batched torch reward and termination functions of the supported tasks.

Every function takes ``(obs, action, next_obs)`` with shapes ``(..., obs_dim)``,
``(..., action_dim)`` and ``(..., obs_dim)``, where ``obs`` is the observation
*before* the step, and returns a tensor of shape ``(...)``: the reward (same
floating dtype as the inputs) or, for termination functions, a ``torch.bool``
flag. Leading batch dimensions broadcast against each other, so a planner can
score ``(n_particles, horizon, n_candidates)`` imagined transitions in one call.

Each reward reproduces the reward that the gymnasium environment itself returns
for the same transition (within float32 round-off); ``tests/test_envs.py`` checks
this against real rollouts.

An :data:`ExpectedRewardFn` gives the exact expectation of a task's reward under a
Gaussian belief over ``next_obs`` (for planners that propagate beliefs analytically,
PILCO-style moment matching); :func:`cartpole_swingup_expected_reward` is the one of
``bayes_mbrl/CartPoleSwingUp-v0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError

__all__ = [
    "CARTPOLE_POLE_LENGTH",
    "CARTPOLE_REWARD_WIDTH",
    "MOUNTAIN_CAR_GOAL_POSITION",
    "MOUNTAIN_CAR_GOAL_VELOCITY",
    "PENDULUM_MAX_TORQUE",
    "ExpectedRewardFn",
    "RewardFn",
    "TerminationFn",
    "cartpole_reward",
    "cartpole_swingup_expected_reward",
    "cartpole_swingup_reward",
    "cartpole_termination",
    "make_cartpole_swingup_expected_reward",
    "make_cartpole_swingup_reward",
    "mountain_car_reward",
    "mountain_car_termination",
    "pendulum_reward",
]

RewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(obs, action, next_obs)`` of shapes ``(..., obs_dim)``, ``(..., action_dim)``,
``(..., obs_dim)`` -> reward of shape ``(...)``."""

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(obs, action, next_obs)`` as for :data:`RewardFn` -> bool tensor of shape ``(...)``."""

ExpectedRewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(next_obs_mean, next_obs_cov, action)`` of shapes ``(..., obs_dim)``,
``(..., obs_dim, obs_dim)``, ``(..., action_dim)`` -> ``E[reward]`` of shape ``(...)``
for ``next_obs ~ N(next_obs_mean, next_obs_cov)`` (rewards of ``next_obs`` and the
action only)."""

PENDULUM_MAX_TORQUE = 2.0
"""Gymnasium's ``Pendulum-v1`` clips the torque to ``[-2, 2]`` before the cost."""

MOUNTAIN_CAR_GOAL_POSITION = 0.45
"""Goal position of gymnasium's ``MountainCarContinuous-v0``."""

MOUNTAIN_CAR_GOAL_VELOCITY = 0.0
"""Default ``goal_velocity`` of gymnasium's ``MountainCarContinuous-v0``."""

CARTPOLE_POLE_LENGTH = 0.6
"""Pole length (m) of ``bayes_mbrl/CartPoleSwingUp-v0`` (PILCO)."""

CARTPOLE_REWARD_WIDTH = 0.25
"""Width (m) of PILCO's saturating cart-pole reward."""


def _check_dims(
    name: str, obs: Tensor, action: Tensor, next_obs: Tensor, obs_dim: int, action_dim: int
) -> None:
    """Raise :class:`DataError` unless the trailing dimensions match the task.

    Args:
        name: Task name used in the message.
        obs: Observations, shape ``(..., obs_dim)``.
        action: Actions, shape ``(..., action_dim)``.
        next_obs: Next observations, shape ``(..., obs_dim)``.
        obs_dim: Expected observation size.
        action_dim: Expected action size.

    Raises:
        DataError: If a trailing dimension is missing or has the wrong size.
    """
    for label, tensor, size in (
        ("obs", obs, obs_dim),
        ("action", action, action_dim),
        ("next_obs", next_obs, obs_dim),
    ):
        if tensor.ndim == 0 or tensor.shape[-1] != size:
            raise DataError(
                f"{name} reward: {label} must have shape (..., {size}); got {tuple(tensor.shape)}"
            )


def pendulum_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Reward of gymnasium's ``Pendulum-v1``.

    ``-(th**2 + 0.1 * thdot**2 + 0.001 * u**2)`` with ``th = atan2(sin, cos)`` in
    ``[-pi, pi]`` (the same value as gymnasium's ``angle_normalize``) and
    ``thdot`` read from ``obs`` (the state *before* the step), and ``u`` the
    action clipped to ``[-2, 2]`` as gymnasium does.

    Args:
        obs: ``[cos th, sin th, thdot]`` before the step, shape ``(..., 3)``.
        action: Torque, shape ``(..., 1)`` (not necessarily within bounds).
        next_obs: Observation after the step, shape ``(..., 3)``; unused.

    Returns:
        Reward, shape ``(...)`` (broadcast of the leading shapes).
    """
    _check_dims("Pendulum-v1", obs, action, next_obs, 3, 1)
    th = torch.atan2(obs[..., 1], obs[..., 0])
    u = action[..., 0].clamp(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    # th^2 + 0.1 thdot^2 + 0.001 u^2 in that order, partly in place on fresh tensors that
    # autograd does not keep (the same roundings as the expression, fewer allocations:
    # this runs at every imagined step, and iLQR and pathwise gradients differentiate it);
    # the last sum broadcasts obs's leading shape against action's
    cost = (th * th).add_(obs[..., 2].square().mul_(0.1)) + (u * u).mul_(0.001)
    return torch.broadcast_to(cost.neg_(), _batch_shape(obs, action, next_obs))


def mountain_car_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Termination of gymnasium's ``MountainCarContinuous-v0``.

    The episode ends once the car is at the goal after the step:
    ``position >= 0.45 and velocity >= 0`` in ``next_obs``.

    Args:
        obs: ``[position, velocity]`` before the step, shape ``(..., 2)``; unused.
        action: Force, shape ``(..., 1)``; unused.
        next_obs: ``[position, velocity]`` after the step, shape ``(..., 2)``.

    Returns:
        Bool tensor, shape ``(...)``.
    """
    _check_dims("MountainCarContinuous-v0", obs, action, next_obs, 2, 1)
    done = (next_obs[..., 0] >= MOUNTAIN_CAR_GOAL_POSITION) & (
        next_obs[..., 1] >= MOUNTAIN_CAR_GOAL_VELOCITY
    )
    return torch.broadcast_to(done, _batch_shape(obs, action, next_obs))


#: gymnasium's CartPole-v1 limits: the episode ends beyond them
CARTPOLE_X_LIMIT = 2.4
CARTPOLE_THETA_LIMIT = 12 * 2 * math.pi / 360


def cartpole_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Termination of gymnasium's ``CartPole-v1``: ``|x'| > 2.4`` or ``|theta'| > 12 deg``.

    Args:
        obs: ``[x, x_dot, theta, theta_dot]`` before the step, ``(..., 4)``; unused.
        action: one-hot push ``(..., 2)`` (left, right); unused.
        next_obs: the state after the step, ``(..., 4)``.

    Returns:
        Bool tensor, shape ``(...)``.
    """
    _check_dims("CartPole-v1", obs, action, next_obs, 4, 2)
    x, theta = next_obs[..., 0], next_obs[..., 2]
    done = (x.abs() > CARTPOLE_X_LIMIT) | (theta.abs() > CARTPOLE_THETA_LIMIT)
    return torch.broadcast_to(done, _batch_shape(obs, action, next_obs))


def cartpole_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Reward of gymnasium's ``CartPole-v1``: 1 for every step, the last one included.

    Arguments as :func:`cartpole_termination`; returns ``(...)`` ones.
    """
    _check_dims("CartPole-v1", obs, action, next_obs, 4, 2)
    return torch.ones(_batch_shape(obs, action, next_obs), dtype=next_obs.dtype)


def mountain_car_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Reward of gymnasium's ``MountainCarContinuous-v0``.

    ``100 * terminated - 0.1 * a**2``. As in gymnasium, the action penalty uses
    the *unclipped* action (only the applied force is clipped to ``[-1, 1]``),
    so out-of-range actions are penalised quadratically.

    Args:
        obs: ``[position, velocity]`` before the step, shape ``(..., 2)``.
        action: Force, shape ``(..., 1)``.
        next_obs: ``[position, velocity]`` after the step, shape ``(..., 2)``.

    Returns:
        Reward, shape ``(...)``.
    """
    done = mountain_car_termination(obs, action, next_obs)
    a = action[..., 0]
    bonus = done.to(a.dtype) * 100.0
    return bonus - 0.1 * a.square()


def make_cartpole_swingup_reward(
    pole_length: float = CARTPOLE_POLE_LENGTH, width: float = CARTPOLE_REWARD_WIDTH
) -> RewardFn:
    """Build PILCO's saturating cart-pole swing-up reward for given constants.

    ``exp(-d**2 / (2 * width**2))`` with ``d`` the distance between the pole tip
    ``(x + l sin th, -l cos th)`` and the upright tip ``(0, l)``, computed from
    ``next_obs``. Expanded, ``d**2 = x**2 + 2 x l sin th + 2 l**2 (1 + cos th)``.

    Args:
        pole_length: Pole length ``l`` in metres; must be positive.
        width: Reward width in metres; must be positive.

    Returns:
        A :data:`RewardFn` on observations ``[x, x_dot, cos th, sin th, th_dot]``
        of shape ``(..., 5)`` and actions of shape ``(..., 1)``.

    Raises:
        DataError: If ``pole_length`` or ``width`` is not a positive finite number.
    """
    for label, value in (("pole_length", pole_length), ("width", width)):
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"{label} must be a positive finite number; got {value!r}")
    l2 = float(pole_length)
    scale = 1.0 / (2.0 * float(width) ** 2)

    def cartpole_swingup_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """PILCO's saturating cart-pole swing-up reward in ``[0, 1]``.

        Args:
            obs: Observation before the step, shape ``(..., 5)``; unused.
            action: Action, shape ``(..., 1)``; unused.
            next_obs: ``[x, x_dot, cos th, sin th, th_dot]`` after the step,
                shape ``(..., 5)``.

        Returns:
            Reward, shape ``(...)``.
        """
        _check_dims("bayes_mbrl/CartPoleSwingUp-v0", obs, action, next_obs, 5, 1)
        x = next_obs[..., 0]
        cos_th = next_obs[..., 2]
        sin_th = next_obs[..., 3]
        dx = x + l2 * sin_th
        dy = l2 * (1.0 + cos_th)  # tip height -l cos th, target height l
        reward = torch.exp(-(dx.square() + dy.square()) * scale)
        return torch.broadcast_to(reward, _batch_shape(obs, action, next_obs))

    return cartpole_swingup_reward


cartpole_swingup_reward: RewardFn = make_cartpole_swingup_reward()
"""Reward of ``bayes_mbrl/CartPoleSwingUp-v0`` with its default constants."""


def make_cartpole_swingup_expected_reward(
    pole_length: float = CARTPOLE_POLE_LENGTH, width: float = CARTPOLE_REWARD_WIDTH
) -> ExpectedRewardFn:
    r"""Exact expectation of the cart-pole swing-up reward under a Gaussian ``next_obs``.

    The reward of :func:`make_cartpole_swingup_reward` is
    ``exp(-1/2 (o - t)^T W~ (o - t))`` on ``o = [x, x_dot, cos th, sin th, th_dot]``
    with ``t = [0, 0, -1, 0, 0]``, ``W~ = W / width**2`` and ``W`` zero except
    ``W[0,0] = 1``, ``W[0,3] = W[3,0] = l``, ``W[3,3] = W[2,2] = l**2`` (the squared
    tip distance ``(x + l sin th)**2 + l**2 (cos th + 1)**2`` as a quadratic form).
    For ``o ~ N(m, S)`` (PILCO's saturating cost, Deisenroth 2010, eq. 3.44):

    ``E[r] = |I + S W~|^{-1/2} exp(-1/2 (m - t)^T W~ (I + S W~)^{-1} (m - t))``.

    Computed in the dtype of the inputs (use float64 for beliefs).

    Args:
        pole_length: Pole length ``l`` in metres; must be positive.
        width: Reward width in metres; must be positive.

    Returns:
        An :data:`ExpectedRewardFn` on means ``(..., 5)``, covariances ``(..., 5, 5)``
        (symmetric positive semi-definite) and actions ``(..., 1)``.

    Raises:
        DataError: If ``pole_length`` or ``width`` is not a positive finite number.
    """
    for label, value in (("pole_length", pole_length), ("width", width)):
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"{label} must be a positive finite number; got {value!r}")
    ell = float(pole_length)
    weight = torch.zeros(5, 5, dtype=torch.float64)
    weight[0, 0] = 1.0
    weight[0, 3] = weight[3, 0] = ell
    weight[3, 3] = weight[2, 2] = ell**2
    weight = weight / float(width) ** 2
    target = torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0], dtype=torch.float64)

    def cartpole_swingup_expected_reward(mean: Tensor, cov: Tensor, action: Tensor) -> Tensor:
        """``E[reward]`` for ``next_obs ~ N(mean, cov)``.

        Args:
            mean: ``(..., 5)`` mean of ``[x, x_dot, cos th, sin th, th_dot]``.
            cov: ``(..., 5, 5)`` covariance.
            action: ``(..., 1)``; unused.

        Returns:
            Expected reward in ``[0, 1]``, shape: the broadcast leading shape.
        """
        if mean.ndim == 0 or mean.shape[-1] != 5 or cov.shape[-2:] != (5, 5):
            raise DataError(
                "bayes_mbrl/CartPoleSwingUp-v0 expected reward: mean must have shape (..., 5) "
                f"and cov (..., 5, 5); got {tuple(mean.shape)} and {tuple(cov.shape)}"
            )
        if action.ndim == 0 or action.shape[-1] != 1:
            raise DataError(
                "bayes_mbrl/CartPoleSwingUp-v0 expected reward: action must have shape "
                f"(..., 1); got {tuple(action.shape)}"
            )
        w = weight.to(mean.dtype)
        eye = torch.eye(5, dtype=mean.dtype)
        diff = (mean - target.to(mean.dtype)).unsqueeze(-1)  # (..., 5, 1)
        a = eye + cov @ w  # I + S W~
        # W~ (I + S W~)^{-1} = (I + W~ S)^{-1} W~ (symmetric for symmetric S, W~)
        sol = torch.linalg.solve(a.transpose(-1, -2), w.expand_as(a))
        sol = 0.5 * (sol + sol.transpose(-1, -2))
        quad = (diff.transpose(-1, -2) @ sol @ diff)[..., 0, 0]
        expected = torch.exp(-0.5 * quad) / torch.sqrt(torch.linalg.det(a))
        lead = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2], action.shape[:-1])
        return torch.broadcast_to(expected, lead)

    return cartpole_swingup_expected_reward


cartpole_swingup_expected_reward: ExpectedRewardFn = make_cartpole_swingup_expected_reward()
"""Expected reward of ``bayes_mbrl/CartPoleSwingUp-v0`` (default constants) under a
Gaussian ``next_obs``."""


def _batch_shape(obs: Tensor, action: Tensor, next_obs: Tensor) -> torch.Size:
    """Broadcast leading shape of a batch of transitions.

    Args:
        obs: Shape ``(..., obs_dim)``.
        action: Shape ``(..., action_dim)``.
        next_obs: Shape ``(..., obs_dim)``.

    Returns:
        The broadcast of the three leading shapes.

    Raises:
        DataError: If the leading shapes do not broadcast.
    """
    lead = obs.shape[:-1]
    if action.shape[:-1] == lead and next_obs.shape[:-1] == lead:
        return lead  # the usual case, without broadcast_shapes' cost (about 10 us a call)
    try:
        return torch.broadcast_shapes(lead, action.shape[:-1], next_obs.shape[:-1])
    except RuntimeError as exc:
        raise DataError(
            "obs, action and next_obs leading shapes do not broadcast: "
            f"{tuple(obs.shape)}, {tuple(action.shape)}, {tuple(next_obs.shape)}"
        ) from exc
