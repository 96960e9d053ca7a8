"""Returns as functions x noise draws: the law of total variance against closed forms,
TS-1's groups, the information gain, and the objectives' layout requirements."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.models import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.planning import (
    RolloutEvaluator,
    decompose_returns,
    information_gain,
    make_objective,
)
from tests.test_planning import known_two_member_ensemble, state_reward


# ------------------------------------------- s' = theta s + a + sigma eps, theta ~ N(mu, v)
class ScalarGainFunctions(FunctionSample):
    """Function ``f`` is ``s' = theta_f * s + a`` with Gaussian noise ``sigma``."""

    def __init__(self, theta: Tensor, sigma: float) -> None:
        self.theta, self.sigma, self.n = theta, sigma, int(theta.shape[0])

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = self.theta[:, None, None] * obs + action
        return Independent(Normal(mean, torch.full_like(mean, self.sigma), validate_args=False), 1)


class ScalarGainModel(DynamicsModel):
    """A known parameter posterior: ``theta ~ N(mu, v)``, each function one draw of it."""

    obs_dim = action_dim = 1

    def __init__(self, mu: float, v: float, sigma: float) -> None:
        self.mu, self.v, self.sigma = mu, v, sigma

    def fit(
        self, data: ReplayBuffer, generator: torch.Generator | None = None, progress: Any = None
    ) -> FitReport:
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        theta = self.mu + math.sqrt(self.v) * torch.randn(n, generator=generator)
        return ScalarGainFunctions(theta, self.sigma)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        mean = self.mu * obs + action
        return Predictive(mean, self.v * obs.square(), torch.full_like(mean, self.sigma**2))

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        return self.sample_functions(1)(obs[None], action[None]).log_prob(next_obs[None])


MU, V, SIGMA = 0.8, 0.04, 0.3
S0, A1, A2 = 1.5, 0.5, -0.25


def closed_form(propagation: str) -> tuple[float, float, float]:
    """Mean, epistemic and aleatoric variance of ``R = s_1 + s_2`` from ``s_0`` under the
    actions ``a_1, a_2``.

    Given the functions of the two steps ``theta_1, theta_2``:
    ``E[R | theta] = a1 + a2 + theta_1 s0 + theta_2 (theta_1 s0 + a1)`` and
    ``Var[R | theta] = sigma^2 ((1 + theta_2)^2 + 1)``. TS-inf keeps one function,
    ``theta_1 = theta_2``; TS-1 draws them independently.
    """
    m2 = MU**2 + V  # E[theta^2]
    ale = SIGMA**2 * ((1 + MU) ** 2 + V + 1)
    if propagation == "ts_inf":
        # E[R | theta] = c + b theta + s0 theta^2 with b = s0 + a1
        b, c = S0 + A1, A1 + A2
        mean = c + b * MU + S0 * m2
        var_sq = 4 * MU**2 * V + 2 * V**2  # Var(theta^2)
        epi = b**2 * V + S0**2 * var_sq + 2 * b * S0 * 2 * MU * V
        return mean, epi, ale
    # X = theta_1 s0 (1 + theta_2) + theta_2 a1, theta_1, theta_2 independent
    ex = MU * S0 * (1 + MU) + MU * A1
    ex2 = S0**2 * m2 * ((1 + MU) ** 2 + V) + 2 * S0 * A1 * MU * (MU + m2) + A1**2 * m2
    return A1 + A2 + ex, ex2 - ex**2, ale


@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1"])
def test_return_decomposition_matches_the_closed_form(propagation: str) -> None:
    """F = 4000 functions x K = 25 noise draws. With finite K the estimator's expectation
    is known too: the aleatoric part is ``(K - 1) / K`` of the true one (population
    variance of K draws), and the spread of K-draw means adds ``aleatoric / K`` to the
    epistemic part."""
    f, k = 4000, 25
    ev = RolloutEvaluator(
        ScalarGainModel(MU, V, SIGMA), state_reward, 2, particles=f * k, functions=f,
        propagation=propagation, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert ev.layout() == (f, k)
    actions = torch.tensor([[[A1], [A2]]])
    split = ev.decompose(torch.tensor([S0]), actions)
    mean, epi, ale = closed_form(propagation)
    assert float(split.mean[0]) == pytest.approx(mean, rel=0.01)
    assert float(split.aleatoric[0]) == pytest.approx(ale * (k - 1) / k, rel=0.02)
    assert float(split.epistemic[0]) == pytest.approx(epi + ale / k, rel=0.08)
    # the two propagations' closed forms differ by more than the tolerance (power)
    other = closed_form("ts_1" if propagation == "ts_inf" else "ts_inf")
    assert abs(other[1] - epi) > 0.3 * epi


def test_ts_1_groups_share_their_functions_and_differ_only_by_the_noise() -> None:
    """Two noiseless functions s' = s + 1 and s' = s - 1: the 4 particles of a group
    follow the same function at every step, so their returns are equal (no aleatoric
    spread), while the groups' returns differ (the functions switch at random)."""
    model = known_two_member_ensemble()
    g = torch.Generator().manual_seed(0)
    ev = RolloutEvaluator(model, state_reward, 6, particles=8, functions=2, propagation="ts_1",
                          generator=g)  # fmt: skip
    returns = ev.particle_returns(torch.zeros(1), torch.zeros(40, 6, 1))
    assert returns.shape == (40, 2, 4)
    split = decompose_returns(returns)
    torch.testing.assert_close(split.aleatoric, torch.zeros(40), atol=1e-6, rtol=0)
    assert bool((split.epistemic > 0.1).all())
    # the two groups of a sequence take opposite functions at each step (stratified)
    torch.testing.assert_close(returns[:, 0], -returns[:, 1], atol=1e-3, rtol=0)
    # switching: not every group kept one function for all 6 steps (sum 21 or -21)
    assert bool((returns[:, 0, 0].abs() < 20.9).any())


def test_information_gain_closed_form_and_in_the_returns() -> None:
    """Functions s' = s + theta_f a, theta_f = +-1, noise sigma: the functions disagree by
    ``Var_f(theta_f a) = a^2``, so ``I = 1/2 log(1 + a^2 / sigma^2)`` per step."""
    sigma = 0.5
    fs = ScalarGainFunctions(torch.tensor([1.0, -1.0]), sigma)

    class Disagree(FunctionSample):
        n = 2

        def __init__(self, scale: float = 1.0) -> None:
            self.sigma = sigma * scale

        def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
            mean = obs + torch.tensor([1.0, -1.0])[:, None, None] * action
            return Independent(Normal(mean, torch.full_like(mean, self.sigma)), 1)

    a = torch.tensor([[0.0], [0.5], [2.0]])
    got = information_gain(Disagree(), torch.zeros(3, 1), a)
    torch.testing.assert_close(got, 0.5 * torch.log1p(a[:, 0] ** 2 / sigma**2))
    # the mutual information does not depend on the units: the same system in units
    # 1000 times smaller (MountainCar's velocities are ~1e-3 per step) gains as much
    moved = information_gain(Disagree(1e-3), torch.zeros(3, 1), a * 1e-3)
    torch.testing.assert_close(moved, 0.5 * torch.log1p(a[:, 0] ** 2 / sigma**2))
    # functions that agree give no information, whatever the noise
    assert float(information_gain(fs, torch.zeros(1, 1), torch.zeros(1, 1))) == pytest.approx(0)

    class DisagreeModel(ScalarGainModel):
        num_functions_hint = 2

        def sample_functions(self, n: int, generator: Any = None) -> FunctionSample:
            return Disagree()

    beta, horizon = 2.0, 3
    ev = RolloutEvaluator(
        DisagreeModel(0.0, 0.0, sigma), lambda o, a, n: torch.zeros(n.shape[:-1]), horizon,
        particles=4, objective=make_objective("info_gain", beta=beta), discount=0.9,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    actions = torch.tensor([0.0, 1.0, 2.0])[:, None, None].expand(3, horizon, 1)
    per_step = 0.5 * torch.log1p(actions[:, 0, 0] ** 2 / sigma**2)
    expected = beta * per_step * sum(0.9**t for t in range(horizon))
    torch.testing.assert_close(ev(torch.zeros(1), actions), expected)
    # the bonus steers towards the actions the functions disagree on; the task's returns
    # (decompose) do not include it
    assert int(ev(torch.zeros(1), actions).argmax()) == 2
    torch.testing.assert_close(ev.decompose(torch.zeros(1), actions).mean, torch.zeros(3))


def test_the_evaluator_refuses_layouts_an_objective_cannot_use() -> None:
    model = known_two_member_ensemble()
    # 2 members x 1 draw: CVaR over the noise has nothing to average
    with pytest.raises(ConfigError, match=r"needs at least 2 noise draws.*particles = 8"):
        RolloutEvaluator(model, state_reward, 3, particles=2, objective=make_objective("cvar"))
    ev = RolloutEvaluator(model, state_reward, 3, particles=8, objective=make_objective("cvar"))
    assert ev.layout() == (2, 4)
    with pytest.raises(ConfigError, match="at least 2 posterior functions"):
        RolloutEvaluator(
            model, state_reward, 3, propagation="expectation",
            objective=make_objective("info_gain"),
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"planner.functions = 3 must divide.*particles = 8"):
        RolloutEvaluator(model, state_reward, 3, particles=8, functions=3)
    with pytest.raises(ConfigError, match="functions must be >= 0"):
        RolloutEvaluator(model, state_reward, 3, particles=8, functions=-1)
