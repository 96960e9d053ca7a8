"""Model-based policy gradients: both estimators against the analytic gradient on a
linear-Gaussian system with a linear Gaussian policy and a quadratic reward, and the
mode in the runner.

For s' = A s + B a + sigma eps, a = K s + k + sigma_pi xi, the state's mean and
covariance propagate in closed form, so the expected discounted return J(K, k,
log sigma_pi) is a differentiable closed form: its autograd gradient is the analytic
policy gradient. The pathwise estimate must match it within Monte Carlo error, the
likelihood-ratio one too (with a larger error); without the baseline the
likelihood-ratio estimate stays unbiased but its spread grows.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from test_planning import A, B, LinearGaussianModel, Q
from tiny_runs import assert_resumes_like_uninterrupted
from torch import Tensor

from bayes_mbrl.algorithms.mbpg import (
    MBPGLearner,
    MBPGOptions,
    SquashedGaussianPolicy,
    likelihood_ratio_surrogate,
    pathwise_returns,
    reward_to_go,
)
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import TaskSpec
from bayes_mbrl.errors import DataError
from bayes_mbrl.planning.imagine import ImaginedTransitions

SIGMA, HORIZON, GAMMA = 0.1, 5, 0.95
S0 = torch.tensor([1.0, -0.5])


def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return -((next_obs @ Q) * next_obs).sum(-1) - 0.1 * action.square().sum(-1)


def analytic_return(
    k_gain: Tensor, k_off: Tensor, log_std: Tensor, s0: Tensor = S0, horizon: int = HORIZON
) -> Tensor:
    """J = sum_t gamma^t E[r_t] from ``s0`` by moment propagation (float64)."""
    a, b, q = A.double(), B.double(), Q.double()
    m, cov = s0.double(), torch.zeros(2, 2, dtype=torch.float64)
    var_pi = torch.exp(2 * log_std)
    total = torch.zeros((), dtype=torch.float64)
    for t in range(horizon):
        mu_a = k_gain @ m + k_off
        cov_a = k_gain @ cov @ k_gain.T + var_pi * torch.eye(1, dtype=torch.float64)
        closed = a + b @ k_gain
        m = a @ m + b @ mu_a
        cov = (
            closed @ cov @ closed.T
            + var_pi * b @ b.T
            + SIGMA**2 * torch.eye(2, dtype=torch.float64)
        )
        expected = -(m @ q @ m + torch.trace(q @ cov)) - 0.1 * (mu_a @ mu_a + torch.trace(cov_a))
        total = total + GAMMA**t * expected
    return total


def linear_policy() -> SquashedGaussianPolicy:
    policy = SquashedGaussianPolicy(2, torch.tensor([-5.0]), torch.tensor([5.0]), [], squash=False)
    with torch.no_grad():
        policy.layers[0].weight.copy_(torch.tensor([[-0.3, -0.6]]))
        policy.layers[0].bias.fill_(0.2)
        policy.log_std.fill_(-1.0)
    return policy


def analytic_gradient(policy: SquashedGaussianPolicy) -> Tensor:
    layer = policy.layers[0]
    params = [
        layer.weight.detach().double().clone().requires_grad_(),
        layer.bias.detach().double().clone().requires_grad_(),
        policy.log_std.detach().double().clone().requires_grad_(),
    ]
    analytic_return(params[0], params[1], params[2][0]).backward()
    return torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]


def _flat_grad(policy: SquashedGaussianPolicy) -> Tensor:
    layer = policy.layers[0]
    grads = [layer.weight.grad, layer.bias.grad, policy.log_std.grad]
    return torch.cat([g.flatten() for g in grads if g is not None]).double()


def estimates(estimator: str, batches: int, per_batch: int, baseline: bool = True) -> Tensor:
    """``(batches, 4)`` independent gradient estimates of J."""
    model = LinearGaussianModel(A, B, SIGMA)
    policy = linear_policy()
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batches):
        policy.zero_grad()
        starts = S0.expand(per_batch, 2).contiguous()
        if estimator == "pathwise":
            returns = pathwise_returns(
                model, policy, starts, HORIZON, reward, discount=GAMMA, generator=g
            )
            returns.mean().backward()
        else:
            surrogate, _ = likelihood_ratio_surrogate(
                model, policy, starts, HORIZON, reward, discount=GAMMA, generator=g,
                baseline=baseline,
            )  # fmt: skip
            surrogate.mean().backward()
        out.append(_flat_grad(policy))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("estimator", "per_batch"), [("pathwise", 2000), ("likelihood_ratio", 20000)]
)
def test_gradient_estimators_match_the_analytic_gradient(estimator: str, per_batch: int) -> None:
    exact = analytic_gradient(linear_policy())
    est = estimates(estimator, 10, per_batch)
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert bool(((mean - exact).abs() < 4 * se + 1e-3 * exact.abs()).all()), (mean, exact, se)
    # and the estimate is informative: its error is small against the gradient itself
    assert float((mean - exact).norm()) < 0.1 * float(exact.norm())


def test_the_baseline_lowers_the_likelihood_ratio_variance() -> None:
    with_baseline = estimates("likelihood_ratio", 8, 2000).var(0).sum()
    without = estimates("likelihood_ratio", 8, 2000, baseline=False).var(0).sum()
    assert float(without) > 3 * float(with_baseline)


def test_reward_to_go_discounts_and_stops_at_termination() -> None:
    rewards = torch.tensor([[1.0], [2.0], [4.0]])
    alive = torch.tensor([[True], [True], [False]])
    assert reward_to_go(rewards, alive, 0.5)[:, 0].tolist() == [2.0, 2.0, 0.0]


def test_imagined_lambda_returns_bootstrap_and_stop_at_termination() -> None:
    # two particles, H = 2; particle 1 terminates at its first step
    out = ImaginedTransitions(
        obs=torch.tensor([[[0.0], [0.0]], [[1.0], [1.0]]]),
        action=torch.zeros(2, 2, 1),
        reward=torch.tensor([[1.0, 1.0], [2.0, 2.0]]),
        next_obs=torch.tensor([[[1.0], [1.0]], [[2.0], [2.0]]]),
        done=torch.tensor([[False, True], [False, False]]),
        function_index=torch.zeros(2, dtype=torch.long),
        start_index=torch.arange(2),
        layout=(1, 2, 1),
    )

    def value(states: Tensor) -> Tensor:
        return 10.0 * states[:, 0]  # V(0) = 0, V(1) = 10, V(2) = 20

    got = out.lambda_returns(value, 0.5, 1.0)  # λ = 1: rewards, then the last value
    assert got[:, 0].tolist() == [1 + 0.5 * 2 + 0.25 * 20, 2 + 0.5 * 20]
    assert got[0, 1].item() == 1.0  # terminated: nothing after its reward
    td = out.lambda_returns(value, 0.5, 0.0)  # λ = 0: one-step TD targets
    assert td[:, 0].tolist() == [1 + 0.5 * 10, 2 + 0.5 * 20]
    assert td[0, 1].item() == 1.0
    # with no value at all, λ = 1 reproduces the discounted return
    zero = out.lambda_returns(lambda st: torch.zeros(len(st)), 0.5, 1.0)
    torch.testing.assert_close(zero[0], out.returns(0.5))
    # a value function of the wrong shape, or one that returns NaN, is named
    with pytest.raises(DataError, match="value must map states"):
        out.lambda_returns(lambda st: torch.zeros(len(st), 1), 0.5, 1.0)
    with pytest.raises(DataError, match="NaN or inf"):
        out.lambda_returns(lambda st: torch.full((len(st),), math.nan), 0.5, 1.0)


def test_the_critic_learns_the_value_of_the_policy() -> None:
    """V(s) of a fixed linear policy on the linear-Gaussian system, in closed form (moment
    propagation over 300 steps, γ = 0.95: values -3 to -15 here), against the critic
    learned from H = 5 model rollouts with λ-returns bootstrapped from its target copy;
    a step size of 1e-9 holds the policy still. Without the bootstrap the critic would
    learn the 5-step return (a sixth to a half of the value at these states)."""
    task = TaskSpec("Linear-v0", 2, 1, [-5.0], [5.0], reward_fn=reward)
    g = torch.Generator().manual_seed(0)
    data = ReplayBuffer(2, 1, 400, [-5.0], [5.0])
    for _ in range(400):
        o = 0.7 * torch.randn(2, generator=g)
        data.add(o, [0.0], float(reward(o, torch.zeros(1), o)), o, False, False)
    options = MBPGOptions(
        estimator="likelihood_ratio", horizon=5, rollouts=256, updates=1500, learning_rate=1e-9,
        gamma=GAMMA, critic=True,
    )  # fmt: skip
    policy = linear_policy()
    learner = MBPGLearner(LinearGaussianModel(A, B, SIGMA), policy, task, options, seed=0)
    learner.fit(data)
    assert learner.critic is not None
    # the policy after its input normalization, as a gain on the raw state
    layer = policy.layers[0]
    gain = (layer.weight / policy.obs_std).detach()
    offset = (layer.bias - (gain * policy.obs_mean).sum(-1)).detach()
    states = 0.7 * torch.randn(8, 2, generator=g)
    exact = torch.stack(
        [analytic_return(gain.double(), offset.double(), policy.log_std[0].detach().double(),
                         s, 300) for s in states]
    )  # fmt: skip
    got = learner.critic(states).detach().double()
    # SGD on noisy λ-returns leaves an error of a few percent (about 0.1-0.5 here)
    assert bool(((got - exact).abs() < 0.08 * exact.abs() + 0.2).all()), (got, exact)
    # and the value differs enough across the states for that to mean something
    assert float(exact.max() - exact.min()) > 0.5


def test_policy_squashes_into_the_bounds_and_its_log_prob_is_gaussian() -> None:
    policy = SquashedGaussianPolicy(3, torch.tensor([-2.0]), torch.tensor([2.0]), [8])
    obs = torch.randn(1000, 3)
    action, _ = policy.rsample(obs * 100, torch.Generator().manual_seed(0))
    assert bool((action.abs() <= 2.0).all())
    mu, log_std = policy(obs)
    lp = policy.log_prob(obs, mu + log_std.exp())
    want = torch.distributions.Normal(mu, log_std.exp()).log_prob(mu + log_std.exp()).sum(-1)
    torch.testing.assert_close(lp, want)


MBPG_TINY = [
    "experiment.mode=mbpg",
    "experiment.episodes=3",
    "experiment.progress=false",
    "experiment.threads=1",
    "experiment.eval_episodes=2",
    "env.episode_length=20",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "mbpg.horizon=5",
    "mbpg.rollouts=20",
    "mbpg.updates=3",
    "mbpg.hidden_sizes=[8]",
]


@pytest.mark.parametrize(
    ("estimator", "critic"),
    [("pathwise", "false"), ("likelihood_ratio", "false"), ("pathwise", "true"),
     ("likelihood_ratio", "true")],
)  # fmt: skip
def test_mbpg_run_resumes_like_the_uninterrupted_one(
    estimator: str, critic: str, tmp_path: Path
) -> None:
    overrides = [*MBPG_TINY, f"mbpg.estimator={estimator}", f"mbpg.critic={critic}"]
    config = load_config(None, overrides, seed=0)
    ref = assert_resumes_like_uninterrupted(config, tmp_path)
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    assert [r["eval_at_steps"] for r in rows] == ["", "20", "40"]
