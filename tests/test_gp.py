"""GP dynamics: closed forms, pathwise draws vs the posterior, SVGP vs exact, robustness."""

from __future__ import annotations

import io
import math

import pytest
import torch
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models import check_model
from bayes_mbrl.models.gp import (
    EXACT_GP_MAX_POINTS,
    ExactGPDynamics,
    SparseGPDynamics,
    kmeans_inducing_points,
    with_jitter_escalation,
)

OBS, ACT = 2, 1
LS = torch.tensor([[0.9, 1.3, 1.1], [1.5, 0.8, 2.0]], dtype=torch.float64)
OS = torch.tensor([1.2, 0.7], dtype=torch.float64)
NOISE = torch.tensor([0.05, 0.1], dtype=torch.float64)
CONST = torch.tensor([0.1, -0.2], dtype=torch.float64)


def toy_buffer(n: int, seed: int = 0, repeat: int = 1) -> ReplayBuffer:
    """A smooth nonlinear 2-D system with a little noise; each transition ``repeat`` times."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, OBS, generator=g) * 4 - 2
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    delta = torch.stack([0.3 * torch.sin(obs[:, 1]) + 0.2 * act[:, 0], -0.2 * obs[:, 0]], -1)
    nxt = obs + delta + 0.01 * torch.randn(n, OBS, generator=g)
    obs, act, nxt = (t.repeat(repeat, 1) for t in (obs, act, nxt))
    buf = ReplayBuffer(OBS, ACT, n * repeat)
    z = torch.zeros(n * repeat)
    buf.add(obs, act, z, nxt, z, z)
    return buf


def se(x1: Tensor, x2: Tensor, ls: Tensor, os_: float) -> Tensor:
    """Textbook ARD squared-exponential kernel matrix."""
    d = (x1[:, None, :] - x2[None, :, :]) / ls
    return os_ * torch.exp(-0.5 * d.square().sum(-1))


def normalized(buf: ReplayBuffer) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Inputs, deltas and their normalization statistics, computed independently of the model."""
    b = buf.all()
    x = torch.cat([b.obs, b.action], -1).double()
    y = (b.next_obs - b.obs).double()
    xm, xs = x.mean(0), x.std(0, unbiased=False)
    ym, ys = y.mean(0), y.std(0, unbiased=False)
    return (x - xm) / xs, (y - ym) / ys, torch.stack([xm, xs]), ym, ys


def textbook_posterior(x: Tensor, y: Tensor, xs: Tensor, j: int) -> tuple[Tensor, Tensor]:
    """Posterior mean ``(B,)`` and covariance ``(B, B)`` of output ``j`` (normalized units)."""
    k = se(x, x, LS[j], float(OS[j])) + NOISE[j] * torch.eye(x.shape[0], dtype=torch.float64)
    ks = se(xs, x, LS[j], float(OS[j]))
    mean = CONST[j] + ks @ torch.linalg.solve(k, y[:, j] - CONST[j])
    cov = se(xs, xs, LS[j], float(OS[j])) - ks @ torch.linalg.solve(k, ks.T)
    return mean, cov


def fixed_exact(buf: ReplayBuffer, **kw: object) -> ExactGPDynamics:
    model = ExactGPDynamics(OBS, ACT, training_steps=0, **kw)  # type: ignore[arg-type]
    model.set_hyperparameters(LS, OS, NOISE, CONST)
    model.fit(buf)
    return model


def test_exact_posterior_equals_textbook_formulas() -> None:
    buf = toy_buffer(40)
    model = fixed_exact(buf)
    x, y, stats, ym, ys = normalized(buf)
    g = torch.Generator().manual_seed(5)
    obs = torch.rand(6, OBS, generator=g) * 4 - 2
    act = torch.rand(6, ACT, generator=g) * 2 - 1
    xs = (torch.cat([obs, act], -1).double() - stats[0]) / stats[1]
    pred = model.predict(obs, act)
    for j in range(OBS):  # checking each output against its own closed form
        mean, cov = textbook_posterior(x, y, xs, j)
        expect_mean = obs[:, j].double() + mean * ys[j] + ym[j]
        torch.testing.assert_close(pred.mean[:, j].double(), expect_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            pred.epistemic_var[:, j].double(), cov.diagonal() * ys[j] ** 2, rtol=1e-4, atol=1e-8
        )
        torch.testing.assert_close(
            pred.aleatoric_var[:, j].double(),
            (NOISE[j] * ys[j] ** 2).expand(6),
            rtol=1e-5,
            atol=0.0,
        )
    # the analytic held-out density is the Gaussian with the total variance
    nxt = pred.mean + 0.1
    lpd = model.log_predictive_density(obs, act, nxt)
    expect = -0.5 * (
        0.01 / pred.total_var.double() + torch.log(2 * math.pi * pred.total_var.double())
    )
    torch.testing.assert_close(lpd, expect.sum(-1), rtol=1e-4, atol=1e-4)


def test_pathwise_draws_have_the_posterior_mean_and_covariance() -> None:
    """Monte Carlo over 4000 paths at 3 points, tolerance 4 standard errors (+ RFF bias)."""
    buf = toy_buffer(25)
    model = fixed_exact(buf, num_features=1024, path_dtype="float64")
    x, y, _, _, _ = normalized(buf)
    xs = torch.cat([x[:1], x[:1] + 0.3, torch.full((1, OBS + ACT), 2.5, dtype=torch.float64)])
    n = 4000
    fs = model.sample_functions(n, torch.Generator().manual_seed(0))
    vals = fs.path_values(xs.expand(n, -1, -1))  # (n, D, 3)
    for j in range(OBS):
        mean, cov = textbook_posterior(x, y, xs, j)
        draws = vals[:, j]
        se_mean = (cov.diagonal() / n).sqrt()
        assert ((draws.mean(0) - mean).abs() <= 4 * se_mean + 0.02).all(), (draws.mean(0), mean)
        emp = torch.cov(draws.T)
        # sd of an empirical covariance entry ~ sqrt((s_ii s_jj + s_ij^2) / n); RFF bias < 0.03
        sd_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
        assert ((emp - cov).abs() <= 4 * sd_cov + 0.03 * OS[j]).all(), (emp, cov)
    # far from data the path variance is the prior's, near data much smaller
    assert vals[:, :, 2].var(0).sub(OS).abs().max() < 0.15
    assert (vals[:, :, 0].var(0) < 0.2 * OS).all()


@pytest.mark.parametrize("sparse", [False, True])
def test_explicit_path_evaluation_equals_botorch(sparse: bool) -> None:
    buf = toy_buffer(30)
    if sparse:
        model: ExactGPDynamics | SparseGPDynamics = SparseGPDynamics(
            OBS, ACT, num_inducing=10, min_steps=5, num_features=64, path_dtype="float64"
        )
        model.fit(buf)
    else:
        model = fixed_exact(buf, num_features=64, path_dtype="float64", kernel="se")
    fs = model.sample_functions(5, torch.Generator().manual_seed(3))
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(3)))
    paths = model._draw_paths(5, seed)
    x = torch.randn(5, 7, OBS + ACT, dtype=torch.float64)
    with torch.no_grad():
        ref = paths(x.unsqueeze(1))  # (n, D, B)
    torch.testing.assert_close(fs.path_values(x), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", ["matern52", "matern32"])
def test_matern_path_evaluation_equals_botorch(kernel: str) -> None:
    buf = toy_buffer(30)
    model = ExactGPDynamics(
        OBS, ACT, kernel=kernel, training_steps=5, num_features=64, path_dtype="float64"
    )
    model.fit(buf)
    fs = model.sample_functions(4, torch.Generator().manual_seed(1))
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(1)))
    x = torch.randn(4, 6, OBS + ACT, dtype=torch.float64)
    with torch.no_grad():
        ref = model._draw_paths(4, seed)(x.unsqueeze(1))
    torch.testing.assert_close(fs.path_values(x), ref, rtol=1e-9, atol=1e-9)


def test_svgp_with_inducing_points_at_the_data_matches_exact() -> None:
    """Z = X, fixed hyperparameters, optimal q(u) by one full-batch natural-gradient step."""
    buf = toy_buffer(30)
    exact = fixed_exact(buf)
    sparse = SparseGPDynamics(
        OBS,
        ACT,
        num_inducing=30,
        inducing_init="subsample",
        batch_size=30,
        epochs=0,
        min_steps=2,
        learning_rate=0.0,
        natural_gradient=True,
        ngd_learning_rate=1.0,
    )
    sparse.set_hyperparameters(LS, OS, NOISE, CONST)
    sparse.fit(buf)
    g = torch.Generator().manual_seed(9)
    obs = torch.rand(8, OBS, generator=g) * 4 - 2
    act = torch.rand(8, ACT, generator=g) * 2 - 1
    pe, ps = exact.predict(obs, act), sparse.predict(obs, act)
    torch.testing.assert_close(ps.mean, pe.mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ps.epistemic_var, pe.epistemic_var, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(ps.aleatoric_var, pe.aleatoric_var)


def test_sparse_gp_learns_the_dynamics() -> None:
    buf = toy_buffer(200)
    model = SparseGPDynamics(
        OBS,
        ACT,
        num_inducing=24,
        batch_size=100,
        min_steps=50,
        learning_rate=0.05,
        natural_gradient=True,
    )
    report = model.fit(buf, torch.Generator().manual_seed(0))
    assert report.final_train_loss < report.train_losses[0]
    test = toy_buffer(50, seed=1).all()
    pred = model.predict(test.obs, test.action)
    rmse = (pred.mean - test.next_obs).square().mean().sqrt()
    assert rmse < 0.05, rmse  # deltas have scale ~0.3, noise 0.01


@pytest.mark.parametrize("sparse", [False, True])
def test_protocol_state_dict_and_determinism(sparse: bool) -> None:
    buf = toy_buffer(60)

    def make() -> ExactGPDynamics | SparseGPDynamics:
        if sparse:
            return SparseGPDynamics(OBS, ACT, num_inducing=12, min_steps=15, num_features=128)
        return ExactGPDynamics(OBS, ACT, training_steps=15, num_features=128)

    model = make()
    model.fit(buf, torch.Generator().manual_seed(4))
    b = buf.all()
    check_model(model, b.obs[:7], b.action[:7], b.next_obs[:7])

    again = make()
    again.fit(buf, torch.Generator().manual_seed(4))
    for k, v in model.hyperparameters().items():
        assert torch.equal(v, again.hyperparameters()[k]), k

    raw = io.BytesIO()
    torch.save(model.state_dict(), raw)
    raw.seek(0)
    loaded = make()
    loaded.load_state_dict(torch.load(raw, weights_only=True))
    o, a = b.obs[:5], b.action[:5]
    p1, p2 = model.predict(o, a), loaded.predict(o, a)
    torch.testing.assert_close(p1.mean, p2.mean)
    torch.testing.assert_close(p1.epistemic_var, p2.epistemic_var)
    f1 = model.sample_functions(3, torch.Generator().manual_seed(2))
    f2 = loaded.sample_functions(3, torch.Generator().manual_seed(2))
    oo, aa = o.expand(3, -1, -1), a.expand(3, -1, -1)
    torch.testing.assert_close(f1.mean(oo, aa), f2.mean(oo, aa), rtol=1e-5, atol=1e-5)
    ll = model.log_likelihood(o, a, b.next_obs[:5], num_functions=6)
    assert ll.shape == (6, 5) and torch.isfinite(ll).all()


def test_ts_inf_paths_are_consistent_functions() -> None:
    """A path is one function: the same input gives the same value in any batch position."""
    model = ExactGPDynamics(OBS, ACT, training_steps=5, num_features=256)
    model.fit(toy_buffer(50))
    fs = model.sample_functions(4, torch.Generator().manual_seed(0))
    o = torch.randn(4, 3, OBS)
    a = torch.rand(4, 3, ACT)
    m1 = fs.mean(o, a)
    m2 = fs.mean(o.flip(1), a.flip(1)).flip(1)
    torch.testing.assert_close(m1, m2)
    # different paths differ away from the data (epistemic spread)
    far = fs.mean(torch.full((4, 1, OBS), 6.0), torch.zeros(4, 1, ACT))
    assert far.std(0).min() > 1e-3


def test_duplicate_inputs_do_not_break_the_exact_gp() -> None:
    buf = toy_buffer(20, repeat=3)
    model = ExactGPDynamics(OBS, ACT, training_steps=20, min_noise=1e-8)
    model.fit(buf)
    b = buf.all()
    pred = model.predict(b.obs[:20], b.action[:20])
    assert torch.isfinite(pred.mean).all()
    assert (pred.mean - b.next_obs[:20]).abs().max() < 0.05
    check_model(model, b.obs[:4], b.action[:4])


def test_jitter_escalation() -> None:
    singular = torch.ones(5, 5, dtype=torch.float64)  # PSD, rank 1: needs jitter
    chol = with_jitter_escalation(lambda: psd_safe_cholesky(singular), "test")
    torch.testing.assert_close(chol @ chol.T, singular, atol=1e-6, rtol=0)
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalue -1
    with pytest.raises(ModelError, match=r"jitter of 1e-03.*min_noise"):
        with_jitter_escalation(lambda: psd_safe_cholesky(indefinite), "test", max_jitter=1e-3)


def test_exact_gp_is_capped_and_options_validated() -> None:
    n = EXACT_GP_MAX_POINTS + 1
    buf = ReplayBuffer(OBS, ACT, n)
    z = torch.zeros(n)
    buf.add(torch.randn(n, OBS), torch.rand(n, ACT), z, torch.randn(n, OBS), z, z)
    with pytest.raises(ModelError, match="SparseGPDynamics"):
        ExactGPDynamics(OBS, ACT).fit(buf)
    with pytest.raises(ConfigError, match="kernel"):
        ExactGPDynamics(OBS, ACT, kernel="rbf2")
    with pytest.raises(ConfigError, match="inducing_init"):
        SparseGPDynamics(OBS, ACT, inducing_init="random")
    with pytest.raises(ModelError, match="fit"):
        ExactGPDynamics(OBS, ACT).sample_functions(2)


def test_kmeans_finds_cluster_centres() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=torch.float64)
    x = centres[:, None] + 0.1 * torch.randn(3, 200, 2, generator=g, dtype=torch.float64)
    found = kmeans_inducing_points(x.reshape(-1, 2), 3, g)
    dist = torch.cdist(found, centres).min(0).values
    assert (dist < 0.05).all(), found
