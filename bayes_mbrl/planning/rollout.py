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

And, for an exact GP with the squared-exponential kernel only (PILCO, Deisenroth &
Rasmussen 2011):

- ``moment_matching``: one Gaussian belief per sequence, a point mass at the start
  observation, propagated through the GP analytically (exact first two moments of
  the GP's marginal predictive at a Gaussian input, projected back onto a Gaussian
  at every step); the return is the discounted sum of the *expected* rewards under
  the beliefs, so ``particle_returns`` has one column. See
  :meth:`RolloutEvaluator.beliefs` for the recursion and
  :func:`unscented_expected_reward` for rewards without a closed form.

Layout: particles are stored function-major, ``(n_functions, population * k, obs_dim)``
with ``k = particles / n_functions``, so one model call evaluates every function on
its particles at once. Loops run over horizon steps only (and, for moment matching,
over chunks of the population that bound the memory of the GP's pairwise terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bayes_mbrl.envs import RewardFn, TerminationFn
from bayes_mbrl.envs.rewards import ExpectedRewardFn
from bayes_mbrl.errors import BayesMBRLError, ConfigError, DataError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample
from bayes_mbrl.models.gp import ExactGPDynamics
from bayes_mbrl.planning.moment_matching import (
    SEGP,
    check_finite_belief,
    se_gp_moments,
    segp_from_exact,
)
from bayes_mbrl.planning.objectives import Mean, Objective

__all__ = [
    "MM_CHUNK_BYTES",
    "PRECISIONS",
    "PROPAGATIONS",
    "RolloutEvaluator",
    "sigma_points",
    "unscented_expected_reward",
]

PROPAGATIONS = ("ts_inf", "ts_1", "expectation", "moment_matching")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}

MM_CHUNK_BYTES = 32 * 2**20
"""Default memory budget of one moment-matching chunk: ``chunk * pairs * N**2 * 8`` bytes
for the GP's pairwise terms (``pairs = D (D + 1) / 2`` output pairs, ``N`` training points).

The pairwise terms are memory-bound, and buffers above ~32 MiB go through ``mmap`` and
page-fault afresh at every step: on CPU, larger chunks doubled the time per belief
(half of it system time) at N = 200 and 600, 3-D Pendulum. Chunks never go below one
sequence, so a single belief may exceed the budget for large N."""


def sigma_points(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Sigma points of the unscented transform with ``alpha = 1, kappa = 0`` (the cubature rule).

    The ``2n`` points ``mean +- sqrt(n) L[:, i]`` with ``L L^T = cov`` and weights
    ``1 / (2n)`` each (the centre point of the ``2n + 1``-point scheme has weight 0 and
    is left out). They reproduce the mean and covariance exactly, so the weighted sum
    of any quadratic function of the points is its exact expectation under
    ``N(mean, cov)``. ``L`` is the symmetric square root from an eigendecomposition
    (negative round-off eigenvalues clamped to 0), so singular covariances (a point
    mass, a deterministic coordinate) are fine.

    Args:
        mean: ``(..., n)``.
        cov: ``(..., n, n)`` symmetric positive semi-definite.

    Returns:
        ``(points (..., 2n, n), weights (2n,))``.
    """
    n = mean.shape[-1]
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)  # (..., n, n), columns L[:, i]
    offsets = math.sqrt(n) * root.transpose(-1, -2)  # (..., n, n): row i is sqrt(n) L[:, i]
    points = mean.unsqueeze(-2) + torch.cat([offsets, -offsets], dim=-2)
    weights = torch.full((2 * n,), 1.0 / (2 * n), dtype=mean.dtype)
    return points, weights


def unscented_expected_reward(
    reward_fn: RewardFn, mean: Tensor, cov: Tensor, action: Tensor
) -> Tensor:
    """``E[reward_fn(obs, action, next_obs)]`` under a joint Gaussian over ``(obs, next_obs)``,
    approximated by the unscented transform (:func:`sigma_points`).

    Exact for rewards that are polynomials of degree <= 3 in ``(obs, next_obs)`` (odd
    moments vanish by symmetry); an approximation otherwise (e.g. ``Pendulum-v1``'s
    ``atan2`` angle cost).

    Args:
        reward_fn: batched ``(obs, action, next_obs) -> reward``.
        mean: ``(..., 2 D)`` mean of ``[obs, next_obs]``.
        cov: ``(..., 2 D, 2 D)`` their joint covariance.
        action: ``(..., A)`` (deterministic).

    Returns:
        ``(...)`` expected reward.
    """
    if mean.shape[-1] % 2:
        raise DataError(
            f"unscented_expected_reward: mean must stack [obs, next_obs], got size {mean.shape[-1]}"
        )
    d = mean.shape[-1] // 2
    points, weights = sigma_points(mean, cov)  # (..., 2n, 2D)
    act = action.unsqueeze(-2).expand(*points.shape[:-1], action.shape[-1])
    reward = _call_user(
        "reward_fn", _REWARD_SIGNATURE, reward_fn, points[..., :d], act, points[..., d:]
    )
    _check_output("reward_fn", reward, tuple(points.shape[:-1]), _REWARD_SIGNATURE)
    return (reward.to(weights.dtype) * weights).sum(-1)


_REWARD_SIGNATURE = "(obs (..., D), action (..., A), next_obs (..., D)) -> reward (...)"
_TERMINATION_SIGNATURE = "(obs (..., D), action (..., A), next_obs (..., D)) -> bool (...)"
_EXPECTED_REWARD_SIGNATURE = (
    "(next_obs_mean (..., D), next_obs_cov (..., D, D), action (..., A)) -> expected reward (...)"
)


def _call_user(name: str, signature: str, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Call a user's reward-like function; an exception it raises becomes a DataError
    (bayes_mbrl errors, e.g. a task reward's own shape check, pass unchanged)."""
    try:
        return fn(*args)
    except BayesMBRLError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        raise DataError(
            f"{name} raised {type(exc).__name__}: {exc}; it must be a batched function "
            f"{signature} of torch tensors (called with shapes {shapes})"
        ) from exc


def _check_output(name: str, out: object, expected: tuple[int, ...], signature: str) -> None:
    """Raise DataError unless a reward-like output is a real tensor of shape ``expected``
    (shape and dtype only: no host sync, cheap enough for every step)."""
    if not isinstance(out, Tensor):
        raise DataError(
            f"{name} returned a {type(out).__name__}, expected a torch.Tensor of shape "
            f"{expected}; it must be a batched function {signature}"
        )
    if tuple(out.shape) != expected:
        raise DataError(
            f"{name} returned shape {tuple(out.shape)}, expected {expected}: one value per "
            f"transition. It must be a batched function {signature}"
        )
    want_bool = name == "termination_fn"
    if want_bool and out.dtype != torch.bool:
        raise DataError(
            f"{name} returned dtype {out.dtype}, expected torch.bool (True where the "
            f"episode ends); it must be a batched function {signature}"
        )
    if not want_bool and (out.dtype == torch.bool or out.is_complex()):
        raise DataError(
            f"{name} returned dtype {out.dtype}, expected real numbers; it must be a batched "
            f"function {signature}"
        )


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
        expected_reward_fn: ``moment_matching`` only: exact expected reward
            ``(next_obs_mean, next_obs_cov, action) -> (...)`` under a Gaussian belief
            (a task's ``TaskSpec.expected_reward_fn``). Without it the expectation of
            ``reward_fn`` is approximated by the unscented transform over the joint
            belief of ``(obs, next_obs)`` (:func:`unscented_expected_reward`).
        chunk_size: ``moment_matching`` only: sequences propagated together (None:
            as many as keep the GP's pairwise terms under :data:`MM_CHUNK_BYTES`).

    Moment matching needs an :class:`~bayes_mbrl.models.gp.ExactGPDynamics` with the
    ``"se"`` kernel; it ignores ``particles`` and ``precision`` (one belief per
    sequence, float64 throughout) and does not model terminations: a belief does not
    terminate, so ``termination_fn`` is not applied and every step's expected reward
    counts.

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
        expected_reward_fn: ExpectedRewardFn | None = None,
        chunk_size: int | None = None,
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
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if propagation == "moment_matching":
            kernel = getattr(model, "kernel", None)
            if not isinstance(model, ExactGPDynamics) or kernel != "se":
                what = (
                    f"an ExactGPDynamics with kernel {kernel!r}"
                    if isinstance(model, ExactGPDynamics)
                    else f"a {type(model).__name__}"
                )
                raise ConfigError(
                    "propagation 'moment_matching' needs an exact GP with the squared-"
                    f"exponential kernel, got {what}; use model.kind = 'gp' with "
                    "model.kernel = 'se', or another propagation "
                    f"({', '.join(repr(p) for p in PROPAGATIONS[:-1])})"
                )
        self.model = model
        self.reward_fn = reward_fn
        self.termination_fn = termination_fn
        self.horizon = horizon
        self.particles = 1 if propagation in ("expectation", "moment_matching") else particles
        self.propagation = propagation
        self.objective: Objective = objective if objective is not None else Mean()
        self.discount = discount
        self.precision = precision
        self.generator = generator
        self.expected_reward_fn = expected_reward_fn
        self.chunk_size = chunk_size

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
        # checked once per call, before the horizon loop
        if not bool(torch.isfinite(start_obs).all()):
            raise DataError(
                f"start_obs contains NaN or inf ({start_obs.tolist()}); plan from a finite "
                "observation (check the environment that produced it)"
            )
        if not bool(torch.isfinite(actions).all()):
            raise DataError("actions contain NaN or inf; pass finite candidate action sequences")
        return start_obs.float()

    def scorer(self, start_obs: Tensor) -> Callable[[Tensor], Tensor]:
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
            ``actions (population, horizon, action_dim) -> scores (population,)``.
        """
        fs = self._segp() if self.propagation == "moment_matching" else self._functions()
        return lambda actions: self.objective(self.particle_returns(start_obs, actions, fs))

    def _segp(self) -> SEGP:
        """The fitted GP as an :class:`SEGP`, its pairwise weights computed (moment matching)."""
        if not isinstance(self.model, ExactGPDynamics):  # checked in __init__
            raise ConfigError("moment matching needs an ExactGPDynamics")
        with torch.inference_mode():
            gp = segp_from_exact(self.model)
            gp.pair_weights()
        return gp

    @torch.inference_mode()
    def particle_returns(
        self, start_obs: Tensor, actions: Tensor, functions: FunctionSample | SEGP | None = None
    ) -> Tensor:
        """Imagined return of every particle.

        Args:
            start_obs: ``(obs_dim,)`` current state.
            actions: ``(population, horizon, action_dim)`` candidate sequences.
            functions: posterior draws to use (None: draw new ones), as from
                :meth:`scorer`; for ``moment_matching`` the :class:`SEGP` (None: build it).

        Returns:
            ``(population, particles)`` discounted sums of imagined rewards
            (``(population, 1)`` sums of expected rewards for ``moment_matching``).
        """
        start = self._check(start_obs, actions)
        if self.propagation == "moment_matching":
            if functions is not None and not isinstance(functions, SEGP):
                raise DataError(
                    "moment matching takes the GP as an SEGP (from scorer), not function draws"
                )
            gp = functions if functions is not None else self._segp()
            return self._mm_returns(gp, start_obs, actions)
        if isinstance(functions, SEGP):
            raise DataError(f"propagation {self.propagation!r} takes function draws, not an SEGP")
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
            self._accumulate(obs, a_t, nxt, returns, alive, weight, check=t == 0)
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
        check: bool = False,
    ) -> None:
        """Add one step's discounted reward of the living particles; mark terminations.

        With ``check`` (the first step of a rollout) the reward and termination functions
        are validated: called safely, output shape and dtype, finite rewards for finite
        inputs. Later steps call them directly (no per-step host sync).
        """
        if not check:
            r = self.reward_fn(obs, action, nxt)
        else:
            r = self._checked_reward(obs, action, nxt)
        returns.add_(torch.where(alive, r, 0.0), alpha=weight)
        if self.termination_fn is not None:
            if check:
                done = _call_user(
                    "termination_fn", _TERMINATION_SIGNATURE, self.termination_fn, obs, action, nxt
                )
                _check_output("termination_fn", done, tuple(returns.shape), _TERMINATION_SIGNATURE)
            else:
                done = self.termination_fn(obs, action, nxt)
            alive &= ~done

    def _checked_reward(self, obs: Tensor, action: Tensor, nxt: Tensor) -> Tensor:
        """``reward_fn(obs, action, nxt)``, validated (see :meth:`_accumulate`)."""
        r = _call_user("reward_fn", _REWARD_SIGNATURE, self.reward_fn, obs, action, nxt)
        _check_output("reward_fn", r, tuple(obs.shape[:-1]), _REWARD_SIGNATURE)
        # a model may diverge to NaN states (those sequences are never chosen), but a
        # non-finite reward of finite inputs is the reward function's fault
        inputs_ok = (
            torch.isfinite(obs).all(-1)
            & torch.isfinite(action).all(-1)
            & torch.isfinite(nxt).all(-1)
        )
        bad = ~torch.isfinite(r) & inputs_ok
        if bool(bad.any()):
            i = tuple(int(v) for v in bad.nonzero()[0])
            raise DataError(
                f"reward_fn returned NaN or inf for finite inputs (obs {obs[i].tolist()}, "
                f"action {action[i].tolist()}, next_obs {nxt[i].tolist()} -> {float(r[i])}); "
                "check the reward function (a log or division by zero, an overflow)"
            )
        return r

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
            self._accumulate(obs, a_t, nxt, returns, alive, weight, check=t == 0)
            obs = nxt
            weight *= self.discount
        return returns.unsqueeze(-1)

    # ------------------------------------------------------------------ moment matching
    def _chunk(self, gp: SEGP) -> int:
        """Sequences per moment-matching chunk."""
        if self.chunk_size is not None:
            return self.chunk_size
        n, e = gp.inputs.shape[0], gp.out_dim
        per_belief = e * (e + 1) // 2 * n * n * 8
        return max(1, MM_CHUNK_BYTES // per_belief)

    @staticmethod
    def _mm_step(gp: SEGP, mean: Tensor, cov: Tensor, action: Tensor) -> tuple[Tensor, ...]:
        """One moment-matched step: ``(next_mean, next_cov, Cov[obs, next_obs])``."""
        d = mean.shape[-1]
        a = action.shape[-1]
        x_mean = torch.cat([mean, action], dim=-1)
        x_cov = torch.nn.functional.pad(cov, (0, a, 0, a))  # blockdiag(S, 0)
        d_mean, d_cov, v = se_gp_moments(gp, x_mean, x_cov)
        c = cov @ v[..., :d, :]  # Cov[obs, delta] (Stein's lemma)
        next_mean = mean + d_mean
        next_cov = cov + d_cov + c + c.transpose(-1, -2)
        next_cov = 0.5 * (next_cov + next_cov.transpose(-1, -2))
        return next_mean, next_cov, cov + c

    def _expected_reward(
        self,
        mean: Tensor,
        cov: Tensor,
        next_mean: Tensor,
        next_cov: Tensor,
        cross: Tensor,
        action: Tensor,
    ) -> Tensor:
        if self.expected_reward_fn is not None:
            out = _call_user(
                "expected_reward_fn",
                _EXPECTED_REWARD_SIGNATURE,
                self.expected_reward_fn,
                next_mean,
                next_cov,
                action,
            )
            _check_output(
                "expected_reward_fn", out, tuple(next_mean.shape[:-1]), _EXPECTED_REWARD_SIGNATURE
            )
            return out.to(torch.float64)
        joint_mean = torch.cat([mean, next_mean], dim=-1)
        joint_cov = torch.cat(
            [torch.cat([cov, cross], -1), torch.cat([cross.transpose(-1, -2), next_cov], -1)],
            dim=-2,
        )
        return unscented_expected_reward(self.reward_fn, joint_mean, joint_cov, action)

    def _mm_chunks(
        self, gp: SEGP, start_obs: Tensor, actions: Tensor, keep_beliefs: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Propagate every sequence's belief: returns ``(population,)`` float64 and, with
        ``keep_beliefs``, the means ``(population, H, D)`` and covariances ``(..., D, D)``."""
        pop, horizon, _ = actions.shape
        dim = start_obs.shape[0]
        acts = actions.to(torch.float64)
        start = start_obs.to(torch.float64)
        chunk = self._chunk(gp)
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
                    next_mean, next_cov, cross = self._mm_step(gp, mean, cov, a_t)
                except torch.linalg.LinAlgError as exc:
                    raise ModelError(
                        f"moment matching failed at step {t} of the horizon ({exc}); the "
                        "belief is degenerate: refit the GP or raise its noise floor"
                    ) from exc
                check_finite_belief(next_mean, next_cov, f"step {t} of the horizon")
                ret = ret + weight * self._expected_reward(
                    mean, cov, next_mean, next_cov, cross, a_t
                )
                if keep_beliefs:
                    chunk_means.append(next_mean)
                    chunk_covs.append(next_cov)
                mean, cov = next_mean, next_cov
                weight *= self.discount
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

    def _mm_returns(self, gp: SEGP, start_obs: Tensor, actions: Tensor) -> Tensor:
        returns, _, _ = self._mm_chunks(gp, start_obs, actions, keep_beliefs=False)
        return returns.float().unsqueeze(-1)

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
        ``C = Cov[obs, delta] = S V[:D]`` (Stein's lemma). The moments of one step from
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
            ConfigError: the propagation is not ``moment_matching``.
            ModelError: the belief turned non-finite (or singular) along the horizon.
        """
        if self.propagation != "moment_matching":
            raise ConfigError(
                f"beliefs need propagation 'moment_matching', this evaluator uses "
                f"{self.propagation!r}"
            )
        self._check(start_obs, actions)
        _, means, covs = self._mm_chunks(
            gp if gp is not None else self._segp(), start_obs, actions, keep_beliefs=True
        )
        assert means is not None and covs is not None
        return means, covs

    def __call__(self, start_obs: Tensor, actions: Tensor) -> Tensor:
        """Objective value of each sequence, ``(population,)``."""
        return self.objective(self.particle_returns(start_obs, actions))
