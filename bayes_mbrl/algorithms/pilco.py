r"""PILCO: policy search through a moment-matched GP belief (Deisenroth & Rasmussen, 2011).

The loop: random rollout(s) -> fit an SE-ARD GP to the state deltas -> optimize the
policy's parameters by L-BFGS on the analytic expected cumulative cost of a
Gaussian state belief propagated through GP and policy -> roll the policy out on
the real system -> refit, until it solves the task.

Coordinates. PILCO works on a *state* in which each angle is one number (so its
Gaussian is not forced onto the circle) and feeds its sine and cosine to the GP,
the policy and the cost. Our environments observe angles as ``(cos, sin)`` pairs;
:class:`StateMap` turns an observation into that state by replacing every pair
by ``atan2(sin, cos)``. Per step of the propagation (``z`` is one joint Gaussian,
every entry's cross-covariance with every other kept exact by
:func:`~bayes_mbrl.planning.moment_matching.augment`):

1. ``z = s``; append ``sin, cos`` of the angles (moment-matched trigonometric
   transform): the observation features ``o`` (the env's observation vector);
2. append the raw policy output ``u~ = pi(o)`` and the squashed action ``u``;
3. append the GP's predicted delta ``Delta = f(o, u)`` (mean, full covariance
   with the noise, cross terms with ``s``);
4. ``s' = s + Delta``.

The cost of every predicted state is the saturating cost of its observation
features, in expectation (:func:`saturating_cost_moments`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import ALGORITHMS, Algorithm, AlgorithmParts
from bayes_mbrl.algorithms.policies import MomentPolicy, RBFPolicy
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import FitReport
from bayes_mbrl.models.gp import ExactGPDynamics
from bayes_mbrl.options import Options, at_least, one_of, option
from bayes_mbrl.planning.belief import gp_belief_step
from bayes_mbrl.planning.moment_matching import (
    SEGP,
    augment,
    check_finite_belief,
    saturating_cost_moments,
    segp_from_exact,
    sin_moments,
)

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "PILCO",
    "PILCO_TASKS",
    "PILCOAgent",
    "PILCOAlgorithm",
    "PILCOOptions",
    "PILCOTask",
    "PolicyReport",
    "StateMap",
    "Trajectory",
    "propagate",
]

DT = torch.float64


# ------------------------------------------------------------------ coordinates
class StateMap:
    """Observation ``<->`` PILCO state: every ``(cos, sin)`` pair becomes one angle.

    The angle takes the place of the pair's cosine entry and the sine entry is
    dropped, so ``[x, x_dot, cos, sin, theta_dot]`` maps to ``[x, x_dot, theta,
    theta_dot]``.

    Args:
        obs_dim: observation size.
        angle_pairs: ``(cos_index, sin_index)`` per angle.
    """

    def __init__(self, obs_dim: int, angle_pairs: Sequence[tuple[int, int]]) -> None:
        flat = [i for pair in angle_pairs for i in pair]
        if len(set(flat)) != len(flat) or any(not 0 <= i < obs_dim for i in flat):
            raise ConfigError(
                f"angle_pairs {list(angle_pairs)} must name distinct observation indices "
                f"in [0, {obs_dim})"
            )
        self.obs_dim = obs_dim
        self.angle_pairs = [tuple(p) for p in angle_pairs]
        sin_idx = {s for _, s in angle_pairs}
        cos_to_pair = {c: k for k, (c, _) in enumerate(angle_pairs)}
        self.state_of_obs: list[int] = [i for i in range(obs_dim) if i not in sin_idx]
        self.state_dim = len(self.state_of_obs)
        #: state index of each angle
        self.angle_index = [self.state_of_obs.index(c) for c, _ in angle_pairs]
        # where each observation entry sits in the joint vector z = [s, sin_1, cos_1, ...]
        pos: list[int] = []
        for i in range(obs_dim):
            if i in cos_to_pair:
                pos.append(self.state_dim + 2 * cos_to_pair[i] + 1)
            elif i in sin_idx:
                k = [s for _, s in angle_pairs].index(i)
                pos.append(self.state_dim + 2 * k)
            else:
                pos.append(self.state_of_obs.index(i))
        self.obs_in_joint = pos

    def to_state(self, obs: Tensor) -> Tensor:
        """``(..., obs_dim)`` observations -> ``(..., state_dim)`` states (float64)."""
        obs = obs.to(DT)
        state = obs[..., self.state_of_obs].clone()
        for k, (c, s) in enumerate(self.angle_pairs):
            state[..., self.angle_index[k]] = torch.atan2(obs[..., s], obs[..., c])
        return state

    def deltas(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        """State change ``s' - s`` with angle differences wrapped into ``(-pi, pi]``."""
        d = self.to_state(next_obs) - self.to_state(obs)
        for k in self.angle_index:
            d[..., k] = torch.remainder(d[..., k] + math.pi, 2 * math.pi) - math.pi
        return d

    def with_features(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``sin, cos`` of every angle to a state belief (exact moments)."""
        if not self.angle_pairs:
            return mean, cov
        idx = [k for k in self.angle_index for _ in range(2)]
        phase = torch.tensor([0.0, math.pi / 2] * len(self.angle_index), dtype=mean.dtype)
        return augment(mean, cov, idx, lambda m, s: sin_moments(m, s, phase))


# -------------------------------------------------------------------- the task
@dataclass
class PILCOTask:
    """What PILCO needs to know about an environment.

    Attributes:
        env_id: gymnasium id.
        angle_pairs: ``(cos_index, sin_index)`` of each angle in the observation.
        init_mean: ``(state_dim,)`` mean of the start state.
        init_std: ``(state_dim,)`` its standard deviations.
        cost_target: ``(obs_dim,)`` target observation of the saturating cost.
        cost_weight: ``(obs_dim, obs_dim)`` ``W`` of the cost.
        cost_width: ``sigma_c``.
        horizon: steps per rollout (and of the propagated prediction).
        dt: seconds per step (for reporting interaction time).
        success: ``(T + 1, obs_dim) observations -> bool``: the task's criterion.
        success_text: the criterion in words.
    """

    env_id: str
    angle_pairs: list[tuple[int, int]]
    init_mean: list[float]
    init_std: list[float]
    cost_target: list[float]
    cost_weight: list[list[float]]
    cost_width: float
    horizon: int
    dt: float
    success: Callable[[np.ndarray], bool]
    success_text: str


def _wrap(a: np.ndarray) -> np.ndarray:
    return np.asarray(np.remainder(a + np.pi, 2 * np.pi) - np.pi)


def _cartpole_success(obs: np.ndarray) -> bool:
    """Last second (10 steps at 0.1 s): pole within 10 deg of upright, cart within 0.3 m."""
    last = obs[-10:]
    theta = np.arctan2(last[:, 3], last[:, 2])  # 0 hanging down, pi upright
    upright = np.abs(_wrap(theta - np.pi)) < np.deg2rad(10.0)
    return bool(np.all(upright & (np.abs(last[:, 0]) < 0.3)))


def _pendulum_success(obs: np.ndarray) -> bool:
    """Last second (10 steps at 0.1 s): within 10 deg of upright."""
    last = obs[-10:]
    theta = np.arctan2(last[:, 1], last[:, 0])  # 0 upright
    return bool(np.all(np.abs(_wrap(theta)) < np.deg2rad(10.0)))


_L = 0.6  # PILCO cart-pole pole length
PILCO_TASKS: dict[str, PILCOTask] = {
    "bayes_mbrl/CartPoleSwingUp-v0": PILCOTask(
        env_id="bayes_mbrl/CartPoleSwingUp-v0",
        angle_pairs=[(2, 3)],
        init_mean=[0.0, 0.0, 0.0, 0.0],
        init_std=[0.1, 0.1, 0.1, 0.1],
        # tip (x + l sin th, -l cos th) to (0, l): d^2 = (x + l s)^2 + l^2 (c + 1)^2
        cost_target=[0.0, 0.0, -1.0, 0.0, 0.0],
        cost_weight=[
            [1.0, 0.0, 0.0, _L, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, _L**2, 0.0, 0.0],
            [_L, 0.0, 0.0, _L**2, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        cost_width=0.25,
        horizon=40,
        dt=0.1,
        success=_cartpole_success,
        success_text="pole within 10 deg of upright and cart within 0.3 m for the last 1 s of 4 s",
    ),
    "bayes_mbrl/PendulumSwingUp-v0": PILCOTask(
        env_id="bayes_mbrl/PendulumSwingUp-v0",
        angle_pairs=[(0, 1)],
        init_mean=[math.pi, 0.0],
        init_std=[0.1, 0.1],
        # tip (l sin th, l cos th) to (0, l), l = 1
        cost_target=[1.0, 0.0, 0.0],
        cost_weight=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        cost_width=0.5,
        horizon=50,
        dt=0.1,
        success=_pendulum_success,
        success_text="within 10 deg of upright for the last 1 s of 5 s",
    ),
}
"""Tasks PILCO knows, by gymnasium id."""


# ----------------------------------------------------------------- propagation
@dataclass
class Trajectory:
    """A propagated belief: ``state_mean (H+1, D)``, ``state_cov (H+1, D, D)``,
    ``cost_mean (H,)`` and ``cost_var (H,)`` of the predicted states 1..H."""

    state_mean: Tensor
    state_cov: Tensor
    cost_mean: Tensor
    cost_var: Tensor

    @property
    def expected_return(self) -> Tensor:
        """Sum of expected costs (the objective PILCO minimizes)."""
        return self.cost_mean.sum()


def propagate(
    gp: SEGP,
    policy: MomentPolicy,
    smap: StateMap,
    mean0: Tensor,
    cov0: Tensor,
    horizon: int,
    cost_target: Tensor,
    cost_weight: Tensor,
    cost_width: float,
) -> Trajectory:
    """Propagate ``N(mean0, cov0)`` through policy and GP for ``horizon`` steps.

    Per step the joint belief over the state, its observation features and the
    policy's action is built by :func:`~bayes_mbrl.planning.moment_matching.augment`;
    the GP step itself is :func:`~bayes_mbrl.planning.belief.gp_belief_step`, the one
    the rollout evaluator's moment matching uses.

    Args:
        gp: dynamics GP on ``[obs, action]`` predicting state deltas.
        policy: the policy on observations.
        smap: the task's observation/state map.
        mean0: mean of the start belief over the state.
        cov0: covariance of the start belief over the state.
        horizon: steps.
        cost_target: the saturating cost's target observation.
        cost_weight: the saturating cost's weights on observations.
        cost_width: the saturating cost's width.

    Returns:
        The :class:`Trajectory`; differentiable in the policy's parameters.

    Raises:
        ModelError: the belief becomes non-finite.
    """
    d = smap.state_dim
    obs_idx = smap.obs_in_joint
    a = policy.action_dim
    policy_moments = policy.moment_fn()
    m, s = mean0.to(DT), cov0.to(DT)
    means, covs, c_mean, c_var = [m], [s], [], []
    z_m, z_s = smap.with_features(m, s)
    for t in range(horizon):
        n = z_m.shape[-1]
        z_m, z_s = augment(z_m, z_s, obs_idx, policy_moments)
        z_m, z_s = augment(z_m, z_s, list(range(n, n + a)), policy.squash_moments)
        # the GP reads x = [o, u], jointly Gaussian with the state s = z[:d]
        x_idx = torch.as_tensor(obs_idx + list(range(n + a, n + 2 * a)))
        x_mean, x_cov = z_m[x_idx], z_s[x_idx, :][:, x_idx]
        m, s, _ = gp_belief_step(gp, z_m[:d], z_s[:d, :d], x_mean, x_cov, z_s[:d, x_idx])
        check_finite_belief(m, s, f"step {t + 1} of {horizon}")
        z_m, z_s = smap.with_features(m, s)  # the next step starts from these
        ec, vc = saturating_cost_moments(
            z_m[obs_idx], z_s[obs_idx][:, obs_idx], cost_target, cost_weight, cost_width
        )
        means.append(m)
        covs.append(s)
        c_mean.append(ec)
        c_var.append(vc)
    return Trajectory(
        torch.stack(means), torch.stack(covs), torch.stack(c_mean), torch.stack(c_var)
    )


# ----------------------------------------------------------------------- PILCO
@dataclass
class PolicyReport:
    """One policy optimization: L-BFGS iterations, cost evaluations, wall time,
    the expected cumulative cost before and after."""

    iterations: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    initial_cost: float = math.nan
    final_cost: float = math.nan
    history: list[float] = field(default_factory=list)


class PILCO:
    """The PILCO learner for one task.

    Args:
        task: a :class:`PILCOTask` (see :data:`PILCO_TASKS`).
        action_low: the env's lower action bounds.
        action_high: the env's upper action bounds.
        policy: ``"rbf"`` or ``"linear"``, or a :class:`MomentPolicy`.
        num_basis: RBF centres.
        gp_steps: Adam steps on the GP marginal likelihood per refit.
        gp_learning_rate: their step size.
        max_points: the GP conditions on at most this many transitions (the most
            recent are kept; None: all, up to the exact GP's limit).
        opt_iterations: L-BFGS iterations per policy optimization.
        seed: seed of the policy's initialization (when no generator is given).
        generator: source of randomness (the policy's initialization).
    """

    def __init__(
        self,
        task: PILCOTask,
        action_low: Tensor,
        action_high: Tensor,
        policy: str | MomentPolicy = "rbf",
        num_basis: int = 50,
        gp_steps: int = 150,
        gp_learning_rate: float = 0.05,
        max_points: int | None = 800,
        opt_iterations: int = 100,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.task = task
        obs_dim = len(task.cost_target)
        self.smap = StateMap(obs_dim, task.angle_pairs)
        d = self.smap.state_dim
        if len(task.init_mean) != d or len(task.init_std) != d:
            raise ConfigError(
                f"PILCO task {task.env_id}: init_mean and init_std need {d} entries (the state "
                f"has {d} dimensions), got {len(task.init_mean)} and {len(task.init_std)}"
            )
        self.obs_dim, self.state_dim = obs_dim, d
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.mean0 = torch.tensor(task.init_mean, dtype=DT)
        self.cov0 = torch.diag(torch.tensor(task.init_std, dtype=DT).square())
        self.cost_target = torch.tensor(task.cost_target, dtype=DT)
        self.cost_weight = torch.tensor(task.cost_weight, dtype=DT)
        if isinstance(policy, MomentPolicy):
            self.policy = policy
        elif policy == "rbf":
            self.policy = RBFPolicy(
                obs_dim, action_low, action_high, self._initial_centres(num_basis), 1.0,
                generator=self.generator,
            )  # fmt: skip
        elif policy == "linear":
            from bayes_mbrl.algorithms.policies import LinearPolicy

            self.policy = LinearPolicy(obs_dim, action_low, action_high, self.generator)
        else:
            raise ConfigError(f"unknown PILCO policy {policy!r}; choose 'rbf' or 'linear'")
        action_dim = self.policy.action_dim
        if obs_dim + action_dim <= d:
            raise ConfigError("PILCO's GP inputs (obs + action) must outnumber its state outputs")
        self.gp_model = ExactGPDynamics(
            obs_dim=d,
            action_dim=obs_dim + action_dim - d,
            kernel="se",
            training_steps=gp_steps,
            learning_rate=gp_learning_rate,
            hyper_max_points=max_points or 8192,
            min_noise=1e-6,
            seed=seed,
        )
        self.max_points = max_points
        self.opt_iterations = opt_iterations
        self.inputs = torch.zeros(0, obs_dim + action_dim, dtype=DT)
        self.targets = torch.zeros(0, d, dtype=DT)
        self.gp: SEGP | None = None

    def _initial_centres(self, n: int) -> Tensor:
        """RBF centres: observation features of start states drawn from the start belief."""
        std = torch.tensor(self.task.init_std, dtype=DT)
        states = self.mean0 + std * torch.randn(
            n, self.state_dim, generator=self.generator, dtype=DT
        )
        obs = torch.zeros(n, self.obs_dim, dtype=DT)
        obs[:, self.smap.state_of_obs] = states
        for k, (c, s) in enumerate(self.smap.angle_pairs):
            theta = states[:, self.smap.angle_index[k]]
            obs[:, c], obs[:, s] = torch.cos(theta), torch.sin(theta)
        return obs

    # -------------------------------------------------------------- data
    def set_transitions(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> None:
        """Replace the data by ``(N, obs_dim)`` / ``(N, action_dim)`` / ``(N, obs_dim)``
        transitions (e.g. a replay buffer's contents)."""
        self.inputs = torch.zeros(0, self.inputs.shape[1], dtype=DT)
        self.targets = torch.zeros(0, self.state_dim, dtype=DT)
        self._append(obs.to(DT), action.to(DT), next_obs.to(DT))

    def _append(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> None:
        if not (torch.isfinite(obs).all() and torch.isfinite(action).all()) or not bool(
            torch.isfinite(next_obs).all()
        ):
            raise DataError("the transitions contain NaN or inf; they were not added")
        self.inputs = torch.cat([self.inputs, torch.cat([obs, action], -1)])
        self.targets = torch.cat([self.targets, self.smap.deltas(obs, next_obs)])

    def add_rollout(self, obs: Tensor | np.ndarray, actions: Tensor | np.ndarray) -> None:
        """Add one rollout: ``(T + 1, obs_dim)`` observations and ``(T, action_dim)`` actions.

        Raises:
            DataError: wrong shapes or non-finite values (nothing is added).
        """
        try:
            o = torch.as_tensor(np.asarray(obs), dtype=DT)
            u = torch.as_tensor(np.asarray(actions), dtype=DT)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"a rollout is obs (T + 1, {self.obs_dim}) and actions (T, "
                f"{self.policy.action_dim}) of numbers; got {type(obs).__name__} and "
                f"{type(actions).__name__} that do not convert ({exc})"
            ) from exc
        if (
            o.dim() != 2
            or o.shape[1] != self.obs_dim
            or u.shape != (o.shape[0] - 1, self.policy.action_dim)
        ):
            raise DataError(
                f"a rollout is obs (T + 1, {self.obs_dim}) and actions (T, "
                f"{self.policy.action_dim}), got {tuple(o.shape)} and {tuple(u.shape)}"
            )
        self._append(o[:-1], u, o[1:])

    # -------------------------------------------------------------- learning
    def fit_model(self) -> float:
        """Fit the GP to the (most recent ``max_points``) transitions; returns seconds."""
        start = time.perf_counter()
        if self.inputs.shape[0] < 2:
            raise DataError("PILCO needs at least 2 transitions to fit its GP; collect a rollout")
        keep = self.max_points or self.inputs.shape[0]
        x, y = self.inputs[-keep:], self.targets[-keep:]
        self.gp_model.fit_regression(x, y, self.generator)
        self.gp = segp_from_exact(self.gp_model)
        return time.perf_counter() - start

    def predict(self, horizon: int | None = None) -> Trajectory:
        """The propagated belief of the current policy under the current GP."""
        if self.gp is None:
            raise ModelError("PILCO has no GP yet; add a rollout and call fit_model first")
        return propagate(
            self.gp, self.policy, self.smap, self.mean0, self.cov0,
            horizon or self.task.horizon, self.cost_target, self.cost_weight,
            self.task.cost_width,
        )  # fmt: skip

    def optimize_policy(self, progress: Callable[[int, float], None] | None = None) -> PolicyReport:
        """Minimize the expected cumulative cost by L-BFGS (strong Wolfe line search).

        A non-finite cost during the search restores the best parameters seen.

        Args:
            progress: called as ``progress(evaluation, expected_cost)``.
        """
        report = PolicyReport()
        start = time.perf_counter()
        params = list(self.policy.parameters())
        opt = torch.optim.LBFGS(
            params, lr=1.0, max_iter=self.opt_iterations, line_search_fn="strong_wolfe",
            history_size=50, tolerance_grad=1e-9, tolerance_change=1e-12,
        )  # fmt: skip
        best_value = math.inf
        best_params = [p.detach().clone() for p in params]

        def closure() -> Tensor:
            nonlocal best_value, best_params
            opt.zero_grad(set_to_none=True)
            try:
                loss = self.predict().expected_return
            except (ModelError, torch.linalg.LinAlgError):
                return torch.tensor(math.inf, dtype=DT)
            loss.backward()
            value = float(loss.detach())
            report.evaluations += 1
            report.history.append(value)
            if value < best_value:
                best_value = value
                best_params = [p.detach().clone() for p in params]
            if progress is not None:
                progress(report.evaluations, value)
            return loss.detach()

        opt.step(closure)
        with torch.no_grad():
            for p, b in zip(params, best_params, strict=True):
                p.copy_(b)
        state = opt.state[params[0]]
        report.iterations = int(state.get("n_iter", 0))
        report.seconds = time.perf_counter() - start
        report.initial_cost = report.history[0] if report.history else math.nan
        report.final_cost = best_value
        return report

    # -------------------------------------------------------------- acting
    def act(self, obs: np.ndarray | Tensor) -> np.ndarray:
        """The policy's action for one observation (float32 array)."""
        with torch.no_grad():
            u = self.policy(torch.as_tensor(np.asarray(obs), dtype=DT))
        return u.numpy().astype(np.float32)


# ------------------------------------------------------------ runner interface
class PILCOAgent:
    """PILCO as the experiment runner's learner and actor.

    ``fit(buffer)`` refits the GP on every transition in the buffer and optimizes
    the policy (one progress call per cost evaluation of L-BFGS); ``act(obs)``
    applies the policy. The runner checkpoints :meth:`state_dict`.

    Args:
        pilco: the :class:`PILCO` learner.
    """

    def __init__(self, pilco: PILCO) -> None:
        self.pilco = pilco
        self.plan_seconds = 0.0
        self.last_report: PolicyReport | None = None

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: Callable[[int, float, float], None] | None = None,
    ) -> FitReport:
        """Refit the GP to ``data`` and optimize the policy.

        Returns:
            A :class:`FitReport` whose ``train_losses`` are the expected cumulative
            costs of the L-BFGS evaluations followed by that of the kept (best)
            parameters, and ``epochs`` the L-BFGS iterations.
        """
        start = time.perf_counter()
        batch = data.all()
        self.pilco.set_transitions(batch.obs, batch.action, batch.next_obs)
        self.pilco.fit_model()
        report = self.pilco.optimize_policy(
            None if progress is None else (lambda i, cost: progress(i, cost, math.nan))
        )
        self.last_report = report
        return FitReport(
            train_losses=[*report.history, report.final_cost],
            epochs=report.iterations,
            wall_seconds=time.perf_counter() - start,
        )

    def progress_total(self) -> int:
        """Progress calls of a fit: at most one per L-BFGS iteration."""
        return self.pilco.opt_iterations

    def reset(self) -> None:
        """Nothing to forget between episodes."""
        self.plan_seconds = 0.0

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """The policy's action, a float32 ``(action_dim,)`` tensor."""
        start = time.perf_counter()
        action = torch.from_numpy(self.pilco.act(obs))
        self.plan_seconds += time.perf_counter() - start
        return action

    def state_dict(self) -> dict[str, Any]:
        """The GP (hyperparameters and conditioning data) and the policy parameters."""
        return {
            "gp": self.pilco.gp_model.state_dict(),
            "policy": {k: v.clone() for k, v in self.pilco.policy.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the GP is reconditioned, the policy reloaded)."""
        try:
            self.pilco.policy.load_state_dict(state["policy"])
        except (KeyError, RuntimeError) as exc:
            raise ModelError(
                f"saved PILCO policy does not match this configuration ({exc}); resume it "
                "with the config it was saved with"
            ) from exc
        self.pilco.gp_model.load_state_dict(state["gp"])
        self.pilco.gp = segp_from_exact(self.pilco.gp_model) if self.pilco.gp_model.fitted else None


@dataclass
class PILCOOptions(Options):
    """PILCO's policy search (the ``[pilco]`` section, ``experiment.mode = "pilco"``).

    The GP is the ``[model]`` section's exact GP (``model.kind = "gp"``,
    ``model.kernel = "se"``): ``model.num_steps`` and ``model.learning_rate`` fit its
    hyperparameters, ``model.max_train_points`` caps the transitions it conditions on
    (the most recent are kept; 0 = all).
    """

    policy: str = option("rbf", one_of(("rbf", "linear")), "policy family")
    num_basis: int = option(
        50, at_least(1, "an integer"), "Gaussian basis functions of the RBF policy"
    )
    opt_iterations: int = option(
        75, at_least(1, "an integer"), "L-BFGS iterations per policy optimization"
    )


@ALGORITHMS.register("pilco", options=PILCOOptions)
class PILCOAlgorithm(Algorithm):
    """PILCO: policy search by L-BFGS through a moment-matched exact SE GP."""

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        m = config.model
        if m.kind != "gp" or m.kernel != "se":
            key = "model.kind" if m.kind != "gp" else "model.kernel"
            return (
                key,
                m.kind if key == "model.kind" else m.kernel,
                "'gp' with model.kernel = 'se' when experiment.mode = 'pilco' (moment matching "
                "needs the exact squared-exponential GP)",
            )
        return None

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        """PILCO for ``config.env.id``; the prediction horizon is ``env.episode_length``.

        Raises:
            ConfigError: PILCO has no task description for the environment.
        """
        if config.env.id not in PILCO_TASKS:
            raise ConfigError(
                f"experiment.mode = 'pilco' needs a PILCO task description (angles, start "
                f"distribution, saturating cost) for env.id = {config.env.id!r}; known: "
                f"{sorted(PILCO_TASKS)} (add one to bayes_mbrl.algorithms.pilco.PILCO_TASKS)"
            )
        m, p = config.model, config.pilco
        ptask = dataclasses.replace(PILCO_TASKS[config.env.id], horizon=config.env.episode_length)
        pilco = PILCO(
            ptask,
            task.action_low,
            task.action_high,
            policy=p.policy,
            num_basis=p.num_basis,
            gp_steps=m.num_steps,
            gp_learning_rate=m.learning_rate,
            max_points=m.max_train_points or None,
            opt_iterations=p.opt_iterations,
            generator=generator,
        )
        agent = PILCOAgent(pilco)
        return AlgorithmParts(
            agent=agent,
            learner=agent,
            model=None,
            title=f"GP + {p.policy} policy",
            fit_description="policy search (expected cost)",
            no_model_reason="its GP models state deltas in PILCO's angle coordinates, not "
            "the observation-to-observation dynamics that analyze reports on",
        )
