"""User GPyTorch kernels and means in the GP dynamics, the GP options and registration,
and the shared hyperparameter loop."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from gpytorch.kernels import MaternKernel, PeriodicKernel, RBFKernel, ScaleKernel
from gpytorch.means import LinearMean, ZeroMean
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import MODELS, FitReport
from bayes_mbrl.models.gp import (
    ExactGPDynamics,
    GPOptions,
    ModulePathSample,
    SparseGPDynamics,
    SparseGPOptions,
    fit_hyperparameters,
)
from bayes_mbrl.options import OptionError
from bayes_mbrl.planning.moment_matching import segp_from_exact
from bayes_mbrl.user_code import load_user_function

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "experiments" / "user_kernel_pendulum.py"
OBS, ACT = 2, 1


def toy_buffer(n: int, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, OBS, generator=g) * 4 - 2
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    delta = torch.stack([0.3 * torch.sin(obs[:, 1]) + 0.2 * act[:, 0], -0.2 * obs[:, 0]], -1)
    nxt = obs + delta + 0.01 * torch.randn(n, OBS, generator=g)
    buf = ReplayBuffer(OBS, ACT, n)
    z = torch.zeros(n)
    buf.add(obs, act, z, nxt, z, z)
    return buf


def pendulum_buffer(n: int, seed: int = 0) -> ReplayBuffer:
    """Pendulum-v1 transitions from its equations (observation (cos, sin, theta_dot))."""
    g = torch.Generator().manual_seed(seed)
    th = torch.rand(n, generator=g) * 2 * math.pi - math.pi
    thdot = torch.rand(n, generator=g) * 16 - 8
    u = torch.rand(n, generator=g) * 4 - 2
    new_thdot = (thdot + (15.0 * torch.sin(th) + 3.0 * u) * 0.05).clamp(-8, 8)
    new_th = th + new_thdot * 0.05
    obs = torch.stack([th.cos(), th.sin(), thdot], -1)
    nxt = torch.stack([new_th.cos(), new_th.sin(), new_thdot], -1)
    buf = ReplayBuffer(3, 1, n)
    z = torch.zeros(n)
    buf.add(obs, u[:, None], z, nxt, z, z)
    return buf


def matern12(d: int, batch: torch.Size) -> ScaleKernel:
    """A user kernel: Matérn-1/2 on inputs 0 and 2 only."""
    return ScaleKernel(
        MaternKernel(nu=0.5, ard_num_dims=2, active_dims=[0, 2], batch_shape=batch),
        batch_shape=batch,
    )


def user_se(d: int, batch: torch.Size) -> ScaleKernel:
    """The built-in "se" written by a user (same initial values)."""
    base = RBFKernel(ard_num_dims=d, batch_shape=batch)
    base.lengthscale = torch.ones(*batch, 1, d)
    kernel = ScaleKernel(base, batch_shape=batch)
    kernel.outputscale = torch.ones(batch)
    return kernel


def normalized(buf: ReplayBuffer) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    b = buf.all()
    x = torch.cat([b.obs, b.action], -1).double()
    y = (b.next_obs - b.obs).double()
    xm, xs = x.mean(0), x.std(0, unbiased=False)
    ym, ys = y.mean(0), y.std(0, unbiased=False)
    return (x - xm) / xs, (y - ym) / ys, xm, xs, ym, ys


def test_user_kernel_posterior_equals_closed_form() -> None:
    """Posterior mean of a user Matérn-1/2 kernel on two inputs, zero mean:
    ``K*(K + s2 I)^-1 y`` with the kernel written out by hand."""
    buf = toy_buffer(40)
    model = ExactGPDynamics(
        OBS, ACT, kernel=matern12, mean=lambda d, b: ZeroMean(), training_steps=0
    )
    ls = torch.tensor([[0.7, 1.3], [1.1, 0.9]], dtype=torch.float64)
    amp = torch.tensor([1.5, 0.6], dtype=torch.float64)
    noise = torch.tensor([0.05, 0.02], dtype=torch.float64)
    model.covar_module.base_kernel.lengthscale = ls[:, None, :]
    model.covar_module.outputscale = amp
    model.likelihood.noise = noise[:, None]
    model.fit(buf)
    x, y, xm, xs, ym, ys = normalized(buf)
    q = toy_buffer(6, seed=1).all()
    xq = (torch.cat([q.obs, q.action], -1).double() - xm) / xs
    pred = model.predict(q.obs, q.action)
    for j in range(OBS):

        def k(a: Tensor, b: Tensor) -> Tensor:
            r = torch.cdist(a[:, [0, 2]] / ls[j], b[:, [0, 2]] / ls[j])  # noqa: B023
            return amp[j] * torch.exp(-r)  # noqa: B023

        gram = k(x, x) + noise[j] * torch.eye(x.shape[0], dtype=torch.float64)
        mean = k(xq, x) @ torch.linalg.solve(gram, y[:, j])
        expect = q.obs[:, j].double() + mean * ys[j] + ym[j]
        torch.testing.assert_close(pred.mean[:, j].double(), expect, rtol=1e-5, atol=1e-6)


def test_user_se_kernel_gives_the_builtin_moment_matching_gp() -> None:
    buf = toy_buffer(50)
    builtin = ExactGPDynamics(OBS, ACT, kernel="se", training_steps=10)
    user = ExactGPDynamics(OBS, ACT, kernel=user_se, training_steps=10)
    assert builtin.supports_moment_matching and user.supports_moment_matching
    builtin.fit(buf, torch.Generator().manual_seed(0))
    user.fit(buf, torch.Generator().manual_seed(0))
    a, b = segp_from_exact(builtin), user.se_gp_posterior()
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert (va is None and vb is None) or torch.equal(va, vb), f.name
    # not SE (or not a constant mean): no moment matching
    for model in (
        ExactGPDynamics(OBS, ACT, kernel=matern12),
        ExactGPDynamics(OBS, ACT, kernel=user_se, mean=lambda d, b: LinearMean(d, batch_shape=b)),
    ):
        assert not model.supports_moment_matching
        with pytest.raises(ConfigError, match="squared-exponential"):
            model.se_gp_posterior()


def test_kernel_without_feature_map_is_refused_with_the_supported_list() -> None:
    def periodic_times_rbf(d: int, batch: torch.Size) -> ScaleKernel:
        return ScaleKernel(
            PeriodicKernel(batch_shape=batch) * RBFKernel(batch_shape=batch), batch_shape=batch
        )

    for cls in (ExactGPDynamics, SparseGPDynamics):
        with pytest.raises(ModelError) as err:
            cls(OBS, ACT, kernel=periodic_times_rbf)
        text = str(err.value)
        assert "ScaleKernel(ProductKernel(PeriodicKernel, RBFKernel))" in text
        assert "Supported: RBFKernel, MaternKernel" in text


def test_user_modules_of_the_wrong_kind_or_shape() -> None:
    with pytest.raises(ConfigError, match="batch_shape"):
        ExactGPDynamics(OBS, ACT, kernel=RBFKernel())
    with pytest.raises(ConfigError, match="gpytorch Kernel"):
        ExactGPDynamics(OBS, ACT, kernel=lambda d, b: torch.nn.Linear(d, 1))
    with pytest.raises(ConfigError, match="names a factory"):
        ExactGPDynamics(OBS, ACT, kernel="my_kernels.py:make")


def test_periodic_user_kernel_draws_are_consistent_functions() -> None:
    """The example's angle-periodic kernel and linear mean on Pendulum: one path is one
    function (same input, same value, in any position and any call, also after a
    refit), and the paths' mean is the posterior mean."""
    make_kernel = load_user_function(f"{EXAMPLE}:make_kernel", "model.kernel")
    make_mean = load_user_function(f"{EXAMPLE}:make_mean", "model.mean")
    buf = pendulum_buffer(150)
    model = ExactGPDynamics(3, 1, kernel=make_kernel, mean=make_mean, training_steps=30)
    model.fit(buf, torch.Generator().manual_seed(0))
    fs = model.sample_functions(500, torch.Generator().manual_seed(1))
    assert isinstance(fs, ModulePathSample)
    q = pendulum_buffer(3, seed=2).all()
    o = torch.cat([q.obs, q.obs[:1]]).expand(500, -1, -1)
    a = torch.cat([q.action, q.action[:1]]).expand(500, -1, -1)
    m1 = fs.mean(o, a)
    torch.testing.assert_close(m1[:, 0], m1[:, 3], rtol=0, atol=1e-12)  # same input, same value
    torch.testing.assert_close(fs.mean(o.flip(1), a.flip(1)).flip(1), m1, rtol=0, atol=1e-12)
    assert m1[:, 0].std(0).max() > 0  # different functions differ
    again = model.sample_functions(500, torch.Generator().manual_seed(1))
    assert torch.equal(again.mean(o, a), m1)
    pred = model.predict(q.obs, q.action)
    model.fit(pendulum_buffer(100, seed=5))  # a refit does not reach drawn functions
    assert torch.equal(fs.mean(o, a), m1)
    # the path mean is the posterior mean (4 standard errors of 500 draws + feature bias)
    spread = (pred.epistemic_var / 500).sqrt()
    assert ((m1[:, :3].mean(0) - pred.mean).abs() <= 4 * spread + 0.01).all()


def test_sparse_gp_takes_user_modules() -> None:
    def matern32(d: int, batch: torch.Size) -> ScaleKernel:
        return ScaleKernel(
            MaternKernel(nu=1.5, ard_num_dims=d, batch_shape=batch), batch_shape=batch
        )

    buf = toy_buffer(200)
    model = SparseGPDynamics(
        OBS, ACT, kernel=matern32, num_inducing=24, batch_size=100, min_steps=50,
        learning_rate=0.05, natural_gradient=True,
    )  # fmt: skip
    model.fit(buf, torch.Generator().manual_seed(0))
    fs = model.sample_functions(3, torch.Generator().manual_seed(0))
    o, a = torch.zeros(3, 2, OBS), torch.zeros(3, 2, ACT)
    m = fs.mean(o, a)
    torch.testing.assert_close(m[:, 0], m[:, 1], rtol=0, atol=1e-12)
    test = toy_buffer(30, seed=1).all()
    rmse = (model.predict(test.obs, test.action).mean - test.next_obs).square().mean().sqrt()
    assert rmse < 0.05, rmse  # deltas have scale ~0.3, noise 0.01


def test_factories_are_seeded_by_the_model_not_the_global_rng() -> None:
    def mean(d: int, b: torch.Size) -> LinearMean:
        return LinearMean(d, batch_shape=b)  # random initial weights

    torch.manual_seed(1)
    first = ExactGPDynamics(OBS, ACT, mean=mean, seed=3).mean_module.weights.clone()
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = ExactGPDynamics(OBS, ACT, mean=mean, seed=3).mean_module.weights
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


# ------------------------------------------------------------------- options
def test_registration_and_option_defaults_match_the_constructors() -> None:
    assert MODELS.get("gp") is ExactGPDynamics and MODELS.options("gp") is GPOptions
    assert MODELS.get("sparse_gp") is SparseGPDynamics
    assert MODELS.options("sparse_gp") is SparseGPOptions
    for cls, options in ((ExactGPDynamics, GPOptions()), (SparseGPDynamics, SparseGPOptions())):
        built = cls.from_options(options, OBS, ACT, seed=0)
        assert built.options == cls(OBS, ACT).options == options


def test_options_map_to_the_constructor() -> None:
    opts = GPOptions(
        kernel=f"{EXAMPLE}:make_kernel", mean=f"{EXAMPLE}:make_mean", num_steps=7,
        learning_rate=0.01, num_features=64, max_train_points=300,
    )  # fmt: skip
    model = ExactGPDynamics.from_options(opts, 3, 1, seed=4)
    assert model.kernel == "ScaleKernel(RBFKernel)" and not model.builtin_prior
    assert (model.training_steps, model.max_train_points, model.seed) == (7, 300, 4)
    assert ExactGPDynamics.from_options(GPOptions(), 3, 1).max_train_points is None
    sparse = SparseGPDynamics.from_options(SparseGPOptions(max_epochs=3, kernel="matern32"), 3, 1)
    assert (sparse.epochs, sparse.kernel) == (3, "matern32")


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(OptionError, match="ExactGPDynamics: training_steps = -1"):
        ExactGPDynamics(OBS, ACT, training_steps=-1)
    with pytest.raises(OptionError, match="SparseGPDynamics: epochs = -2"):
        SparseGPDynamics(OBS, ACT, epochs=-2)
    with pytest.raises(OptionError, match="num_features"):
        ExactGPDynamics(OBS, ACT, num_features=7)
    with pytest.raises(OptionError, match="max_train_points"):
        ExactGPDynamics(OBS, ACT, max_train_points=1)
    with pytest.raises(OptionError, match=r"kernel = 'rbf'.*'path/to/file.py:function'"):
        GPOptions(kernel="rbf")
    assert GPOptions(kernel="pkg.kernels:make").kernel == "pkg.kernels:make"
    with pytest.raises(ConfigError, match="no function 'nope'"):
        ExactGPDynamics.from_options(GPOptions(kernel=f"{EXAMPLE}:nope"), 3, 1)


def test_progress_calls_match_progress_total() -> None:
    buf = toy_buffer(40)
    for model in (
        ExactGPDynamics(OBS, ACT, training_steps=7),
        SparseGPDynamics(OBS, ACT, num_inducing=8, epochs=0, min_steps=101),
    ):
        calls: list[int] = []
        model.fit(buf, progress=lambda i, loss, val, calls=calls: calls.append(i))
        assert len(calls) == model.progress_total()
    assert ExactGPDynamics(OBS, ACT, learning_rate=0.0).progress_total() == 0
    assert SparseGPDynamics(OBS, ACT).progress_total() is None  # grows with the data


def test_fit_hyperparameters_restores_on_divergence() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    report = FitReport()

    def loss_at(i: int):  # type: ignore[no-untyped-def]
        return lambda: w.square().sum() if i < 3 else w.sum() * math.nan

    with pytest.raises(ModelError, match="toy objective fit failed at step 3"):
        fit_hyperparameters(
            loss_at, [opt], 10, [w], report, what="toy", objective="toy objective",
            max_jitter=1e-3,
        )  # fmt: skip
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
    assert report.epochs == 3 and len(report.train_losses) == 3
