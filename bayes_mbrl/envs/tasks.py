"""Task specifications, environment construction and space checks.

A :class:`TaskSpec` bundles what a model-based planner needs to imagine
transitions of a gymnasium task in batches: the observation and action sizes,
the action bounds, and batched torch reward and termination functions that
reproduce the environment's own. :func:`get_task` gives the spec of a built-in task;
:meth:`TaskSpec.from_env` builds one for any gymnasium env with a flat ``Box``
observation and a bounded ``Box`` action space, from a reward function you write
(``docs/api_loop.md``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from torch import Tensor

from bayes_mbrl.envs.cartpole_swingup import ENV_ID as CARTPOLE_SWINGUP_ID
from bayes_mbrl.envs.cartpole_swingup import register_cartpole_swingup
from bayes_mbrl.envs.noisy_cliff import ENV_ID as NOISY_CLIFF_ID
from bayes_mbrl.envs.noisy_cliff import noisy_cliff_reward, register_noisy_cliff
from bayes_mbrl.envs.observations import (
    PENDULUM_PARTIAL_ID,
    PENDULUM_PIXELS_ID,
    register_observation_envs,
)
from bayes_mbrl.envs.pendulum_swingup import ENV_ID as PENDULUM_SWINGUP_ID
from bayes_mbrl.envs.pendulum_swingup import register_pendulum_swingup
from bayes_mbrl.envs.rewards import (
    PENDULUM_MAX_TORQUE,
    ExpectedRewardFn,
    RewardFn,
    TerminationFn,
    cartpole_reward,
    cartpole_swingup_expected_reward,
    cartpole_swingup_reward,
    cartpole_termination,
    mountain_car_reward,
    mountain_car_termination,
    pendulum_reward,
)
from bayes_mbrl.errors import EnvError

__all__ = [
    "OBSERVATION_KINDS",
    "BoundLike",
    "TaskSpec",
    "check_continuous_env",
    "get_task",
    "make_env",
    "registered_task_ids",
]


OBSERVATION_KINDS = ("state", "partial", "pixels")
"""What a task's observation is (:attr:`TaskSpec.observation`): the full state, a
noisy part of it, or rendered frames."""

BoundLike = Tensor | np.ndarray | Sequence[float] | float
"""An action bound as :class:`TaskSpec` accepts it: a tensor, a numpy array, a list or
tuple of numbers of shape ``(action_dim,)``, or one number for every coordinate."""


@dataclass(frozen=True, eq=False, init=False)
class TaskSpec:
    """What a planner needs to know about a task: sizes, action bounds, batched rewards.

    Build one for a built-in task with :func:`get_task`, for your own gymnasium env
    with :meth:`from_env` (it reads the sizes, bounds and time limit from the env), or
    directly. Equality is identity (``eq=False``): the tensor fields have no single
    truth value. ``docs/api_loop.md`` walks through a whole loop on a user-defined env.

    Args:
        env_id: Gymnasium id of the env, e.g. ``"Pendulum-v1"`` (for an env that is
            not registered, any name; only the runner builds envs from it).
        obs_dim: Observation size ``D`` (observations are flat, shape ``(D,)``).
        action_dim: Action size ``A``.
        action_low: Lower action bound, shape ``(A,)`` (or a scalar, used for every
            coordinate), in the env's action units: a tensor, a numpy array of any
            float dtype (e.g. ``env.action_space.low``), a list or a tuple. Stored as a
            float32 tensor (a copy).
        action_high: Upper action bound, as ``action_low``; ``> action_low`` everywhere.
        reward_fn: Batched reward ``reward_fn(obs, action, next_obs) -> reward`` with
            ``obs`` and ``next_obs`` of shape ``(..., D)`` (``obs`` before the step),
            ``action`` of shape ``(..., A)`` and the reward of shape ``(...)`` (the
            leading dimensions broadcast; planners call it on
            ``(population * particles,)`` batches of imagined transitions, float32).
            It should return what the env's ``step`` returns as reward.
        termination_fn: Batched termination ``termination_fn(obs, action, next_obs)``
            with the arguments of ``reward_fn``, returning a ``torch.bool`` tensor of
            shape ``(...)``: ``True`` where the env would end the episode
            (``terminated``, not a time-limit ``truncated``). ``None`` (the default)
            when the task never terminates.
        max_episode_steps: The env's time limit in steps, or ``None`` (the default)
            for none.
        expected_reward_fn: Exact ``E[reward]`` under a Gaussian belief,
            ``expected_reward_fn(next_obs_mean (..., D), next_obs_cov (..., D, D),
            action (..., A)) -> (...)``, for planners that propagate beliefs
            analytically (moment matching), or ``None`` (the default; they then
            approximate the expectation of ``reward_fn``).
        observation: What the observation is, one of :data:`OBSERVATION_KINDS`:
            ``"state"`` (the default) when it is the env's full state, so that
            ``reward_fn`` and ``termination_fn`` are functions of it and state models
            and planners apply; ``"partial"`` when it is a noisy part of the state
            (e.g. ``[cos theta, sin theta]`` without the velocity) and ``"pixels"``
            when it is flattened rendered frames: then the reward is not a function
            of the observation and a latent model (``experiment.mode = 'latent_mpc'``)
            must infer the state and learn the reward; ``reward_fn`` of the built-in
            such tasks raises :class:`~bayes_mbrl.errors.EnvError` saying so.
        frame_shape: ``(frame_stack, height, width)`` of a ``"pixels"`` observation,
            whose flat vector of size ``obs_dim = frame_stack * height * width``
            reshapes to it (most recent frame last); required for ``"pixels"``,
            ``None`` (the default) for the other kinds.
        discrete_actions: the actions are ``Discrete(action_dim)``: models, rewards and
            replay buffers see them as one-hot vectors of size ``action_dim`` (bounds
            0 and 1), the env as an index (:meth:`env_action`). Continuous planners
            refuse such a task.

    Raises:
        EnvError: If a size is not a positive int, a bound is not numbers, has the
            wrong shape, is NaN or infinite, or ``action_low >= action_high`` in some
            coordinate, a function is not callable, or ``max_episode_steps`` is not a
            positive int or ``None``, ``observation`` is not one of
            :data:`OBSERVATION_KINDS`, or ``frame_shape`` is missing for ``"pixels"``,
            given for another kind, not three positive ints or not of size
            ``obs_dim``; the message says what was expected and what was given.

    Examples:
        >>> import numpy as np, torch
        >>> spec = TaskSpec("MyTask-v0", obs_dim=2, action_dim=1,
        ...                 action_low=np.array([-1.0], dtype=np.float32), action_high=[1.0],
        ...                 reward_fn=lambda obs, action, next_obs: -next_obs.square().sum(-1))
        >>> spec.action_high, spec.termination_fn, spec.max_episode_steps, spec.observation
        (tensor([1.]), None, None, 'state')
    """

    env_id: str
    obs_dim: int
    action_dim: int
    action_low: Tensor
    action_high: Tensor
    reward_fn: RewardFn
    termination_fn: TerminationFn | None
    max_episode_steps: int | None
    expected_reward_fn: ExpectedRewardFn | None
    observation: str
    frame_shape: tuple[int, int, int] | None
    discrete_actions: bool

    def __init__(
        self,
        env_id: str,
        obs_dim: int,
        action_dim: int,
        action_low: BoundLike,
        action_high: BoundLike,
        reward_fn: RewardFn,
        termination_fn: TerminationFn | None = None,
        max_episode_steps: int | None = None,
        expected_reward_fn: ExpectedRewardFn | None = None,
        observation: str = "state",
        frame_shape: tuple[int, int, int] | None = None,
        discrete_actions: bool = False,
    ) -> None:
        if not isinstance(env_id, str):
            raise EnvError(f"TaskSpec: env_id must be a str; got {env_id!r}")
        where = f"TaskSpec {env_id!r}"
        obs_dim = _positive_int(where, "obs_dim", obs_dim)
        action_dim = _positive_int(where, "action_dim", action_dim)
        low = _bound(where, "action_low", action_low, action_dim)
        high = _bound(where, "action_high", action_high, action_dim)
        bad = torch.nonzero(~(low < high)).flatten().tolist()
        if bad:
            i = bad[0]
            raise EnvError(
                f"{where}: action_low must be < action_high in every coordinate; got "
                f"low {low[i].item():g} >= high {high[i].item():g} at index {i} "
                f"(action_low={low.tolist()}, action_high={high.tolist()}). "
                "Swapped bounds?"
            )
        if not callable(reward_fn):
            raise EnvError(
                f"{where}: reward_fn must be a callable (obs, action, next_obs) -> reward; "
                f"got {reward_fn!r}"
            )
        for name, fn in (
            ("termination_fn", termination_fn),
            ("expected_reward_fn", expected_reward_fn),
        ):
            if fn is not None and not callable(fn):
                raise EnvError(f"{where}: {name} must be a callable or None; got {fn!r}")
        if max_episode_steps is not None:
            max_episode_steps = _positive_int(where, "max_episode_steps", max_episode_steps)
        frame_shape = _frame_shape(where, observation, frame_shape, obs_dim)
        # frozen dataclass: fields are set once, here
        set_field = object.__setattr__
        set_field(self, "env_id", env_id)
        set_field(self, "obs_dim", obs_dim)
        set_field(self, "action_dim", action_dim)
        set_field(self, "action_low", low)
        set_field(self, "action_high", high)
        set_field(self, "reward_fn", reward_fn)
        set_field(self, "termination_fn", termination_fn)
        set_field(self, "max_episode_steps", max_episode_steps)
        set_field(self, "expected_reward_fn", expected_reward_fn)
        set_field(self, "observation", observation)
        set_field(self, "frame_shape", frame_shape)
        if discrete_actions and not (bool((low == 0).all()) and bool((high == 1).all())):
            raise EnvError(
                f"{where}: discrete actions are one-hot vectors: give action_low = 0 and "
                f"action_high = 1; got {low.tolist()} and {high.tolist()}"
            )
        set_field(self, "discrete_actions", bool(discrete_actions))

    def replace(self, **changes: Any) -> TaskSpec:
        """A copy with ``changes`` (any constructor argument), checked as the constructor
        checks its arguments.

        Examples:
            >>> spec = get_task("Pendulum-v1").replace(env_id="MyPendulum-v0")
            >>> spec.env_id, spec.obs_dim
            ('MyPendulum-v0', 3)
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise EnvError(f"TaskSpec.replace: unknown fields {unknown}; the fields are {names}")
        return TaskSpec(**{**{n: getattr(self, n) for n in names}, **changes})

    def env_action(self, action: Tensor) -> Any:
        """The action as the env takes it: the index of a one-hot ``(action_dim,)``
        vector for discrete actions, else a float32 numpy array."""
        if self.discrete_actions:
            return int(action.reshape(-1, self.action_dim).argmax(-1)[0])
        return action.detach().cpu().numpy().astype(np.float32)

    @classmethod
    def from_env(
        cls,
        env: gymnasium.Env[Any, Any] | str,
        reward_fn: RewardFn,
        termination_fn: TerminationFn | None = None,
        expected_reward_fn: ExpectedRewardFn | None = None,
        *,
        env_id: str | None = None,
        max_episode_steps: int | None = None,
    ) -> TaskSpec:
        """Spec of a gymnasium env: sizes, action bounds and time limit read from it.

        Args:
            env: A gymnasium env (wrapped or not) or a registered id (built with
                :func:`make_env`, read, and closed).
            reward_fn: Batched reward (see the class docstring).
            termination_fn: Batched termination, or ``None`` if the task never terminates.
            expected_reward_fn: Exact ``E[reward]`` under a Gaussian belief, or ``None``.
            env_id: Name of the spec; by default the env's registered id (``env.spec.id``),
                or its class name for an env built without ``gymnasium.make``.
            max_episode_steps: Time limit; by default the env's
                (``env.spec.max_episode_steps``, or that of a
                :class:`gymnasium.wrappers.TimeLimit` around it), else ``None``.

        Returns:
            The :class:`TaskSpec`, with ``obs_dim = observation_space.shape[0]``,
            ``action_dim = action_space.shape[0]`` and the action space's bounds as
            float32 tensors; for a ``Discrete(n)`` action space, ``action_dim = n`` and
            ``discrete_actions = True`` (one-hot actions).

        Raises:
            EnvError: If ``env`` is neither an env nor a registered id, or its spaces do
                not fit state-based models (image observations, an unbounded or
                multi-dimensional Box action; see :func:`check_continuous_env`), or an
                argument is refused by :class:`TaskSpec`.

        Examples:
            >>> from bayes_mbrl.envs.rewards import pendulum_reward
            >>> spec = TaskSpec.from_env("Pendulum-v1", pendulum_reward)
            >>> spec.obs_dim, spec.action_high, spec.max_episode_steps
            (3, tensor([2.]), 200)
        """
        if isinstance(env, str):
            built = make_env(env, discrete_ok=True)
            try:
                return cls.from_env(
                    built,
                    reward_fn,
                    termination_fn,
                    expected_reward_fn,
                    env_id=env_id,
                    max_episode_steps=max_episode_steps,
                )
            finally:
                built.close()
        if not isinstance(env, gymnasium.Env):
            raise EnvError(
                "TaskSpec.from_env needs a gymnasium.Env or a registered gymnasium id; "
                f"got {type(env).__name__} {env!r}"
            )
        if env_id is None:
            env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        if max_episode_steps is None:
            max_episode_steps = _env_time_limit(env)
        act = env.action_space
        discrete = isinstance(act, spaces.Discrete)
        check_continuous_env(env, discrete_ok=discrete)
        low: BoundLike
        high: BoundLike
        if isinstance(act, spaces.Discrete):  # one-hot actions
            action_dim, low, high = int(act.n), 0.0, 1.0
        else:
            assert isinstance(act, spaces.Box)  # check_continuous_env
            action_dim, low, high = int(act.shape[0]), act.low, act.high
        return cls(
            env_id=env_id,
            obs_dim=int(env.observation_space.shape[0]),  # type: ignore[index]
            action_dim=action_dim,
            action_low=low,
            action_high=high,
            reward_fn=reward_fn,
            termination_fn=termination_fn,
            max_episode_steps=max_episode_steps,
            expected_reward_fn=expected_reward_fn,
            discrete_actions=discrete,
        )


def _positive_int(where: str, name: str, value: object) -> int:
    """``value`` as an int >= 1.

    Args:
        where: Prefix of the error message (``"TaskSpec 'id'"``).
        name: Name of the argument.
        value: The argument (a Python or numpy integer).

    Returns:
        ``int(value)``.

    Raises:
        EnvError: If ``value`` is not an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise EnvError(f"{where}: {name} must be an int >= 1; got {value!r}")
    return int(value)


def _frame_shape(
    where: str, observation: object, frame_shape: object, obs_dim: int
) -> tuple[int, int, int] | None:
    """Check ``observation`` and ``frame_shape`` together.

    Args:
        where: Prefix of the error message.
        observation: The observation kind, one of :data:`OBSERVATION_KINDS`.
        frame_shape: ``(frame_stack, height, width)`` for ``"pixels"``, else ``None``.
        obs_dim: The observation size, ``frame_stack * height * width`` for pixels.

    Returns:
        ``frame_shape`` as a tuple of three ints, or ``None``.

    Raises:
        EnvError: If ``observation`` is not a known kind, or ``frame_shape`` does not
            fit it or ``obs_dim``.
    """
    if not isinstance(observation, str) or observation not in OBSERVATION_KINDS:
        raise EnvError(
            f"{where}: observation must be one of {', '.join(map(repr, OBSERVATION_KINDS))} "
            f"(the full state, a noisy part of it, or rendered frames); got {observation!r}"
        )
    if observation != "pixels":
        if frame_shape is not None:
            raise EnvError(
                f"{where}: frame_shape is only for observation='pixels'; got frame_shape="
                f"{frame_shape!r} with observation={observation!r}. Leave it None."
            )
        return None
    if frame_shape is None:
        raise EnvError(
            f"{where}: observation='pixels' needs frame_shape=(frame_stack, height, width), "
            f"whose product is obs_dim = {obs_dim}"
        )
    if (
        not isinstance(frame_shape, tuple | list)
        or len(frame_shape) != 3
        or not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1
            for n in frame_shape
        )
    ):
        raise EnvError(
            f"{where}: frame_shape must be three ints >= 1, (frame_stack, height, width); "
            f"got {frame_shape!r}"
        )
    shape = (int(frame_shape[0]), int(frame_shape[1]), int(frame_shape[2]))
    if shape[0] * shape[1] * shape[2] != obs_dim:
        raise EnvError(
            f"{where}: frame_shape {shape} holds {shape[0] * shape[1] * shape[2]} values but "
            f"obs_dim is {obs_dim}; a pixel observation is the flattened frames"
        )
    return shape


def _bound(where: str, name: str, value: object, dim: int) -> Tensor:
    """An action bound as a float32 tensor of shape ``(dim,)`` (a copy).

    Args:
        where: Prefix of the error message.
        name: ``"action_low"`` or ``"action_high"``.
        value: A tensor, numpy array, list/tuple of numbers, or one number.
        dim: The action size.

    Returns:
        The bound, float32, shape ``(dim,)``, on the device of a tensor ``value``.

    Raises:
        EnvError: If ``value`` is not numbers, has another shape, or is NaN or infinite.
    """
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise EnvError(f"{where}: {name} must hold real numbers; got dtype {value.dtype}")
        bound = value.detach().to(torch.float32).clone()
    else:
        try:
            array = np.asarray(value)
            if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
                raise TypeError(f"dtype {array.dtype}")
            if np.iscomplexobj(array):
                raise TypeError("complex numbers")
            with np.errstate(over="ignore"):  # too large for float32: inf, refused below
                bound = torch.from_numpy(array.astype(np.float32, copy=True))
        except (TypeError, ValueError) as exc:
            raise EnvError(
                f"{where}: {name} must be numbers (a tensor, numpy array, list or tuple of "
                f"shape ({dim},)); got {value!r} ({exc})"
            ) from exc
    if bound.dim() == 0:
        bound = bound.expand(dim).clone()
    if tuple(bound.shape) != (dim,):
        raise EnvError(
            f"{where}: {name} must have shape ({dim},) (action_dim = {dim}); "
            f"got shape {tuple(bound.shape)}"
        )
    finite = torch.isfinite(bound)
    if not bool(finite.all()):
        i = int(torch.nonzero(~finite).flatten()[0])
        raise EnvError(
            f"{where}: {name} must be finite; got {bound[i].item()} at index {i} "
            f"({name}={bound.tolist()}). Planners sample actions within the bounds: wrap "
            "an unbounded action space (gymnasium.wrappers.ClipAction / RescaleAction)."
        )
    return bound


def _env_time_limit(env: gymnasium.Env[Any, Any]) -> int | None:
    """Time limit of an env: its spec's, else that of a ``TimeLimit`` wrapper around it.

    Args:
        env: A gymnasium env, wrapped or not.

    Returns:
        ``max_episode_steps``, or ``None`` when the env has none.
    """
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return int(env.spec.max_episode_steps)
    layer: gymnasium.Env[Any, Any] = env
    while isinstance(layer, gymnasium.Wrapper):
        if isinstance(layer, TimeLimit):
            return int(layer._max_episode_steps)
        layer = layer.env
    return None


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


def _noisy_cliff() -> TaskSpec:
    """Spec of ``bayes_mbrl/NoisyCliff-v0`` (a point mass by a cliff, for risk)."""
    register_noisy_cliff()
    low, high = _bounds(-1.0, 1.0, 1)
    return TaskSpec(
        env_id=NOISY_CLIFF_ID,
        obs_dim=1,
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=noisy_cliff_reward,
        termination_fn=None,
        max_episode_steps=_time_limit(NOISY_CLIFF_ID),
    )


class UnavailableReward:
    """A task's ``reward_fn`` where there is no reward function to call.

    Calling it raises :class:`EnvError` with :meth:`reason` (what to do instead);
    :attr:`available` is False, so algorithms that need the reward refuse the task
    before the run (``Algorithm.needs_reward_fn``). Subclasses are classes, not
    closures, so that a :class:`TaskSpec` holding one pickles.

    Args:
        env_id: The task.
    """

    #: there is no reward function to call
    available = False

    def __init__(self, env_id: str) -> None:
        self.env_id = env_id

    def reason(self) -> str:
        """Why there is no reward function, and the fix."""
        return f"{self.env_id} has no reward function"

    def __call__(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """Raise: the reward cannot be computed.

        Args:
            obs: Observations before the step (unused).
            action: Actions (unused).
            next_obs: Observations after the step (unused).

        Raises:
            EnvError: Always, with :meth:`reason`.
        """
        raise EnvError(self.reason())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id!r})"


class _UnobservedReward(UnavailableReward):
    """The ``reward_fn`` of a task whose reward is not a function of the observation:
    calling it points to the latent-model mode.

    Args:
        env_id: The task.
        seen_through: What the observation is, e.g. ``"pixels"``.
    """

    def __init__(self, env_id: str, seen_through: str) -> None:
        super().__init__(env_id)
        self.seen_through = seen_through

    def reason(self) -> str:
        """The observation the reward is not a function of, and the mode that learns it."""
        return (
            f"{self.env_id} is observed through {self.seen_through}; its reward is not a "
            "function of the observation: use experiment.mode = 'latent_mpc', whose "
            "latent model learns the reward"
        )

    def __repr__(self) -> str:
        return f"_UnobservedReward({self.env_id!r}, {self.seen_through!r})"


def _pendulum_partial() -> TaskSpec:
    """Spec of ``bayes_mbrl/PendulumPartial-v0`` (noisy ``[cos theta, sin theta]``)."""
    register_observation_envs()
    low, high = _bounds(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE, 1)
    return TaskSpec(
        env_id=PENDULUM_PARTIAL_ID,
        obs_dim=2,
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=_UnobservedReward(PENDULUM_PARTIAL_ID, "partial observations"),
        termination_fn=None,
        max_episode_steps=_time_limit(PENDULUM_PARTIAL_ID),
        observation="partial",
    )


def _pendulum_pixels() -> TaskSpec:
    """Spec of ``bayes_mbrl/PendulumPixels-v0`` (one 32 x 32 frame per observation)."""
    register_observation_envs()
    low, high = _bounds(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE, 1)
    frame_shape = (1, 32, 32)
    return TaskSpec(
        env_id=PENDULUM_PIXELS_ID,
        obs_dim=frame_shape[0] * frame_shape[1] * frame_shape[2],
        action_dim=1,
        action_low=low,
        action_high=high,
        reward_fn=_UnobservedReward(PENDULUM_PIXELS_ID, "pixels"),
        termination_fn=None,
        max_episode_steps=_time_limit(PENDULUM_PIXELS_ID),
        observation="pixels",
        frame_shape=frame_shape,
    )


def _cartpole() -> TaskSpec:
    """Spec of gymnasium's ``CartPole-v1`` (two discrete actions, one-hot)."""
    return TaskSpec(
        env_id="CartPole-v1",
        obs_dim=4,
        action_dim=2,
        action_low=0.0,
        action_high=1.0,
        reward_fn=cartpole_reward,
        termination_fn=cartpole_termination,
        max_episode_steps=_time_limit("CartPole-v1"),
        discrete_actions=True,
    )


_TASKS: dict[str, Callable[[], TaskSpec]] = {
    "CartPole-v1": _cartpole,
    "Pendulum-v1": _pendulum,
    "MountainCarContinuous-v0": _mountain_car,
    CARTPOLE_SWINGUP_ID: _cartpole_swingup,
    PENDULUM_SWINGUP_ID: _pendulum_swingup,
    NOISY_CLIFF_ID: _noisy_cliff,
    PENDULUM_PARTIAL_ID: _pendulum_partial,
    PENDULUM_PIXELS_ID: _pendulum_pixels,
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


def check_continuous_env(env: gymnasium.Env[Any, Any], discrete_ok: bool = False) -> None:
    """Check that an env fits continuous-action, state-based planners.

    The action space must be a bounded 1-D float :class:`gymnasium.spaces.Box`
    (or, with ``discrete_ok``, a :class:`gymnasium.spaces.Discrete`) and the
    observation space a 1-D ``Box``.

    Args:
        env: The environment (wrapped or not).
        discrete_ok: accept a ``Discrete`` action space (for discrete-action learners).

    Raises:
        EnvError: If a space does not fit; the message names the space and the fix.
    """
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    act = env.action_space
    if discrete_ok and isinstance(act, spaces.Discrete):
        _check_flat_observation(name, env.observation_space)
        return
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
    _check_flat_observation(name, env.observation_space)


def _check_flat_observation(name: str, obs: spaces.Space[Any]) -> None:
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


def make_env(
    env_id: str, render_mode: str | None = None, discrete_ok: bool = False, **kwargs: Any
) -> gymnasium.Env[Any, Any]:
    """Build a gymnasium env for continuous-action, state-based planning.

    Args:
        env_id: A registered gymnasium id (``import bayes_mbrl.envs`` registers
            ``bayes_mbrl/CartPoleSwingUp-v0``).
        render_mode: Passed to :func:`gymnasium.make` when not ``None`` (so an env
            whose constructor takes no ``render_mode`` builds as with ``gymnasium.make``).
        discrete_ok: accept a ``Discrete`` action space (for discrete-action learners).
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
    register_observation_envs()
    if env_id not in gymnasium.registry:
        known = list(gymnasium.registry)
        raise EnvError(
            f"unknown gymnasium env id {env_id!r}.{_suggest(env_id, known)} "
            f"Tasks with batched rewards: {', '.join(registered_task_ids())}. Your own env "
            "class runs under an id of your choice with env.entry_point = "
            "'path/to/file.py:Class' (docs/own_env.md)."
        )
    if render_mode is not None:
        # only when asked: an env whose __init__ takes no render_mode is built as
        # gymnasium.make builds it
        kwargs["render_mode"] = render_mode
    try:
        env = gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        raise EnvError(f"cannot build {env_id!r}: {exc}") from exc
    except TypeError as exc:
        raise EnvError(f"cannot build {env_id!r} with arguments {sorted(kwargs)}: {exc}") from exc
    try:
        check_continuous_env(env, discrete_ok=discrete_ok)
    except EnvError:
        env.close()
        raise
    return env
