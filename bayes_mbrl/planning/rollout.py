"""The particle rollout evaluator: the only thing planners see of a dynamics model.

Given a start state and ``(population, horizon, action_dim)`` action sequences, it
imagines ``particles = F * K`` trajectories per sequence, ``K`` noise draws on each
of ``F`` posterior functions, and returns their returns ``(population, F, K)``; an
objective (:mod:`~bayes_mbrl.planning.objectives`) reduces them to one score per
sequence, using the spread across functions (epistemic), within them (aleatoric),
or both (:func:`~bayes_mbrl.planning.objectives.decompose_returns`).

How the particles (or a Gaussian belief) move is a propagation strategy
(:class:`~bayes_mbrl.planning.propagation.Propagation`) chosen by name from
:data:`PROPAGATIONS`: ``ts_inf``, ``ts_1``, ``expectation`` (Monte Carlo particles,
PETS; their step loop is :func:`~bayes_mbrl.planning.imagine.rollout`, shared with
:func:`~bayes_mbrl.planning.imagine.imagine`) and ``moment_matching`` (one Gaussian
belief per sequence through an exact SE GP, PILCO; ``particle_returns`` then has
one expected return, ``F = K = 1``, see :meth:`RolloutEvaluator.beliefs` for the
recursion and :func:`unscented_expected_reward` for rewards without a closed form).

Layout: particles are stored function-major, ``(n_functions, population * k, obs_dim)``
with ``k = particles / n_functions``, so one model call evaluates every function on
its particles at once. Loops run over horizon steps only (and, for moment matching,
over chunks of the population that bound the memory of the GP's pairwise terms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.envs import RewardFn, TerminationFn
from bayes_mbrl.envs.rewards import ExpectedRewardFn
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.planning.belief import sigma_points, unscented_expected_reward
from bayes_mbrl.planning.imagine import (
    PRECISIONS,
    TerminalValueFn,
    draw_functions,
    host_checks,
    skip_host_checks,
)
from bayes_mbrl.planning.lqr import TrajectoryProblem
from bayes_mbrl.planning.moment_matching import SEGP
from bayes_mbrl.planning.objectives import Mean, Objective, ReturnSplit, decompose_returns
from bayes_mbrl.planning.precision import resolve_precision
from bayes_mbrl.planning.propagation import MM_CHUNK_BYTES, PROPAGATIONS, make_propagation

__all__ = [
    "MM_CHUNK_BYTES",
    "PRECISIONS",
    "PROPAGATIONS",
    "RolloutEvaluator",
    "Scorer",
    "sigma_points",
    "unscented_expected_reward",
]


class RolloutEvaluator:
    """Scores action sequences by imagined returns under the model posterior.

    Args:
        model: any :class:`~bayes_mbrl.models.base.DynamicsModel`.
        reward_fn: batched ``(obs, action, next_obs) -> reward``.
        horizon: planning horizon ``H``.
        particles: particles per sequence ``P = F * K`` (ignored by ``expectation``).
        propagation: a name in :data:`PROPAGATIONS`.
        objective: reduces ``(population, F, K)`` returns to ``(population,)``.
        termination_fn: batched ``(obs, action, next_obs) -> bool``; rewards after a
            particle terminates are not counted.
        discount: per-step discount of imagined rewards.
        precision: ``float32``, ``bfloat16`` (model matmuls only; states and
            returns are accumulated in float32) or ``auto`` (bfloat16 on a CPU with
            native bf16 for a model that computes in it, see
            :func:`~bayes_mbrl.planning.precision.resolve_precision`); the attribute
            ``precision`` holds the resolved one, ``precision_note`` why.
        generator: source of randomness (function draws, noise, TS-1 assignments).
        expected_reward_fn: ``moment_matching`` only: exact expected reward
            ``(next_obs_mean, next_obs_cov, action) -> (...)`` under a Gaussian belief
            (a task's ``TaskSpec.expected_reward_fn``). Without it the expectation of
            ``reward_fn`` is approximated by the unscented transform over the joint
            belief of ``(obs, next_obs)`` (:func:`unscented_expected_reward`).
        chunk_size: ``moment_matching`` only: sequences propagated together (None:
            as many as keep the GP's pairwise terms under :data:`MM_CHUNK_BYTES`).
        terminal_value: particle propagations only: ``states (N, obs_dim) -> (N,)``, the
            value of the state after the horizon (e.g. a learned critic, as in TD-MPC):
            each particle that did not terminate adds ``discount^H * terminal_value(s_H)``
            to its return, so a short, well-conditioned horizon still sees beyond itself.
        functions: posterior functions ``F`` per sequence, which must divide ``P``
            (0: the model's finite support, e.g. an ensemble's members, when it divides
            ``P``, else ``P`` functions with one noise draw each).

    Moment matching needs a model with the ``supports_moment_matching`` capability (an
    :class:`~bayes_mbrl.models.gp.ExactGPDynamics` with the ``"se"`` kernel); it
    ignores ``particles`` and ``precision`` (one belief per sequence, float64
    throughout) and does not model terminations: a belief does not terminate, so
    ``termination_fn`` is not applied and every step's expected reward counts.

    Examples:
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
        expected_reward_fn: ExpectedRewardFn | None = None,
        chunk_size: int | None = None,
        terminal_value: TerminalValueFn | None = None,
        functions: int = 0,
    ) -> None:
        precision, self.precision_note = resolve_precision(
            precision, model, getattr(model, "device", "cpu")
        )
        strategy = make_propagation(propagation, horizon, particles, precision)
        if functions < 0:
            raise ConfigError(f"functions must be >= 0 (0: the model's default), got {functions}")
        if terminal_value is not None and strategy.particle_step() is None:
            raise ConfigError(
                f"terminal_value needs a particle propagation (ts_inf, ts_1, expectation); "
                f"{propagation!r} propagates a Gaussian belief, whose expected value under "
                "a learned critic has no closed form here"
            )
        if not 0.0 < discount <= 1.0:
            raise ConfigError(f"discount must be in (0, 1], got {discount}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        strategy.check_model(model)
        self.model = model
        self.reward_fn = reward_fn
        self.termination_fn = termination_fn
        self.horizon = horizon
        self.strategy = strategy
        self.particles = strategy.num_particles(particles)
        self.propagation = propagation
        self.objective: Objective = objective if objective is not None else Mean()
        self.discount = discount
        self.precision = precision
        self.generator = generator
        self.expected_reward_fn = expected_reward_fn
        self.chunk_size = chunk_size
        self.terminal_value = terminal_value
        self.functions = functions
        self._check_objective()

    def num_functions(self) -> int:
        """Functions drawn per evaluation (``functions``, or the model's finite support
        when it divides ``P``; 0 for an analytic propagation)."""
        return self.strategy.num_functions(self.model, self.particles, self.functions)

    def layout(self) -> tuple[int, int]:
        """``(F, K)``: the function groups and noise draws per group of the returns."""
        step = self.strategy.particle_step()
        if step is None:
            return 1, 1
        return step.layout(self.particles, max(1, self.num_functions()))

    def _check_objective(self) -> None:
        """Refuse a layout the objective cannot use, naming the setting to change."""
        name = type(self.objective).__name__
        f, k = self.layout()
        need_k = int(getattr(self.objective, "min_noise_draws", 1))
        if k < need_k:
            raise ConfigError(
                f"objective {name} needs at least {need_k} noise draws per function, this "
                f"evaluator has {k} ({f} functions x {k} with particles = {self.particles}, "
                f"propagation {self.propagation!r}); raise planner.particles to a multiple "
                f"of planner.functions with particles / functions >= {need_k} (e.g. "
                f"particles = {f * need_k * 2}), with a particle propagation"
            )
        need_f = int(getattr(self.objective, "min_functions", 1))
        if f < need_f or (need_f > 1 and self.strategy.particle_step() is None):
            raise ConfigError(
                f"objective {name} needs at least {need_f} posterior functions to compare, this "
                f"evaluator draws {f} (propagation {self.propagation!r}); use ts_inf or ts_1 "
                "with planner.functions >= 2 (or 0 for an ensemble's members)"
            )

    def _check(self, start_obs: Tensor, actions: Tensor) -> None:
        obs_dim, action_dim = self.model.obs_dim, self.model.action_dim
        for name, t in (("start_obs", start_obs), ("actions", actions)):
            if not isinstance(t, Tensor):
                raise DataError(
                    f"{name} must be a torch.Tensor, got {type(t).__name__}; pass "
                    f"torch.as_tensor(obs) (planning runs on torch tensors)"
                )
        if start_obs.shape != (obs_dim,):
            raise DataError(f"start_obs must have shape ({obs_dim},), got {tuple(start_obs.shape)}")
        if actions.dim() != 3 or actions.shape[1:] != (self.horizon, action_dim):
            raise DataError(
                f"actions must have shape (population, {self.horizon}, {action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        if actions.shape[0] < 1:
            raise DataError("actions holds no sequences (population 0); pass at least one")
        if not host_checks():
            return
        # checked once per call, before the horizon loop
        if not bool(torch.isfinite(start_obs).all()):
            raise DataError(
                f"start_obs contains NaN or inf ({start_obs.tolist()}); plan from a finite "
                "observation (check the environment that produced it)"
            )
        if not bool(torch.isfinite(actions).all()):
            raise DataError("actions contain NaN or inf; pass finite candidate action sequences")

    def scorer(self, start_obs: Tensor) -> Scorer:
        """The score function of one planning call from ``start_obs``.

        The posterior functions are drawn once and shared by every evaluation of the
        call (common random numbers across the optimizer's iterations), so the planner
        optimizes one fixed objective instead of a new Monte Carlo estimate at each
        iteration. For an ensemble whose particles cover every member this changes
        nothing; for continuous posteriors (BNN weights, GP paths, physical
        parameters) it removes the draw-to-draw noise between iterations.

        Moment matching draws nothing: it builds the GP's :class:`SEGP` (the
        ``(K + sigma^2 I)^{-1}`` and pairwise weights) once here instead.

        Args:
            start_obs: ``(obs_dim,)`` current state.

        Returns:
            a :class:`Scorer`: ``actions (population, horizon, action_dim) -> scores
            (population,)``, which also poses the differentiable
            :meth:`Scorer.trajectory_problem` that gradient-based planners (iLQR) solve.
        """
        return Scorer(self, start_obs, self.strategy.prepare(self))

    def trajectory_problem(self, start_obs: Tensor, dynamics: str = "mean") -> TrajectoryProblem:
        """The planning problem from ``start_obs`` as a differentiable trajectory problem.

        Args:
            start_obs: ``(obs_dim,)``.
            dynamics: ``"mean"``: one deterministic function, the predictive mean over
                :meth:`num_functions` posterior draws (an ensemble's members);
                ``"functions"``: each draw's mean as its own function (``F`` rows).

        Returns:
            a :class:`~bayes_mbrl.planning.lqr.TrajectoryProblem` with the task's
            reward, the discount and the terminal value; terminations are not part of it.
        """
        if dynamics not in ("mean", "functions"):
            raise ConfigError(f"dynamics must be 'mean' or 'functions', got {dynamics!r}")
        start = torch.as_tensor(start_obs, dtype=torch.float32)
        self._check(start, torch.zeros(1, self.horizon, self.model.action_dim))
        n = max(1, self.num_functions() or int(getattr(self.model, "num_functions_hint", 0) or 0))
        with torch.inference_mode(False):
            # drawn outside inference mode: autograd differentiates through the draws
            fs = draw_functions(self.model, n, self.generator)

        def each(x: Tensor, u: Tensor) -> Tensor:
            return fs(x, u).mean

        def mean(x: Tensor, u: Tensor) -> Tensor:
            f, b = x.shape[:2]
            flat = f * b
            xs = x.reshape(1, flat, -1).expand(n, flat, x.shape[-1])
            us = u.reshape(1, flat, -1).expand(n, flat, u.shape[-1])
            return fs(xs, us).mean.mean(0).reshape(f, b, -1)

        per_function = dynamics == "functions"
        return TrajectoryProblem(
            start_obs=start,
            dynamics=each if per_function else mean,
            num_functions=n if per_function else 1,
            reward_fn=self.reward_fn,
            discount=self.discount,
            terminal_value=self.terminal_value,
        )

    def decompose(self, start_obs: Tensor, actions: Tensor) -> ReturnSplit:
        """The expected return of each sequence and the epistemic and aleatoric
        variances of its return (:func:`~bayes_mbrl.planning.objectives.decompose_returns`).

        Information-gain bonuses of the objective are not included: these are the
        returns of the task's rewards."""
        return decompose_returns(self.particle_returns(start_obs, actions, information=False))

    @torch.inference_mode()
    def particle_returns(
        self, start_obs: Tensor, actions: Tensor, functions: Any = None, information: bool = True
    ) -> Tensor:
        """Imagined return of every particle.

        Args:
            start_obs: ``(obs_dim,)`` current state.
            actions: ``(population, horizon, action_dim)`` candidate sequences.
            functions: what the propagation shares across a planning call, as from
                :meth:`scorer` (None: prepare anew): posterior draws
                (:class:`~bayes_mbrl.models.base.FunctionSample`), or for
                ``moment_matching`` the :class:`SEGP`.
            information: add the objective's information-gain bonus
                (``information_weight``, e.g. ``info_gain``'s) to the returns.

        Returns:
            ``(population, F, K)`` discounted sums of imagined rewards, ``[b, f, k]`` the
            ``k``-th noise draw on function ``f`` (:meth:`layout`; ``(population, 1, 1)``
            sums of expected rewards for ``moment_matching``, and for ``expectation``).
        """
        self._check(start_obs, actions)
        weight = float(getattr(self.objective, "information_weight", 0.0)) if information else 0.0
        return self.strategy.returns(self, start_obs, actions, functions, weight)

    @torch.inference_mode()
    def beliefs(
        self, start_obs: Tensor, actions: Tensor, gp: SEGP | None = None
    ) -> tuple[Tensor, Tensor]:
        """The moment-matched Gaussian beliefs over the observation after every step.

        The belief starts as a point mass at ``start_obs``. Per step, with the action
        ``a_t`` deterministic, the GP input ``[obs, a_t]`` has mean ``[m, a_t]`` and
        covariance ``blockdiag(S, 0)``; :func:`~bayes_mbrl.planning.moment_matching.se_gp_moments`
        gives the exact ``E[delta]``, ``Cov[delta]`` (with the noise) and ``V``, and
        ``m' = m + E[delta]``, ``S' = S + Cov[delta] + C + C^T`` with
        ``C = Cov[obs, delta] = S V[:D]`` (Stein's lemma;
        :func:`~bayes_mbrl.planning.belief.belief_step`). The moments of one step from
        a Gaussian belief are exact for the GP's marginal predictive; only the
        projection of the result onto a Gaussian (for the next step) approximates.

        Args:
            start_obs: ``(obs_dim,)``.
            actions: ``(population, horizon, action_dim)``.
            gp: the GP as an :class:`SEGP` (None: built from the model).

        Returns:
            ``(means (population, horizon, obs_dim), covs (population, horizon, obs_dim,
            obs_dim))``, float64: the beliefs over ``obs_1 .. obs_H``.

        Raises:
            ConfigError: the propagation has no beliefs (it is not ``moment_matching``).
            ModelError: the belief turned non-finite (or singular) along the horizon.
        """
        beliefs = getattr(self.strategy, "beliefs", None)
        if beliefs is None:
            raise ConfigError(
                f"beliefs need propagation 'moment_matching', this evaluator uses "
                f"{self.propagation!r}"
            )
        self._check(start_obs, actions)
        means, covs = beliefs(self, start_obs, actions, gp)
        return means, covs

    def __call__(self, start_obs: Tensor, actions: Tensor) -> Tensor:
        """Objective value of each sequence, ``(population,)``."""
        return self.objective(self.particle_returns(start_obs, actions))


class Scorer:
    """The score function of one planning call (:meth:`RolloutEvaluator.scorer`).

    Calling it scores ``(population, horizon, action_dim)`` sequences with the
    functions drawn once for the call; :meth:`trajectory_problem` poses the same plan
    as a differentiable problem for gradient-based planners.

    Attributes:
        evaluator: the evaluator it is bound to.
        start_obs: ``(obs_dim,)`` the state planned from.
    """

    def __init__(self, evaluator: RolloutEvaluator, start_obs: Tensor, prepared: Any) -> None:
        self.evaluator, self.start_obs, self._prepared = evaluator, start_obs, prepared
        self._checked = False

    def __call__(self, actions: Tensor) -> Tensor:
        """Scores ``(population,)`` of ``actions (population, horizon, action_dim)``.

        The first call checks the values too (finite state and actions, finite rewards
        at the first step); later calls of the same planning call check shapes only
        (:func:`~bayes_mbrl.planning.imagine.skip_host_checks`), so that the
        planner's iterations copy nothing to the host. A non-finite return is then the
        planner's to discard (it never chooses one)."""
        ev = self.evaluator
        if self._checked:
            with skip_host_checks():
                return ev.objective(ev.particle_returns(self.start_obs, actions, self._prepared))
        scores = ev.objective(ev.particle_returns(self.start_obs, actions, self._prepared))
        self._checked = True
        return scores

    def trajectory_problem(self, dynamics: str = "mean") -> TrajectoryProblem:
        """:meth:`RolloutEvaluator.trajectory_problem` from this call's state."""
        return self.evaluator.trajectory_problem(self.start_obs, dynamics)
