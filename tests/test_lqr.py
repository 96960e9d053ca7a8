"""LQR against the algebraic Riccati equation and a direct QP; iLQR on linear-quadratic and
box-constrained problems; the iLQR planner through the rollout evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.planning import PLANNERS, ILQRPlanner, RolloutEvaluator, box_qp, ilqr, lqr
from bayes_mbrl.planning.lqr import problem_rollout_cost

torch.set_default_dtype(torch.float32)


def _stable_system(g: torch.Generator, d: int, a: int) -> tuple[Tensor, Tensor]:
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = 0.9 * A / torch.linalg.eigvals(A).abs().max()
    B = torch.randn(d, a, generator=g, dtype=torch.float64)
    return A, B


def _spd(g: torch.Generator, n: int, floor: float = 0.1) -> Tensor:
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + floor * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lqr_at_long_horizons_equals_the_discrete_algebraic_riccati_solution(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    d, a, T = 4, 2, 400
    A, B = _stable_system(g, d, a)
    Q, R = _spd(g, d), _spd(g, a)
    P = torch.from_numpy(
        scipy.linalg.solve_discrete_are(A.numpy(), B.numpy(), Q.numpy(), R.numpy())
    )
    K_inf = -torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    F = torch.cat([A, B], 1).expand(T, d, d + a)
    C = torch.block_diag(Q, R).expand(T, d + a, d + a)
    sol = lqr(
        F, torch.zeros(T, d, dtype=torch.float64), C, torch.zeros(T, d + a, dtype=torch.float64)
    )
    torch.testing.assert_close(sol.V[0], P, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.K[0], K_inf, rtol=1e-8, atol=1e-8)
    assert sol.k.abs().max() < 1e-12  # no linear terms, no offsets
    # the last step sees no future: u_{T-1} = -R^{-1} ... with V_T = 0, so K_{T-1} = 0
    assert sol.K[-1].abs().max() < 1e-12


def _lq_problem(g: torch.Generator, T: int, d: int, a: int) -> dict[str, Tensor]:
    """A random time-varying LQ problem with offsets, cross terms and linear costs."""
    F = torch.randn(T, d, d + a, generator=g, dtype=torch.float64) * 0.5
    f = torch.randn(T, d, generator=g, dtype=torch.float64) * 0.3
    C = torch.stack([_spd(g, d + a) for _ in range(T)])
    c = torch.randn(T, d + a, generator=g, dtype=torch.float64)
    C_final = _spd(g, d)
    c_final = torch.randn(d, generator=g, dtype=torch.float64)
    x0 = torch.randn(d, generator=g, dtype=torch.float64)
    return {"F": F, "f": f, "C": C, "c": c, "C_final": C_final, "c_final": c_final, "x0": x0}


def _lq_cost(p: dict[str, Tensor], u: Tensor) -> tuple[Tensor, Tensor]:
    """Total cost of open-loop controls ``u (T, A)`` and the states visited."""
    x, total, xs = p["x0"], torch.zeros((), dtype=torch.float64), [p["x0"]]
    for t in range(u.shape[0]):
        z = torch.cat([x, u[t]])
        total = total + 0.5 * z @ p["C"][t] @ z + p["c"][t] @ z
        x = p["F"][t] @ z + p["f"][t]
        xs.append(x)
    total = total + 0.5 * x @ p["C_final"] @ x + p["c_final"] @ x
    return total, torch.stack(xs)


def _direct_optimum(p: dict[str, Tensor], T: int, a: int) -> Tensor:
    """The optimal controls by solving the whole problem as one QP in ``u`` (it is quadratic)."""
    u0 = torch.zeros(T * a, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda u: _lq_cost(p, u.reshape(T, a))[0], u0)
    grad = torch.func.grad(lambda u: _lq_cost(p, u.reshape(T, a))[0])(u0)
    return torch.linalg.solve(hess, -grad).reshape(T, a)


def test_lqr_with_offsets_and_linear_terms_equals_the_direct_qp_solution() -> None:
    g = torch.Generator().manual_seed(3)
    T, d, a = 6, 3, 2
    p = _lq_problem(g, T, d, a)
    sol = lqr(p["F"], p["f"], p["C"], p["c"], p["C_final"], p["c_final"])
    x, us = p["x0"], []
    for t in range(T):
        u = sol.K[t] @ x + sol.k[t]
        us.append(u)
        x = p["F"][t] @ torch.cat([x, u]) + p["f"][t]
    u_lqr = torch.stack(us)
    u_star = _direct_optimum(p, T, a)
    torch.testing.assert_close(u_lqr, u_star, rtol=1e-9, atol=1e-9)
    # the cost-to-go at x0 differs from the optimal cost only by a constant: check its slope
    x0 = p["x0"].clone().requires_grad_(True)
    opt = lambda x: _lq_cost({**p, "x0": x}, _direct_optimum({**p, "x0": x}, T, a))[0]  # noqa: E731
    (slope,) = torch.autograd.grad(opt(x0), x0)
    torch.testing.assert_close(slope, sol.V[0] @ p["x0"] + sol.v[0], rtol=1e-8, atol=1e-8)


def test_lqr_refuses_a_cost_that_is_not_convex_in_the_controls() -> None:
    T, d, a = 3, 2, 1
    F = torch.cat([torch.eye(d), torch.ones(d, a)], 1).double().expand(T, d, d + a)
    C = torch.zeros(T, d + a, d + a, dtype=torch.float64)
    C[:, :d, :d] = torch.eye(d)
    with pytest.raises(ModelError, match="Q_uu at step 2 is not positive definite"):
        lqr(
            F, torch.zeros(T, d, dtype=torch.float64), C, torch.zeros(T, d + a, dtype=torch.float64)
        )
    bad = C.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="C contains NaN"):
        lqr(
            F,
            torch.zeros(T, d, dtype=torch.float64),
            bad,
            torch.zeros(T, d + a, dtype=torch.float64),
        )
    with pytest.raises(DataError, match="x0 contains NaN"):
        ilqr(
            lambda x, u: x,
            lambda x, u, n: u.sum(-1),
            torch.full((1, 2), float("nan")),
            torch.zeros(3, 1),
        )
    with pytest.raises(ConfigError, match="trailing shape"):
        lqr(
            F,
            torch.zeros(T, d + 1, dtype=torch.float64),
            C,
            torch.zeros(T, d + a, dtype=torch.float64),
        )


class _TimeVaryingLQ:
    """A time-varying LQ problem in iLQR's interface: the time index rides in the state as
    an extra coordinate (``x[..., -1] = t``), so every call knows its step."""

    def __init__(self, p: dict[str, Tensor]) -> None:
        self.p = p
        self.T, self.d = p["F"].shape[0], p["F"].shape[1]

    def _t(self, x: Tensor) -> Tensor:
        return x[..., -1].round().long().clamp(0, self.T - 1)

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        t = self._t(x)
        z = torch.cat([x[..., :-1], u], -1)
        nxt = (self.p["F"][t] @ z.unsqueeze(-1)).squeeze(-1) + self.p["f"][t]
        return torch.cat([nxt, x[..., -1:] + 1], -1)

    def cost(self, x: Tensor, u: Tensor, x_next: Tensor) -> Tensor:
        t = self._t(x)
        z = torch.cat([x[..., :-1], u], -1)
        stage = 0.5 * (z.unsqueeze(-2) @ self.p["C"][t] @ z.unsqueeze(-1)).squeeze((-1, -2))
        return stage + (self.p["c"][t] * z).sum(-1)

    def terminal(self, x: Tensor) -> Tensor:
        s = x[..., :-1]
        quad = 0.5 * (s.unsqueeze(-2) @ self.p["C_final"] @ s.unsqueeze(-1)).squeeze((-1, -2))
        return quad + s @ self.p["c_final"]

    def x0(self, functions: int = 1) -> Tensor:
        start = torch.cat([self.p["x0"], torch.zeros(1, dtype=torch.float64)])
        return start.expand(functions, -1)


def test_ilqr_reaches_the_lqr_optimum_in_one_iteration_on_a_linear_quadratic_problem() -> None:
    g = torch.Generator().manual_seed(4)
    T, d, a = 8, 3, 2
    p = _lq_problem(g, T, d, a)
    problem = _TimeVaryingLQ(p)
    u_star = _direct_optimum(p, T, a)
    best, _ = _lq_cost(p, u_star)
    start = torch.randn(T, a, generator=g, dtype=torch.float64)
    result = ilqr(
        problem.dynamics,
        problem.cost,
        problem.x0(),
        start,
        terminal_cost=problem.terminal,
        max_iterations=1,
        psd_costs=False,
    )
    assert result.iterations == 1 and len(result.costs) == 2
    torch.testing.assert_close(result.actions, u_star, rtol=1e-8, atol=1e-8)
    assert math.isclose(result.cost, float(best), rel_tol=1e-10, abs_tol=1e-10)
    assert result.costs[0] > result.costs[1]


def test_ilqr_over_identical_functions_equals_ilqr_over_one() -> None:
    g = torch.Generator().manual_seed(5)
    p = _lq_problem(g, 5, 2, 1)
    problem = _TimeVaryingLQ(p)
    start = torch.zeros(5, 1, dtype=torch.float64)
    kw = {"terminal_cost": problem.terminal, "max_iterations": 3}
    one = ilqr(problem.dynamics, problem.cost, problem.x0(1), start, **kw)  # type: ignore[arg-type]
    four = ilqr(problem.dynamics, problem.cost, problem.x0(4), start, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(one.actions, four.actions)
    assert math.isclose(one.cost, four.cost, rel_tol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_box_qp_equals_a_bounded_quasi_newton_solution(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 4
    H = _spd(g, n, 0.2)
    grad = torch.randn(n, generator=g, dtype=torch.float64) * 3
    lower = -torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.rand(n, generator=g, dtype=torch.float64)
    x, free, chol = box_qp(H, grad, lower, upper)
    ref = scipy.optimize.minimize(
        lambda y: 0.5 * y @ H.numpy() @ y + grad.numpy() @ y,
        np.zeros(n),
        jac=lambda y: H.numpy() @ y + grad.numpy(),
        bounds=list(zip(lower.tolist(), upper.tolist(), strict=True)),
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    np.testing.assert_allclose(x.numpy(), ref.x, atol=1e-6)
    at_bound = (x <= lower) | (x >= upper)
    assert bool((free | at_bound).all())
    if chol is not None:
        assert chol.shape == (int(free.sum()), int(free.sum()))


def test_ilqr_with_bounded_controls_reaches_the_constrained_optimum() -> None:
    g = torch.Generator().manual_seed(6)
    T, d, a = 6, 2, 1
    p = _lq_problem(g, T, d, a)
    problem = _TimeVaryingLQ(p)
    u_free = _direct_optimum(p, T, a)
    bound = 0.5 * float(u_free.abs().max())  # tight enough to bind somewhere
    low, high = (
        torch.full((a,), -bound, dtype=torch.float64),
        torch.full((a,), bound, dtype=torch.float64),
    )
    result = ilqr(
        problem.dynamics,
        problem.cost,
        problem.x0(),
        torch.zeros(T, a, dtype=torch.float64),
        action_low=low,
        action_high=high,
        terminal_cost=problem.terminal,
        max_iterations=50,
        tolerance=1e-12,
    )
    ref = scipy.optimize.minimize(
        lambda u: float(_lq_cost(p, torch.from_numpy(u).reshape(T, a))[0]),
        np.zeros(T * a),
        bounds=[(-bound, bound)] * (T * a),
        method="L-BFGS-B",
        options={"ftol": 1e-14, "gtol": 1e-10},
    )
    assert bool((result.actions.abs() <= bound + 1e-12).all())
    assert (result.actions.abs() >= bound - 1e-9).any()  # a bound is active
    assert result.cost <= ref.fun + 1e-6 * abs(ref.fun)
    np.testing.assert_allclose(result.actions.reshape(-1).numpy(), ref.x, atol=1e-4)


# ---------------------------------------------------------------- the planner
G_ACC, DT = 10.0, 0.05


def _pendulum_step(obs: Tensor, action: Tensor) -> Tensor:
    th, thdot = torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]
    u = action[..., 0].clamp(-2.0, 2.0)
    new_thdot = (thdot + (3 * G_ACC / 2 * torch.sin(th) + 3.0 * u) * DT).clamp(-8.0, 8.0)
    new_th = th + new_thdot * DT
    return torch.stack([new_th.cos(), new_th.sin(), new_thdot], -1)


class _TrueFunctions(FunctionSample):
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = _pendulum_step(obs, action)
        return Independent(Normal(mean, torch.full_like(mean, 1e-6)), 1)


class _TruePendulum(DynamicsModel):
    """Pendulum-v1's physics as a one-function model."""

    obs_dim, action_dim = 3, 1

    def fit(self, data: ReplayBuffer, generator: torch.Generator | None = None) -> FitReport:
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        return _TrueFunctions(n)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        mean = _pendulum_step(obs, action)
        return Predictive(mean, torch.zeros_like(mean), torch.zeros_like(mean))

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        return _TrueFunctions(num_functions or 1)(obs[None], action[None]).log_prob(next_obs[None])


def test_ilqr_planner_swings_the_true_pendulum_up_from_hanging_down() -> None:
    from bayes_mbrl.envs import get_task

    task = get_task("Pendulum-v1")
    horizon = 30
    evaluator = RolloutEvaluator(
        _TruePendulum(),
        task.reward_fn,
        horizon,
        1,
        propagation="expectation",  # type: ignore[arg-type]
    )
    planner = PLANNERS["ilqr"](task.action_low, task.action_high, horizon, iterations=10)
    assert isinstance(planner, ILQRPlanner)
    obs = torch.tensor([-1.0, 0.0, 0.0])  # hanging down, at rest
    angles = []
    for _ in range(100):
        plan = planner.plan(evaluator.scorer(obs))
        assert plan.iteration_values == sorted(plan.iteration_values)  # never worse
        action = plan.actions[0]
        assert -2.0 <= float(action) <= 2.0
        obs = _pendulum_step(obs, action)
        planner.advance(1)
        angles.append(abs(math.atan2(float(obs[1]), float(obs[0]))))
    assert max(angles) > 3.0  # it started at the bottom
    assert max(angles[-20:]) < 0.05, angles[-20:]  # and holds it upright


def test_ilqr_planner_names_the_fix_for_a_bare_score_function() -> None:
    planner = ILQRPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), 5)
    with pytest.raises(ConfigError, match="RolloutEvaluator"):
        planner.plan(lambda actions: actions.sum((1, 2)))
    with pytest.raises(ConfigError, match="ilqr_dynamics"):
        ILQRPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), 5, dynamics="median")


def test_ilqr_over_an_ensembles_functions_plans_with_the_averaged_backward_pass() -> None:
    from bayes_mbrl.envs import get_task
    from bayes_mbrl.models import MODELS

    task = get_task("Pendulum-v1")
    model = MODELS["ensemble"](3, 1, num_members=3, hidden_sizes=(16,), max_epochs=3)
    g = torch.Generator().manual_seed(0)
    obs_data = torch.randn(64, 3, generator=g)
    act_data = torch.rand(64, 1, generator=g) * 4 - 2
    buf = ReplayBuffer(3, 1, 64)
    zeros = torch.zeros(64)
    buf.add(obs_data, act_data, zeros, _pendulum_step(obs_data, act_data), zeros, zeros)
    model.fit(buf)
    evaluator = RolloutEvaluator(
        model, task.reward_fn, 5, 3, generator=torch.Generator().manual_seed(0)
    )
    obs = torch.tensor([0.0, 1.0, 0.5])
    problem = evaluator.scorer(obs).trajectory_problem("functions")  # type: ignore[attr-defined]
    assert problem.num_functions == 3
    mean_problem = evaluator.trajectory_problem(obs, "mean")
    actions = torch.zeros(2, 5, 1)
    # the mean problem's one function is the members' average, step by step
    x, u = obs.reshape(1, 1, 3), torch.zeros(1, 1, 1)
    each = problem.dynamics(x.expand(3, 1, 3), u.expand(3, 1, 1))
    torch.testing.assert_close(mean_problem.dynamics(x, u), each.mean(0, keepdim=True))
    assert problem_rollout_cost(problem, actions).shape == (2,)
    for mode in ("mean", "functions"):
        planner = ILQRPlanner(task.action_low, task.action_high, 5, iterations=3, dynamics=mode)
        plan = planner.plan(evaluator.scorer(obs))
        assert plan.actions.shape == (5, 1) and math.isfinite(plan.value)
        assert plan.iteration_values[-1] >= plan.iteration_values[0]


def test_a_trajectory_problem_counts_the_terminal_value_discounted() -> None:
    from bayes_mbrl.planning import TrajectoryProblem

    def dynamics(x: Tensor, u: Tensor) -> Tensor:
        return x + u

    problem = TrajectoryProblem(
        start_obs=torch.zeros(1),
        dynamics=dynamics,
        num_functions=1,
        reward_fn=lambda o, a, n: -(a**2).sum(-1),
        discount=0.5,
        terminal_value=lambda s: -((s - 3.0) ** 2).sum(-1),
    )
    actions = torch.ones(2, 4, 1)  # ends at x = 4: value -1, discounted by 0.5**4
    cost = problem_rollout_cost(problem, actions)
    expected = sum(0.5**t for t in range(4)) + 0.5**4 * 1.0
    torch.testing.assert_close(cost, torch.full((2,), expected))
    # iLQR trades the discounted control costs against the terminal value: at its
    # optimum every control satisfies the stationarity condition of this quadratic problem
    result = ilqr(
        dynamics,
        problem.stage_cost,
        torch.zeros(1, 1),
        torch.zeros(4, 1),
        terminal_cost=problem.terminal_cost(),
        discount=0.5,
        max_iterations=3,
    )
    u = result.actions.reshape(-1)
    # stationarity: 2 * 0.5**t * u_t = 2 * 0.5**4 * (3 - sum u)
    residual = 2 * 0.5 ** torch.arange(4.0) * u - 2 * 0.5**4 * (3 - u.sum())
    assert residual.abs().max() < 1e-5
