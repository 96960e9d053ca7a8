"""Trajectory optimization with local linear-Gaussian models under a KL trust region.

The "model-based RL with local models" of the lecture notes, the trajectory
optimization inside guided policy search (Levine and Abbeel 2014; the anchor is
cbfinn/gps, ``traj_opt_lqr_python.py`` and ``algorithm_traj_opt.py``):

1. Run the **linear-Gaussian controller** ``p(u_t | x_t) = N(K_t x_t + k_t, C_t)``
   (:class:`LinearGaussianController`) ``N`` times from a fixed start.
2. Fit **time-varying linear-Gaussian dynamics** to those ``N`` trajectories
   (:func:`~bayes_mbrl.models.linear_gaussian.fit_linear_gaussian`), with a
   normal-inverse-Wishart prior from a GMM over every sample so far, or without it.
3. Expand the cost to second order along the samples' mean trajectory
   (:func:`expand_cost`, autograd, batched over steps).
4. Find the new controller minimizing the expected cost subject to
   ``KL(p_new(tau) || p_old(tau)) <= epsilon`` (:func:`kl_constrained_step`). Its
   Lagrangian, divided by the multiplier ``eta``, is the expected surrogate cost
   ``c / eta - log p_old(u | x)`` minus the controller's entropy, whose minimizer is
   the maximum-entropy LQG solution (:func:`lqg_controller`): the gains of
   :func:`~bayes_mbrl.planning.lqr.lqr` on the surrogate and the covariance
   ``Q_uu^-1``. ``eta`` is found by a bracketing search in ``log eta`` on the sign of
   the dual gradient ``KL(eta) - epsilon`` (the KL falls as ``eta`` grows) until the KL
   is within 10% of ``epsilon``.
5. Adapt ``epsilon`` from the improvement the previous local model predicted against
   the one the new local model sees (:func:`adapt_step_multiplier`).

Because trajectory distributions share the start and the dynamics, their KL is a
sum over steps of the controllers' KL under the new state marginals,
``sum_t E_{x_t ~ p_new}[KL(p_new(u|x_t) || p_old(u|x_t))]`` (:func:`trajectory_kl`),
computed from the Gaussian marginals of :func:`forward_pass`. All math runs in
float64, batched over time steps wherever the recursion allows (the forward and
backward passes loop over steps).

Why this is not an ``experiment.mode``: the runner's loop collects episodes from the
task's random starts with one agent and refits a learner between episodes. This method
needs ``N`` rollouts per iteration from one fixed start with a time-indexed controller
and optimizes a trajectory, not a policy over the state space, so it is offered as this
Python API (:class:`GuidedPolicySearch`) and the script ``experiments/gps_cartpole.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.gmm import GaussianMixture
from bayes_mbrl.models.linear_gaussian import LinearGaussianDynamics, fit_linear_gaussian
from bayes_mbrl.options import Options, at_least, greater_than, one_of, option
from bayes_mbrl.planning.lqr import lqr

__all__ = [
    "EnvSampler",
    "FunctionSampler",
    "GPSIteration",
    "GPSOptions",
    "GuidedPolicySearch",
    "KLStepResult",
    "LinearGaussianController",
    "QuadraticCost",
    "TrajectoryMarginals",
    "TrajectorySampler",
    "adapt_step_multiplier",
    "expand_cost",
    "forward_pass",
    "kl_constrained_step",
    "lqg_controller",
    "policy_kl",
    "trajectory_kl",
]

DTYPE = torch.float64

#: ``(x (..., D), u (..., A)) -> cost (...)``, batched and differentiable
StageCost = Callable[[Tensor, Tensor], Tensor]
#: ``x (..., D) -> cost (...)``
FinalCost = Callable[[Tensor], Tensor]


def _sym(a: Tensor) -> Tensor:
    return (a + a.transpose(-1, -2)) / 2


# ------------------------------------------------------------------ controller
@dataclass
class LinearGaussianController:
    """``p(u_t | x_t) = N(K_t x_t + k_t, cov_t)`` for ``t < T``.

    Attributes:
        K: ``(T, A, D)`` gains.
        k: ``(T, A)`` offsets.
        cov: ``(T, A, A)`` covariances.
    """

    K: Tensor
    k: Tensor
    cov: Tensor

    @classmethod
    def initial(
        cls, horizon: int, obs_dim: int, action_dim: int, variance: float,
        k: Tensor | None = None,
    ) -> LinearGaussianController:  # fmt: skip
        """No feedback, offsets ``k`` (default zero), covariance ``variance * I``."""
        eye = torch.eye(action_dim, dtype=DTYPE)
        return cls(
            K=torch.zeros(horizon, action_dim, obs_dim, dtype=DTYPE),
            k=torch.zeros(horizon, action_dim, dtype=DTYPE) if k is None else k.to(DTYPE),
            cov=(variance * eye).expand(horizon, -1, -1).clone(),
        )

    @property
    def horizon(self) -> int:
        """``T``."""
        return int(self.K.shape[0])

    @property
    def precision(self) -> Tensor:
        """``(T, A, A)`` inverse covariances."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.cov))

    def mean_action(self, x: Tensor, t: int) -> Tensor:
        """``(..., A)`` mean action at step ``t`` for states ``(..., D)``."""
        return x.to(DTYPE) @ self.K[t].T + self.k[t]

    def sample_action(self, x: Tensor, t: int, noise: Tensor) -> Tensor:
        """``(..., A)`` actions for states ``(..., D)`` and standard normal ``noise (..., A)``."""
        chol = torch.linalg.cholesky(self.cov[t])
        return self.mean_action(x, t) + noise.to(DTYPE) @ chol.T

    def act(
        self, x: Tensor, t: int, generator: torch.Generator | None = None, noise: bool = True
    ) -> Tensor:
        """``(N, A)`` actions for states ``(N, D)`` at step ``t``: drawn from the controller
        (``noise``) or its mean."""
        if not noise:
            return self.mean_action(x, t)
        eps = torch.randn(x.shape[0], self.k.shape[-1], generator=generator, dtype=DTYPE)
        return self.sample_action(x, t, eps)


# ------------------------------------------------------------------ forward pass
@dataclass
class TrajectoryMarginals:
    """Gaussian marginals of ``z_t = [x_t; u_t]`` and of the final state.

    Attributes:
        mu: ``(T, D + A)``.
        sigma: ``(T, D + A, D + A)``.
        mu_final: ``(D,)`` mean of ``x_T``.
        sigma_final: ``(D, D)``.
    """

    mu: Tensor
    sigma: Tensor
    mu_final: Tensor
    sigma_final: Tensor


def forward_pass(
    controller: LinearGaussianController,
    dynamics: LinearGaussianDynamics,
    x0_mean: Tensor,
    x0_cov: Tensor,
) -> TrajectoryMarginals:
    """Means and covariances of ``(x_t, u_t)`` under linear-Gaussian dynamics and controller.

    ``x_0 ~ N(x0_mean, x0_cov)``; ``u_t | x_t`` from the controller;
    ``x_{t+1} | z_t ~ N(F_t z_t + f_t, cov_t)``. Exact (everything is linear-Gaussian).

    Args:
        controller: ``T`` steps.
        dynamics: ``T`` steps.
        x0_mean: ``(D,)``.
        x0_cov: ``(D, D)``.
    """
    K, k, C = controller.K, controller.k, controller.cov
    mx, Sx = x0_mean.to(DTYPE), x0_cov.to(DTYPE)
    mus, sigmas = [], []
    for t in range(controller.horizon):
        SxKt = Sx @ K[t].T
        sigma = torch.cat([torch.cat([Sx, SxKt], 1), torch.cat([SxKt.T, K[t] @ SxKt + C[t]], 1)], 0)
        mu = torch.cat([mx, K[t] @ mx + k[t]])
        mus.append(mu)
        sigmas.append(_sym(sigma))
        Ft = dynamics.F[t]
        mx = Ft @ mu + dynamics.f[t]
        Sx = _sym(Ft @ sigma @ Ft.T + dynamics.cov[t])
    return TrajectoryMarginals(torch.stack(mus), torch.stack(sigmas), mx, Sx)


def policy_kl(
    new: LinearGaussianController, old: LinearGaussianController, marginals: TrajectoryMarginals
) -> Tensor:
    """``(T,)``: ``E_{x_t}[KL(p_new(u | x_t) || p_old(u | x_t))]`` with ``x_t`` from the
    marginals (those of the new controller, for the KL of trajectory distributions).

    With ``dK = K_new - K_old``, ``dk = k_new - k_old``, ``P = cov_old^-1`` and
    ``x ~ N(m, S)``: ``1/2 [tr(P C_new) + (dK m + dk)' P (dK m + dk) + tr(dK' P dK S)
    - A + log|C_old| - log|C_new|]``.
    """
    D = new.K.shape[-1]
    A = new.K.shape[-2]
    m = marginals.mu[:, :D]
    S = marginals.sigma[:, :D, :D]
    chol_old = torch.linalg.cholesky(old.cov)
    P = torch.cholesky_inverse(chol_old)
    dK = new.K - old.K
    d = (dK @ m.unsqueeze(-1)).squeeze(-1) + new.k - old.k
    trace = torch.diagonal(P @ new.cov, dim1=-2, dim2=-1).sum(-1)
    quad = (d.unsqueeze(-2) @ P @ d.unsqueeze(-1)).reshape(-1)
    spread = torch.diagonal(dK.transpose(-1, -2) @ P @ dK @ S, dim1=-2, dim2=-1).sum(-1)
    logdet_old = 2 * torch.diagonal(chol_old, dim1=-2, dim2=-1).log().sum(-1)
    logdet_new = torch.linalg.slogdet(new.cov)[1]
    return 0.5 * (trace + quad + spread - A + logdet_old - logdet_new)


def trajectory_kl(
    new: LinearGaussianController,
    old: LinearGaussianController,
    dynamics: LinearGaussianDynamics,
    x0_mean: Tensor,
    x0_cov: Tensor,
) -> float:
    """``KL(p_new(tau) || p_old(tau))`` of two controllers under the same dynamics and start."""
    marginals = forward_pass(new, dynamics, x0_mean, x0_cov)
    return float(policy_kl(new, old, marginals).sum())


# ------------------------------------------------------------------ cost
@dataclass
class QuadraticCost:
    """``sum_t 1/2 z_t' C_t z_t + c_t' z_t + cc_t + 1/2 x_T' C_f x_T + c_f' x_T + cc_f``.

    Attributes:
        C: ``(T, D + A, D + A)``; c: ``(T, D + A)``; cc: ``(T,)``.
        C_final: ``(D, D)``; c_final: ``(D,)``; cc_final: ``()``.
    """

    C: Tensor
    c: Tensor
    cc: Tensor
    C_final: Tensor
    c_final: Tensor
    cc_final: Tensor

    def expected(self, marginals: TrajectoryMarginals) -> float:
        """Expected total cost under Gaussian marginals (exact for this quadratic)."""
        mu, S = marginals.mu, marginals.sigma

        def part(C: Tensor, c: Tensor, cc: Tensor, m: Tensor, s: Tensor) -> Tensor:
            tr = torch.diagonal(C @ s, dim1=-2, dim2=-1).sum(-1)
            quad = (m.unsqueeze(-2) @ C @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)
            return cc + 0.5 * tr + 0.5 * quad + (c * m).sum(-1)

        stages = part(self.C, self.c, self.cc, mu, S).sum()
        final = part(
            self.C_final, self.c_final, self.cc_final, marginals.mu_final, marginals.sigma_final
        )
        return float(stages + final)


def _psd(H: Tensor, floor: float = 0.0) -> Tensor:
    vals, vecs = torch.linalg.eigh(_sym(H))
    return _sym(vecs @ torch.diag_embed(vals.clamp_min(floor)) @ vecs.transpose(-1, -2))


def _derivatives(fn: Callable[[Tensor], Tensor], w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Value ``(...)``, gradient ``(..., n)`` and Hessian ``(..., n, n)`` of a per-row
    scalar function, batched over rows (loops over the ``n`` inputs only)."""
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        value = fn(w)
        (g,) = torch.autograd.grad(value.sum(), w, create_graph=True)
        rows = []
        for i in range(w.shape[-1]):
            if not g.requires_grad:
                rows.append(torch.zeros_like(w))
                continue
            (h,) = torch.autograd.grad(g[..., i].sum(), w, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(w) if h is None else h)
    return value.detach(), g.detach(), torch.stack(rows, -2).detach()


def expand_cost(
    stage_cost: StageCost,
    final_cost: FinalCost | None,
    x: Tensor,
    u: Tensor,
    psd: bool = True,
) -> QuadraticCost:
    """Second-order expansion of the cost along a trajectory, in absolute coordinates.

    Args:
        stage_cost: ``(x (..., D), u (..., A)) -> (...)``, twice differentiable.
        final_cost: ``x (..., D) -> (...)`` or None (zero).
        x: ``(T + 1, D)`` the states to expand around (e.g. the samples' mean).
        u: ``(T, A)`` the actions.
        psd: project the Hessians onto the positive semi-definite cone (keeps the
            LQG problem convex).
    """
    x, u = x.to(DTYPE), u.to(DTYPE)
    D = x.shape[-1]
    z = torch.cat([x[:-1], u], -1)  # (T, n)
    value, g, H = _derivatives(lambda w: stage_cost(w[..., :D], w[..., D:]), z)
    if psd:
        H = _psd(H)
    c = g - (H @ z.unsqueeze(-1)).squeeze(-1)
    cc = value - (g * z).sum(-1) + 0.5 * (z.unsqueeze(-2) @ H @ z.unsqueeze(-1)).reshape(-1)
    xf = x[-1]
    if final_cost is None:
        Hf, cf, ccf = torch.zeros(D, D, dtype=DTYPE), torch.zeros(D, dtype=DTYPE), torch.zeros(())
    else:
        vf, gf, Hf = _derivatives(final_cost, xf.unsqueeze(0))
        vf, gf, Hf = vf[0], gf[0], Hf[0]
        if psd:
            Hf = _psd(Hf)
        cf = gf - Hf @ xf
        ccf = vf - gf @ xf + 0.5 * xf @ Hf @ xf
    return QuadraticCost(C=H, c=c, cc=cc, C_final=Hf, c_final=cf, cc_final=ccf.to(DTYPE))


# ------------------------------------------------------------------ KL step
def lqg_controller(
    old: LinearGaussianController,
    dynamics: LinearGaussianDynamics,
    cost: QuadraticCost,
    eta: float,
) -> LinearGaussianController:
    """The maximum-entropy LQG controller of the surrogate cost ``c / eta - log p_old(u|x)``.

    ``-log p_old(u | x) = 1/2 (u - K x - k)' P (u - K x - k) + const`` is, in
    ``z = [x; u]``, the quadratic ``[[K'PK, -K'P], [-PK, P]]`` and linear ``[K'Pk; -Pk]``
    terms. :func:`~bayes_mbrl.planning.lqr.lqr` gives the gains, and the covariance is
    ``Q_uu^-1`` (``p(u|x) ∝ exp(-Q(x, u))``).

    Raises:
        ModelError: a ``Q_uu`` is not positive definite (raise ``eta``).
    """
    P = old.precision
    PK = P @ old.K  # (T, A, D)
    Pk = (P @ old.k.unsqueeze(-1)).squeeze(-1)
    top = torch.cat([old.K.transpose(-1, -2) @ PK, -PK.transpose(-1, -2)], -1)
    bottom = torch.cat([-PK, P], -1)
    Ckl = torch.cat([top, bottom], -2)
    ckl = torch.cat([(old.K.transpose(-1, -2) @ Pk.unsqueeze(-1)).squeeze(-1), -Pk], -1)
    sol = lqr(
        dynamics.F,
        dynamics.f,
        cost.C / eta + Ckl,
        cost.c / eta + ckl,
        cost.C_final / eta,
        cost.c_final / eta,
    )
    cov = torch.cholesky_inverse(torch.linalg.cholesky(sol.Q_uu))
    return LinearGaussianController(K=sol.K, k=sol.k, cov=_sym(cov))


@dataclass
class KLStepResult:
    """What :func:`kl_constrained_step` found.

    Attributes:
        controller: the new controller.
        eta: the dual variable it was solved with.
        kl: ``KL(p_new(tau) || p_old(tau))`` under the local model.
        epsilon: the bound asked for.
        iterations: LQG solves run.
        converged: ``|kl - epsilon| <= tolerance * epsilon``.
        history: ``(eta, kl)`` of every solve.
    """

    controller: LinearGaussianController
    eta: float
    kl: float
    epsilon: float
    iterations: int
    converged: bool
    history: list[tuple[float, float]] = field(default_factory=list)


def kl_constrained_step(
    old: LinearGaussianController,
    dynamics: LinearGaussianDynamics,
    cost: QuadraticCost,
    x0_mean: Tensor,
    x0_cov: Tensor,
    epsilon: float,
    eta: float = 1.0,
    tolerance: float = 0.1,
    max_iterations: int = 60,
    eta_min: float = 1e-10,
    eta_max: float = 1e16,
) -> KLStepResult:
    """``argmin E[cost]`` subject to ``KL(p_new(tau) || p_old(tau)) <= epsilon``.

    The dual: the KL of :func:`lqg_controller` falls as ``eta`` grows, and the dual
    gradient is ``KL(eta) - epsilon``. A bracketing search on ``log eta`` follows its
    sign (cbfinn's line search): from ``eta`` it moves by factors of 10 until the sign
    changes, then bisects geometrically, until the KL is within
    ``tolerance * epsilon`` of ``epsilon``. A ``Q_uu`` that is not positive definite
    counts as "eta too small".

    Args:
        old: the controller the samples came from.
        dynamics: the local model.
        cost: the cost's expansion.
        x0_mean: ``(D,)`` the start distribution's mean.
        x0_cov: ``(D, D)`` the start distribution's covariance.
        epsilon: the KL bound (nats, summed over the steps).
        eta: the starting dual variable (e.g. the last step's).
        tolerance: relative tolerance on the KL.
        max_iterations: the most LQG solves.
        eta_min: the search's lower limit.
        eta_max: the search's upper limit.

    Raises:
        ConfigError: ``epsilon <= 0``.
        ModelError: no ``eta`` below ``eta_max`` gives a positive-definite problem.
    """
    if not epsilon > 0:
        raise ConfigError(f"the KL bound epsilon must be > 0, got {epsilon}")
    lo, hi = eta_min, eta_max  # KL(lo) > epsilon > KL(hi) once bracketed
    eta = float(min(max(eta, eta_min), eta_max))
    history: list[tuple[float, float]] = []
    best: tuple[float, LinearGaussianController, float] | None = None
    for it in range(max_iterations):
        try:
            ctrl = lqg_controller(old, dynamics, cost, eta)
            kl = trajectory_kl(ctrl, old, dynamics, x0_mean, x0_cov)
        except (ModelError, torch.linalg.LinAlgError):
            kl = math.inf
            ctrl = None
        history.append((eta, kl))
        if ctrl is not None and math.isfinite(kl):
            if best is None or abs(kl - epsilon) < abs(best[2] - epsilon):
                best = (eta, ctrl, kl)
            if abs(kl - epsilon) <= tolerance * epsilon:
                return KLStepResult(ctrl, eta, kl, epsilon, it + 1, True, history)
        if kl > epsilon:  # eta too small
            lo = eta
            eta = eta * 10.0 if hi >= eta_max else math.sqrt(lo * hi)
        else:
            hi = eta
            eta = eta / 10.0 if lo <= eta_min else math.sqrt(lo * hi)
        if eta > eta_max or eta < eta_min:
            break
    if best is None:
        raise ModelError(
            "KL step: no eta gave a positive-definite LQG problem; check that the local "
            "dynamics and the cost are finite and the cost is convex in the controls"
        )
    eta_b, ctrl_b, kl_b = best
    return KLStepResult(ctrl_b, eta_b, kl_b, epsilon, len(history), False, history)


def adapt_step_multiplier(
    previous: float,
    predicted_new: float,
    actual_new: float,
    multiplier: float,
    min_multiplier: float = 0.01,
    max_multiplier: float = 10.0,
) -> float:
    """The new multiplier of the KL step from predicted against actual improvement.

    ``previous``: the expected cost of the old controller under the old local model;
    ``predicted_new``: the new controller under the old model; ``actual_new``: the new
    controller under the model fitted to its own samples. With ``predicted = previous
    - predicted_new`` and ``actual = previous - actual_new``, the multiplier is scaled by
    ``predicted / (2 max(1e-4, predicted - actual))`` clipped to ``[0.1, 5]`` (cbfinn's
    rule: grow when the model's prediction held, shrink when it did not), then clipped
    to ``[min_multiplier, max_multiplier]``.
    """
    predicted = previous - predicted_new
    actual = previous - actual_new
    scale = predicted / (2.0 * max(1e-4, predicted - actual))
    scale = max(0.1, min(5.0, scale))
    return max(min(scale * multiplier, max_multiplier), min_multiplier)


# ------------------------------------------------------------------ samplers
class TrajectorySampler(Protocol):
    """Runs a controller from the fixed start: ``(states (N, T + 1, D), actions (N, T, A))``."""

    def sample(
        self,
        controller: LinearGaussianController,
        num: int,
        generator: torch.Generator | None = None,
        noise: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """``num`` rollouts; ``noise=False``: the controller's mean actions."""
        ...


class FunctionSampler:
    """Rollouts through a torch step function ``(x (N, D), u (N, A)) -> x' (N, D)`` plus
    Gaussian process noise of standard deviation ``noise_std`` (e.g. a known linear system).

    Args:
        step: batched dynamics.
        start: ``(D,)`` the fixed start.
    """

    def __init__(
        self, step: Callable[[Tensor, Tensor], Tensor], start: Tensor, noise_std: float = 0.0
    ):
        self.step, self.start, self.noise_std = step, start.to(DTYPE), noise_std

    def sample(
        self,
        controller: LinearGaussianController,
        num: int,
        generator: torch.Generator | None = None,
        noise: bool = True,
    ) -> tuple[Tensor, Tensor]:
        x = self.start.expand(num, -1)
        states, actions = [x], []
        for t in range(controller.horizon):
            u = controller.act(x, t, generator, noise)
            x = self.step(x, u)
            if noise and self.noise_std > 0:
                x = x + self.noise_std * torch.randn(x.shape, generator=generator, dtype=DTYPE)
            states.append(x)
            actions.append(u)
        return torch.stack(states, 1), torch.stack(actions, 1)


class EnvSampler:
    """Rollouts in a gymnasium env started at a fixed state (the real system).

    The env must accept ``reset(options={"state": start})`` and expose its state as
    ``env.unwrapped.state`` (as :class:`~bayes_mbrl.envs.CartPoleSwingUpEnv` does): the
    controller acts on that state. ``num`` envs step in lockstep, the controller's
    actions computed for all of them at once.

    Args:
        make_env: builds one env.
        start: ``(D,)`` the start state.
    """

    def __init__(self, make_env: Callable[[], Any], start: Sequence[float]) -> None:
        self.make_env = make_env
        self.start = np.asarray(start, dtype=np.float64)
        self._envs: list[Any] = []

    def sample(
        self,
        controller: LinearGaussianController,
        num: int,
        generator: torch.Generator | None = None,
        noise: bool = True,
    ) -> tuple[Tensor, Tensor]:
        while len(self._envs) < num:
            self._envs.append(self.make_env())
        envs = self._envs[:num]
        for env in envs:
            env.reset(options={"state": self.start})
        x = torch.as_tensor(np.stack([e.unwrapped.state for e in envs]), dtype=DTYPE)
        states, actions = [x], []
        for t in range(controller.horizon):
            u = controller.act(x, t, generator, noise)
            for env, a in zip(envs, u.numpy(), strict=True):
                env.step(a.astype(np.float32))
            x = torch.as_tensor(np.stack([e.unwrapped.state for e in envs]), dtype=DTYPE)
            states.append(x)
            actions.append(u)
        return torch.stack(states, 1), torch.stack(actions, 1)


# ------------------------------------------------------------------ outer loop
GPS_PRIORS = ("gmm", "none")
"""Local dynamics fits: with the GMM's normal-inverse-Wishart prior, or ridge only."""


@dataclass
class GPSOptions(Options):
    """Options of :class:`GuidedPolicySearch`."""

    samples: int = option(5, at_least(1, "an integer"), "rollouts per iteration")
    kl_step: float = option(
        1.0, greater_than(0), "base KL bound per time step (epsilon = kl_step * multiplier * T)"
    )
    init_variance: float = option(1.0, greater_than(0), "initial controller covariance (x I)")
    prior: str = option("gmm", one_of(GPS_PRIORS), "local model prior")
    ridge: float = option(1e-6, greater_than(0), "ridge on the [x; u] block of the fit")
    prior_strength: float = option(1.0, greater_than(0), "multiplies the prior's counts")
    prior_max_trajectories: int = option(
        20, at_least(1, "an integer"), "recent trajectories the GMM prior is fitted to"
    )
    prior_points_per_cluster: int = option(
        40, at_least(1, "an integer"), "points per GMM component"
    )
    prior_max_clusters: int = option(20, at_least(2, "an integer"), "the most GMM components")
    min_multiplier: float = option(0.01, greater_than(0), "smallest KL step multiplier")
    max_multiplier: float = option(10.0, greater_than(0), "largest KL step multiplier")
    x0_variance: float = option(1e-6, greater_than(0), "added to the start covariance")


@dataclass
class GPSIteration:
    """One iteration of :class:`GuidedPolicySearch`.

    Attributes:
        iteration: 0-based.
        sample_costs: ``(N,)`` true costs of the iteration's rollouts.
        mean_cost: true cost of the controller's mean (no noise) before the step.
        epsilon: the KL bound of the step.
        kl: the step's KL under the local model.
        eta: the step's dual variable.
        dual_iterations: LQG solves of the dual search.
        multiplier: the step multiplier used.
        predicted_cost: the new controller's expected cost under the local model.
    """

    iteration: int
    sample_costs: list[float]
    mean_cost: float
    epsilon: float
    kl: float
    eta: float
    dual_iterations: int
    multiplier: float
    predicted_cost: float


@dataclass
class _LocalInfo:
    dynamics: LinearGaussianDynamics
    cost: QuadraticCost
    x0_mean: Tensor
    x0_cov: Tensor


class GuidedPolicySearch:
    """Trajectory optimization with local linear-Gaussian models (module docstring).

    Args:
        sampler: runs a controller on the real system (:class:`EnvSampler`,
            :class:`FunctionSampler`).
        stage_cost: ``(x, u) -> cost``, batched, twice differentiable.
        final_cost: ``x -> cost`` of the last state, or None.
        horizon: ``T`` actions.
        obs_dim: ``D``.
        action_dim: ``A``.
        options: :class:`GPSOptions` (None: defaults).
        generator: the rollouts' noise and the GMM's start.
        initial_controller: default: ``LinearGaussianController.initial`` with
            ``options.init_variance``.
    """

    def __init__(
        self,
        sampler: TrajectorySampler,
        stage_cost: StageCost,
        final_cost: FinalCost | None,
        horizon: int,
        obs_dim: int,
        action_dim: int,
        options: GPSOptions | None = None,
        generator: torch.Generator | None = None,
        initial_controller: LinearGaussianController | None = None,
    ) -> None:
        self.options = options if options is not None else GPSOptions()
        self.sampler, self.stage_cost, self.final_cost = sampler, stage_cost, final_cost
        self.horizon, self.obs_dim, self.action_dim = horizon, obs_dim, action_dim
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.controller = initial_controller or LinearGaussianController.initial(
            horizon, obs_dim, action_dim, self.options.init_variance
        )
        self.multiplier, self.eta = 1.0, 1.0
        self.history: list[GPSIteration] = []
        self._buffer: list[tuple[Tensor, Tensor]] = []
        self._previous: tuple[LinearGaussianController, _LocalInfo] | None = None
        self.prior: GaussianMixture | None = None

    def trajectory_costs(self, states: Tensor, actions: Tensor) -> Tensor:
        """``(N,)`` total true cost of trajectories ``(N, T + 1, D)``, ``(N, T, A)``."""
        with torch.no_grad():
            total = self.stage_cost(states[:, :-1], actions).sum(-1)
            if self.final_cost is not None:
                total = total + self.final_cost(states[:, -1])
        return total

    def _fit_prior(self) -> GaussianMixture | None:
        o = self.options
        if o.prior == "none":
            return None
        recent = self._buffer[-o.prior_max_trajectories :]
        xs = torch.cat([s for s, _ in recent])
        us = torch.cat([a for _, a in recent])
        pts = torch.cat([xs[:, :-1], us, xs[:, 1:]], -1).reshape(
            -1, 2 * xs.shape[-1] + us.shape[-1]
        )
        k = max(2, min(o.prior_max_clusters, pts.shape[0] // o.prior_points_per_cluster))
        return GaussianMixture.fit(pts, k, self.generator)

    def iterate(self) -> GPSIteration:
        """Sample, fit the local model, adapt the step size and take one KL step."""
        o = self.options
        states, actions = self.sampler.sample(self.controller, o.samples, self.generator)
        states, actions = states.to(DTYPE), actions.to(DTYPE)
        costs = self.trajectory_costs(states, actions)
        mean_x, mean_u = self.sampler.sample(self.controller, 1, None, noise=False)
        mean_cost = float(self.trajectory_costs(mean_x.to(DTYPE), mean_u.to(DTYPE))[0])
        self._buffer.append((states, actions))
        self.prior = self._fit_prior()
        dynamics = fit_linear_gaussian(
            states, actions, self.prior, ridge=o.ridge, prior_strength=o.prior_strength
        )
        cost = expand_cost(self.stage_cost, self.final_cost, states.mean(0), actions.mean(0))
        x0 = states[:, 0]
        x0_mean = x0.mean(0)
        x0_cov = (x0 - x0_mean).T @ (x0 - x0_mean) / x0.shape[0]
        x0_cov = x0_cov + o.x0_variance * torch.eye(self.obs_dim, dtype=DTYPE)
        info = _LocalInfo(dynamics, cost, x0_mean, x0_cov)
        if self._previous is not None:
            old_ctrl, old = self._previous

            def expected(ctrl: LinearGaussianController, at: _LocalInfo) -> float:
                return at.cost.expected(forward_pass(ctrl, at.dynamics, at.x0_mean, at.x0_cov))

            self.multiplier = adapt_step_multiplier(
                expected(old_ctrl, old),
                expected(self.controller, old),
                expected(self.controller, info),
                self.multiplier,
                o.min_multiplier,
                o.max_multiplier,
            )
        epsilon = o.kl_step * self.multiplier * self.horizon
        step = kl_constrained_step(
            self.controller, dynamics, cost, x0_mean, x0_cov, epsilon, eta=self.eta
        )
        predicted = cost.expected(forward_pass(step.controller, dynamics, x0_mean, x0_cov))
        record = GPSIteration(
            iteration=len(self.history),
            sample_costs=[float(c) for c in costs],
            mean_cost=mean_cost,
            epsilon=epsilon,
            kl=step.kl,
            eta=step.eta,
            dual_iterations=step.iterations,
            multiplier=self.multiplier,
            predicted_cost=predicted,
        )
        self._previous = (self.controller, info)
        self.controller, self.eta = step.controller, step.eta
        self.history.append(record)
        return record

    def run(self, iterations: int) -> list[GPSIteration]:
        """``iterations`` calls of :meth:`iterate`."""
        return [self.iterate() for _ in range(iterations)]

    def final_mean_cost(self) -> float:
        """True cost of the current controller's mean (one noise-free rollout)."""
        x, u = self.sampler.sample(self.controller, 1, None, noise=False)
        return float(self.trajectory_costs(x.to(DTYPE), u.to(DTYPE))[0])
