"""What the experiment runner sees of an algorithm: an :class:`Agent` that acts and
a :class:`Learner` that is fitted after episodes and checkpointed, built by an
:class:`Algorithm` registered in :data:`ALGORITHMS` under its ``experiment.mode``.

MPC (PETS-style, modes ``mpc``, ``v1.0``, ``v0.5``) and PILCO are such pairs; a new
algorithm is one module that defines its agent and learner, an :class:`Algorithm`
whose :meth:`Algorithm.build` wires them from a config, and the registration::

    @ALGORITHMS.register("my_mode", options=MyOptions)    # [my_mode] section of a config
    class MyAlgorithm(Algorithm):
        def build(self, config, task, generator):
            ...
            return AlgorithmParts(agent=agent, learner=learner, title="my method")

Nothing else is edited: the config accepts ``experiment.mode = "my_mode"`` and a
``[my_mode]`` section read into ``MyOptions``; the runner fits, checkpoints, resumes
and plots it like the built-in ones.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import MODELS, DynamicsModel, FitReport, ProgressFn
from bayes_mbrl.registry import Registry

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "ALGORITHMS",
    "Agent",
    "Algorithm",
    "AlgorithmParts",
    "Learner",
    "build_algorithm",
    "build_model",
    "check_learner",
    "check_mode_fits_task",
    "frozen",
    "polyak_update",
]


@runtime_checkable
class Agent(Protocol):
    """Acts in the environment.

    Attributes:
        plan_seconds: wall time spent choosing actions since the last :meth:`reset`
            (reported in ``timings.csv``).
    """

    plan_seconds: float

    def reset(self) -> None:
        """Start of an episode."""

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """Action ``(action_dim,)`` for the observation ``(obs_dim,)``."""
        ...


@runtime_checkable
class Learner(Protocol):
    """Fitted on the replay buffer between episodes and checkpointed by the runner.

    A :class:`~bayes_mbrl.models.base.DynamicsModel` is a learner (the MPC modes fit
    only their model); PILCO's learner fits its GP and optimizes its policy.
    """

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit to every transition in ``data``; call ``progress`` after each step."""
        ...

    def progress_total(self) -> int | None:
        """How many ``progress`` calls a fit makes at most (None: unknown)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers (``torch.load(weights_only=True)`` reads them)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@dataclass
class AlgorithmParts:
    """What an algorithm gives the runner.

    Attributes:
        agent: acts in the planned (non-random) episodes.
        learner: fitted before each planned episode (or only before the first, see
            ``refits_each_episode``) and checkpointed.
        model: the dynamics model of observations, for ``bayes-mbrl analyze``
            (None when the algorithm has none in those coordinates).
        refits_each_episode: False to fit only once, before the first planned episode.
        title: the method's name in plots ("ensemble + cem").
        fit_description: what a fit does, for progress bars.
        no_model_reason: why ``model`` is None (for the error of ``analyze``).
        callbacks: the algorithm's own :class:`~bayes_mbrl.callbacks.Callback` hooks
            (diagnostics it writes into the run directory), run after the runner's.
        eval_agent: acts in the evaluation episodes (``experiment.eval_episodes``):
            the agent without its exploration noise (None: ``agent`` itself).
        notes: lines for the run's log, printed when the run starts (e.g. the
            planning precision ``planner.precision = "auto"`` chose, and why).
    """

    agent: Agent
    learner: Learner
    model: DynamicsModel | None = None
    refits_each_episode: bool = True
    title: str = ""
    fit_description: str = "fit"
    no_model_reason: str = ""
    callbacks: list[Any] = field(default_factory=list)
    eval_agent: Agent | None = None
    notes: list[str] = field(default_factory=list)


class Algorithm(abc.ABC):
    """Builds an agent/learner pair from a configuration (one per ``experiment.mode``).

    Subclasses are registered in :data:`ALGORITHMS`; their options dataclass, given at
    registration, is the config section named after the mode.
    """

    #: the kinds of observation (``TaskSpec.observation``) this algorithm can act on;
    #: a task observed otherwise (partial observations, pixels) is refused when the
    #: run is built, naming the modes that can
    observations: tuple[str, ...] = ("state",)
    #: the action spaces this algorithm can act in: ``"box"`` (continuous, bounded)
    #: and/or ``"discrete"`` (one-hot actions of a ``Discrete`` space); a task with
    #: another is refused when the run is built, naming the modes that can
    action_spaces: tuple[str, ...] = ("box",)
    #: the algorithm scores imagined transitions with the task's reward function; a
    #: task without one (your own env with no ``env.reward_fn``) is refused when the run
    #: is built, before any episode (the MPC modes learn a reward model instead)
    needs_reward_fn: bool = False
    #: the whole loop (model, fitting, planning) runs on ``experiment.device``; other
    #: algorithms refuse a device other than the CPU
    on_devices: bool = False

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        """Checks of the whole config that this mode needs (e.g. the model kind it
        requires): ``(key, value, expected)`` of the first problem, or None."""
        return None

    @abc.abstractmethod
    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        """The agent and learner for ``config`` on ``task``, seeded by ``generator``."""


_SPACE_NAMES = {"box": "continuous (Box)", "discrete": "discrete"}
_OBSERVED_THROUGH = {"partial": "partial observations", "pixels": "pixels"}

ALGORITHMS: Registry[Callable[[str], Algorithm]] = Registry("mode", "experiment.mode")
"""Algorithms by ``experiment.mode``; each entry is an :class:`Algorithm` subclass
(called with its mode name) with its options dataclass, the ``[mode]`` section."""


def build_algorithm(config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
    """The parts of ``config.experiment.mode`` (see :data:`ALGORITHMS`).

    Raises:
        ConfigError: the mode cannot act on the task (:func:`check_mode_fits_task`).
        ModelError: the learner's ``fit`` does not take ``progress`` (written for an
            earlier version of the protocol).
    """
    algorithm = check_mode_fits_task(config, task)
    parts = algorithm.build(config, task, generator)
    check_learner(parts.learner)
    return parts


def check_mode_fits_task(config: Any, task: TaskSpec) -> Algorithm:
    """The algorithm of ``config.experiment.mode``, once it is known to act on ``task``
    (what a run checks before it builds anything; a sweep checks it for every trial
    before any starts).

    Raises:
        ConfigError: the mode cannot act on the task's kind of observation or in its
            kind of action space, or it scores imagined transitions with a reward
            function the task does not have.
    """
    mode = config.experiment.mode
    algorithm = ALGORITHMS[mode](mode)
    observation = getattr(task, "observation", "state")
    if observation not in algorithm.observations:
        able = [
            name
            for name in ALGORITHMS.names()
            if observation in getattr(ALGORITHMS[name], "observations", ("state",))
        ]
        raise ConfigError(
            f"env.id = {task.env_id!r} is observed through "
            f"{_OBSERVED_THROUGH.get(observation, observation)} (its reward and "
            f"dynamics are not functions of one observation); experiment.mode = {mode!r} "
            f"plans on states. Set experiment.mode to one of {able} (with its model kind, "
            "e.g. model.kind = 'latent')"
        )
    space = "discrete" if getattr(task, "discrete_actions", False) else "box"
    if space not in algorithm.action_spaces:
        able = [
            name
            for name in ALGORITHMS.names()
            if space in getattr(ALGORITHMS[name], "action_spaces", ("box",))
        ]
        what = {
            "discrete": f"discrete actions (Discrete({task.action_dim}))",
            "box": "continuous actions (a Box)",
        }[space]
        raise ConfigError(
            f"env.id = {task.env_id!r} has {what}; experiment.mode = {mode!r} acts in "
            f"{' or '.join(_SPACE_NAMES[s] for s in algorithm.action_spaces)} action spaces "
            "only. Set experiment.mode "
            f"to one of {able}, or use an env with the other kind of actions"
        )
    if algorithm.needs_reward_fn and not getattr(task.reward_fn, "available", True):
        learn = [
            n for n in ALGORITHMS.names() if not getattr(ALGORITHMS[n], "needs_reward_fn", False)
        ]
        raise ConfigError(
            f"env.id = {task.env_id!r} has no reward function and experiment.mode = "
            f"{mode!r} scores imagined transitions with one: set env.reward_fn = "
            "'path/to/file.py:function' (docs/own_env.md), or choose a mode that learns "
            f"the reward or needs none: {learn}"
        )
    return algorithm


def check_learner(learner: Any) -> None:
    """Raise :class:`~bayes_mbrl.errors.ModelError` unless ``learner.fit`` accepts the
    runner's call ``fit(data, generator, progress=...)``, before any episode runs."""
    try:
        params = inspect.signature(learner.fit).parameters
    except (AttributeError, TypeError, ValueError):
        raise ModelError(
            f"{type(learner).__name__} has no fit(data, generator=None, progress=None); "
            "a learner (or dynamics model) must implement it"
        ) from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "progress" not in params and not takes_any:
        raise ModelError(
            f"{type(learner).__name__}.fit takes no 'progress' argument; the runner calls "
            "fit(data, generator, progress=...): add 'progress=None' to its signature and "
            "call progress(step, train_loss, val_loss) as it goes (or ignore it)"
        )


def state_model_check(config: Any, why: str) -> tuple[str, Any, str] | None:
    """:meth:`Algorithm.check` of a mode that needs a model of states: the problem
    ``("model.kind", kind, "a model of states (<why>)")`` when ``model.kind`` is a latent
    state-space model (its class has ``needs_history``), else None."""
    kind = config.model.kind
    if getattr(MODELS[kind], "needs_history", False):
        return ("model.kind", kind, f"a model of states ({why})")
    return None


def refit_when_due(
    model: DynamicsModel,
    data: ReplayBuffer,
    refit_at: int,
    every: int,
    generator: torch.Generator | None,
    progress: ProgressFn | None,
) -> tuple[FitReport, int]:
    """Refit ``model`` on ``data`` if it was never fitted (``refit_at < 0``) or ``every``
    environment steps have passed since ``refit_at``; returns the fit's report (empty
    when not due) and the new ``refit_at``."""
    if refit_at < 0 or len(data) - refit_at >= every:
        return model.fit(data, generator, progress=progress), len(data)
    return FitReport(), refit_at


def build_model(config: Any, obs_dim: int, action_dim: int) -> DynamicsModel:
    """The dynamics model of ``config.model`` (its ``kind`` looked up in
    :data:`~bayes_mbrl.models.base.MODELS`), seeded by ``experiment.seed``."""
    section = config.model
    cls = MODELS[section.kind]
    options = MODELS.options(section.kind)
    values = {k: getattr(section, k) for k in _field_names(options)} if options else {}
    opts = options(**values) if options else None
    return cls.from_options(opts, obs_dim, action_dim, seed=config.experiment.seed)  # type: ignore[arg-type]


def _field_names(cls: type[Any]) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)]


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters take no gradient inside (gradients still flow through it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``target <- target + rate * (source - target)``, parameter by parameter."""
    for t, p in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(p, rate)
