"""The GMM fitted by EM (as a dynamics model and as a prior) and the linear-Gaussian fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models import MODELS, GaussianMixture, GMMDynamics, NIWPrior, check_model
from bayes_mbrl.models.linear_gaussian import fit_linear_gaussian, joint_to_conditional

D64 = torch.float64


def _known_mixture() -> tuple[Tensor, Tensor, Tensor]:
    weights = torch.tensor([0.3, 0.7], dtype=D64)
    means = torch.tensor([[-2.0, 1.0], [3.0, -1.0]], dtype=D64)
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[1.0, -0.3], [-0.3, 0.6]]], dtype=D64)
    return weights, means, covs


def _draw(n: int, seed: int) -> torch.Tensor:
    weights, means, covs = _known_mixture()
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=D64)
    chol = torch.linalg.cholesky(covs)
    return means[labels] + (chol[labels] @ eps.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_em_recovers_a_known_two_component_mixture(init: str) -> None:
    x = _draw(4000, 0)
    gmm = GaussianMixture.fit(x, 2, torch.Generator().manual_seed(1), init=init)
    order = gmm.means[:, 0].argsort()
    weights, means, covs = _known_mixture()
    torch.testing.assert_close(gmm.weights[order], weights, atol=0.02, rtol=0)
    torch.testing.assert_close(gmm.means[order], means, atol=0.06, rtol=0)
    torch.testing.assert_close(gmm.covariances[order], covs, atol=0.08, rtol=0)
    lls = torch.tensor(gmm.log_likelihoods)
    assert bool((lls.diff() >= -1e-9).all()), "EM's log-likelihood must not decrease"
    # the fitted density is the mixture density
    direct = torch.logsumexp(
        MultivariateNormal(gmm.means, gmm.covariances).log_prob(x[:5].unsqueeze(1))
        + gmm.weights.log(),
        -1,
    )
    torch.testing.assert_close(gmm.log_prob(x[:5]), direct)


def test_conditional_gaussian_equals_the_closed_form() -> None:
    weights, _, _ = _known_mixture()
    g = torch.Generator().manual_seed(3)
    means = torch.randn(2, 3, generator=g, dtype=D64)
    L = torch.randn(2, 3, 3, generator=g, dtype=D64)
    covs = L @ L.transpose(-1, -2) + 0.5 * torch.eye(3, dtype=D64)
    gmm = GaussianMixture(weights, means, covs, weights * 100)
    w = torch.randn(4, 2, generator=g, dtype=D64)
    log_resp, cmeans, ccovs = gmm.condition(w, 2)
    for k in range(2):  # the textbook formulas, one component at a time
        S = covs[k]
        inv = torch.linalg.inv(S[:2, :2])
        want_mean = means[k, 2:] + (S[2:, :2] @ inv @ (w - means[k, :2]).T).T
        want_cov = S[2:, 2:] - S[2:, :2] @ inv @ S[:2, 2:]
        torch.testing.assert_close(cmeans[:, k], want_mean)
        torch.testing.assert_close(ccovs[k], want_cov)
    joint = MultivariateNormal(means[:, :2], covs[:, :2, :2]).log_prob(w.unsqueeze(1))
    joint = joint + weights.log()
    torch.testing.assert_close(log_resp, joint - torch.logsumexp(joint, -1, keepdim=True))
    # the dynamics model's function at the fitted means is the same mixture
    model = GMMDynamics(1, 1)
    model.gmm = gmm
    dist = model.mean_functions()(w[:, :1].unsqueeze(0), w[:, 1:].unsqueeze(0))
    want = (log_resp.exp() * cmeans[..., 0]).sum(-1)
    torch.testing.assert_close(dist.mean[0, :, 0], want)


def test_moments_and_inference_follow_the_law_of_total_covariance() -> None:
    weights, means, covs = _known_mixture()
    gmm = GaussianMixture(weights, means, covs, weights * 50)
    mu, cov = gmm.moments(weights.log())
    want_mu = weights @ means
    diff = means - want_mu
    want_cov = (weights[:, None, None] * (covs + diff[:, :, None] * diff[:, None, :])).sum(0)
    torch.testing.assert_close(mu, want_mu)
    torch.testing.assert_close(cov, want_cov)
    # near points of one component, the prior is that component
    prior = gmm.inference(means[1].expand(3, 2).clone())
    torch.testing.assert_close(prior.mu0, means[1], atol=1e-6, rtol=0)
    assert prior.m == 1.0 and prior.n0 == pytest.approx((50 - 2 - 2) / 50)


def test_gmm_dynamics_is_a_registered_model_that_honours_the_protocol() -> None:
    assert MODELS["gmm"] is GMMDynamics
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(300, 2, generator=g)
    action = torch.rand(300, 1, generator=g) * 2 - 1
    next_obs = torch.where(obs[:, :1] > 0, 0.9 * obs, -0.5 * obs) + 0.3 * action
    next_obs = next_obs + 0.05 * torch.randn(300, 2, generator=g)
    buf = ReplayBuffer(2, 1, 300, torch.tensor([-1.0]), torch.tensor([1.0]))
    for i in range(300):
        buf.add(obs[i], action[i], 0.0, next_obs[i], False, False)
    model = MODELS["gmm"](2, 1, num_components=4)
    report = model.fit(buf, torch.Generator().manual_seed(0))
    assert report.epochs >= 2
    check_model(model, obs[:8], action[:8], next_obs[:8])
    pred = model.predict(obs[:50], action[:50])
    assert float((pred.mean - next_obs[:50]).pow(2).mean()) < 0.02
    assert bool((pred.epistemic_var > 0).all()) and bool((pred.aleatoric_var > 0).all())
    # more data, less epistemic variance (draws of the means shrink as 1 / N_k)
    assert float(pred.epistemic_var.mean()) < float(pred.aleatoric_var.mean())


# ------------------------------------------------------------------ linear-Gaussian fit
def _known_lg(T: int, D: int, A: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    F = 0.5 * torch.randn(T, D, D + A, generator=g, dtype=D64)
    f = torch.randn(T, D, generator=g, dtype=D64)
    L = 0.1 * torch.randn(T, D, D, generator=g, dtype=D64)
    cov = L @ L.transpose(-1, -2) + 0.01 * torch.eye(D, dtype=D64)
    return F, f, cov


def _rollouts(F: Tensor, f: Tensor, cov: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    T, D = f.shape
    A = F.shape[-1] - D
    x = torch.randn(n, D, generator=g, dtype=D64)
    xs, us = [x], []
    chol = torch.linalg.cholesky(cov)
    for t in range(T):
        u = torch.randn(n, A, generator=g, dtype=D64)
        noise = (chol[t] @ torch.randn(n, D, 1, generator=g, dtype=D64)).squeeze(-1)
        x = torch.cat([x, u], -1) @ F[t].T + f[t] + noise
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 1), torch.stack(us, 1)


def test_linear_gaussian_regression_recovers_known_time_varying_dynamics() -> None:
    F, f, cov = _known_lg(4, 3, 2, 0)
    states, actions = _rollouts(F, f, cov, 4000, 1)
    fit = fit_linear_gaussian(states, actions)
    torch.testing.assert_close(fit.F, F, atol=0.02, rtol=0)
    torch.testing.assert_close(fit.f, f, atol=0.02, rtol=0)
    torch.testing.assert_close(fit.cov, cov, atol=0.01, rtol=0)


def test_the_niw_prior_pulls_a_few_sample_fit_as_the_closed_form_says() -> None:
    T, D, A, N = 3, 3, 2, 3  # N < D + A + 1: the sample covariance is singular
    F, f, cov = _known_lg(T, D, A, 2)
    states, actions = _rollouts(F, f, cov, N, 3)
    d = 2 * D + A
    g = torch.Generator().manual_seed(4)
    mu0 = torch.randn(T, d, generator=g, dtype=D64)
    L = torch.randn(T, d, d, generator=g, dtype=D64)
    Phi = L @ L.transpose(-1, -2) + torch.eye(d, dtype=D64)
    prior = NIWPrior(mu0=mu0, Phi=Phi, m=0.7, n0=1.5)
    fit = fit_linear_gaussian(states, actions, prior, ridge=0.0)
    # the normal-inverse-Wishart posterior mode, written out step by step
    for t in range(T):
        y = torch.cat([states[:, t], actions[:, t], states[:, t + 1]], -1)
        mean = y.mean(0)
        emp = (y - mean).T @ (y - mean) / N
        dm = (mean - mu0[t]).unsqueeze(-1)
        sigma = (N * emp + Phi[t] + N * 0.7 / (N + 0.7) * dm @ dm.T) / (N + 1.5)
        want = joint_to_conditional(mean[None], sigma[None], D + A)
        torch.testing.assert_close(fit.F[t], want.F[0])
        torch.testing.assert_close(fit.f[t], want.f[0])
        torch.testing.assert_close(fit.cov[t], want.cov[0])
    # a strong prior gives the prior's own conditional; plenty of data outweighs it
    strong = fit_linear_gaussian(states, actions, prior, ridge=0.0, prior_strength=1e8)
    pure = joint_to_conditional(mu0, Phi / 1.5, D + A)
    torch.testing.assert_close(strong.F, pure.F, atol=1e-5, rtol=0)
    many_x, many_u = _rollouts(F, f, cov, 3000, 5)
    data = fit_linear_gaussian(many_x, many_u, prior)
    torch.testing.assert_close(data.F, F, atol=0.05, rtol=0)
    ridge = fit_linear_gaussian(states, actions, None, ridge=1e-6)
    # the prior's fit is closer to the truth than the ridge fit from 3 samples, when
    # the prior is the true dynamics' joint (a GMM of one component on plenty of data)
    pts = torch.cat([many_x[:, :-1], many_u, many_x[:, 1:]], -1)
    gmm_err, ridge_err = [], []
    for t in range(T):
        one = GaussianMixture.fit(pts[:, t], 1, torch.Generator().manual_seed(0))
        with_prior = fit_linear_gaussian(states[:, t : t + 2], actions[:, t : t + 1], one)
        gmm_err.append(float((with_prior.F[0] - F[t]).norm()))
        ridge_err.append(float((ridge.F[t] - F[t]).norm()))
    assert max(gmm_err) < 0.5 * min(ridge_err), (gmm_err, ridge_err)
    assert math.isfinite(sum(gmm_err))
