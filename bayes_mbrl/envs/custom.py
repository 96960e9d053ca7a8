"""Any gymnasium environment as a task of the runner, from the ``[env]`` section.

:func:`build_task` turns ``[env]`` into the :class:`~bayes_mbrl.envs.tasks.TaskSpec` the
runner plans with:

- a built-in task (``Pendulum-v1``, ...) keeps its hand-made spec;
- ``env.entry_point = "path/to/file.py:Class"`` (or ``"package.module:Class"``) registers
  your own :class:`gymnasium.Env` subclass under ``env.id`` first
  (:func:`register_entry_point`); a file path is taken relative to the working directory,
  as ``model.pyro_model`` is, and the run directory's ``config.toml`` keeps the key, so
  ``bayes-mbrl resume`` and ``analyze`` import the same file from the same directory;
- any other registered env gets its sizes, bounds and time limit read from it
  (:meth:`TaskSpec.from_env`), and the batched torch functions ``env.reward_fn``,
  ``env.termination_fn`` and ``env.expected_reward_fn`` (``file.py:function``) named in
  the config. Each is checked on a batch of real transitions of random actions against
  the env's own rewards and terminations before anything runs
  (:func:`check_task_functions`): a function that does not reproduce them is a
  :class:`~bayes_mbrl.errors.ConfigError` showing both values. Without a reward function
  the task's ``reward_fn`` is a :class:`NoRewardFunction`: the MPC modes learn a reward
  model in its place (:mod:`bayes_mbrl.models.reward`).

Importing the user's files runs their top-level code: point configs only at code you
trust. ``docs/own_env.md`` runs a whole experiment on an env written in the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import gymnasium
import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.envs.tasks import (
    TaskSpec,
    UnavailableReward,
    get_task,
    make_env,
    registered_task_ids,
)
from bayes_mbrl.errors import ConfigError, EnvError
from bayes_mbrl.user_code import import_user_module, load_user_function

__all__ = [
    "CHECK_STEPS",
    "FUNCTION_KEYS",
    "EnvSettings",
    "NoRewardFunction",
    "build_task",
    "check_task_functions",
    "random_transitions",
    "register_entry_point",
]

CHECK_STEPS = 64
"""Transitions of random actions each of the user's functions is checked on."""

CHECK_SEED = 12345
"""Seed of the env and of the random actions of the check (the run's own random state
is not touched)."""

FUNCTION_KEYS = ("reward_fn", "termination_fn", "expected_reward_fn")
"""The ``[env]`` keys that name the user's batched torch functions."""

_TOLERANCE = 1e-4
"""A reward matches when ``|reward_fn - env reward| <= tol * (1 + |env reward|)``
(float32 round-off of the env's float64 arithmetic)."""

_SHOWN_ROWS = 3
"""Differing transitions shown in a mismatch error."""

_REGISTERED: dict[str, type[gymnasium.Env[Any, Any]]] = {}
"""The env ids this module registered, and the class registered under each."""


class EnvSettings(Protocol):
    """What :func:`build_task` reads of a config's ``[env]`` section
    (:class:`bayes_mbrl.config.EnvConfig`)."""

    id: str
    entry_point: str
    reward_fn: str
    termination_fn: str
    expected_reward_fn: str


class NoRewardFunction(UnavailableReward):
    """The ``reward_fn`` of a task whose config names none (and that is not built in).

    The MPC modes plan with a learned reward model in its place
    (:mod:`bayes_mbrl.models.reward`); any other caller gets an
    :class:`~bayes_mbrl.errors.EnvError` naming the two fixes.

    Args:
        env_id: The task.
    """

    def reason(self) -> str:
        """The two fixes: a reward function, or a mode that learns the reward."""
        return (
            f"env.id = {self.env_id!r} has no reward function: set env.reward_fn = "
            "'path/to/file.py:function' (a batched torch (obs, action, next_obs) -> reward), "
            "or use an MPC mode (experiment.mode = 'mpc', 'v1.0' or 'v0.5'), which learns a "
            "reward model"
        )


def register_entry_point(env_id: str, spec: str) -> type[gymnasium.Env[Any, Any]]:
    """Import the env class ``spec`` names and register it with gymnasium as ``env_id``.

    Registering again in the same process is a no-op for the same class, and replaces
    an earlier registration of this function (another file under the same id).

    Args:
        env_id: The gymnasium id to register, ``[namespace/]Name-vN``.
        spec: ``path/to/file.py:Class`` (relative to the working directory) or
            ``package.module:Class``.

    Returns:
        The registered class.

    Raises:
        ConfigError: The file or module cannot be found or imported, has no such class,
            the class is not a :class:`gymnasium.Env` subclass, ``env_id`` is malformed,
            or is registered already with another entry point (a gymnasium env, say):
            the message names the key, what was found and the fix.
    """
    key = "env.entry_point"
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ConfigError(f"{key} = {spec!r}: expected 'path/to/file.py:Class'")
    module = import_user_module(target, key)
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, gymnasium.Env) and not n.startswith("_")
        )
        raise ConfigError(
            f"{key} = {spec!r}: {target!r} has no class {name!r}; its gymnasium.Env "
            f"classes are {found}"
        )
    if not (isinstance(cls, type) and issubclass(cls, gymnasium.Env)):
        what = f"class {name!r}" if isinstance(cls, type) else f"{name!r} ({type(cls).__name__})"
        raise ConfigError(
            f"{key} = {spec!r}: {what} is not a gymnasium.Env; name a subclass of "
            "gymnasium.Env (with observation_space, action_space, reset and step)"
        )
    if env_id in gymnasium.registry:
        existing = gymnasium.registry[env_id].entry_point
        if existing is cls or existing == f"{cls.__module__}:{cls.__qualname__}":
            return cls
        if env_id not in _REGISTERED:
            raise ConfigError(
                f"env.id = {env_id!r} is registered already (entry point {existing!r}); "
                f"{key} = {spec!r} registers your env under env.id: give it an id of its "
                "own (e.g. 'MyTask-v0'), or leave env.entry_point empty to run the "
                "registered env"
            )
        del gymnasium.registry[env_id]  # this module's earlier class: replaced
    try:
        # a class is an env creator (gymnasium's stubs ask for a callable returning an env)
        gymnasium.register(id=env_id, entry_point=cls)  # type: ignore[arg-type]
    except gymnasium.error.Error as exc:
        raise ConfigError(f"env.id = {env_id!r} cannot be registered: {exc}") from None
    _REGISTERED[env_id] = cls
    return cls


def build_task(env: EnvSettings, check: bool = True) -> TaskSpec:
    """The task of an ``[env]`` section (see the module docstring).

    Args:
        env: The section: ``id``, ``entry_point`` and the function keys
            (:data:`FUNCTION_KEYS`), each ``""`` or ``'file.py:name'``.
        check: Check the functions the section names against the env
            (:func:`check_task_functions`).

    Returns:
        The task: a built-in task's own spec (its functions replaced by those the
        section names), or the spec read from the env with the section's functions;
        without ``reward_fn`` its reward is a :class:`NoRewardFunction`.

    Raises:
        ConfigError: ``entry_point`` with a built-in id, an entry point or a function
            that cannot be loaded, or a function that does not reproduce the env.
        EnvError: ``env.id`` is not a registered gymnasium env, or its spaces do not fit
            (see :meth:`TaskSpec.from_env`).
    """
    given = {name: getattr(env, name) for name in FUNCTION_KEYS if getattr(env, name)}
    builtin = env.id in registered_task_ids()
    if env.entry_point:
        if builtin:
            raise ConfigError(
                f"env.id = {env.id!r} is a built-in task; env.entry_point = "
                f"{env.entry_point!r} registers your own env under env.id: give it an id "
                "of its own (e.g. 'MyTask-v0')"
            )
        register_entry_point(env.id, env.entry_point)
    if builtin and not given:
        return get_task(env.id)
    functions = {name: load_user_function(spec, f"env.{name}") for name, spec in given.items()}
    if builtin:
        task = get_task(env.id).replace(**functions)
    else:
        task = TaskSpec.from_env(
            env.id,
            functions.get("reward_fn", NoRewardFunction(env.id)),
            functions.get("termination_fn"),
            functions.get("expected_reward_fn"),
        )
    if check and given:
        check_task_functions(task, given)
    return task


def check_task_functions(
    task: TaskSpec, given: Mapping[str, str], steps: int = CHECK_STEPS, seed: int = CHECK_SEED
) -> None:
    """Check ``task``'s functions against ``steps`` real transitions of its env.

    The env (``task.env_id``) takes uniformly random actions from ``seed``, reset when an
    episode ends; on those transitions ``reward_fn`` must return the env's rewards,
    ``termination_fn`` its ``terminated`` flags, and ``expected_reward_fn`` with a zero
    covariance its rewards (within float32 round-off).

    Args:
        task: The task, its functions loaded.
        given: The config keys (:data:`FUNCTION_KEYS`) that named a function, and the
            spec each gave: the functions checked, and how errors name them.
        steps: Transitions to check on.
        seed: Seed of the env and of the actions.

    Raises:
        ConfigError: A function raises, returns the wrong shape or dtype, or does not
            reproduce the env; a mismatch shows the first differing transitions with the
            env's value and the function's.
    """
    obs, action, reward, next_obs, terminated = random_transitions(task, steps, seed)
    n = len(reward)
    for name, spec in given.items():
        where = f"env.{name} = {spec!r}"
        if name == "expected_reward_fn":
            zero_cov = torch.zeros(n, task.obs_dim, task.obs_dim)
            args = (next_obs, zero_cov, action)
        else:
            args = (obs, action, next_obs)
        out = _call(where, getattr(task, name), args, name == "termination_fn", n)
        if name == "termination_fn":
            bad = out != terminated
            got, want = out, terminated
        else:
            got, want = out.double(), reward.double()
            bad = ~((got - want).abs() <= _TOLERANCE * (1 + want.abs()))
        if bool(bad.any()):
            raise _mismatch(where, task.env_id, name, bad, obs, action, next_obs, want, got)


def random_transitions(task: TaskSpec, steps: int, seed: int) -> tuple[Tensor, ...]:
    """Transitions of uniformly random actions in ``task``'s env (reset when an episode
    ends), as the runner would log them.

    Args:
        task: The task; its env ``task.env_id`` is built with :func:`make_env`.
        steps: Transitions to collect (fewer if the env returns a non-finite value).
        seed: Seed of the env's first reset and of the actions.

    Returns:
        ``(obs (N, D), action (N, A), reward (N,), next_obs (N, D), terminated (N,))``:
        float32, the reward float64 (as the env computed it), ``terminated`` bool;
        discrete actions one-hot.

    Raises:
        EnvError: The env's first step is not finite.
    """
    env = make_env(task.env_id, discrete_ok=task.discrete_actions)
    rng = np.random.default_rng(seed + 1)  # not the env's own stream
    rows: list[tuple[np.ndarray, np.ndarray, float, np.ndarray, bool]] = []
    try:
        o, _ = env.reset(seed=seed)
        while len(rows) < steps:
            if task.discrete_actions:
                a = np.eye(task.action_dim, dtype=np.float32)[rng.integers(task.action_dim)]
            else:
                low, high = task.action_low.numpy(), task.action_high.numpy()
                a = (low + rng.random(task.action_dim) * (high - low)).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(task.env_action(torch.from_numpy(a)))
            if not (np.isfinite(nxt).all() and math.isfinite(float(r))):
                break  # the runner skips such transitions too
            rows.append((np.asarray(o, np.float32), a, float(r), np.asarray(nxt, np.float32), term))
            o = nxt
            if term or trunc:
                o, _ = env.reset()
    finally:
        env.close()
    if not rows:
        raise EnvError(
            f"{task.env_id}: the env returned a non-finite observation or reward at its first "
            "step; its functions cannot be checked. Fix the env"
        )
    return (
        torch.from_numpy(np.stack([r[0] for r in rows])),
        torch.from_numpy(np.stack([r[1] for r in rows])),
        torch.tensor([r[2] for r in rows], dtype=torch.float64),
        torch.from_numpy(np.stack([r[3] for r in rows])),
        torch.tensor([bool(r[4]) for r in rows]),
    )


def _call(
    where: str, fn: Callable[..., Any], args: tuple[Tensor, ...], boolean: bool, n: int
) -> Tensor:
    """``fn(*args)``, checked: a tensor of shape ``(n,)``, bool or real as asked."""
    shapes = ", ".join(str(tuple(a.shape)) for a in args)
    kind = "bool" if boolean else "real"
    try:
        out = fn(*args)
    except Exception as exc:
        raise ConfigError(
            f"{where} raised {type(exc).__name__}: {exc} on a batch of {n} real transitions "
            f"(argument shapes {shapes}); it must be a batched torch function returning one "
            f"{kind} value per transition"
        ) from exc
    if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{where} returned {got} for argument shapes {shapes}; expected a torch tensor "
            f"of shape ({n},): one {kind} value per transition"
        )
    if boolean and out.dtype != torch.bool:
        raise ConfigError(
            f"{where} returned dtype {out.dtype}; expected torch.bool (True where the env "
            "terminates the episode)"
        )
    if not boolean and (out.dtype == torch.bool or out.is_complex()):
        raise ConfigError(f"{where} returned dtype {out.dtype}; expected real numbers")
    return out.detach().cpu()


def _fmt(t: Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in t.flatten()) + "]"


def _mismatch(
    where: str,
    env_id: str,
    name: str,
    bad: Tensor,
    obs: Tensor,
    action: Tensor,
    next_obs: Tensor,
    want: Tensor,
    got: Tensor,
) -> ConfigError:
    """The error of a function that does not reproduce the env on the ``bad`` rows."""
    rows = bad.nonzero().flatten()
    what = {
        "reward_fn": ("rewards", "reward"),
        "termination_fn": ("terminations", "terminated"),
        "expected_reward_fn": ("rewards (with a zero covariance)", "reward"),
    }[name]
    lines = [
        f"{where} does not reproduce the {what[0]} of {env_id!r}: {len(rows)} of "
        f"{len(bad)} transitions of random actions differ"
        + ("" if name == "termination_fn" else f" by more than {_TOLERANCE:g} * (1 + |reward|)")
        + ". First differing transitions:"
    ]
    for i in rows[:_SHOWN_ROWS].tolist():
        if name == "termination_fn":
            values = f"env {what[1]} {bool(want[i])}, {name} {bool(got[i])}"
        else:
            values = f"env {what[1]} {float(want[i]):.6g}, {name} {float(got[i]):.6g}"
        lines.append(
            f"  obs {_fmt(obs[i])}, action {_fmt(action[i])}, next_obs {_fmt(next_obs[i])}: "
            f"{values}"
        )
    fix = (
        f"Fix env.{name} so that it returns what the env's step() returns for the transition "
        "(obs is the observation before the step)"
    )
    if name == "reward_fn":
        fix += ', or set env.reward_fn = "" to learn a reward model instead (MPC modes)'
    elif name == "expected_reward_fn":
        fix += ": E[reward] at next_obs_mean with no spread is the reward there"
    lines.append(fix + ".")
    return ConfigError("\n".join(lines))
