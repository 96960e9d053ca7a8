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
    SquashedGaussianPolicy,
    likelihood_ratio_surrogate,
    pathwise_returns,
    reward_to_go,
)
from bayes_mbrl.config import load_config

SIGMA, HORIZON, GAMMA = 0.1, 5, 0.95
S0 = torch.tensor([1.0, -0.5])


def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return -((next_obs @ Q) * next_obs).sum(-1) - 0.1 * action.square().sum(-1)


def analytic_return(k_gain: Tensor, k_off: Tensor, log_std: Tensor) -> Tensor:
    """J = sum_t gamma^t E[r_t] by moment propagation (float64)."""
    a, b, q = A.double(), B.double(), Q.double()
    m, cov = S0.double(), torch.zeros(2, 2, dtype=torch.float64)
    var_pi = torch.exp(2 * log_std)
    total = torch.zeros((), dtype=torch.float64)
    for t in range(HORIZON):
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


@pytest.mark.parametrize("estimator", ["pathwise", "likelihood_ratio"])
def test_mbpg_run_resumes_like_the_uninterrupted_one(estimator: str, tmp_path: Path) -> None:
    config = load_config(None, [*MBPG_TINY, f"mbpg.estimator={estimator}"], seed=0)
    ref = assert_resumes_like_uninterrupted(config, tmp_path)
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    assert [r["eval_at_steps"] for r in rows] == ["", "20", "40"]
