"""Kalman filter / RTS smoother against brute-force Gaussian conditioning of the joint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from bayes_mbrl.errors import DataError
from bayes_mbrl.models.latent.kalman import (
    LinearGaussianSSM,
    kalman_filter,
    rts_smoother,
)

F64 = torch.float64


def random_spd(n: int, g: torch.Generator, scale: float = 1.0) -> Tensor:
    m = torch.randn(n, n, generator=g, dtype=F64)
    return scale * (m @ m.T / n + 0.3 * torch.eye(n, dtype=F64))


def random_ssm(g: torch.Generator, dz: int = 3, da: int = 2, do: int = 2) -> LinearGaussianSSM:
    """A random, stable, fully coupled model (no special structure the filter could exploit)."""
    a = torch.randn(dz, dz, generator=g, dtype=F64)
    a = 0.9 * a / torch.linalg.matrix_norm(a, ord=2)
    return LinearGaussianSSM(
        A=a,
        B=torch.randn(dz, da, generator=g, dtype=F64),
        C=torch.randn(do, dz, generator=g, dtype=F64),
        d=torch.randn(do, generator=g, dtype=F64),
        Q=random_spd(dz, g, 0.3),
        R=random_spd(do, g, 0.5),
        mu0=torch.randn(dz, generator=g, dtype=F64),
        P0=random_spd(dz, g, 1.5),
    )


def brute_force_joint(ssm: LinearGaussianSSM, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(N, T*(dz+do))`` and covariance of the stacked ``(z_1..z_T, o_1..o_T)``.

    Every variable is written as an explicit linear map of the independent base
    Gaussians ``e = (z_1 - mu0, w_1..w_{T-1}, v_1..v_T)``: ``x = mean + M e`` and
    ``Cov(x) = M Cov(e) M^T``.
    """
    n, t_len, _ = actions.shape
    dz, do = ssm.state_dim, ssm.obs_dim
    n_base = dz + (t_len - 1) * dz + t_len * do
    cov_e = torch.zeros(n_base, n_base, dtype=F64)
    cov_e[:dz, :dz] = ssm.P0
    for t in range(t_len - 1):
        i = dz + t * dz
        cov_e[i : i + dz, i : i + dz] = ssm.Q
    v0 = dz + (t_len - 1) * dz
    for t in range(t_len):
        i = v0 + t * do
        cov_e[i : i + do, i : i + do] = ssm.R

    z_rows, z_means = [], []
    coef = torch.zeros(dz, n_base, dtype=F64)
    coef[:, :dz] = torch.eye(dz, dtype=F64)
    mean = ssm.mu0.expand(n, dz)
    for t in range(t_len):
        z_rows.append(coef)
        z_means.append(mean)
        if t + 1 < t_len:
            new = ssm.A @ coef
            i = dz + t * dz
            new[:, i : i + dz] += torch.eye(dz, dtype=F64)
            coef = new
            mean = mean @ ssm.A.T + actions[:, t] @ ssm.B.T
    o_rows, o_means = [], []
    for t in range(t_len):
        row = ssm.C @ z_rows[t]
        i = v0 + t * do
        row[:, i : i + do] += torch.eye(do, dtype=F64)
        o_rows.append(row)
        o_means.append(z_means[t] @ ssm.C.T + ssm.d)
    m_mat = torch.cat(z_rows + o_rows, dim=0)
    joint_mean = torch.cat(z_means + o_means, dim=1)
    return joint_mean, m_mat @ cov_e @ m_mat.T


def condition(
    mean: Tensor, cov: Tensor, x_idx: list[int], y_idx: list[int], y: Tensor
) -> tuple[Tensor, Tensor]:
    """Moments of ``x | y`` for a joint Gaussian (batched over the mean and ``y``)."""
    sxx = cov[x_idx][:, x_idx]
    sxy = cov[x_idx][:, y_idx]
    syy = cov[y_idx][:, y_idx]
    resid = y - mean[:, y_idx]
    gain = torch.linalg.solve(syy, sxy.T).T
    return mean[:, x_idx] + resid @ gain.T, sxx - gain @ sxy.T


@pytest.fixture
def problem() -> tuple[LinearGaussianSSM, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    ssm = random_ssm(g)
    n, t_len = 4, 6
    actions = torch.randn(n, t_len, ssm.action_dim, generator=g, dtype=F64)
    _, obs = ssm.simulate(n, t_len, actions, g)
    mean, cov = brute_force_joint(ssm, actions)
    return ssm, obs, actions, mean, cov


def test_log_likelihood_matches_joint_gaussian(problem) -> None:
    ssm, obs, actions, mean, cov = problem
    n, t_len, do = obs.shape
    dz = ssm.state_dim
    o_idx = list(range(t_len * dz, t_len * (dz + do)))
    mvn = MultivariateNormal(mean[:, o_idx], covariance_matrix=cov[o_idx][:, o_idx])
    expected = mvn.log_prob(obs.reshape(n, t_len * do))
    result = kalman_filter(ssm, obs, actions)
    assert result.log_likelihood.shape == (n,)
    torch.testing.assert_close(result.log_likelihood, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(result.step_log_likelihoods.sum(1), result.log_likelihood)
    # the actions matter: ignoring them gives a different likelihood
    wrong = kalman_filter(ssm, obs, None).log_likelihood
    assert (wrong - expected).abs().max() > 1e-3


def test_filter_matches_conditioning_on_the_past(problem) -> None:
    ssm, obs, actions, mean, cov = problem
    n, t_len, do = obs.shape
    dz = ssm.state_dim
    result = kalman_filter(ssm, obs, actions)
    flat = obs.reshape(n, t_len * do)
    for t in range(t_len):
        z_idx = list(range(t * dz, (t + 1) * dz))
        past = list(range(t_len * dz, t_len * dz + (t + 1) * do))
        m, c = condition(mean, cov, z_idx, past, flat[:, : (t + 1) * do])
        torch.testing.assert_close(result.filtered_means[:, t], m, atol=1e-8, rtol=0)
        torch.testing.assert_close(
            result.filtered_covs[:, t], c.expand(n, dz, dz), atol=1e-8, rtol=0
        )
        # the predicted moments condition on o_{1:t-1} only
        if t == 0:
            pm, pc = ssm.mu0.expand(n, dz), ssm.P0
        else:
            pm, pc = condition(mean, cov, z_idx, past[:-do], flat[:, : t * do])
        torch.testing.assert_close(result.predicted_means[:, t], pm, atol=1e-8, rtol=0)
        torch.testing.assert_close(
            result.predicted_covs[:, t], pc.expand(n, dz, dz), atol=1e-8, rtol=0
        )


def test_smoother_matches_conditioning_on_everything(problem) -> None:
    ssm, obs, actions, mean, cov = problem
    n, t_len, do = obs.shape
    dz = ssm.state_dim
    result = rts_smoother(ssm, obs, actions)
    assert result.cross_covs.shape == (n, t_len - 1, dz, dz)
    all_z = list(range(t_len * dz))
    all_o = list(range(t_len * dz, t_len * (dz + do)))
    m, c = condition(mean, cov, all_z, all_o, obs.reshape(n, t_len * do))
    torch.testing.assert_close(result.smoothed_means, m.reshape(n, t_len, dz), atol=1e-8, rtol=0)
    for t in range(t_len):
        blk = c[t * dz : (t + 1) * dz, t * dz : (t + 1) * dz]
        torch.testing.assert_close(
            result.smoothed_covs[:, t], blk.expand(n, dz, dz), atol=1e-8, rtol=0
        )
    for t in range(t_len - 1):
        blk = c[t * dz : (t + 1) * dz, (t + 1) * dz : (t + 2) * dz]  # Cov(z_t, z_{t+1})
        assert (blk - blk.T).abs().max() > 1e-3  # not symmetric: orientation is tested
        torch.testing.assert_close(
            result.cross_covs[:, t], blk.expand(n, dz, dz), atol=1e-8, rtol=0
        )
    # the smoother ends where the filter ends
    torch.testing.assert_close(result.smoothed_means[:, -1], result.filtered.filtered_means[:, -1])
    torch.testing.assert_close(result.log_likelihood, result.filtered.log_likelihood)


def test_scalar_random_walk_reaches_the_riccati_steady_state() -> None:
    q, r = 0.3, 2.0
    ssm = LinearGaussianSSM(
        A=[[1.0]], B=torch.zeros(1, 0), C=[[1.0]], d=[0.0], Q=[[q]], R=[[r]], mu0=[0.0], P0=[[50.0]]
    )
    g = torch.Generator().manual_seed(0)
    _, obs = ssm.simulate(2, 200, None, g)
    result = kalman_filter(ssm, obs)
    # predicted variance p solves p = p - p^2 / (p + r) + q, i.e. p^2 - q p - q r = 0
    p = (q + math.sqrt(q * q + 4 * q * r)) / 2
    f = p * r / (p + r)
    assert abs(float(result.filtered_covs[0, 0, 0, 0]) - 50 * r / (50 + r)) < 1e-12
    torch.testing.assert_close(result.filtered_covs[:, -1, 0, 0], torch.full((2,), f, dtype=F64))
    torch.testing.assert_close(result.predicted_covs[:, -1, 0, 0], torch.full((2,), p, dtype=F64))
    # and the filtered variance decreases monotonically towards it from the large prior
    v = result.filtered_covs[0, :, 0, 0]
    assert bool((v[1:] <= v[:-1] + 1e-15).all())


def test_simulate_matches_the_joint_moments() -> None:
    g = torch.Generator().manual_seed(3)
    ssm = random_ssm(g, dz=2, da=1, do=2)
    n, t_len = 40_000, 3
    actions = torch.randn(1, t_len, 1, generator=g, dtype=F64).expand(n, -1, -1)
    states, obs = ssm.simulate(n, t_len, actions, g)
    assert states.shape == (n, t_len, 2) and obs.shape == (n, t_len, 2)
    assert states.dtype == obs.dtype == F64
    mean, cov = brute_force_joint(ssm, actions[:1])
    x = torch.cat([states.reshape(n, -1), obs.reshape(n, -1)], dim=1)
    std = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean[0]).abs() / std).max() < 0.03
    emp_corr = torch.corrcoef(x.T)
    corr = cov / std[:, None] / std[None, :]
    assert (emp_corr - corr).abs().max() < 0.03
    assert ((x.var(0) / cov.diagonal()) - 1).abs().max() < 0.05
    # the noises themselves, with strongly correlated covariances (L L^T != L^T L)
    corr_cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    fields = {k: getattr(ssm, k) for k in ("A", "B", "C", "d", "mu0")}
    sharp = LinearGaussianSSM(**fields, Q=0.5 * corr_cov, R=2.0 * corr_cov, P0=corr_cov)
    states, obs = sharp.simulate(n, t_len, actions, g)
    w = states[:, 1:] - states[:, :-1] @ sharp.A.T - actions[:, :-1] @ sharp.B.T
    v = obs - states @ sharp.C.T - sharp.d
    for resid, target in (
        (states[:, 0] - sharp.mu0, sharp.P0),
        (w.reshape(-1, 2), sharp.Q),
        (v.reshape(-1, 2), sharp.R),
    ):
        emp = resid.T @ resid / resid.shape[0]
        assert ((emp - target).abs() / target.diagonal().max()).max() < 0.03
    # the same seed gives the same draws
    a = ssm.simulate(3, 4, None, torch.Generator().manual_seed(5))
    b = ssm.simulate(3, 4, None, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_inputs_are_converted_to_float64() -> None:
    g = torch.Generator().manual_seed(1)
    ssm64 = random_ssm(g)
    ssm32 = LinearGaussianSSM(
        **{k: getattr(ssm64, k).float() for k in ("A", "B", "C", "d", "Q", "R", "mu0", "P0")}
    )
    assert all(getattr(ssm32, k).dtype == F64 for k in ("A", "B", "Q", "P0"))
    _, obs = ssm64.simulate(2, 5, None, g)
    res = kalman_filter(ssm32, obs.float(), torch.zeros(2, 5, 2, dtype=torch.float32))
    assert res.filtered_means.dtype == res.log_likelihood.dtype == F64
    sm = rts_smoother(ssm32, obs.float())
    assert sm.smoothed_covs.dtype == sm.cross_covs.dtype == F64


def test_single_step_and_batch_independence() -> None:
    g = torch.Generator().manual_seed(2)
    ssm = random_ssm(g)
    _, obs = ssm.simulate(3, 5, None, g)
    sm1 = rts_smoother(ssm, obs[:, :1])
    assert sm1.cross_covs.shape == (3, 0, 3, 3) and sm1.gains.shape == (3, 0, 3, 3)
    torch.testing.assert_close(sm1.smoothed_means, sm1.filtered.filtered_means)
    full = kalman_filter(ssm, obs)
    one = kalman_filter(ssm, obs[1:2])
    torch.testing.assert_close(full.filtered_means[1:2], one.filtered_means)
    torch.testing.assert_close(full.log_likelihood[1:2], one.log_likelihood)


def test_log_likelihood_is_differentiable() -> None:
    g = torch.Generator().manual_seed(4)
    ssm = random_ssm(g)
    _, obs = ssm.simulate(2, 4, None, g)
    a = ssm.A.clone().requires_grad_(True)
    fields = {k: getattr(ssm, k) for k in ("B", "C", "d", "Q", "R", "mu0", "P0")}
    ll = kalman_filter(LinearGaussianSSM(A=a, **fields), obs).log_likelihood.sum()
    (grad,) = torch.autograd.grad(ll, a)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_position_velocity_needs_a_filter_for_the_velocity() -> None:
    ssm = LinearGaussianSSM.position_velocity()
    assert (ssm.state_dim, ssm.action_dim, ssm.obs_dim) == (2, 1, 1)
    assert torch.linalg.eigvals(ssm.A).abs().max() <= 1.0
    assert torch.linalg.cond(ssm.Q) <= 100 + 1e-9
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(64, 30, 1, generator=g, dtype=F64)
    states, obs = ssm.simulate(64, 30, actions, g)
    res = kalman_filter(ssm, obs, actions)
    # one observation says nothing about the velocity: its variance stays at the prior
    assert abs(float(res.filtered_covs[0, 0, 1, 1]) - float(ssm.P0[1, 1])) < 1e-12
    # after a few steps the filter has learnt it
    assert float(res.filtered_covs[0, -1, 1, 1]) < 0.1 * float(ssm.P0[1, 1])
    vel_err = (res.filtered_means[:, -1, 1] - states[:, -1, 1]).pow(2).mean()
    assert vel_err < 0.1 * float(ssm.P0[1, 1])
    with pytest.raises(DataError, match="dt"):
        LinearGaussianSSM.position_velocity(dt=0.0)
    with pytest.raises(DataError, match="obs_std"):
        LinearGaussianSSM.position_velocity(obs_std=-1.0)
    with pytest.raises(DataError, match="damping"):
        LinearGaussianSSM.position_velocity(dt=0.5, damping=2.0)


def _fields() -> dict[str, Tensor]:
    ssm = LinearGaussianSSM.position_velocity()
    return {k: getattr(ssm, k) for k in ("A", "B", "C", "d", "Q", "R", "mu0", "P0")}


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("A", torch.zeros(2, 3), r"A must be a square \(dz, dz\)"),
        ("B", torch.zeros(3, 1), r"B must have shape \(dz, da\) = \(2, da\).*\(3, 1\)"),
        ("C", torch.zeros(1, 3), r"C must have shape \(do, dz\) = \(do, 2\)"),
        ("d", torch.zeros(2), r"d must have shape \(1,\); got \(2,\)"),
        ("Q", torch.eye(3), r"Q must have shape \(2, 2\); got \(3, 3\)"),
        ("R", torch.zeros(1), r"R must have shape \(1, 1\)"),
        ("mu0", torch.zeros(2, 1), r"mu0 must have shape \(2,\)"),
        ("P0", torch.eye(2)[:1], r"P0 must have shape \(2, 2\)"),
        ("Q", torch.tensor([[1.0, 0.0], [0.0, -1e-3]]), "Q must be positive definite"),
        ("P0", torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "P0 must be positive definite"),
        ("R", torch.tensor([[0.0]]), "R must be positive definite"),
        ("Q", torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "Q must be a symmetric"),
        ("A", torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "A contains NaN"),
        ("A", "not a matrix", "A must be a tensor of numbers"),
    ],
)
def test_model_validation(name: str, value: object, match: str) -> None:
    fields: dict[str, object] = dict(_fields())
    fields[name] = value
    with pytest.raises(DataError, match=match):
        LinearGaussianSSM(**fields)  # type: ignore[arg-type]


def test_data_validation() -> None:
    ssm = LinearGaussianSSM.position_velocity()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match=r"observations must have shape \(N, T, do\) = \(N, T, 1\)"):
        kalman_filter(ssm, torch.zeros(4, 5, 2))
    with pytest.raises(DataError, match="observations must have shape"):
        kalman_filter(ssm, torch.zeros(5, 1))
    with pytest.raises(DataError, match="T >= 1"):
        rts_smoother(ssm, torch.zeros(2, 0, 1))
    with pytest.raises(DataError, match="observations contain NaN"):
        kalman_filter(ssm, torch.full((1, 3, 1), float("inf")))
    with pytest.raises(DataError, match=r"actions must have shape \(N, T, da\) = \(4, 5, 1\)"):
        rts_smoother(ssm, torch.zeros(4, 5, 1), torch.zeros(4, 4, 1))
    with pytest.raises(DataError, match="actions contain NaN"):
        kalman_filter(ssm, torch.zeros(1, 2, 1), torch.full((1, 2, 1), float("nan")))
    with pytest.raises(DataError, match=r"actions must have shape \(N, T, da\) = \(3, 4, 1\)"):
        ssm.simulate(3, 4, torch.zeros(3, 4, 2), g)
    with pytest.raises(DataError, match="length must be an integer >= 1"):
        ssm.simulate(3, 0, None, g)
    with pytest.raises(DataError, match="num_sequences must be an integer >= 1"):
        ssm.simulate(2.5, 3, None, g)  # type: ignore[arg-type]
