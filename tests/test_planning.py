"""Rollout evaluator, objectives and planners against closed forms and known functions."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models import (
    DynamicsModel,
    FitReport,
    FunctionSample,
    Predictive,
    ProbabilisticEnsemble,
)
from bayes_mbrl.planning import (
    OBJECTIVES,
    PLANNERS,
    PROPAGATIONS,
    CEMPlanner,
    CVaR,
    ICEMPlanner,
    InformationGain,
    Mean,
    MeanMinusStd,
    MPPIPlanner,
    Optimistic,
    Pessimistic,
    RandomShootingPlanner,
    RolloutEvaluator,
    WorstFunction,
    decompose_returns,
    make_objective,
)


# --------------------------------------------------------------------------- a linear model
class LinearFunctions(FunctionSample):
    """s' = A s + B a + sigma * eps, the same for every function."""

    def __init__(self, n: int, a: Tensor, b: Tensor, sigma: float) -> None:
        self.n, self.a, self.b, self.sigma = n, a, b, sigma

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = obs @ self.a.T + action @ self.b.T
        return Independent(Normal(mean, torch.full_like(mean, self.sigma), validate_args=False), 1)


class LinearGaussianModel(DynamicsModel):
    """A user-written model implementing the protocol by hand."""

    def __init__(self, a: Tensor, b: Tensor, sigma: float) -> None:
        self.a, self.b, self.sigma = a, b, sigma
        self.obs_dim, self.action_dim = a.shape[0], b.shape[1]

    def fit(
        self, data: ReplayBuffer, generator: torch.Generator | None = None, progress: Any = None
    ) -> FitReport:
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        return LinearFunctions(n, self.a, self.b, self.sigma)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        mean = obs @ self.a.T + action @ self.b.T
        return Predictive(mean, torch.zeros_like(mean), torch.full_like(mean, self.sigma**2))

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        return self.sample_functions(1)(obs[None], action[None]).log_prob(next_obs[None])


A = torch.tensor([[1.0, 0.1], [-0.2, 0.9]])
B = torch.tensor([[0.0], [0.5]])
Q = torch.tensor([[1.0, 0.2], [0.2, 0.5]])


def quadratic_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return -((next_obs @ Q) * next_obs).sum(-1) - 0.1 * action.square().sum(-1)


def closed_form_return(s0: Tensor, actions: Tensor, sigma: float) -> Tensor:
    """E[sum_t r_t] with m_{t+1} = A m_t + B a_t, S_{t+1} = A S_t A^T + sigma^2 I (float64)."""
    a64, b64, q64 = A.double(), B.double(), Q.double()
    out = []
    for seq in actions.double():
        m, cov, total = s0.double(), torch.zeros(2, 2, dtype=torch.float64), 0.0
        for u in seq:
            m = a64 @ m + b64 @ u
            cov = a64 @ cov @ a64.T + sigma**2 * torch.eye(2, dtype=torch.float64)
            total += -(m @ q64 @ m + torch.trace(q64 @ cov)) - 0.1 * float(u @ u)
        out.append(total)
    return torch.tensor(out)


def test_evaluator_matches_closed_form_on_deterministic_linear_system() -> None:
    g = torch.Generator().manual_seed(0)
    model = LinearGaussianModel(A, B, sigma=0.0)
    actions = torch.randn(6, 10, 1, generator=g)
    s0 = torch.tensor([1.0, -0.5])
    for propagation in ("ts_inf", "ts_1", "expectation"):
        ev = RolloutEvaluator(
            model, quadratic_reward, horizon=10, particles=4, propagation=propagation, generator=g
        )
        returns = ev.particle_returns(s0, actions).flatten(1)
        expected = closed_form_return(s0, actions, 0.0).float()
        torch.testing.assert_close(
            returns, expected[:, None].expand_as(returns), rtol=1e-5, atol=1e-4
        )


def test_evaluator_mean_matches_closed_form_expected_return_with_noise() -> None:
    g = torch.Generator().manual_seed(1)
    sigma = 0.3
    model = LinearGaussianModel(A, B, sigma=sigma)
    actions = torch.randn(3, 8, 1, generator=g)
    s0 = torch.tensor([0.5, 0.5])
    ev = RolloutEvaluator(model, quadratic_reward, horizon=8, particles=20000, generator=g)
    returns = ev.particle_returns(s0, actions).flatten(1)
    expected = closed_form_return(s0, actions, sigma).float()
    stderr = returns.std(1) / math.sqrt(returns.shape[1])
    assert bool(((returns.mean(1) - expected).abs() < 4 * stderr).all()), (
        returns.mean(1),
        expected,
    )
    # without noise in the model, the noisy closed form is not matched (the test has power)
    assert bool(
        (
            (closed_form_return(s0, actions, 0.0) - expected.double()).abs() > 10 * stderr.double()
        ).all()
    )


def test_discount_and_termination_mask_rewards() -> None:
    model = LinearGaussianModel(torch.eye(1), torch.ones(1, 1), sigma=0.0)

    def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return torch.ones(next_obs.shape[:-1])

    def terminated(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[..., 0] >= 2.5

    actions = torch.ones(2, 6, 1)
    actions[1] = 0.0  # never reaches the threshold
    ev = RolloutEvaluator(model, reward, 6, particles=2, termination_fn=terminated, discount=0.5)
    returns = ev.particle_returns(torch.zeros(1), actions).flatten(1)
    # sequence 0 terminates on its 3rd step: 1 + 0.5 + 0.25 counted, later rewards dropped
    torch.testing.assert_close(returns[0], torch.full((2,), 1.75))
    torch.testing.assert_close(returns[1], torch.full((2,), sum(0.5**t for t in range(6))))


def test_terminal_value_adds_the_discounted_value_of_the_last_state() -> None:
    """s' = s + a, reward 1 per step, V(s) = 10 s: the return is
    sum_t gamma^t + gamma^H * 10 * s_H, and a particle that terminated adds no value."""
    model = LinearGaussianModel(torch.eye(1), torch.ones(1, 1), sigma=0.0)

    def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return torch.ones(next_obs.shape[:-1])

    def terminated(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[..., 0] <= -1.5

    def value(states: Tensor) -> Tensor:
        return 10.0 * states[..., 0]

    actions = torch.stack([torch.full((4, 1), 0.5), torch.full((4, 1), -1.0)])
    ev = RolloutEvaluator(
        model, reward, 4, particles=2, termination_fn=terminated, discount=0.9,
        terminal_value=value,
    )  # fmt: skip
    returns = ev.particle_returns(torch.zeros(1), actions).flatten(1)
    # sequence 0 ends at s_4 = 2 (never terminates); sequence 1 terminates on step 2
    torch.testing.assert_close(returns[0], torch.full((2,), 1 + 0.9 + 0.81 + 0.729 + 0.9**4 * 20))
    torch.testing.assert_close(returns[1], torch.full((2,), 1.9))
    # without the value the first sequence scores its rewards only
    plain = RolloutEvaluator(model, reward, 4, particles=2, discount=0.9)
    assert float(plain.particle_returns(torch.zeros(1), actions)[0, 0, 0]) == pytest.approx(3.439)
    # a value of the wrong shape, or NaN, is a clear error; moment matching refuses it
    with pytest.raises(DataError, match="terminal_value must map"):
        RolloutEvaluator(
            model, reward, 2, particles=2, terminal_value=lambda s: s
        ).particle_returns(torch.zeros(1), actions[:, :2])
    with pytest.raises(DataError, match="NaN"):
        RolloutEvaluator(
            model, reward, 2, particles=2, terminal_value=lambda s: s[..., 0] * math.nan
        ).particle_returns(torch.zeros(1), actions[:, :2])
    with pytest.raises(ConfigError, match="particle propagation"):
        RolloutEvaluator(model, reward, 2, propagation="moment_matching", terminal_value=value)


# ------------------------------------------------ a two-member ensemble of known functions
def known_two_member_ensemble() -> ProbabilisticEnsemble:
    """Member 0: s' = s + 1, member 1: s' = s - 1 (noise std ~3e-7)."""
    model = ProbabilisticEnsemble(1, 1, num_members=2, hidden_sizes=[4], seed=0)
    with torch.no_grad():
        for w in model.net.weights:
            w.zero_()
        for b in model.net.biases:
            b.zero_()
        model.net.biases[-1][0, 0, 0] = 1.0
        model.net.biases[-1][1, 0, 0] = -1.0
        model.net.biases[-1][:, 0, 1] = -30.0
        model.net.min_logvar.fill_(-40.0)
    model.fitted = True
    return model


def state_reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs[..., 0]


def test_ts_inf_keeps_one_function_per_particle_and_ts_1_does_not() -> None:
    model = known_two_member_ensemble()
    horizon, particles = 6, 20
    actions = torch.zeros(50, horizon, 1)
    total = horizon * (horizon + 1) / 2  # sum of t for t = 1..H
    g = torch.Generator().manual_seed(0)
    ts_inf = RolloutEvaluator(model, state_reward, horizon, particles, "ts_inf", generator=g)
    r_inf = ts_inf.particle_returns(torch.zeros(1), actions)
    assert r_inf.shape == (50, 2, particles // 2)
    r_inf = r_inf.flatten(1)
    torch.testing.assert_close(r_inf.abs(), torch.full_like(r_inf, total), atol=1e-3, rtol=0)
    # stratified: half the particles of every sequence on each member
    assert bool(((r_inf > 0).sum(1) == particles // 2).all())
    ts_1 = RolloutEvaluator(model, state_reward, horizon, particles, "ts_1", generator=g)
    r_1 = ts_1.particle_returns(torch.zeros(1), actions).flatten(1)
    switched = (r_1.abs() - total).abs() > 1e-2
    assert switched.float().mean() > 0.9  # almost every particle switched functions at some step
    # every step is still stratified over the whole population: returns average to ~0
    assert abs(float(r_1.mean())) < 0.3
    expectation = RolloutEvaluator(model, state_reward, horizon, particles, "expectation")
    r_mean = expectation.particle_returns(torch.zeros(1), actions)
    torch.testing.assert_close(r_mean, torch.zeros(50, 1, 1), atol=1e-3, rtol=0)


def test_evaluator_rejects_bad_shapes_and_options() -> None:
    model = known_two_member_ensemble()
    ev = RolloutEvaluator(model, state_reward, horizon=4, particles=2)
    with pytest.raises(DataError, match="population, 4, 1"):
        ev(torch.zeros(1), torch.zeros(3, 5, 1))
    with pytest.raises(DataError, match="start_obs"):
        ev(torch.zeros(2), torch.zeros(3, 4, 1))
    with pytest.raises(ConfigError, match="ts_inf"):
        RolloutEvaluator(model, state_reward, horizon=4, propagation="ts_infinity")
    with pytest.raises(ConfigError, match="precision"):
        RolloutEvaluator(model, state_reward, horizon=4, precision="float16")


# ------------------------------------------------------------------------------ objectives
def test_objectives_closed_forms() -> None:
    """Two sequences, 2 functions x 4 noise draws: sequence 0 is certain about the model
    (both functions agree on the mean 2.5) but noisy; sequence 1 knows the noise (none)
    but not the model (function means 0 and 5)."""
    r = torch.tensor(
        [[[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]], [[0.0, 0.0, 0.0, 0.0], [5.0] * 4]]
    )
    split = decompose_returns(r)
    torch.testing.assert_close(split.mean, torch.tensor([2.5, 2.5]))
    torch.testing.assert_close(split.epistemic, torch.tensor([0.0, 6.25]))
    torch.testing.assert_close(split.aleatoric, torch.tensor([1.25, 0.0]))
    torch.testing.assert_close(split.total, r.flatten(1).var(1, unbiased=False))
    torch.testing.assert_close(Mean()(r), torch.tensor([2.5, 2.5]))
    std = r.flatten(1).std(1, unbiased=False)
    torch.testing.assert_close(MeanMinusStd(2.0)(r), 2.5 - 2 * std)
    torch.testing.assert_close(Pessimistic(2.0)(r), torch.tensor([2.5, 2.5 - 2 * 2.5]))
    torch.testing.assert_close(Optimistic(1.0)(r), torch.tensor([2.5, 5.0]))
    torch.testing.assert_close(WorstFunction()(r), torch.tensor([2.5, 0.0]))
    # CVaR over the noise, per function: the worst half of {1, 2, 3, 4} is 1.5 for both
    # functions of sequence 0; sequence 1 has no noise, so its CVaR is its mean
    torch.testing.assert_close(CVaR(0.5)(r), torch.tensor([1.5, 2.5]))
    torch.testing.assert_close(CVaR(1.0)(r), Mean()(r))
    # each prefers what it is named after: pessimism over the model picks the sequence
    # the functions agree on, risk aversion over the noise the noiseless one
    assert Pessimistic(1.0)(r).argmax() == 0 and WorstFunction()(r).argmax() == 0
    assert CVaR(0.25)(r).argmax() == 1 and Optimistic(1.0)(r).argmax() == 1
    assert InformationGain(3.0).information_weight == 3.0
    torch.testing.assert_close(InformationGain(3.0)(r), Mean()(r))
    with pytest.raises(DataError, match="population, functions, noise draws"):
        Mean()(r.flatten(1))
    with pytest.raises(ConfigError, match="cvar"):
        make_objective("cvar", alpha=0.0)
    with pytest.raises(ConfigError, match="unknown objective"):
        make_objective("median")


def test_a_registered_objective_is_built_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tuple(OBJECTIVES) == (
        "mean", "mean_minus_std", "pessimistic", "worst_function", "cvar", "optimistic",
        "info_gain",
    )  # fmt: skip
    assert isinstance(make_objective("cvar", alpha=0.5), CVaR)
    assert make_objective("optimistic", beta=2.0) == Optimistic(2.0)
    monkeypatch.setattr(OBJECTIVES, "_entries", dict(OBJECTIVES._entries))

    @OBJECTIVES.register("median")
    class Median:
        """The median over particles."""

        def __call__(self, returns: Tensor) -> Tensor:
            return returns.flatten(1).median(-1).values

    r = torch.tensor([[[1.0, 5.0, 2.0]], [[0.0, -1.0, 9.0]]])
    torch.testing.assert_close(make_objective("median")(r), torch.tensor([2.0, 0.0]))
    assert "median: The median over particles." in OBJECTIVES.help()
    model = known_two_member_ensemble()
    ev = RolloutEvaluator(
        model, state_reward, 2, particles=4, objective=make_objective("median"),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    # particle returns 1 + 2 or -(1 + 2), two of each: torch's (lower) median is -3, the mean 0
    torch.testing.assert_close(
        ev(torch.zeros(1), torch.zeros(3, 2, 1)), torch.full((3,), -3.0), atol=1e-3, rtol=0
    )


# -------------------------------------------------------------------------------- planners
def quadratic_score(target: Tensor):  # type: ignore[no-untyped-def]
    def score(actions: Tensor) -> Tensor:
        return -(actions - target).square().sum((-2, -1))

    return score


@pytest.mark.parametrize("kind", ["cem", "mppi", "random_shooting"])
def test_planners_find_the_optimum_of_a_known_quadratic(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    horizon = 5
    low, high = torch.tensor([-2.0, -1.0]), torch.tensor([2.0, 1.0])
    target = torch.stack(
        [torch.linspace(-1.5, 1.5, horizon), torch.linspace(0.8, -0.8, horizon)], -1
    )
    if kind == "cem":
        planner = CEMPlanner(low, high, horizon, population=400, iterations=15, generator=g)
        tol = 0.02
    elif kind == "mppi":
        planner = MPPIPlanner(
            low, high, horizon, population=400, iterations=60, temperature=0.5,
            noise_std=0.15, smoothing=1.0, generator=g,
        )  # fmt: skip
        tol = 0.1
    else:
        planner = RandomShootingPlanner(low, high, 1, population=4000, iterations=2, generator=g)
        target = target[:1]
        tol = 0.15
    result = planner.plan(quadratic_score(target))
    assert result.actions.shape == target.shape
    torch.testing.assert_close(result.actions, target, atol=tol, rtol=0)
    assert bool(((result.actions >= low) & (result.actions <= high)).all())


def test_planners_are_built_by_name_from_the_planner_settings() -> None:
    """``PLANNERS[kind].from_config`` reads the ``[planner]`` settings it needs: the plan
    equals that of the planner built by hand with the same seed."""
    from types import SimpleNamespace

    assert tuple(PLANNERS)[:4] == ("cem", "icem", "mppi", "random_shooting") and "ilqr" in PLANNERS
    assert tuple(PROPAGATIONS) == ("ts_inf", "ts_1", "expectation", "moment_matching")
    cfg = SimpleNamespace(
        horizon=4, population=30, iterations=3, elite_fraction=0.2, momentum=0.3,
        mppi_temperature=0.7, mppi_noise_std=0.2,
        icem_noise_beta=1.5, icem_population_decay=1.5, icem_keep_fraction=0.5,
        ilqr_dynamics="functions", ilqr_restarts=2,
    )  # fmt: skip
    low, high = -torch.ones(2), torch.ones(2)
    by_hand = {
        "cem": lambda g: CEMPlanner(low, high, 4, 30, 3, 0.2, 0.3, generator=g),
        "mppi": lambda g: MPPIPlanner(
            low, high, 4, 30, 3, temperature=0.7, noise_std=0.2, generator=g
        ),
        "random_shooting": lambda g: RandomShootingPlanner(low, high, 4, 30, 3, g),
        "icem": lambda g: ICEMPlanner(
            low,
            high,
            4,
            30,
            3,
            0.2,
            0.3,
            noise_beta=1.5,
            population_decay=1.5,
            keep_fraction=0.5,
            generator=g,
        ),
    }
    target = torch.full((4, 2), 0.3)
    ilqr = PLANNERS["ilqr"].from_config(cfg, low, high)  # it plans through an evaluator
    assert (ilqr.iterations, ilqr.dynamics, ilqr.restarts) == (3, "functions", 2)
    for kind in by_hand:
        planner = PLANNERS[kind].from_config(cfg, low, high, torch.Generator().manual_seed(0))
        assert type(planner) is type(by_hand[kind](None))
        assert (planner.horizon, planner.population) == (4, 30)
        plan = planner.plan(quadratic_score(target))
        expected = by_hand[kind](torch.Generator().manual_seed(0)).plan(quadratic_score(target))
        assert torch.equal(plan.actions, expected.actions)
    cem = PLANNERS["cem"].from_config(cfg, low, high)
    assert isinstance(cem, CEMPlanner) and cem.num_elites == 6 and cem.momentum == 0.3
    with pytest.raises(ConfigError, match=r"unknown planner\.kind 'cme'.*did you mean 'cem'"):
        PLANNERS["cme"]


def test_cem_respects_bounds_when_optimum_is_outside() -> None:
    planner = CEMPlanner(
        torch.tensor([-1.0]), torch.tensor([1.0]), 4, population=200, iterations=10,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    result = planner.plan(quadratic_score(torch.full((4, 1), 5.0)))
    torch.testing.assert_close(result.actions, torch.ones(4, 1), atol=0.02, rtol=0)


def test_warm_start_shifts_by_executed_steps() -> None:
    planner = CEMPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), 4, population=10, iterations=1)
    planner._warm = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    planner.advance(1)
    torch.testing.assert_close(planner.initial_mean(), torch.tensor([[0.2], [0.3], [0.4], [0.0]]))
    planner.reset()
    torch.testing.assert_close(planner.initial_mean(), torch.zeros(4, 1))


def test_planner_validation() -> None:
    with pytest.raises(ConfigError, match="finite action bounds"):
        CEMPlanner(torch.tensor([-math.inf]), torch.tensor([1.0]), 4)
    with pytest.raises(ConfigError, match="elite_fraction"):
        CEMPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), 4, elite_fraction=0.0)
    planner = CEMPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), 4, population=8)
    with pytest.raises(DataError, match="score function returned shape"):
        planner.plan(lambda a: torch.zeros(3))


class _RandomGainFunctions(FunctionSample):
    """s' = s + g_i a with a gain g_i per function, no noise."""

    def __init__(self, gains: Tensor) -> None:
        self.gains, self.n = gains, int(gains.shape[0])

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = obs + self.gains[:, None, None] * action
        return Independent(Normal(mean, torch.full_like(mean, 1e-6), validate_args=False), 1)


class _RandomGainModel(LinearGaussianModel):
    """Continuous posterior over the gain: every draw is new (like BNN weights)."""

    def __init__(self) -> None:
        super().__init__(torch.eye(1), torch.ones(1, 1), 1e-6)
        self.draws = 0

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        self.draws += 1
        return _RandomGainFunctions(1.0 + torch.randn(n, generator=generator))


def test_scorer_draws_functions_once_per_planning_call() -> None:
    """Common random numbers: every evaluation of one planning call sees the same
    posterior draws, so equal action sequences get equal scores across iterations,
    while separate calls (separate planning steps) draw anew."""
    model = _RandomGainModel()
    gen = torch.Generator().manual_seed(0)
    ev = RolloutEvaluator(model, state_reward, horizon=3, particles=4, generator=gen)
    score = ev.scorer(torch.zeros(1))
    actions = torch.rand(6, 3, 1, generator=gen)
    first, second = score(actions), score(actions)
    # (equal up to the 1e-6 aleatoric noise, which is drawn anew as it should be)
    assert model.draws == 1 and torch.allclose(first, second, atol=1e-4)
    planner = CEMPlanner(-torch.ones(1), torch.ones(1), horizon=3, population=16,
                         iterations=4, generator=gen)  # fmt: skip
    planner.plan(ev.scorer(torch.zeros(1)))
    assert model.draws == 2  # one draw for the whole 4-iteration plan
    # a new call draws new functions; the plain call draws per evaluation
    assert (ev.scorer(torch.zeros(1))(actions) - first).abs().max() > 0.01
    assert (ev(torch.zeros(1), actions) - ev(torch.zeros(1), actions)).abs().max() > 0.01


# ---------------------------------------------------------------------- the action chunk
@pytest.mark.parametrize(
    ("mode", "chunk", "plans_at"),
    [("mpc", None, list(range(12))), ("mpc", 5, [0, 5, 10]), ("v1.0", None, [0, 6])],
)
def test_mpc_agent_executes_chunks_of_its_plans(
    mode: str, chunk: int | None, plans_at: list[int]
) -> None:
    """``replan_every = k``: the first ``k`` actions of each plan are executed in order,
    then the planner replans with its warm start shifted by ``k`` (mpc: k = 1, v1.0: H)."""
    from bayes_mbrl.algorithms.mpc import MPCAgent

    horizon, low, high = 6, -torch.ones(1), torch.ones(1)
    planner = RandomShootingPlanner(low, high, horizon, 8, 1, torch.Generator().manual_seed(0))
    calls: list[tuple[str, int]] = []
    plan, advance = planner.plan, planner.advance

    def recording_plan(score: Any) -> Any:
        calls.append(("plan", step))
        return plan(score)

    def recording_advance(steps: int = 1) -> None:
        calls.append(("advance", steps))
        advance(steps)

    planner.plan, planner.advance = recording_plan, recording_advance  # type: ignore[method-assign]
    ev = RolloutEvaluator(known_two_member_ensemble(), state_reward, horizon, particles=2)
    agent = MPCAgent(planner, ev, mode, chunk)
    executed = []
    for step in range(12):
        executed.append(agent.act(torch.zeros(1)))
        assert agent.last_plan is not None
        planned_at = max(p for p in plans_at if p <= step)
        assert torch.equal(executed[-1], agent.last_plan.actions[step - planned_at])
    assert [s for what, s in calls if what == "plan"] == plans_at
    k = 1 if chunk is None and mode == "mpc" else chunk or horizon
    assert [s for what, s in calls if what == "advance"] == [k] * (12 // k)
    with pytest.raises(ConfigError, match=r"replan_every = 7 must be between 1 and planner"):
        MPCAgent(planner, ev, "mpc", 7)
