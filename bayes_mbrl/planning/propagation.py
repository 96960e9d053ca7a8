"""Propagation strategies: how the rollout evaluator carries uncertainty through a model.

Each strategy implements :class:`Propagation` and registers in :data:`PROPAGATIONS`
next to its class; :class:`~bayes_mbrl.planning.rollout.RolloutEvaluator` looks it
up by ``planner.propagation`` and delegates. Particle strategies (PETS, Chua et al.
2018) share one step loop with :func:`~bayes_mbrl.planning.imagine.imagine`:

- ``ts_inf``: each particle keeps one function for the whole trajectory;
- ``ts_1``: at every step each function group is assigned a random function
  (stratified: a permutation of the functions per start state), its ``k`` particles
  together;
- ``expectation``: one deterministic trajectory per sequence through the
  predictive mean (the mixture mean over functions).

An analytic one (PILCO, Deisenroth & Rasmussen 2011), for models with the
``supports_moment_matching`` capability (an exact GP with the squared-exponential
kernel):

- ``moment_matching``: one Gaussian belief per sequence, a point mass at the start
  observation, propagated through the GP analytically
  (:func:`~bayes_mbrl.planning.belief.belief_step`); the return is the discounted sum
  of the *expected* rewards under the beliefs, so the returns have one column.

A new strategy is a class with the :class:`Propagation` methods, registered::

    @PROPAGATIONS.register("my_propagation")
    class MyPropagation(ParticlePropagation):
        \"\"\"One line for the help.\"\"\"
        def step(self, fs, obs, action, generator): ...
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample
from bayes_mbrl.planning.belief import belief_step, unscented_expected_reward
from bayes_mbrl.planning.imagine import (
    PRECISIONS,
    ImaginedTransitions,
    call_user,
    check_output,
    draw_functions,
    rollout,
)
from bayes_mbrl.planning.moment_matching import SEGP, check_finite_belief
from bayes_mbrl.registry import Registry

if TYPE_CHECKING:
    from bayes_mbrl.planning.rollout import RolloutEvaluator

__all__ = [
    "MM_CHUNK_BYTES",
    "PROPAGATIONS",
    "TS1",
    "Expectation",
    "MomentMatching",
    "ParticlePropagation",
    "Propagation",
    "TSInf",
    "information_gain",
    "make_propagation",
]


class Propagation(Protocol):
    """How an evaluator's particles (or belief) move through the model posterior.

    The evaluator calls :meth:`check_model` at construction, :meth:`prepare` once per
    planning call (:meth:`~bayes_mbrl.planning.rollout.RolloutEvaluator.scorer`) and
    :meth:`returns` per scored population.
    """

    def check_model(self, model: DynamicsModel) -> None:
        """Raise :class:`~bayes_mbrl.errors.ConfigError`, naming the problem and the fix,
        if this strategy cannot propagate through ``model``."""
        ...

    def num_particles(self, requested: int) -> int:
        """Particles per sequence for ``requested`` (1 for a deterministic strategy)."""
        ...

    def num_functions(self, model: DynamicsModel, particles: int, requested: int = 0) -> int:
        """Posterior functions drawn per evaluation (0: none, an analytic belief);
        ``requested`` is ``planner.functions`` (0: the strategy's choice)."""
        ...

    def prepare(self, evaluator: RolloutEvaluator) -> Any:
        """What every evaluation of one planning call shares (function draws, a GP)."""
        ...

    def returns(
        self,
        evaluator: RolloutEvaluator,
        start_obs: Tensor,
        actions: Tensor,
        prepared: Any,
        information_weight: float = 0.0,
    ) -> Tensor:
        """Returns ``(population, F, K)`` of validated ``start_obs (obs_dim,)`` and
        ``actions (population, horizon, action_dim)`` (``prepared`` None: prepare anew):
        ``F`` function groups, ``K`` noise draws in each; with ``information_weight > 0``
        each return adds that multiple of the discounted information gain along it."""
        ...

    def particle_step(self) -> ParticlePropagation | None:
        """The step :func:`~bayes_mbrl.planning.imagine.imagine` runs, or None (analytic)."""
        ...


PROPAGATIONS: Registry[Callable[[], Propagation]] = Registry("propagation", "planner.propagation")
"""Propagation strategies by ``planner.propagation``; each entry builds a :class:`Propagation`."""


def make_propagation(name: str, horizon: int, particles: int, precision: str) -> Propagation:
    """The registered strategy ``name``, after the checks every rollout's options share.

    Raises:
        ConfigError: unknown name or precision, horizon or particles below 1.
    """
    if name not in PROPAGATIONS:
        raise ConfigError(f"unknown propagation {name!r}; choose one of {list(PROPAGATIONS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if horizon < 1 or particles < 1:
        raise ConfigError(f"horizon and particles must be >= 1, got {horizon}, {particles}")
    return PROPAGATIONS[name]()


# ------------------------------------------------------------------------ particles
class ParticlePropagation(abc.ABC):
    """Monte Carlo particles through posterior function draws: a :class:`Propagation` whose
    :meth:`step` also runs :func:`~bayes_mbrl.planning.imagine.imagine`.

    Particles are held function-major, ``(G, B * k, obs_dim)`` for ``G`` functions,
    ``B`` sequences (or start states) and ``k`` particles per function and sequence,
    so one model call evaluates every function on its particles at once.
    """

    def check_model(self, model: DynamicsModel) -> None:
        """Every model can be sampled: nothing to check."""
        return None

    def num_particles(self, requested: int) -> int:
        return requested

    def num_functions(self, model: DynamicsModel, particles: int, requested: int = 0) -> int:
        """``requested`` functions (``planner.functions``, which must divide ``particles``),
        or by default the model's finite support when it divides ``particles``, else one
        per particle.

        Raises:
            ConfigError: ``requested`` is negative or does not divide ``particles``.
        """
        if requested:
            if requested < 0 or particles % requested:
                raise ConfigError(
                    f"planner.functions = {requested} must divide planner.particles = "
                    f"{particles} (particles = functions x noise draws per function); set "
                    f"particles to a multiple of {requested}, or functions = 0 for the model's "
                    "default"
                )
            return requested
        hint = model.num_functions_hint
        if hint and particles % hint == 0:
            return hint
        return particles

    def particle_step(self) -> ParticlePropagation:
        return self

    def layout(self, particles: int, n_functions: int) -> tuple[int, int]:
        """``(G, k)``: one group per function, ``particles / G`` particles in each."""
        return n_functions, particles // n_functions

    def start_states(self, start: Tensor, groups: int, k: int) -> Tensor:
        """``(B, D)`` -> ``(G, B * k, D)``."""
        b, d = start.shape
        return (
            start[:, None].expand(b, k, d).reshape(b * k, d).expand(groups, b * k, d).contiguous()
        )

    def spread_actions(self, actions: Tensor, groups: int, k: int) -> Tensor:
        """``(B, H, A)`` -> ``(H, G, B * k, A)``."""
        b, horizon, a = actions.shape
        return (
            actions.transpose(0, 1)[:, None, :, None, :]
            .expand(horizon, groups, b, k, a)
            .reshape(horizon, groups, b * k, a)
        )

    def function_index(self, groups: int, starts: int, k: int) -> Tensor:
        """Group ``g`` of the layout is function ``g``."""
        return torch.arange(groups).repeat_interleave(starts * k)

    @abc.abstractmethod
    def step(
        self, fs: FunctionSample, obs: Tensor, action: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """Next observations of ``obs`` under ``action``, both in the particle layout."""

    def prepare(self, evaluator: RolloutEvaluator) -> FunctionSample:
        """Draw the functions (shared by the planning call: common random numbers)."""
        return draw_functions(
            evaluator.model,
            self.num_functions(evaluator.model, evaluator.particles, evaluator.functions),
            evaluator.generator,
            evaluator.precision,
        )

    def returns(
        self,
        evaluator: RolloutEvaluator,
        start_obs: Tensor,
        actions: Tensor,
        prepared: Any,
        information_weight: float = 0.0,
    ) -> Tensor:
        """The discounted return of every particle, ``(population, G, k)``: ``[b, g, j]``
        is sequence ``b``'s ``j``-th particle (noise draw) on function group ``g``.

        With ``information_weight = w > 0`` (the ``info_gain`` objective's ``beta``),
        every particle's return also collects ``w * sum_t discount^t * I_t``, the
        information gain (:func:`information_gain`) at each state and action it visits."""
        if isinstance(prepared, SEGP):
            raise DataError(
                f"propagation {evaluator.propagation!r} takes function draws, not an SEGP"
            )
        fs = prepared if prepared is not None else self.prepare(evaluator)
        acts = actions.float()
        imagined = rollout(
            self,
            fs,
            start_obs.float().expand(acts.shape[0], -1),
            acts,
            evaluator.horizon,
            evaluator.particles,
            evaluator.generator,
            evaluator.reward_fn,
            evaluator.termination_fn,
        )
        returns = imagined.returns(evaluator.discount, evaluator.terminal_value)
        if information_weight > 0:
            returns = returns + information_weight * _discounted_information(
                imagined, fs, evaluator.discount
            )
        return imagined.per_function(returns)


def information_gain(
    fs: FunctionSample, obs: Tensor, action: Tensor, min_variance: float = 1e-12
) -> Tensor:
    """The information gain about the function from observing the next state, per input.

    The mutual information ``I(s'; f | s, a) = H[p(s' | s, a)] - E_f H[p(s' | f, s, a)]``
    between the next observation and the posterior function, with the predictive (the
    mixture over the ``n`` functions of ``fs``) replaced by the Gaussian of its moments
    (an upper bound on its entropy), per observation dimension::

        I = 1/2 * sum_d [ log(mean_f var_fd + var_f mu_fd) - mean_f log var_fd ]

    For functions that share one noise variance (a GP's paths, a homoscedastic BNN)
    this is ``1/2 sum_d log(1 + epistemic_d / aleatoric_d)``, exact for a GP. It is 0
    where the functions agree and grows with their disagreement relative to the noise.

    Args:
        fs: the posterior draws (at least two).
        obs: ``(..., obs_dim)`` inputs (any leading shape).
        action: ``(..., action_dim)``.
        min_variance: floor on each function's noise variance, in squared observation
            units (a deterministic model's noise is ~0, where the bound would be
            infinite). Keep it far below the model's noise: MountainCar's learned noise
            variances are ~1e-8, where a floor of 1e-6 would hide the gain.

    Returns:
        ``(...)`` nats.
    """
    lead = obs.shape[:-1]
    flat_obs, flat_act = obs.reshape(1, -1, obs.shape[-1]), action.reshape(1, -1, action.shape[-1])
    dist = fs(flat_obs.expand(fs.n, -1, -1), flat_act.expand(fs.n, -1, -1))
    mean, var = dist.mean.float(), dist.variance.float().clamp_min(min_variance)
    total = var.mean(0) + mean.var(0, unbiased=False)
    return 0.5 * (total.log() - var.log().mean(0)).sum(-1).reshape(lead)


def _discounted_information(
    imagined: ImaginedTransitions, fs: FunctionSample, discount: float
) -> Tensor:
    """``(N,)``: ``sum_t discount^t I_t`` over each particle's alive steps."""
    alive = imagined.alive()
    total = torch.zeros(imagined.num_particles, device=imagined.obs.device)
    weight = 1.0
    for t in range(imagined.horizon):
        gain = information_gain(fs, imagined.obs[t], imagined.action[t])
        total.add_(torch.where(alive[t], gain, 0.0), alpha=weight)
        weight *= discount
    return total


@PROPAGATIONS.register("ts_inf")
class TSInf(ParticlePropagation):
    """Each particle keeps one posterior function for the whole trajectory (PETS TS-inf)."""

    def step(
        self, fs: FunctionSample, obs: Tensor, action: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        return fs.sample(obs, action, generator)


@PROPAGATIONS.register("ts_1")
class TS1(ParticlePropagation):
    """Each function group draws a new function at every step (PETS TS-1, stratified)."""

    k = 1
    """Particles per group and start state of the current layout (set by :meth:`layout`)."""

    def layout(self, particles: int, n_functions: int) -> tuple[int, int]:
        groups, self.k = super().layout(particles, n_functions)
        return groups, self.k

    def step(
        self, fs: FunctionSample, obs: Tensor, action: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """Per start state, a random permutation assigns the ``G`` groups to the ``G``
        functions, the ``k`` particles of a group together: every function still gets
        ``B * k`` particles (one model call), and a group's particles share their
        function at every step, so they differ only by the noise."""
        n_f, m, d = obs.shape
        k = self.k if m % self.k == 0 else 1
        starts = m // k
        # perm[g, b] = the group that function g evaluates for start b
        perm = torch.rand(starts, n_f, generator=generator).argsort(-1).T
        index = perm.repeat_interleave(k, dim=1)[..., None]
        nxt_perm = fs.sample(
            obs.gather(0, index.expand(n_f, m, d)),
            action.gather(0, index.expand(n_f, m, action.shape[-1])),
            generator,
        )
        return torch.empty_like(obs).scatter_(0, index.expand(n_f, m, d), nxt_perm.to(obs.dtype))

    def function_index(self, groups: int, starts: int, k: int) -> Tensor:
        """No particle keeps a function: -1."""
        return torch.full((groups * starts * k,), -1, dtype=torch.long)


@PROPAGATIONS.register("expectation")
class Expectation(ParticlePropagation):
    """One deterministic trajectory per sequence through the predictive (mixture) mean."""

    def num_particles(self, requested: int) -> int:
        return 1

    def num_functions(self, model: DynamicsModel, particles: int, requested: int = 0) -> int:
        """The model's finite support, or ``requested`` draws (default one)."""
        return model.num_functions_hint or requested or 1

    def layout(self, particles: int, n_functions: int) -> tuple[int, int]:
        return 1, 1

    def start_states(self, start: Tensor, groups: int, k: int) -> Tensor:
        """One particle per start state: ``(B, D)``."""
        return start

    def spread_actions(self, actions: Tensor, groups: int, k: int) -> Tensor:
        """``(B, H, A)`` -> ``(H, B, A)``."""
        return actions.transpose(0, 1)

    def function_index(self, groups: int, starts: int, k: int) -> Tensor:
        """The mixture of all functions: -1."""
        return torch.full((starts,), -1, dtype=torch.long)

    def step(
        self, fs: FunctionSample, obs: Tensor, action: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """``(B, D)`` -> the mean over functions of each function's mean next observation."""
        return fs.mean(obs.expand(fs.n, -1, -1), action.expand(fs.n, -1, -1)).mean(0)


# ---------------------------------------------------------------- moment matching
MM_CHUNK_BYTES = 32 * 2**20
"""Default memory budget of one moment-matching chunk: ``chunk * pairs * N**2 * 8`` bytes
for the GP's pairwise terms (``pairs = D (D + 1) / 2`` output pairs, ``N`` training points).

The pairwise terms are memory-bound, and buffers above ~32 MiB go through ``mmap`` and
page-fault afresh at every step: on CPU, larger chunks doubled the time per belief
(half of it system time) at N = 200 and 600, 3-D Pendulum. Chunks never go below one
sequence, so a single belief may exceed the budget for large N."""

_EXPECTED_REWARD_SIGNATURE = (
    "(next_obs_mean (..., D), next_obs_cov (..., D, D), action (..., A)) -> expected reward (...)"
)


@PROPAGATIONS.register("moment_matching")
class MomentMatching:
    """Gaussian state beliefs propagated analytically through an exact SE GP (PILCO).

    Needs a model with the ``supports_moment_matching`` capability; ignores the
    evaluator's ``particles`` and ``precision`` (one belief per sequence, float64
    throughout) and does not model terminations (a belief does not terminate, so every
    step's expected reward counts). Reads the evaluator's ``expected_reward_fn`` (else
    the unscented transform of ``reward_fn``) and ``chunk_size``.
    """

    def check_model(self, model: DynamicsModel) -> None:
        if getattr(model, "supports_moment_matching", False):
            return
        kernel = getattr(model, "kernel", None)
        name = type(model).__name__
        what = f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}" + (
            f" with kernel {kernel!r}" if kernel is not None else ""
        )
        others = [n for n in PROPAGATIONS if PROPAGATIONS[n]().particle_step() is not None]
        raise ConfigError(
            "propagation 'moment_matching' needs an exact GP with the squared-"
            f"exponential kernel, got {what}; use model.kind = 'gp' with "
            "model.kernel = 'se', or another propagation "
            f"({', '.join(repr(p) for p in others)})"
        )

    def num_particles(self, requested: int) -> int:
        return 1

    def num_functions(self, model: DynamicsModel, particles: int, requested: int = 0) -> int:
        return 0

    def particle_step(self) -> None:
        return None

    def prepare(self, evaluator: RolloutEvaluator) -> SEGP:
        """The fitted GP as an :class:`SEGP` with its pairwise weights computed (the
        ``(K + sigma^2 I)^{-1}`` and pairwise terms are built once per planning call)."""
        with torch.inference_mode():
            gp: SEGP = evaluator.model.se_gp_posterior()
            gp.pair_weights()
        return gp

    def returns(
        self,
        evaluator: RolloutEvaluator,
        start_obs: Tensor,
        actions: Tensor,
        prepared: Any,
        information_weight: float = 0.0,
    ) -> Tensor:
        """``(population, 1, 1)`` float32 discounted sums of the expected rewards (the
        belief carries both kinds of uncertainty at once: one expected return, no split)."""
        if prepared is not None and not isinstance(prepared, SEGP):
            raise DataError(
                "moment matching takes the GP as an SEGP (from scorer), not function draws"
            )
        gp = prepared if prepared is not None else self.prepare(evaluator)
        returns, _, _ = self._propagate(evaluator, gp, start_obs, actions, keep_beliefs=False)
        return returns.float()[:, None, None]

    def beliefs(
        self, evaluator: RolloutEvaluator, start_obs: Tensor, actions: Tensor, gp: SEGP | None
    ) -> tuple[Tensor, Tensor]:
        """The beliefs after every step (see :meth:`RolloutEvaluator.beliefs`)."""
        _, means, covs = self._propagate(
            evaluator, gp if gp is not None else self.prepare(evaluator), start_obs, actions, True
        )
        assert means is not None and covs is not None
        return means, covs

    @staticmethod
    def _chunk(evaluator: RolloutEvaluator, gp: SEGP) -> int:
        """Sequences per chunk."""
        if evaluator.chunk_size is not None:
            return evaluator.chunk_size
        n, e = gp.inputs.shape[0], gp.out_dim
        per_belief = e * (e + 1) // 2 * n * n * 8
        return max(1, MM_CHUNK_BYTES // per_belief)

    @staticmethod
    def _expected_reward(
        evaluator: RolloutEvaluator,
        mean: Tensor,
        cov: Tensor,
        next_mean: Tensor,
        next_cov: Tensor,
        cross: Tensor,
        action: Tensor,
    ) -> Tensor:
        if evaluator.expected_reward_fn is not None:
            out = call_user(
                "expected_reward_fn",
                _EXPECTED_REWARD_SIGNATURE,
                evaluator.expected_reward_fn,
                next_mean,
                next_cov,
                action,
            )
            check_output(
                "expected_reward_fn", out, tuple(next_mean.shape[:-1]), _EXPECTED_REWARD_SIGNATURE
            )
            return out.to(torch.float64)
        joint_mean = torch.cat([mean, next_mean], dim=-1)
        joint_cov = torch.cat(
            [torch.cat([cov, cross], -1), torch.cat([cross.transpose(-1, -2), next_cov], -1)],
            dim=-2,
        )
        return unscented_expected_reward(evaluator.reward_fn, joint_mean, joint_cov, action)

    def _propagate(
        self,
        evaluator: RolloutEvaluator,
        gp: SEGP,
        start_obs: Tensor,
        actions: Tensor,
        keep_beliefs: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Propagate every sequence's belief (in chunks that bound the GP's pairwise
        memory): returns ``(population,)`` float64 and, with ``keep_beliefs``, the means
        ``(population, H, D)`` and covariances ``(..., D, D)``."""
        pop, horizon, _ = actions.shape
        dim = start_obs.shape[0]
        acts = actions.to(torch.float64)
        start = start_obs.to(torch.float64)
        chunk = self._chunk(evaluator, gp)
        returns, means, covs = [], [], []
        for lo in range(0, pop, chunk):
            act = acts[lo : lo + chunk]
            c = act.shape[0]
            mean = start.expand(c, dim)
            cov = torch.zeros(c, dim, dim, dtype=torch.float64)
            ret = torch.zeros(c, dtype=torch.float64)
            weight = 1.0
            chunk_means, chunk_covs = [], []
            for t in range(horizon):
                a_t = act[:, t]
                try:
                    next_mean, next_cov, cross = belief_step(gp, mean, cov, a_t)
                except torch.linalg.LinAlgError as exc:
                    raise ModelError(
                        f"moment matching failed at step {t} of the horizon ({exc}); the "
                        "belief is degenerate: refit the GP or raise its noise floor"
                    ) from exc
                check_finite_belief(next_mean, next_cov, f"step {t} of the horizon")
                ret = ret + weight * self._expected_reward(
                    evaluator, mean, cov, next_mean, next_cov, cross, a_t
                )
                if keep_beliefs:
                    chunk_means.append(next_mean)
                    chunk_covs.append(next_cov)
                mean, cov = next_mean, next_cov
                weight *= evaluator.discount
            returns.append(ret)
            if keep_beliefs:
                means.append(torch.stack(chunk_means, 1))
                covs.append(torch.stack(chunk_covs, 1))
        out = torch.cat(returns)
        if not bool(torch.isfinite(out).all()):
            raise ModelError(
                "moment matching produced a non-finite expected reward; check the task's "
                "(expected) reward function on the beliefs"
            )
        if not keep_beliefs:
            return out, None, None
        return out, torch.cat(means), torch.cat(covs)
