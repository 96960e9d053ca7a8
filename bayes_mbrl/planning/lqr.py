"""Finite-horizon LQR and iLQR: trajectory optimization through a model's mean.

:func:`lqr` solves the time-varying linear-quadratic problem

    x_{t+1} = F_t [x_t; u_t] + f_t,
    cost    = sum_{t<T} (1/2 z_t' C_t z_t + c_t' z_t) + 1/2 x_T' C_T x_T + c_T' x_T,
    z_t = [x_t; u_t],

by the backward Riccati recursion with linear and quadratic terms; the optimal
controller is ``u_t = K_t x_t + k_t`` and the cost-to-go ``1/2 x' V_t x + v_t' x``
(plus a constant). The same recursion, on the local expansion of a nonlinear problem
around a nominal trajectory, is the backward pass of :func:`ilqr` (Tassa, Erez and
Todorov 2012; Li and Todorov 2004):

* Jacobians of the dynamics and the first and second derivatives of the stage cost
  ``-reward(x, u, x')`` come from autograd, batched over every step of the horizon at
  once (one call of the dynamics for all steps; loops run over output dimensions and
  horizon steps only). The cost of a transition depends on ``x'`` too; its expansion
  is carried through ``x' = f(x, u)`` to first order (Gauss-Newton: no second
  derivatives of the dynamics). Cost Hessians are projected onto the positive
  semi-definite cone (``psd_costs``), so that a reward such as Pendulum's
  ``-atan2(sin, cos)**2`` does not make the local problem non-convex.
* Levenberg-Marquardt regularization of the cost-to-go, ``V'_xx + mu I`` in
  ``Q_uu`` and ``Q_ux``, with Tassa's schedule: ``mu`` grows by a growing factor
  while a backward pass fails (``Q_uu`` not positive definite) or no step improves,
  and shrinks after every accepted step.
* A backtracking line search over the step sizes ``alphas``, all rolled out in one
  batched forward pass, accepting the largest step whose actual improvement is at
  least ``1e-4`` of the improvement the quadratic model predicts.
* Box-constrained controls: each step's control problem is a box QP solved by
  projected Newton (Tassa, Mansard and Todorov 2014); clamped controls get no feedback.
* Several posterior functions at once: with ``F > 1`` functions every function
  carries its own trajectory and cost-to-go, and the controller (``k_t``, ``K_t``) is
  shared: it minimizes the average over functions of their local models (the
  backward pass averaged over posterior draws). The feedback acts on the mean state
  deviation, so one control sequence is returned for all functions.

A planner built on it, :class:`ILQRPlanner` (``planner.kind = "ilqr"``), sees only
the rollout evaluator's score function, through its :meth:`trajectory_problem`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.planning.noise import colored_noise
from bayes_mbrl.planning.optimizers import PLANNERS, Planner, PlannerSettings, PlanResult, ScoreFn

__all__ = [
    "ILQR_DYNAMICS",
    "ILQRPlanner",
    "ILQRResult",
    "LQRSolution",
    "TrajectoryProblem",
    "box_qp",
    "ilqr",
    "lqr",
    "problem_rollout_cost",
    "solve_problem",
]

#: ``(x (F, B, D), u (F, B, A)) -> x' (F, B, D)``, differentiable, one function per row ``F``
BatchedDynamics = Callable[[Tensor, Tensor], Tensor]
#: ``(x, u, x') -> cost``, batched over any leading shape
StageCost = Callable[[Tensor, Tensor, Tensor], Tensor]
#: ``x (..., D) -> cost (...)``
TerminalCost = Callable[[Tensor], Tensor]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(10.0 ** (-3.0 * i / 10) for i in range(11))
"""Line-search step sizes of :func:`ilqr`: ``1`` down to ``1e-3``, log-spaced."""


# ---------------------------------------------------------------------------- LQR
@dataclass
class LQRSolution:
    """The controller and cost-to-go of a (local) linear-quadratic problem.

    Attributes:
        K: ``(..., T, A, D)`` feedback gains.
        k: ``(..., T, A)`` open-loop terms: ``u_t = K_t x_t + k_t``.
        V: ``(..., T + 1, D, D)`` quadratic terms of the cost-to-go.
        v: ``(..., T + 1, D)`` linear terms of the cost-to-go.
        Q_uu: ``(..., T, A, A)`` the control block of each step's Q-function
            (regularized; in a linear-Gaussian controller the inverse is the
            covariance of the maximum-entropy controller).
        expected: ``(d1, d2)``: the local model's predicted change of the cost for a
            step of size ``alpha`` along ``k`` is ``alpha * d1 + alpha**2 * d2`` (summed
            over the batch; meaningful in the deviation form of :func:`ilqr`).
    """

    K: Tensor
    k: Tensor
    V: Tensor
    v: Tensor
    Q_uu: Tensor
    expected: tuple[float, float] = (0.0, 0.0)


def _sym(m: Tensor) -> Tensor:
    return (m + m.transpose(-1, -2)) / 2


def _check_lqr_shapes(F: Tensor, f: Tensor, C: Tensor, c: Tensor) -> tuple[int, int, int]:
    if F.dim() < 3:
        raise ConfigError(f"F must have shape (..., T, D, D + A), got {tuple(F.shape)}")
    T, D, n = F.shape[-3:]
    A = n - D
    if A < 1:
        raise ConfigError(
            f"F must have shape (..., T, D, D + A) with A >= 1 controls, got {tuple(F.shape)}"
        )
    wants = {"f": (f, (T, D)), "C": (C, (T, n, n)), "c": (c, (T, n))}
    for name, (t, shape) in wants.items():
        if tuple(t.shape[-len(shape) :]) != shape:
            raise ConfigError(
                f"{name} must have trailing shape {shape} (T = {T}, D = {D}, A = {A}), "
                f"got {tuple(t.shape)}"
            )
    for name, t in (("F", F), ("f", f), ("C", C), ("c", c)):
        if not bool(torch.isfinite(t).all()):
            raise DataError(
                f"{name} contains NaN or inf; LQR needs finite dynamics and costs (check the "
                "model or the expansion that produced them)"
            )
    return T, D, A


def lqr(
    F: Tensor,
    f: Tensor,
    C: Tensor,
    c: Tensor,
    C_final: Tensor | None = None,
    c_final: Tensor | None = None,
) -> LQRSolution:
    """Finite-horizon time-varying LQR by the backward Riccati recursion.

    Args:
        F: ``(..., T, D, D + A)`` dynamics ``x_{t+1} = F_t [x_t; u_t] + f_t``.
        f: ``(..., T, D)`` dynamics offsets.
        C: ``(..., T, D + A, D + A)`` quadratic stage costs (symmetrized here).
        c: ``(..., T, D + A)`` linear stage costs.
        C_final: ``(..., D, D)`` quadratic final cost (None: zero).
        c_final: ``(..., D)`` linear final cost (None: zero).

    Returns:
        The :class:`LQRSolution`: ``u_t = K_t x_t + k_t`` minimizes the total cost.

    Raises:
        ModelError: a step's ``Q_uu`` is not positive definite (the problem has no
            minimizer in the controls; add a control cost).
    """
    _, D, _ = _check_lqr_shapes(F, f, C, c)
    batch = F.shape[:-3]
    V_final = (
        torch.zeros(*batch, D, D, dtype=F.dtype, device=F.device) if C_final is None else C_final
    )
    v_final = torch.zeros(*batch, D, dtype=F.dtype, device=F.device) if c_final is None else c_final

    def solve(t: int, Q_uu: Tensor, Q_ux: Tensor, q_u: Tensor) -> tuple[Tensor, Tensor]:
        chol, info = torch.linalg.cholesky_ex(Q_uu)
        if bool((info != 0).any()):
            raise ModelError(
                f"LQR: Q_uu at step {t} is not positive definite; the cost must be strictly "
                "convex in the controls (add a positive-definite control cost)"
            )
        K = -torch.cholesky_solve(Q_ux, chol)
        k = -torch.cholesky_solve(q_u.unsqueeze(-1), chol).squeeze(-1)
        return K, k

    return _backward(F, f, C, c, V_final, v_final, solve, mu=0.0)


ControlSolver = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _backward(
    F: Tensor,
    f: Tensor,
    C: Tensor,
    c: Tensor,
    V_final: Tensor,
    v_final: Tensor,
    solve: ControlSolver,
    mu: float,
) -> LQRSolution:
    """The Riccati recursion shared by :func:`lqr` and :func:`ilqr`.

    ``solve(t, Q_uu, Q_ux, q_u) -> (K_t, k_t)`` chooses each step's controller
    (broadcastable against the batch: :func:`ilqr` shares one across functions).
    ``mu`` regularizes the next cost-to-go in ``Q_uu`` and ``Q_ux`` (Tassa 2012)."""
    T, D = F.shape[-3], F.shape[-2]
    Vs, vs = [V_final], [v_final]
    Ks, ks, Quus = [], [], []
    d1 = d2 = 0.0
    V, v = V_final, v_final
    for t in reversed(range(T)):
        Ft = F[..., t, :, :]
        Ft_T = Ft.transpose(-1, -2)
        Q = _sym(C[..., t, :, :]) + Ft_T @ V @ Ft
        q = c[..., t, :] + (Ft_T @ (V @ f[..., t, :].unsqueeze(-1) + v.unsqueeze(-1))).squeeze(-1)
        Q_xx, Q_ux, Q_uu = Q[..., :D, :D], Q[..., D:, :D], Q[..., D:, D:]
        q_x, q_u = q[..., :D], q[..., D:]
        if mu > 0:
            Fu = Ft[..., :, D:]
            Fu_T = Fu.transpose(-1, -2)
            Q_uu = Q_uu + mu * Fu_T @ Fu
            Q_ux = Q_ux + mu * Fu_T @ Ft[..., :, :D]
        Q_uu = _sym(Q_uu)
        K, k = solve(t, Q_uu, Q_ux, q_u)
        K, k = K.expand(*Q_ux.shape), k.expand(*q_u.shape)
        K_T = K.transpose(-1, -2)
        kc = k.unsqueeze(-1)
        V = _sym(Q_xx + K_T @ Q_uu @ K + K_T @ Q_ux + Q_ux.transpose(-1, -2) @ K)
        v = (
            q_x.unsqueeze(-1)
            + K_T @ Q_uu @ kc
            + K_T @ q_u.unsqueeze(-1)
            + Q_ux.transpose(-1, -2) @ kc
        ).squeeze(-1)
        d1 += float((k * q_u).sum())
        d2 += float(0.5 * (kc.transpose(-1, -2) @ Q_uu @ kc).sum())
        Vs.append(V)
        vs.append(v)
        Ks.append(K)
        ks.append(k)
        Quus.append(Q_uu)
    return LQRSolution(
        K=torch.stack(Ks[::-1], -3),
        k=torch.stack(ks[::-1], -2),
        V=torch.stack(Vs[::-1], -3),
        v=torch.stack(vs[::-1], -2),
        Q_uu=torch.stack(Quus[::-1], -3),
        expected=(d1, d2),
    )


# ------------------------------------------------------------------------- box QP
def box_qp(
    H: Tensor,
    g: Tensor,
    lower: Tensor,
    upper: Tensor,
    x0: Tensor | None = None,
    iterations: int = 50,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Minimize ``1/2 x' H x + g' x`` subject to ``lower <= x <= upper`` by projected Newton.

    Tassa, Mansard and Todorov (2014), Algorithm 1: at each iteration the variables at a
    bound whose gradient points outwards are clamped, a Newton step is taken in the
    free ones, and a projected Armijo line search keeps the iterate feasible.

    Args:
        H: ``(A, A)`` positive-definite Hessian.
        g: ``(A,)`` gradient at zero.
        lower: ``(A,)`` lower bounds (``lower <= upper``; ``lower <= 0 <= upper`` for
            the deviation form of iLQR).
        upper: ``(A,)`` upper bounds.
        x0: ``(A,)`` a start (clamped into the box; None: zero).
        iterations: the most Newton iterations.

    Returns:
        ``(x, free, chol)``: the minimizer ``(A,)``, the mask of free variables at it
        ``(A,)`` and the Cholesky factor of ``H`` restricted to them (None when every
        variable is clamped or ``H`` is not positive definite on the free set; the
        caller treats the latter as a failed backward pass).
    """
    x = torch.zeros_like(g) if x0 is None else x0.clone()
    x = torch.minimum(torch.maximum(x, lower), upper)

    def value(y: Tensor) -> Tensor:
        return 0.5 * y @ H @ y + g @ y

    free = torch.ones_like(g, dtype=torch.bool)
    chol: Tensor | None = None
    for _ in range(iterations):
        grad = g + H @ x
        clamped = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
        free = ~clamped
        if not bool(free.any()):
            return x, free, None
        idx = free.nonzero().squeeze(-1)
        Hf = H[idx][:, idx]
        chol, info = torch.linalg.cholesky_ex(Hf)
        if int(info) != 0:
            return x, free, None
        step = torch.zeros_like(x)
        step[idx] = -torch.cholesky_solve(grad[idx].unsqueeze(-1), chol).squeeze(-1)
        if float(step.abs().max()) < 1e-10:
            break
        old, alpha = value(x), 1.0
        while alpha > 1e-10:
            cand = torch.minimum(torch.maximum(x + alpha * step, lower), upper)
            if float(value(cand) - old) <= 0.1 * float(grad @ (cand - x)):
                break
            alpha *= 0.6
        else:
            break
        done = float((old - value(cand)).abs()) < 1e-12 * (1 + float(old.abs()))
        x = cand
        if done:
            break
    grad = g + H @ x
    free = ~(((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0)))
    if not bool(free.any()):
        return x, free, None
    idx = free.nonzero().squeeze(-1)
    chol, info = torch.linalg.cholesky_ex(H[idx][:, idx])
    return x, free, (chol if int(info) == 0 else None)


# --------------------------------------------------------------------------- iLQR
@dataclass
class ILQRResult:
    """What :func:`ilqr` found.

    Attributes:
        actions: ``(T, A)`` the optimized controls.
        states: ``(F, T + 1, D)`` each function's trajectory under them.
        cost: the mean over functions of the total cost of ``actions``.
        costs: the cost after each iteration (the first entry is the start's).
        K: ``(T, A, D)`` feedback gains around ``states`` (zero rows where a control
            is at its bound).
        k: ``(T, A)`` the last open-loop step.
        Q_uu: ``(T, A, A)`` the last backward pass's control Hessians (averaged
            over functions).
        iterations: backward passes run.
        converged: the relative improvement fell below the tolerance.
        mu: the regularization at the end.
    """

    actions: Tensor
    states: Tensor
    cost: float
    costs: list[float] = field(default_factory=list)
    K: Tensor | None = None
    k: Tensor | None = None
    Q_uu: Tensor | None = None
    iterations: int = 0
    converged: bool = False
    mu: float = 0.0


@dataclass
class TrajectoryProblem:
    """A trajectory optimization problem posed by a rollout evaluator from one state.

    Attributes:
        start_obs: ``(D,)`` the state planned from.
        dynamics: ``(x (F, B, D), u (F, B, A)) -> (F, B, D)``, differentiable: the
            mean next state under each of ``F`` posterior functions (``F = 1``: the
            model's predictive mean).
        num_functions: ``F``.
        reward_fn: batched ``(obs, action, next_obs) -> reward``.
        discount: per-step discount.
        terminal_value: ``states (N, D) -> (N,)`` value after the horizon, or None.
    """

    start_obs: Tensor
    dynamics: BatchedDynamics
    num_functions: int
    reward_fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    discount: float = 1.0
    terminal_value: Callable[[Tensor], Tensor] | None = None

    def stage_cost(self, x: Tensor, u: Tensor, x_next: Tensor) -> Tensor:
        """``-reward``, batched."""
        return -self.reward_fn(x, u, x_next)

    def terminal_cost(self) -> TerminalCost | None:
        """``x (..., D) -> -terminal_value(x)``, the cost of the state after the horizon
        (:func:`ilqr` weights it by ``discount**H``), or None without a terminal value."""
        value = self.terminal_value
        if value is None:
            return None
        return lambda x: -value(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1])


def _rollout(dynamics: BatchedDynamics, x0: Tensor, controls: Tensor) -> Tensor:
    """``x0 (F, B, D)``, ``controls (T, F, B, A)`` -> states ``(T + 1, F, B, D)``."""
    states = [x0]
    for t in range(controls.shape[0]):
        states.append(dynamics(states[-1], controls[t]))
    return torch.stack(states)


def _trajectory_cost(
    cost: StageCost,
    terminal: TerminalCost | None,
    states: Tensor,
    controls: Tensor,
    weights: Tensor,
) -> Tensor:
    """Total discounted cost ``(F, B)`` of ``states (T + 1, F, B, D)`` under ``controls``."""
    T = controls.shape[0]
    c = cost(states[:-1], controls, states[1:])  # (T, F, B)
    total = (weights[:T].reshape(T, *([1] * (c.dim() - 1))) * c).sum(0)
    if terminal is not None:
        total = total + weights[T] * terminal(states[-1])
    return total


def _psd(m: Tensor, floor: float = 0.0) -> Tensor:
    """The nearest symmetric positive semi-definite matrices (eigenvalues clipped)."""
    vals, vecs = torch.linalg.eigh(_sym(m))
    return (vecs * vals.clamp_min(floor).unsqueeze(-2)) @ vecs.transpose(-1, -2)


def _jacobians(dynamics: BatchedDynamics, x: Tensor, u: Tensor) -> Tensor:
    """Per-row Jacobians ``(F, B, D, D + A)`` of ``dynamics`` at ``x (F, B, D)``, ``u (F, B, A)``.

    Rows are independent, so the gradient of one output coordinate summed over rows is
    every row's gradient of it: one backward pass per output coordinate."""
    with torch.enable_grad():
        z = torch.cat([x, u], -1).detach().requires_grad_(True)
        D = x.shape[-1]
        out = dynamics(z[..., :D], z[..., D:])
        rows = []
        for i in range(out.shape[-1]):
            (g,) = torch.autograd.grad(
                out[..., i].sum(), z, retain_graph=i + 1 < out.shape[-1], allow_unused=True
            )
            rows.append(torch.zeros_like(z) if g is None else g)
    return torch.stack(rows, -2).detach()


def _cost_derivatives(cost: Callable[[Tensor], Tensor], w: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient ``(..., n)`` and Hessian ``(..., n, n)`` of a per-row scalar cost of ``w``."""
    n = w.shape[-1]
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        total = cost(w).sum()
        (g,) = torch.autograd.grad(total, w, create_graph=True, allow_unused=True)
        if g is None:
            return torch.zeros_like(w), torch.zeros(*w.shape, n, dtype=w.dtype, device=w.device)
        rows = []
        for i in range(n):
            if not g.requires_grad:
                rows.append(torch.zeros_like(w))
                continue
            (h,) = torch.autograd.grad(g[..., i].sum(), w, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(w) if h is None else h)
    return g.detach(), torch.stack(rows, -2).detach()


def _check_ilqr(x0: Tensor, actions: Tensor, alphas: Sequence[float], max_iterations: int) -> None:
    if x0.dim() != 2:
        raise ConfigError(
            f"x0 must have shape (F, D) (one start per function), got {tuple(x0.shape)}"
        )
    if actions.dim() != 2:
        raise ConfigError(f"actions must have shape (T, A), got {tuple(actions.shape)}")
    if max_iterations < 1:
        raise ConfigError(f"max_iterations must be >= 1, got {max_iterations}")
    for name, t in (("x0", x0), ("actions", actions)):
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{name} contains NaN or inf; iLQR starts from finite values")
    if not alphas or any(not 0 < a <= 1 for a in alphas):
        raise ConfigError(f"alphas must be step sizes in (0, 1], got {list(alphas)}")


def _expand(
    dynamics: BatchedDynamics,
    cost: StageCost,
    terminal_cost: TerminalCost | None,
    xs: Tensor,
    u: Tensor,
    weights: Tensor,
    psd_costs: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The local linear-quadratic problem around ``xs (T + 1, F, D)``, ``u (T, A)``.

    Returns ``(F_z (F, T, D, D + A), C (F, T, D + A, D + A), c (F, T, D + A), C_final
    (F, D, D), c_final (F, D))`` for :func:`_backward` in deviation coordinates."""
    T, A = u.shape
    F, D = xs.shape[1], xs.shape[2]
    # every step at once: (F, T, ...)
    xt = xs[:-1].transpose(0, 1)  # (F, T, D)
    xn = xs[1:].transpose(0, 1)
    ut = u.expand(F, T, A)
    Fz = _jacobians(dynamics, xt, ut)  # (F, T, D, D + A)
    w = torch.cat([xt, ut, xn], -1)
    g, H = _cost_derivatives(lambda w: cost(w[..., :D], w[..., D : D + A], w[..., D + A :]), w)
    g = g * weights[:T].reshape(1, T, 1)
    H = H * weights[:T].reshape(1, T, 1, 1)
    if psd_costs:
        H = _psd(H)
    # carry the x' terms through x' = f(x, u) (Gauss-Newton)
    g_z, g_n = g[..., : D + A], g[..., D + A :]
    H_zz, H_zn, H_nn = (
        H[..., : D + A, : D + A],
        H[..., : D + A, D + A :],
        H[..., D + A :, D + A :],
    )
    Fz_T = Fz.transpose(-1, -2)
    C = H_zz + H_zn @ Fz + Fz_T @ H_zn.transpose(-1, -2) + Fz_T @ H_nn @ Fz
    c = g_z + (Fz_T @ g_n.unsqueeze(-1)).squeeze(-1)
    if terminal_cost is not None:
        gT, HT = _cost_derivatives(terminal_cost, xs[-1])
        gT, HT = gT * weights[T], HT * weights[T]
        if psd_costs:
            HT = _psd(HT)
    else:
        gT, HT = xs.new_zeros(F, D), xs.new_zeros(F, D, D)
    return Fz, C, c, HT, gT


def ilqr(
    dynamics: BatchedDynamics,
    cost: StageCost,
    x0: Tensor,
    actions: Tensor,
    action_low: Tensor | None = None,
    action_high: Tensor | None = None,
    terminal_cost: TerminalCost | None = None,
    discount: float = 1.0,
    max_iterations: int = 10,
    tolerance: float = 1e-4,
    mu_init: float = 0.0,
    mu_min: float = 1e-6,
    mu_max: float = 1e10,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    psd_costs: bool = True,
) -> ILQRResult:
    """Iterative LQR from ``actions`` (see the module docstring for the method).

    Args:
        dynamics: ``(x (F, B, D), u (F, B, A)) -> (F, B, D)``, differentiable; row ``f``
            is posterior function ``f``.
        cost: ``(x, u, x') -> cost``, batched over any leading shape (e.g. ``-reward``).
        x0: ``(F, D)`` the start state, repeated per function.
        actions: ``(T, A)`` the initial controls (a warm start).
        action_low: ``(A,)`` lower control bounds (None: unbounded).
        action_high: ``(A,)`` upper control bounds (None: unbounded).
        terminal_cost: ``x (..., D) -> (...)`` cost of the final state, or None.
        discount: per-step discount of the costs.
        max_iterations: the most backward passes.
        tolerance: stop when an accepted step improves the cost by less than this
            fraction of its magnitude.
        mu_init: initial regularization (0: none until a backward pass fails).
        mu_min: the regularization floor (below it ``mu`` drops to 0).
        mu_max: the regularization ceiling (reaching it ends the optimization).
        alphas: line-search step sizes, tried together, largest accepted.
        psd_costs: project the cost Hessians onto the PSD cone.

    Returns:
        The :class:`ILQRResult`; its ``actions`` are never worse (in cost) than the
        initial ones.
    """
    _check_ilqr(x0, actions, alphas, max_iterations)
    dtype = x0.dtype
    F, D = x0.shape
    T, A = actions.shape
    low = None if action_low is None else action_low.to(dtype)
    high = None if action_high is None else action_high.to(dtype)
    u = actions.to(dtype)
    if low is not None and high is not None:
        u = torch.minimum(torch.maximum(u, low), high)
    weights = discount ** torch.arange(T + 1, dtype=dtype, device=x0.device)
    alpha_t = torch.tensor(list(alphas), dtype=dtype, device=x0.device)
    nA = alpha_t.shape[0]

    with torch.no_grad():
        xs = _rollout(dynamics, x0.unsqueeze(1), u.unsqueeze(1).unsqueeze(1).expand(T, F, 1, A))
        J = float(
            _trajectory_cost(
                cost, terminal_cost, xs, u.reshape(T, 1, 1, A).expand(T, F, 1, A), weights
            ).mean()
        )
    if not math.isfinite(J):
        raise ModelError(
            "iLQR: the initial trajectory's cost is not finite; the model diverges along the "
            "warm start (check the model, or start from other actions)"
        )
    xs = xs[:, :, 0]  # (T + 1, F, D)
    costs, mu, delta = [J], mu_init, 1.0
    K_last: Tensor | None = None
    k_last: Tensor | None = None
    Quu_last: Tensor | None = None
    converged, iterations = False, 0

    def increase(mu: float, delta: float) -> tuple[float, float]:
        delta = max(2.0, delta * 2.0)
        return max(mu_min, mu * delta), delta

    expansion: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None
    while iterations < max_iterations:
        iterations += 1
        if expansion is None:  # the trajectory moved: expand around it again
            expansion = _expand(dynamics, cost, terminal_cost, xs, u, weights, psd_costs)
        Fz, C, c, HT, gT = expansion
        f0 = x0.new_zeros(F, T, D)

        # ---- backward pass (with retries under growing regularization)
        solution = None
        while solution is None:
            try:
                solution = _backward(Fz, f0, C, c, HT, gT, _shared_controller(u, low, high), mu)
            except _BackwardFailed:
                mu, delta = increase(mu, delta)
                if mu > mu_max:
                    break
        if solution is None:
            break
        K, k = solution.K[0], solution.k[0]  # shared across functions
        d1, d2 = solution.expected
        if -(d1 + d2) / F <= tolerance * max(abs(J), 1e-12):
            converged = True  # the local model predicts no improvement worth a step
            break
        # ---- line search: every alpha in one batched forward pass
        with torch.no_grad():
            xbar = xs.mean(1)  # (T + 1, D): the mean trajectory the feedback acts on
            state = x0.unsqueeze(1).expand(F, nA, D)
            states, controls = [state], []
            for t in range(T):
                dx = state.mean(0) - xbar[t]  # (nA, D)
                ua = u[t] + alpha_t.unsqueeze(-1) * k[t] + dx @ K[t].T
                if low is not None and high is not None:
                    ua = torch.minimum(torch.maximum(ua, low), high)
                controls.append(ua)
                state = dynamics(state, ua.unsqueeze(0).expand(F, nA, A))
                states.append(state)
            trial = torch.stack(states)  # (T + 1, F, nA, D)
            trial_u = torch.stack(controls)  # (T, nA, A)
            Js = _trajectory_cost(
                cost, terminal_cost, trial, trial_u.unsqueeze(1).expand(T, F, nA, A), weights
            ).mean(0)  # (nA,)
        expected = -(alpha_t * d1 + alpha_t**2 * d2) / F
        improvement = J - Js
        ok = (
            torch.isfinite(Js)
            & (improvement > 0)
            & ((expected <= 0) | (improvement >= 1e-4 * expected))
        )
        if not bool(ok.any()):
            mu, delta = increase(mu, delta)
            if mu > mu_max:
                break
            continue
        best = int(ok.nonzero()[0])
        u_new, J_new = trial_u[:, best], float(Js[best])
        rel = (J - J_new) / max(abs(J), 1e-12)
        u, xs, J = u_new, trial[:, :, best], J_new
        expansion = None
        costs.append(J)
        K_last, k_last, Quu_last = K, k, solution.Q_uu.mean(0)
        # accepted: decrease the regularization
        delta = min(0.5, delta / 2.0)
        mu = mu * delta if mu * delta > mu_min else 0.0
        if rel < tolerance:
            converged = True
            break
    return ILQRResult(
        actions=u,
        states=xs.transpose(0, 1),
        cost=J,
        costs=costs,
        K=K_last,
        k=k_last,
        Q_uu=Quu_last,
        iterations=iterations,
        converged=converged,
        mu=mu,
    )


class _BackwardFailed(Exception):
    """A step's ``Q_uu`` was not positive definite."""


def _shared_controller(u: Tensor, low: Tensor | None, high: Tensor | None) -> ControlSolver:
    """The per-step control solve of :func:`ilqr`: one controller for every function, from
    the functions' average ``Q`` terms, box-constrained when there are bounds."""

    def solve(t: int, Q_uu: Tensor, Q_ux: Tensor, q_u: Tensor) -> tuple[Tensor, Tensor]:
        Huu, Hux, hu = Q_uu.mean(0), Q_ux.mean(0), q_u.mean(0)
        chol, info = torch.linalg.cholesky_ex(Huu)
        if int(info) != 0:
            raise _BackwardFailed
        k = -torch.cholesky_solve(hu.unsqueeze(-1), chol).squeeze(-1)
        if low is None or high is None:
            K = -torch.cholesky_solve(Hux, chol)
            return K, k
        lower, upper = low - u[t], high - u[t]
        if bool(((k >= lower) & (k <= upper)).all()):
            return -torch.cholesky_solve(Hux, chol), k
        k, free, chol_free = box_qp(Huu, hu, lower, upper, x0=k)
        K = torch.zeros_like(Hux)
        if chol_free is not None:
            idx = free.nonzero().squeeze(-1)
            K[idx] = -torch.cholesky_solve(Hux[idx], chol_free)
        elif bool(free.any()):
            raise _BackwardFailed
        return K, k

    return solve


def problem_rollout_cost(problem: TrajectoryProblem, actions: Tensor) -> Tensor:
    """Total cost ``(B,)`` of ``actions (B, T, A)`` under ``problem`` (mean over functions)."""
    F = problem.num_functions
    B, T, A = actions.shape
    x0 = problem.start_obs.reshape(1, 1, -1).expand(F, B, -1)
    controls = actions.transpose(0, 1).unsqueeze(1).expand(T, F, B, A)
    weights = problem.discount ** torch.arange(T + 1, dtype=actions.dtype, device=actions.device)
    with torch.no_grad():
        states = _rollout(problem.dynamics, x0, controls)
        return _trajectory_cost(
            problem.stage_cost, problem.terminal_cost(), states, controls, weights
        ).mean(0)


def solve_problem(problem: TrajectoryProblem, actions: Tensor, **options: Any) -> ILQRResult:
    """:func:`ilqr` on a :class:`TrajectoryProblem` from ``actions (T, A)``."""
    x0 = problem.start_obs.reshape(1, -1).expand(problem.num_functions, -1)
    return ilqr(
        problem.dynamics,
        problem.stage_cost,
        x0,
        actions,
        terminal_cost=problem.terminal_cost(),
        discount=problem.discount,
        **options,
    )


@PLANNERS.register("ilqr")
class ILQRPlanner(Planner):
    """iLQR as a model-predictive planner (``planner.kind = "ilqr"``).

    Each plan runs :func:`ilqr` from the warm start (the last plan shifted by the
    executed steps; the middle of the action range at an episode's start) through the
    evaluator's :meth:`~bayes_mbrl.planning.rollout.RolloutEvaluator.trajectory_problem`:
    the model's predictive mean (``dynamics = "mean"``), or each of the evaluator's
    posterior functions with the backward pass averaged over them
    (``dynamics = "functions"``). The reward is the task's; terminations are not
    modelled (iLQR needs a smooth cost). With ``restarts > 0`` iLQR runs a second time,
    from the best (under the same dynamics) of ``restarts`` smooth random sequences,
    and the plan of lower cost is kept: iLQR follows the local gradient, and from a
    pendulum held still against gravity no local change looks better than holding it
    (a swing through the bottom costs more at first); a random swing is a start from
    which iLQR finds the swing-up.

    Args:
        iterations: the most iLQR iterations per plan.
        dynamics: ``"mean"`` or ``"functions"``.
        restarts: smooth random sequences whose best is a second start (0: none).
        tolerance: relative improvement below which a plan stops early.
        population: unused by iLQR (kept for the common signature).
    """

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        horizon: int,
        population: int = 1,
        iterations: int = 10,
        dynamics: str = "mean",
        restarts: int = 0,
        tolerance: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(action_low, action_high, horizon, max(1, population), generator)
        if dynamics not in ILQR_DYNAMICS:
            raise ConfigError(
                f"planner.ilqr_dynamics = {dynamics!r} is not known; choose one of "
                f"{list(ILQR_DYNAMICS)}"
            )
        if iterations < 1 or restarts < 0:
            raise ConfigError(
                f"iLQR needs iterations >= 1 and restarts >= 0, got {iterations}, {restarts}"
            )
        self.iterations, self.dynamics, self.restarts = iterations, dynamics, restarts
        self.tolerance = tolerance
        self.last_result: ILQRResult | None = None

    @classmethod
    def config_options(cls, cfg: PlannerSettings) -> dict[str, Any]:
        """Reads ``ilqr_dynamics`` and ``ilqr_restarts``."""
        return {
            "dynamics": cfg.ilqr_dynamics,
            "restarts": cfg.ilqr_restarts,
        }

    def _red_noise(self, n: int) -> Tensor:
        """``n`` smooth random sequences ``(n, horizon, action_dim)``: red noise (spectrum
        ``1/f**2`` along the horizon) around the middle of the range, with a standard
        deviation of half the range, clipped to the bounds."""
        eps = colored_noise(2.0, (n, self.action_dim, self.horizon), self.generator)
        half = (self.high - self.low) / 2
        seqs = (self.low + self.high) / 2 + half * eps.transpose(1, 2)
        return torch.minimum(torch.maximum(seqs, self.low), self.high)

    def _optimize(self, score: ScoreFn) -> PlanResult:
        make_problem = getattr(score, "trajectory_problem", None)
        if make_problem is None:
            raise ConfigError(
                "planner.kind = 'ilqr' differentiates the model: it needs the score function "
                "of a RolloutEvaluator (evaluator.scorer(obs)), not a bare callable; use "
                "cem, icem, mppi or random_shooting for a black-box score"
            )
        problem: TrajectoryProblem = make_problem(self.dynamics)
        starts = [self.initial_mean()]
        if self.restarts > 0:
            candidates = self._red_noise(self.restarts)
            costs = torch.nan_to_num(problem_rollout_cost(problem, candidates), nan=math.inf)
            starts.append(candidates[int(costs.argmin())])
        result: ILQRResult | None = None
        for start in starts:
            found = solve_problem(
                problem,
                start,
                action_low=self.low,
                action_high=self.high,
                max_iterations=self.iterations,
                tolerance=self.tolerance,
            )
            if result is None or found.cost < result.cost:
                result = found
        assert result is not None
        self.last_result = result
        actions = result.actions.float()
        value = float(self._score(score, actions.unsqueeze(0))[0])
        return PlanResult(actions, value, [-c for c in result.costs])


ILQR_DYNAMICS = ("mean", "functions")
"""What :class:`ILQRPlanner` differentiates: the predictive mean, or every function."""
