"""Planners: optimize ``(horizon, action_dim)`` action sequences against a score function.

A planner sees only ``score(actions: (population, horizon, action_dim)) -> (population,)``
(higher is better), usually a :class:`~bayes_mbrl.planning.rollout.RolloutEvaluator`
bound to the current state. The whole population is scored in one call per
iteration: no loop over candidates.

Each planner keeps a warm start between MPC steps: :meth:`Planner.advance` shifts the
last solution by the executed steps and fills the tail with the middle of the
action range; :meth:`Planner.reset` forgets it (at episode start).

Planners register in :data:`PLANNERS` by ``planner.kind`` next to their class and are
built from the ``[planner]`` settings by their classmethod ``from_config``.

The sampling planners (CEM, iCEM, MPPI, random shooting) are **capturable**: their
search (:meth:`CapturablePlanner.search`) is a function of tensors only, the warm start and the
score function in, a :class:`Searched` of tensors out, with fixed shapes and no copy to
the host, so that a whole plan can be recorded once as a CUDA graph and replayed
(:mod:`~bayes_mbrl.planning.graphs`). :meth:`CapturablePlanner.adopt` then copies the value and
the per-iteration history to the host (one sync per plan) and keeps the planner's state.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.planning.noise import colored_noise
from bayes_mbrl.registry import Registry

__all__ = [
    "PLANNERS",
    "CEMPlanner",
    "CapturablePlanner",
    "MPPIPlanner",
    "PlanResult",
    "Planner",
    "PlannerSettings",
    "RandomShootingPlanner",
    "Searched",
]

ScoreFn = Callable[[Tensor], Tensor]


class PlannerSettings(Protocol):
    """What :meth:`Planner.from_config` reads: the ``[planner]`` section of a config (any
    object with these attributes)."""

    horizon: int
    population: int
    iterations: int
    elite_fraction: float
    momentum: float
    mppi_temperature: float
    mppi_noise_std: float
    icem_noise_beta: float
    icem_population_decay: float
    icem_keep_fraction: float
    ilqr_dynamics: str
    ilqr_restarts: int


@dataclass
class PlanResult:
    """The outcome of one plan.

    Attributes:
        actions: ``(horizon, action_dim)`` the chosen sequence.
        value: its score.
        iteration_values: best (CEM, random shooting) or weighted (MPPI) score per iteration.
        action_std: ``(horizon, action_dim)`` the spread of the planner's final action
            distribution around ``actions`` (CEM: its last elites' std; MPPI: the
            weighted std of its last population), the soft label a distilled policy
            learns from; None for planners without one (random shooting).
    """

    actions: Tensor
    value: float
    iteration_values: list[float] = field(default_factory=list)
    action_std: Tensor | None = None


@dataclass
class Searched:
    """The outcome of a capturable planner's search, all on the planning device (nothing
    copied to the host yet; the outputs of a plan replayed as a CUDA graph).

    Attributes:
        actions: ``(horizon, action_dim)`` the chosen sequence.
        value: ``()`` its score.
        history: ``(iterations,)`` :attr:`PlanResult.iteration_values`.
        spread: ``(horizon, action_dim)`` :attr:`PlanResult.action_std`, or None.
        state: what the planner keeps for its next plan (iCEM: ``"elites"``).
        sizes: candidates scored per iteration (fixed by the shapes, known when the
            search is recorded).
    """

    actions: Tensor
    value: Tensor
    history: Tensor
    spread: Tensor | None = None
    state: dict[str, Tensor] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


class Planner(abc.ABC):
    """Shared bounds, warm start and validation.

    A planner implements :meth:`_optimize`; one whose search is a function of tensors
    derives from :class:`CapturablePlanner` instead.

    Args:
        action_low: ``(action_dim,)`` lower bounds (finite).
        action_high: ``(action_dim,)`` upper bounds.
        horizon: sequence length ``H``.
        population: candidates scored per iteration.
        generator: source of randomness.
    """

    capturable: ClassVar[bool] = False
    """Whether the planner is a :class:`CapturablePlanner` (its search a function of
    tensors, so that a plan can be recorded as a CUDA graph)."""

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int,
        generator: torch.Generator | None = None,
    ) -> None:
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        if low.shape != high.shape or not bool(
            torch.isfinite(low).all() & torch.isfinite(high).all()
        ):
            raise ConfigError(
                "planners need finite action bounds of equal shape; wrap unbounded action "
                "spaces with gymnasium.wrappers.ClipAction "
                f"(got low={low.tolist()}, high={high.tolist()})"
            )
        if bool((high <= low).any()):
            raise ConfigError(
                f"action_high must exceed action_low, got {low.tolist()} / {high.tolist()}"
            )
        if horizon < 1 or population < 1:
            raise ConfigError(f"horizon and population must be >= 1, got {horizon}, {population}")
        self.low, self.high = low, high
        self.action_dim = int(low.shape[0])
        self.horizon = horizon
        self.population = population
        self.generator = generator
        self._warm: Tensor | None = None

    @classmethod
    def from_config(
        cls,
        cfg: PlannerSettings,
        action_low: Tensor,
        action_high: Tensor,
        generator: torch.Generator | None = None,
    ) -> Self:
        """The planner with the settings of ``cfg`` (a config's ``planner`` section).

        Args:
            cfg: the settings (:class:`PlannerSettings`): ``horizon``, ``population`` and
                ``iterations``, and what :meth:`config_options` of the planner reads.
            action_low: ``(action_dim,)`` the task's lower action bounds.
            action_high: ``(action_dim,)`` the task's upper action bounds.
            generator: source of randomness.
        """
        options = {"iterations": cfg.iterations, **cls.config_options(cfg)}
        return cls(
            action_low, action_high, cfg.horizon, cfg.population, generator=generator, **options
        )

    @classmethod
    def config_options(cls, cfg: PlannerSettings) -> dict[str, Any]:
        """The planner's own constructor arguments from the settings (none by default)."""
        return {}

    @property
    def middle(self) -> Tensor:
        """``(horizon, action_dim)`` sequence at the middle of the action range."""
        return ((self.low + self.high) / 2).expand(self.horizon, -1).clone()

    def initial_mean(self) -> Tensor:
        """The warm start, or the middle of the range."""
        return self.middle if self._warm is None else self._warm.clone()

    def reset(self) -> None:
        """Forget the warm start."""
        self._warm = None

    def set_warm_start(self, actions: Tensor) -> None:
        """Start the next plan from ``actions`` ``(horizon, action_dim)`` (e.g. a policy's
        own plan, so that the planner refines the policy's choice)."""
        want = (self.horizon, self.action_dim)
        if tuple(actions.shape) != want:
            raise ConfigError(f"a warm start must have shape {want}, got {tuple(actions.shape)}")
        self._warm = torch.minimum(torch.maximum(actions.float(), self.low), self.high).clone()

    def advance(self, steps: int = 1) -> None:
        """Shift the warm start by ``steps`` executed actions."""
        if self._warm is None:
            return
        if steps >= self.horizon:
            self._warm = None
            return
        mid = self.middle
        self._warm = torch.cat([self._warm[steps:], mid[:steps]], dim=0)

    def _score(self, score: ScoreFn, actions: Tensor) -> Tensor:
        values = score(actions)
        if values.shape != (actions.shape[0],):
            raise DataError(
                f"score function returned shape {tuple(values.shape)}, "
                f"expected ({actions.shape[0]},)"
            )
        # a sequence whose imagined return is NaN (a diverging model) is never chosen
        return torch.nan_to_num(values.float(), nan=-math.inf)

    def plan(self, score: ScoreFn) -> PlanResult:
        """Optimize and remember the solution as the next warm start."""
        result = self._optimize(score)
        self._warm = result.actions.clone()
        return result

    @abc.abstractmethod
    def _optimize(self, score: ScoreFn) -> PlanResult:
        """Planner-specific search."""

    def _uniform(self, n: int) -> Tensor:
        u = torch.rand(n, self.horizon, self.action_dim, generator=self.generator)
        return self.low + u * (self.high - self.low)


class CapturablePlanner(Planner):
    """A planner whose search is a function of tensors: :meth:`search` takes the score
    function and :meth:`search_inputs` and returns a :class:`Searched`, with fixed shapes
    and no copy to the host, so that a plan can be recorded as a CUDA graph
    (:mod:`~bayes_mbrl.planning.graphs`). :meth:`plan` is ``finish(search(...))``."""

    capturable = True

    def _optimize(self, score: ScoreFn) -> PlanResult:
        return self.finish(self.search(score, *self.search_inputs()))

    def search_inputs(self) -> tuple[Tensor | None, ...]:
        """The tensors a search starts from (the warm start, and any state the planner
        keeps between plans); :meth:`search` takes them after the score function."""
        return (self.initial_mean(),)

    @abc.abstractmethod
    def search(self, score: ScoreFn, *inputs: Tensor | None) -> Searched:
        """The search from :meth:`search_inputs`: tensors in, tensors out, no copy to
        the host."""

    def finish(self, out: Searched) -> PlanResult:
        """The plan of a search: its value and history copied to the host (one sync), the
        planner's state for the next plan kept."""
        host = torch.cat([out.value.reshape(1).float(), out.history.float()]).tolist()
        return PlanResult(out.actions, host[0], host[1:], out.spread)

    def adopt(self, out: Searched) -> PlanResult:
        """:meth:`finish` a search made outside :meth:`plan` (a replayed graph) and
        remember its solution as the next warm start, as :meth:`plan` does."""
        result = self.finish(out)
        self._warm = result.actions.clone()
        return result

    def _inputs(self, inputs: tuple[Tensor | None, ...], count: int) -> tuple[Tensor, ...]:
        """``inputs`` checked against what :meth:`search_inputs` gives: ``count`` of them,
        the first the ``(horizon, action_dim)`` warm start (shapes only: no host sync)."""
        name = type(self).__name__
        if len(inputs) != count:
            raise ConfigError(
                f"{name}.search takes the {count} tensor(s) of search_inputs() after the "
                f"score function, got {len(inputs)}"
            )
        mean = inputs[0]
        want = (self.horizon, self.action_dim)
        if not isinstance(mean, Tensor) or tuple(mean.shape) != want:
            got = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
            raise DataError(f"{name}.search: the warm start must have shape {want}, got {got}")
        return inputs  # type: ignore[return-value]


PLANNERS: Registry[type[Planner]] = Registry("planner", "planner.kind")
"""Planners by ``planner.kind``; each is built by ``PLANNERS[kind].from_config(...)``."""


def _check_cem_settings(elite_fraction: float, momentum: float, iterations: int) -> None:
    """The settings CEM and iCEM share, with the error naming the one at fault."""
    if not 0 < elite_fraction <= 1:
        raise ConfigError(f"elite_fraction must be in (0, 1], got {elite_fraction}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")


@PLANNERS.register("cem")
class CEMPlanner(CapturablePlanner):
    """Cross-entropy method with momentum, bounded sampling and a warm start.

    Each iteration samples ``population`` sequences from a diagonal Gaussian
    (variance limited so that two standard deviations stay inside the bounds, as in
    PETS), keeps the top ``elite_fraction`` and moves the Gaussian towards their
    moments: ``mean <- momentum * mean + (1 - momentum) * elite_mean``. It returns the
    mean of the last elites (or, with ``return_mean_elites=False``, the best sequence
    seen in any iteration).

    Args:
        elite_fraction: fraction of the population kept, in ``(0, 1]``.
        momentum: weight of the previous moments, in ``[0, 1)``.
        iterations: CEM iterations per plan.
        init_std_fraction: initial std as a fraction of the action range.
        return_mean_elites: return the mean of the last iteration's elites (PETS; smoother
            actions, less winner's-curse noise) instead of the best sequence seen.
    """

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int = 350,
        iterations: int = 5,
        elite_fraction: float = 0.1,
        momentum: float = 0.1,
        init_std_fraction: float = 0.25,
        return_mean_elites: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(action_low, action_high, horizon, population, generator)
        self.return_mean_elites = return_mean_elites
        _check_cem_settings(elite_fraction, momentum, iterations)
        self.iterations = iterations
        self.num_elites = max(1, math.ceil(elite_fraction * population))
        self.momentum = momentum
        self.init_std = init_std_fraction * (self.high - self.low)

    @classmethod
    def config_options(cls, cfg: PlannerSettings) -> dict[str, Any]:
        """Reads ``elite_fraction`` and ``momentum``."""
        return {"elite_fraction": cfg.elite_fraction, "momentum": cfg.momentum}

    def search(self, score: ScoreFn, *inputs: Tensor | None) -> Searched:
        (mean,) = self._inputs(inputs, 1)
        std = self.init_std.expand(self.horizon, -1).clone()
        best, best_value = mean.clone(), _minus_inf(mean)
        history: list[Tensor] = []
        for _ in range(self.iterations):
            room = torch.minimum(mean - self.low, self.high - mean).clamp_min(0) / 2
            s = torch.minimum(std, room)
            eps = torch.randn(
                self.population, self.horizon, self.action_dim, generator=self.generator
            )
            candidates = torch.maximum(torch.minimum(mean + s * eps, self.high), self.low)
            values = self._score(score, candidates)
            top = values.topk(self.num_elites).indices
            elites = candidates[top]
            best, best_value = _keep_best(best, best_value, elites[0], values[top[0]])
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(0)
            std = self.momentum * std + (1 - self.momentum) * elites.std(0, unbiased=False)
            history.append(best_value)
        spread = elites.std(0, unbiased=False)
        sizes = [self.population] * self.iterations
        if self.return_mean_elites:
            return Searched(
                elites.mean(0), values[top].mean(), torch.stack(history), spread, {}, sizes
            )
        return Searched(best, best_value, torch.stack(history), spread, {}, sizes)


@PLANNERS.register("icem")
class ICEMPlanner(CapturablePlanner):
    """The improved cross-entropy method (iCEM, Pinneri et al. 2020).

    CEM with four changes that need fewer imagined transitions for the same plans:

    * samples are **colored noise** along the horizon (spectrum ``1 / f**noise_beta``,
      :func:`~bayes_mbrl.planning.noise.colored_noise`), smoother and farther-reaching
      than independent steps;
    * the population **decays**: iteration ``i`` samples
      ``max(population * population_decay**-i, 2 * elites)`` sequences;
    * **elites are kept**: a ``keep_fraction`` of each iteration's elites joins the next
      iteration's candidates, and of the last plan's elites, shifted by the executed
      steps, the first iteration's;
    * the last iteration also scores the current **mean**, and the plan is the
      **best** sequence found.

    Args:
        elite_fraction: as for :class:`CEMPlanner`.
        momentum: as for :class:`CEMPlanner`.
        iterations: as for :class:`CEMPlanner`.
        init_std_fraction: initial std as a fraction of the action range (0.5 in the
            paper).
        noise_beta: colour of the samples (0 white, as CEM; 2 to 4 in the paper).
        population_decay: the factor the population shrinks by at each iteration.
        keep_fraction: fraction of the elites carried over.
    """

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int = 350,
        iterations: int = 3,
        elite_fraction: float = 0.1,
        momentum: float = 0.1,
        init_std_fraction: float = 0.5,
        noise_beta: float = 2.0,
        population_decay: float = 1.25,
        keep_fraction: float = 0.3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(action_low, action_high, horizon, population, generator)
        _check_cem_settings(elite_fraction, momentum, iterations)
        if noise_beta < 0:
            raise ConfigError(f"icem noise_beta must be >= 0, got {noise_beta}")
        if population_decay < 1:
            raise ConfigError(f"icem population_decay must be >= 1, got {population_decay}")
        if not 0 <= keep_fraction <= 1:
            raise ConfigError(f"icem keep_fraction must be in [0, 1], got {keep_fraction}")
        self.iterations, self.momentum = iterations, momentum
        self.num_elites = max(1, math.ceil(elite_fraction * population))
        self.init_std = init_std_fraction * (self.high - self.low)
        self.noise_beta, self.population_decay = noise_beta, population_decay
        self.num_kept = round(keep_fraction * self.num_elites)
        self._elites: Tensor | None = None
        #: candidates scored per iteration in the last plan (for transition counts)
        self.last_sizes: list[int] = []

    @classmethod
    def config_options(cls, cfg: PlannerSettings) -> dict[str, Any]:
        """Reads ``elite_fraction``, ``momentum`` and the ``icem_*`` settings."""
        return {
            "elite_fraction": cfg.elite_fraction,
            "momentum": cfg.momentum,
            "noise_beta": cfg.icem_noise_beta,
            "population_decay": cfg.icem_population_decay,
            "keep_fraction": cfg.icem_keep_fraction,
        }

    def sizes(self) -> list[int]:
        """Sampled sequences per iteration (before kept elites and the mean)."""
        floor = 2 * self.num_elites
        return [
            max(round(self.population * self.population_decay**-i), floor)
            for i in range(self.iterations)
        ]

    def reset(self) -> None:
        super().reset()
        self._elites = None

    def advance(self, steps: int = 1) -> None:
        super().advance(steps)
        if self._elites is None:
            return
        if steps >= self.horizon:
            self._elites = None
            return
        tail = self.middle[:steps].expand(len(self._elites), -1, -1)
        self._elites = torch.cat([self._elites[:, steps:], tail], dim=1)

    def search_inputs(self) -> tuple[Tensor | None, ...]:
        """The warm start and the last plan's elites to carry over (None after a reset)."""
        carried = self._elites[: self.num_kept] if self._elites is not None else None
        return self.initial_mean(), carried

    def search(self, score: ScoreFn, *inputs: Tensor | None) -> Searched:
        mean, carried = self._inputs(inputs, 2)
        std = self.init_std.expand(self.horizon, -1).clone()
        best, best_value = mean.clone(), _minus_inf(mean)
        history: list[Tensor] = []
        sizes: list[int] = []
        for i, n in enumerate(self.sizes()):
            eps = colored_noise(
                self.noise_beta, (n, self.action_dim, self.horizon), self.generator
            ).transpose(1, 2)
            candidates = [torch.maximum(torch.minimum(mean + std * eps, self.high), self.low)]
            if carried is not None and len(carried):
                candidates.append(carried)
            if i == self.iterations - 1:
                candidates.append(mean[None])
            pool = torch.cat(candidates)
            values = self._score(score, pool)
            sizes.append(len(pool))
            top = values.topk(min(self.num_elites, len(pool))).indices
            elites = pool[top]
            best, best_value = _keep_best(best, best_value, elites[0], values[top[0]])
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(0)
            std = self.momentum * std + (1 - self.momentum) * elites.std(0, unbiased=False)
            carried = elites[: self.num_kept]
            history.append(best_value)
        spread = elites.std(0, unbiased=False)
        return Searched(best, best_value, torch.stack(history), spread, {"elites": elites}, sizes)

    def finish(self, out: Searched) -> PlanResult:
        """Also keeps the last elites (carried into the next plan) and the sizes."""
        self._elites = out.state["elites"]
        self.last_sizes = list(out.sizes)
        return super().finish(out)


@PLANNERS.register("mppi")
class MPPIPlanner(CapturablePlanner):
    """Model predictive path integral control (Williams et al. 2017; PDDM's filtered noise).

    Each iteration perturbs the current mean with temporally smoothed Gaussian
    noise, scores the population and moves the mean to the exponentially weighted
    average ``sum_i w_i a_i`` with ``w = softmax(score / temperature)``.

    Args:
        temperature: lambda; lower is greedier (> 0).
        noise_std: perturbation std as a fraction of the half action range (> 0).
        smoothing: PDDM's beta in ``(0, 1]``: ``u_t = beta * eps_t + (1 - beta) * u_{t-1}``.
        iterations: updates per plan.
    """

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int = 350,
        iterations: int = 5,
        temperature: float = 1.0,
        noise_std: float = 0.5,
        smoothing: float = 0.6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(action_low, action_high, horizon, population, generator)
        if temperature <= 0 or noise_std <= 0 or not 0 < smoothing <= 1 or iterations < 1:
            raise ConfigError(
                "MPPI needs temperature > 0, noise_std > 0, smoothing in (0, 1] and "
                f"iterations >= 1; got {temperature}, {noise_std}, {smoothing}, {iterations}"
            )
        self.temperature, self.smoothing, self.iterations = temperature, smoothing, iterations
        self.noise_scale = noise_std * (self.high - self.low) / 2

    @classmethod
    def config_options(cls, cfg: PlannerSettings) -> dict[str, Any]:
        """Reads ``mppi_temperature`` and ``mppi_noise_std``."""
        return {"temperature": cfg.mppi_temperature, "noise_std": cfg.mppi_noise_std}

    def search(self, score: ScoreFn, *inputs: Tensor | None) -> Searched:
        (mean,) = self._inputs(inputs, 1)
        history: list[Tensor] = []
        for _ in range(self.iterations):
            eps = torch.randn(
                self.population, self.horizon, self.action_dim, generator=self.generator
            )
            eps = eps * self.noise_scale
            u = torch.empty_like(eps)
            prev = torch.zeros(self.population, self.action_dim)
            for t in range(self.horizon):  # smoothing filter over time steps
                prev = self.smoothing * eps[:, t] + (1 - self.smoothing) * prev
                u[:, t] = prev
            candidates = torch.maximum(torch.minimum(mean + u, self.high), self.low)
            values = self._score(score, candidates)
            weights = torch.softmax(values / self.temperature, dim=0)
            mean = (weights[:, None, None] * candidates).sum(0)
            history.append((weights * torch.nan_to_num(values, neginf=0.0)).sum())
        spread = (weights[:, None, None] * (candidates - mean) ** 2).sum(0).sqrt()
        sizes = [self.population] * self.iterations
        return Searched(mean, history[-1], torch.stack(history), spread, {}, sizes)


@PLANNERS.register("random_shooting")
class RandomShootingPlanner(CapturablePlanner):
    """Uniform random sequences; the best one wins (iterations draw fresh batches)."""

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int = 1000,
        iterations: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(action_low, action_high, horizon, population, generator)
        if iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {iterations}")
        self.iterations = iterations

    def search(self, score: ScoreFn, *inputs: Tensor | None) -> Searched:
        self._inputs(inputs, 1)  # random shooting starts from no warm start
        best = self.middle
        best_value = _minus_inf(best)
        history: list[Tensor] = []
        for _ in range(self.iterations):
            candidates = self._uniform(self.population)
            values = self._score(score, candidates)
            i = values.argmax().reshape(1)
            best, best_value = _keep_best(
                best, best_value, candidates.index_select(0, i)[0], values.index_select(0, i)[0]
            )
            history.append(best_value)
        sizes = [self.population] * self.iterations
        return Searched(best, best_value, torch.stack(history), None, {}, sizes)


def _minus_inf(like: Tensor) -> Tensor:
    """``-inf`` as a float32 scalar on ``like``'s device: the value of no plan yet."""
    return torch.full((), -math.inf, device=like.device)


def _keep_best(
    best: Tensor, best_value: Tensor, candidate: Tensor, value: Tensor
) -> tuple[Tensor, Tensor]:
    """The better of the best sequence so far and ``candidate`` (strictly higher
    ``value`` wins), chosen on the device: no host sync inside a search."""
    better = value > best_value
    return torch.where(better, candidate, best), torch.where(better, value, best_value)
