"""Moment matching against Monte Carlo and closed forms (PILCO's propagation)."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models import ExactGPDynamics
from bayes_mbrl.planning.moment_matching import (
    SEGP,
    augment,
    linear_moments,
    quadratic_cost_moments,
    saturating_cost_moments,
    se_gp_moments,
    segp_from_exact,
    sin_moments,
)

MC = 100_000


def random_gp(g: torch.Generator, n: int = 25, d: int = 3, e: int = 2) -> SEGP:
    """A random SE-ARD GP posterior: random inputs, hyperparameters and targets."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    ls = 0.6 + torch.rand(e, d, generator=g, dtype=torch.float64)
    sv = 0.5 + torch.rand(e, generator=g, dtype=torch.float64)
    noise = 0.01 + 0.05 * torch.rand(e, generator=g, dtype=torch.float64)
    const = torch.randn(e, generator=g, dtype=torch.float64)
    y = torch.randn(e, n, generator=g, dtype=torch.float64)
    r = (x.unsqueeze(0).unsqueeze(-2) - x.unsqueeze(0).unsqueeze(-3)) / ls[:, None, None]
    k = sv[:, None, None] * torch.exp(-0.5 * r.square().sum(-1)) + torch.diag_embed(
        noise[:, None].expand(e, n)
    )
    inv = torch.linalg.inv(k)
    beta = (inv @ (y - const[:, None]).unsqueeze(-1)).squeeze(-1)
    return SEGP(x, beta, ls, sv, const, inv, noise)


def random_belief(
    g: torch.Generator, d: int, scale: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    m = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    a = scale * torch.randn(d, d, generator=g, dtype=torch.float64)
    return m, a @ a.T + 1e-3 * torch.eye(d, dtype=torch.float64)


def cross_cov(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample cross-covariance of ``(MC, i)`` and ``(MC, j)`` draws and its standard error."""
    prod = (a - a.mean(0)).unsqueeze(-1) * (b - b.mean(0)).unsqueeze(-2)  # (MC, i, j)
    return prod.mean(0), prod.std(0) / math.sqrt(a.shape[0])


def mc_gp(
    gp: SEGP, m: torch.Tensor, s: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Monte Carlo moments of the GP's predictive at x ~ N(m, s): the law of total
    covariance over x (the per-output GPs are independent given x)."""
    x = (
        m
        + torch.randn(MC, m.shape[0], generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    )
    mu = gp(x)  # (MC, E)
    var = gp.variance(x) + gp.noise_var
    mean = mu.mean(0)
    cov = torch.cov(mu.T) + torch.diag(var.mean(0))
    cross = (x - x.mean(0)).T @ (mu - mean) / (MC - 1)  # Cov[x, f]
    return mean, cov, cross, mu


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gp_moments_match_monte_carlo(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gp = random_gp(g)
    m, s = random_belief(g, 3)
    mean, cov, v = se_gp_moments(gp, m, s)
    mc_mean, _, _, mu = mc_gp(gp, m, s, g)
    se = mu.std(0) / math.sqrt(MC)
    assert torch.all((mean - mc_mean).abs() < 5 * se + 1e-9), (mean, mc_mean)
    # (co)variances and Cov[x, f]: within 5 Monte Carlo standard errors
    x = m + torch.randn(MC, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    f = gp(x)
    f_cov, f_se = cross_cov(f, f)
    model_var = torch.diag((gp.variance(x) + gp.noise_var).mean(0))
    assert torch.all((cov - f_cov - model_var).abs() < 5 * f_se + 1e-9), (cov, f_cov + model_var)
    x_cov, x_se = cross_cov(x, f)
    assert torch.all((s @ v - x_cov).abs() < 5 * x_se), (s @ v, x_cov)


def test_gp_output_cross_covariance_is_not_zero() -> None:
    """Two outputs reading the same uncertain input are correlated: the cross term matters."""
    g = torch.Generator().manual_seed(3)
    gp = random_gp(g, e=2)
    gp.beta[1] = gp.beta[0]
    gp.lengthscale[1] = gp.lengthscale[0]
    gp.signal_var[1] = gp.signal_var[0]
    m, s = random_belief(g, 3, scale=0.8)
    _, cov, _ = se_gp_moments(gp, m, s, include_noise=False)
    _, mc_cov, _, _ = mc_gp(gp, m, s, g)
    corr = cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()
    assert corr > 0.5
    assert torch.allclose(cov[0, 1], mc_cov[0, 1], atol=float(0.03 * cov.diagonal().max()))


def test_point_input_gives_the_gp_posterior() -> None:
    """With S = 0 the moments are the GP's posterior mean, variance + noise and no cross terms."""
    g = torch.Generator().manual_seed(4)
    gp = random_gp(g)
    m = torch.randn(3, generator=g, dtype=torch.float64)
    mean, cov, v = se_gp_moments(gp, m, torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(mean, gp(m), atol=1e-10)
    assert torch.allclose(cov, torch.diag(gp.variance(m) + gp.noise_var), atol=1e-10)
    # V is then the gradient of the mean function
    grad = torch.func.jacrev(gp)(m)  # (E, d)
    assert torch.allclose(v, grad.T, atol=1e-8)


def test_segp_from_exact_matches_the_fitted_gp() -> None:
    """The extracted SEGP (normalizers folded in) predicts what ExactGPDynamics predicts."""
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(60, 2, generator=g)
    act = torch.rand(60, 1, generator=g) * 2 - 1
    nxt = obs + 0.1 * torch.stack([torch.sin(obs[:, 1]) + act[:, 0], obs[:, 0]], -1)
    buf = ReplayBuffer(2, 1, 100)
    z = torch.zeros(60)
    buf.add(obs, act, z, nxt, z, z)
    model = ExactGPDynamics(2, 1, training_steps=30)
    model.fit(buf)
    gp = segp_from_exact(model)
    q_obs, q_act = torch.randn(5, 2, generator=g), torch.rand(5, 1, generator=g)
    pred = model.predict(q_obs, q_act)
    x = torch.cat([q_obs, q_act], -1).double()
    zero = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(5):
        mean, cov, _ = se_gp_moments(gp, x[i], zero)
        assert torch.allclose(q_obs[i].double() + mean, pred.mean[i].double(), atol=1e-4)
        assert torch.allclose(cov.diagonal(), pred.total_var[i].double(), rtol=1e-3, atol=1e-7)
    with pytest.raises(ConfigError, match="squared-exponential"):
        segp_from_exact(ExactGPDynamics(2, 1, kernel="matern52"))


def test_rbf_network_moments_have_no_model_variance() -> None:
    """An RBF network (inv_gram=None) is deterministic: with S = 0 the variance is 0."""
    g = torch.Generator().manual_seed(6)
    gp = random_gp(g)
    net = SEGP(gp.inputs, gp.beta, gp.lengthscale, gp.signal_var, gp.constant)
    m, s = random_belief(g, 3)
    mean, cov, _ = se_gp_moments(net, m, torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(cov, torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)
    mean, cov, _ = se_gp_moments(net, m, s)
    x = m + torch.randn(MC, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    f = net(x)
    assert torch.allclose(mean, f.mean(0), atol=float(5 * f.std(0).max() / math.sqrt(MC)))
    assert torch.allclose(cov, torch.cov(f.T), atol=float(0.03 * cov.diagonal().max()))


def test_batched_beliefs_equal_one_at_a_time() -> None:
    g = torch.Generator().manual_seed(7)
    gp = random_gp(g)
    beliefs = [random_belief(g, 3) for _ in range(4)]
    m = torch.stack([b[0] for b in beliefs])
    s = torch.stack([b[1] for b in beliefs])
    mean, cov, v = se_gp_moments(gp, m, s)
    for i in range(4):
        mi, ci, vi = se_gp_moments(gp, m[i], s[i])
        assert (
            torch.allclose(mean[i], mi) and torch.allclose(cov[i], ci) and torch.allclose(v[i], vi)
        )


def test_sin_cos_of_correlated_angles_match_monte_carlo() -> None:
    g = torch.Generator().manual_seed(8)
    m, s = random_belief(g, 2, scale=0.7)
    # sin and cos of both angles, squashed and shifted
    mean_in = m[[0, 0, 1, 1]]
    cov_in = s[[0, 0, 1, 1]][:, [0, 0, 1, 1]]
    phase = torch.tensor([0.0, math.pi / 2, 0.0, math.pi / 2], dtype=torch.float64)
    scale = torch.tensor([2.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    shift = torch.tensor([0.5, 0.0, -1.0, 0.0], dtype=torch.float64)
    mean, cov, _ = sin_moments(mean_in, cov_in, phase, scale, shift)
    x = m + torch.randn(MC, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    y = shift + scale * torch.sin(x[:, [0, 0, 1, 1]] + phase)
    assert torch.allclose(mean, y.mean(0), atol=float(5 * y.std(0).max() / math.sqrt(MC)))
    assert torch.allclose(cov, torch.cov(y.T), atol=0.03 * float(cov.diagonal().max()))
    # Stein: Cov[x, g] through augment
    aug_m, aug_s = augment(m, s, [0, 0, 1, 1], lambda a, b: sin_moments(a, b, phase, scale, shift))
    mc_cross, se = cross_cov(x, y)
    assert torch.all((aug_s[:2, 2:] - mc_cross).abs() < 5 * se)
    assert torch.allclose(aug_m, torch.cat([m, mean]))
    assert torch.allclose(aug_s, aug_s.T)


def test_augment_with_linear_map_is_exact() -> None:
    g = torch.Generator().manual_seed(9)
    m, s = random_belief(g, 3)
    w = torch.randn(2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    aug_m, aug_s = augment(m, s, [0, 2], lambda a, c: linear_moments(a, c, w, b))
    full_w = torch.zeros(5, 3, dtype=torch.float64)
    full_w[:3] = torch.eye(3, dtype=torch.float64)
    full_w[3:, [0, 2]] = w
    assert torch.allclose(aug_m, full_w @ m + torch.cat([torch.zeros(3, dtype=torch.float64), b]))
    assert torch.allclose(aug_s, full_w @ s @ full_w.T, atol=1e-12)


def test_gp_through_augment_gives_state_output_covariance() -> None:
    """Cov[z, f(z_I)] for entries of z outside I (here z_2) through the Stein identity."""
    g = torch.Generator().manual_seed(10)
    gp = random_gp(g, d=2)
    m, s = random_belief(g, 3, scale=0.6)
    aug_m, aug_s = augment(m, s, [0, 1], lambda a, b: se_gp_moments(gp, a, b))
    x = m + torch.randn(MC, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    f = gp(x[:, :2])
    mc_cross, se = cross_cov(x, f)
    assert torch.all((aug_s[:3, 3:] - mc_cross).abs() < 5 * se)
    assert torch.allclose(aug_m[3:], f.mean(0), atol=float(5 * f.std(0).max() / math.sqrt(MC)))


@pytest.mark.parametrize("seed", [0, 1])
def test_saturating_cost_matches_monte_carlo(seed: int) -> None:
    g = torch.Generator().manual_seed(20 + seed)
    m, s = random_belief(g, 3, scale=0.4)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    w = a @ a.T
    t = torch.randn(3, generator=g, dtype=torch.float64) * 0.3
    ec, vc = saturating_cost_moments(m, s, t, w, width=0.8)
    x = m + torch.randn(MC, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    d = x - t
    c = 1 - torch.exp(-0.5 * ((d @ w) * d).sum(-1) / 0.64)
    assert abs(float(ec - c.mean())) < 5 * float(c.std()) / math.sqrt(MC)
    assert abs(float(vc - c.var())) < 0.03 * float(c.var())
    # a point belief gives the cost itself
    ec0, vc0 = saturating_cost_moments(m, torch.zeros(3, 3, dtype=torch.float64), t, w, 0.8)
    d0 = m - t
    assert torch.allclose(ec0, 1 - torch.exp(-0.5 * d0 @ w @ d0 / 0.64))
    assert float(vc0) < 1e-12


def test_quadratic_cost_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(30)
    m, s = random_belief(g, 3)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    w = a @ a.T
    t = torch.randn(3, generator=g, dtype=torch.float64)
    ec, vc = quadratic_cost_moments(m, s, t, w)
    x = m + torch.randn(MC, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T
    c = (((x - t) @ w) * (x - t)).sum(-1)
    assert abs(float(ec - c.mean())) < 5 * float(c.std()) / math.sqrt(MC)
    assert abs(float(vc - c.var())) < 0.03 * float(c.var())


def test_gradcheck_through_gp_trig_and_cost() -> None:
    """Autograd gradients of a propagated expected cost equal finite differences."""
    g = torch.Generator().manual_seed(40)
    gp = random_gp(g, n=6, d=3, e=2)
    m, s = random_belief(g, 2, scale=0.3)
    phase = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    w = torch.eye(3, dtype=torch.float64)

    def expected_cost(mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
        cov = chol @ chol.T
        z_m, z_s = augment(mean, cov, [0, 0], lambda a, b: sin_moments(a, b, phase))
        z_m, z_s = augment(z_m, z_s, [1, 2, 3], lambda a, b: se_gp_moments(gp, a, b))
        return saturating_cost_moments(z_m[2:5], z_s[2:5, 2:5], target, w)[0]

    chol = torch.linalg.cholesky(s).requires_grad_(True)
    assert torch.autograd.gradcheck(expected_cost, (m.requires_grad_(True), chol))


def test_bad_shapes_are_named() -> None:
    g = torch.Generator().manual_seed(50)
    gp = random_gp(g)
    with pytest.raises(DataError, match="takes 3 inputs"):
        se_gp_moments(gp, torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    with pytest.raises(DataError, match="cov"):
        sin_moments(torch.zeros(2), torch.zeros(3, 3), torch.zeros(2))
    with pytest.raises(DataError, match="beta must have shape"):
        SEGP(gp.inputs, gp.beta[:, :3], gp.lengthscale, gp.signal_var, gp.constant)
