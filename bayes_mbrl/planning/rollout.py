"""The particle rollout evaluator: the only thing planners see of a dynamics model.

Given a start state and ``(population, horizon, action_dim)`` action sequences, it
imagines ``particles`` trajectories per sequence through posterior function draws
and returns per-particle returns ``(population, particles)``; an objective reduces
them to one score per sequence.

Propagation modes (PETS, Chua et al. 2018):

- ``ts_inf``: each particle keeps one function for the whole trajectory;
- ``ts_1``: each particle is assigned a (stratified) random function at every step;
- ``expectation``: one deterministic trajectory per sequence through the
  predictive mean (the mixture mean over functions).

Layout: particles are stored function-major, ``(n_functions, population * k, obs_dim)``
with ``k = particles / n_functions``, so one model call evaluates every function on
its particles at once. Loops run over horizon steps only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bayes_mbrl.envs import RewardFn, TerminationFn
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample
from bayes_mbrl.planning.objectives import Mean, Objective

__all__ = ["PRECISIONS", "PROPAGATIONS", "RolloutEvaluator"]

PROPAGATIONS = ("ts_inf", "ts_1", "expectation")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RolloutEvaluator:
    """Scores action sequences by imagined returns under the model posterior.

    Args:
        model: any :class:`~bayes_mbrl.models.base.DynamicsModel`.
        reward_fn: batched ``(obs, action, next_obs) -> reward``.
        horizon: planning horizon ``H``.
        particles: particles per sequence ``P`` (ignored by ``expectation``).
        propagation: one of :data:`PROPAGATIONS`.
        objective: reduces ``(population, P)`` returns to ``(population,)``.
        termination_fn: batched ``(obs, action, next_obs) -> bool``; rewards after a
            particle terminates are not counted.
        discount: per-step discount of imagined rewards.
        precision: ``float32`` or ``bfloat16`` (model matmuls only; states and
            returns are accumulated in float32).
        generator: source of randomness (function draws, noise, TS-1 assignments).

    Example:
        >>> # evaluator = RolloutEvaluator(model, task.reward_fn, horizon=15)
        >>> # scores = evaluator(obs, actions)   # actions (population, 15, action_dim)
    """

    def __init__(
        self,
        model: DynamicsModel,
        reward_fn: RewardFn,
        horizon: int,
        particles: int = 20,
        propagation: str = "ts_inf",
        objective: Objective | None = None,
        termination_fn: TerminationFn | None = None,
        discount: float = 1.0,
        precision: str = "float32",
        generator: torch.Generator | None = None,
    ) -> None:
        if propagation not in PROPAGATIONS:
            raise ConfigError(
                f"unknown propagation {propagation!r}; choose one of {list(PROPAGATIONS)}"
            )
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
        if horizon < 1 or particles < 1:
            raise ConfigError(f"horizon and particles must be >= 1, got {horizon}, {particles}")
        if not 0.0 < discount <= 1.0:
            raise ConfigError(f"discount must be in (0, 1], got {discount}")
        self.model = model
        self.reward_fn = reward_fn
        self.termination_fn = termination_fn
        self.horizon = horizon
        self.particles = 1 if propagation == "expectation" else particles
        self.propagation = propagation
        self.objective: Objective = objective if objective is not None else Mean()
        self.discount = discount
        self.precision = precision
        self.generator = generator

    def num_functions(self) -> int:
        """Functions drawn per evaluation: the model's finite support when it divides ``P``."""
        hint = self.model.num_functions_hint
        if self.propagation == "expectation":
            return hint or 1
        if hint and self.particles % hint == 0:
            return hint
        return self.particles

    def _functions(self) -> FunctionSample:
        fs = self.model.sample_functions(self.num_functions(), self.generator)
        if self.precision != "float32":
            fs = fs.with_compute_dtype(PRECISIONS[self.precision])
        return fs

    def _check(self, start_obs: Tensor, actions: Tensor) -> Tensor:
        obs_dim, action_dim = self.model.obs_dim, self.model.action_dim
        if start_obs.shape != (obs_dim,):
            raise DataError(f"start_obs must have shape ({obs_dim},), got {tuple(start_obs.shape)}")
        if actions.dim() != 3 or actions.shape[1:] != (self.horizon, action_dim):
            raise DataError(
                f"actions must have shape (population, {self.horizon}, {action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        return start_obs.float()

    def scorer(self, start_obs: Tensor) -> Callable[[Tensor], Tensor]:
        """The score function of one planning call from ``start_obs``.

        The posterior functions are drawn once and shared by every evaluation of the
        call (common random numbers across the optimizer's iterations), so the planner
        optimizes one fixed objective instead of a new Monte Carlo estimate at each
        iteration. For an ensemble whose particles cover every member this changes
        nothing; for continuous posteriors (BNN weights, GP paths, physical
        parameters) it removes the draw-to-draw noise between iterations.

        Args:
            start_obs: ``(obs_dim,)`` current state.

        Returns:
            ``actions (population, horizon, action_dim) -> scores (population,)``.
        """
        fs = self._functions()
        return lambda actions: self.objective(self.particle_returns(start_obs, actions, fs))

    @torch.inference_mode()
    def particle_returns(
        self, start_obs: Tensor, actions: Tensor, functions: FunctionSample | None = None
    ) -> Tensor:
        """Imagined return of every particle.

        Args:
            start_obs: ``(obs_dim,)`` current state.
            actions: ``(population, horizon, action_dim)`` candidate sequences.
            functions: posterior draws to use (None: draw new ones), as from
                :meth:`scorer`.

        Returns:
            ``(population, particles)`` discounted sums of imagined rewards.
        """
        start = self._check(start_obs, actions)
        actions = actions.float()
        fs = functions if functions is not None else self._functions()
        if self.propagation == "expectation":
            return self._expectation_returns(start, actions, fs)
        pop, horizon, adim = actions.shape
        n_f = fs.n
        k = self.particles // n_f
        m = pop * k
        # actions per step in the function-major particle layout: (H, n_f, pop * k, A)
        act = (
            actions.transpose(0, 1)[:, None, :, None, :]
            .expand(horizon, n_f, pop, k, adim)
            .reshape(horizon, n_f, m, adim)
        )
        obs = start.expand(n_f, m, -1).contiguous()
        returns = torch.zeros(n_f, m)
        alive = torch.ones(n_f, m, dtype=torch.bool)
        ts1 = self.propagation == "ts_1"
        weight = 1.0
        for t in range(horizon):
            a_t = act[t]
            if ts1:
                perm = torch.randperm(n_f * m, generator=self.generator)
                flat_obs, flat_act = obs.reshape(n_f * m, -1), a_t.reshape(n_f * m, -1)
                nxt_perm = fs.sample(
                    flat_obs[perm].view(n_f, m, -1), flat_act[perm].view(n_f, m, -1), self.generator
                )
                nxt = torch.empty_like(flat_obs)
                nxt[perm] = nxt_perm.reshape(n_f * m, -1)
                nxt = nxt.view(n_f, m, -1)
            else:
                nxt = fs.sample(obs, a_t, self.generator)
            self._accumulate(obs, a_t, nxt, returns, alive, weight)
            obs = nxt
            weight *= self.discount
        # (n_f, pop, k) -> (pop, n_f * k): particle q = f * k + j
        return returns.view(n_f, pop, k).permute(1, 0, 2).reshape(pop, n_f * k)

    def _accumulate(
        self,
        obs: Tensor,
        action: Tensor,
        nxt: Tensor,
        returns: Tensor,
        alive: Tensor,
        weight: float,
    ) -> None:
        """Add one step's discounted reward of the living particles; mark terminations."""
        r = self.reward_fn(obs, action, nxt)
        returns.add_(torch.where(alive, r, 0.0), alpha=weight)
        if self.termination_fn is not None:
            alive &= ~self.termination_fn(obs, action, nxt)

    def _expectation_returns(self, start: Tensor, actions: Tensor, fs: FunctionSample) -> Tensor:
        pop, horizon, _ = actions.shape
        n_f = fs.n
        obs = start.expand(pop, -1)
        returns = torch.zeros(pop)
        alive = torch.ones(pop, dtype=torch.bool)
        weight = 1.0
        for t in range(horizon):
            a_t = actions[:, t]
            nxt = fs.mean(obs.expand(n_f, -1, -1), a_t.expand(n_f, -1, -1)).mean(0)
            self._accumulate(obs, a_t, nxt, returns, alive, weight)
            obs = nxt
            weight *= self.discount
        return returns.unsqueeze(-1)

    def __call__(self, start_obs: Tensor, actions: Tensor) -> Tensor:
        """Objective value of each sequence, ``(population,)``."""
        return self.objective(self.particle_returns(start_obs, actions))
