"""Tests of bayes_mbrl.uncertainty against mock models with known outputs.

The main mock is conjugate: next_obs = obs + k * action + N(0, noise_sd^2) per state
dim, with a Gaussian prior on the scalar slope ``k``; ``fit`` computes the exact
posterior of ``k``, so every quantity has a closed form to test against.
"""

from __future__ import annotations

import importlib
import io
import math
import warnings
from pathlib import Path

import arviz as az
import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer, TransitionBatch
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models import BayesianNeuralNet, ProbabilisticEnsemble
from bayes_mbrl.models.base import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.uncertainty import (
    calibration_error,
    calibration_metrics,
    calibration_metrics_from_moments,
    central_coverage,
    compare_models,
    decompose,
    decompose_model,
    entropy_decomposition,
    gaussian_crps,
    joint_mixture_nll,
    mixture_crps,
    mixture_nll,
    mixture_pit,
    plot_calibration,
    plot_posterior,
    plot_predictive_bands,
    to_inference_data,
    uncertainty_report,
)
from bayes_mbrl.uncertainty.report import SUMMARY_COLUMNS


# ----------------------------------------------------------------------------- mocks
class SlopeFunctions(FunctionSample):
    """``f_i(s, a) = s + slope_i * sum(a)``, Gaussian noise ``noise_sd`` per dim."""

    def __init__(
        self, slope: Tensor, noise_sd: float, num_chains: int = 1, with_latents: bool = True
    ) -> None:
        self.slope, self.noise_sd = slope, noise_sd
        self.n, self.num_chains, self.with_latents = int(slope.shape[0]), num_chains, with_latents

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean = obs + self.slope[:, None, None] * action.sum(-1, keepdim=True)
        return Independent(Normal(mean, torch.full_like(mean, self.noise_sd)), 1)

    def latents(self) -> dict[str, Tensor]:
        if not self.with_latents:
            return {}
        return {"slope": self.slope, "offset": torch.stack([self.slope, -self.slope], -1)}


class SlopeModel(DynamicsModel):
    """Conjugate Bayesian linear dynamics with known noise (see module docstring).

    ``fixed_slope`` pins the slope (a deliberately wrong model when it is wrong).
    """

    def __init__(
        self,
        obs_dim: int = 2,
        noise_sd: float = 0.3,
        prior_sd: float = 1.0,
        fixed_slope: float | None = None,
        num_chains: int = 1,
        with_latents: bool = True,
    ) -> None:
        self.obs_dim, self.action_dim = obs_dim, 1
        self.noise_sd, self.prior_sd, self.fixed_slope = noise_sd, prior_sd, fixed_slope
        self.num_chains, self.with_latents = num_chains, with_latents
        self.post_mean, self.post_sd = 0.0, prior_sd
        if fixed_slope is not None:
            self.post_mean, self.post_sd = fixed_slope, 0.0

    def fit(self, data: ReplayBuffer, generator: torch.Generator | None = None) -> FitReport:
        if self.fixed_slope is None:
            b = data.all()
            a = b.action.double().sum(-1, keepdim=True)
            delta = (b.next_obs - b.obs).double()
            prec = 1 / self.prior_sd**2 + float((a**2).sum()) * self.obs_dim / self.noise_sd**2
            self.post_mean = float((a * delta).sum()) / self.noise_sd**2 / prec
            self.post_sd = prec**-0.5
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        slope = self.post_mean + self.post_sd * torch.randn(n, generator=generator)
        return SlopeFunctions(slope, self.noise_sd, self.num_chains, self.with_latents)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        f = self.sample_functions(num_functions or 100)
        d = f(obs.expand(f.n, -1, -1), action.expand(f.n, -1, -1))
        return Predictive.from_function_moments(d.mean, d.variance)

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        f = self.sample_functions(num_functions or 100)
        return f(obs.expand(f.n, -1, -1), action.expand(f.n, -1, -1)).log_prob(next_obs)


TRUE_SLOPE, NOISE = 0.8, 0.3


def make_batch(n: int, seed: int, obs_dim: int = 2, slope: float = TRUE_SLOPE) -> TransitionBatch:
    """Transitions of the true linear dynamics."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    action = torch.rand(n, 1, generator=g) * 2 - 1
    next_obs = obs + slope * action + NOISE * torch.randn(n, obs_dim, generator=g)
    false = torch.zeros(n, dtype=torch.bool)
    return TransitionBatch(obs, action, torch.zeros(n), next_obs, false, false)


def as_buffer(batch: TransitionBatch) -> ReplayBuffer:
    buf = ReplayBuffer(batch.obs.shape[1], batch.action.shape[1], capacity=len(batch))
    buf.add_batch(batch)
    return buf


def fitted_slope_model(train: TransitionBatch, **kwargs: object) -> SlopeModel:
    model = SlopeModel(obs_dim=train.obs.shape[1], noise_sd=NOISE, **kwargs)  # type: ignore[arg-type]
    model.fit(as_buffer(train))
    return model


def assert_close(actual: Tensor | float, expected: Tensor | float, atol: float, what: str) -> None:
    a, e = (
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
    )
    err = (a - e).abs()
    assert bool((err <= atol).all()), (
        f"{what}: max |error| {float(err.max()):.3g} > {atol} at index "
        f"{np.unravel_index(int(err.argmax()), tuple(err.shape)) if err.dim() else ()}: "
        f"{a.flatten()[int(err.argmax())].item():.5g} vs "
        f"{e.flatten()[int(err.argmax())].item():.5g}"
    )


# ------------------------------------------------------------------------- decompose
def test_decompose_is_the_law_of_total_variance() -> None:
    means = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]], [[4.0, 1.0]]], dtype=torch.float64)
    variances = torch.tensor([[[1.0, 0.5]], [[2.0, 0.5]], [[3.0, 0.5]]], dtype=torch.float64)
    p = decompose(means, variances)
    assert_close(p.mean, [[2.0, 1.0]], 1e-12, "mean")
    assert_close(p.epistemic_var, [[8.0 / 3.0, 0.0]], 1e-12, "epistemic")
    assert_close(p.aleatoric_var, [[2.0, 0.5]], 1e-12, "aleatoric")
    # total variance equals the variance of a large sample from the mixture
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(3, (200_000,), generator=g)
    x = means[comp, 0] + variances[comp, 0].sqrt() * torch.randn(
        200_000, 2, generator=g, dtype=torch.float64
    )
    assert_close(p.total_var[0], x.var(0), 0.05, "total variance vs Monte Carlo")


def test_decompose_rejects_bad_shapes_with_a_fix() -> None:
    with pytest.raises(DataError, match="functions, batch, state_dim"):
        decompose(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(DataError, match="strictly positive"):
        decompose(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))


def test_entropy_well_separated_components_have_mutual_information_log_n(
    generator: torch.Generator,
) -> None:
    # two components 100 sd apart (input 0), three identical ones padded... input 1: identical
    means = torch.tensor([[[-50.0, 0.0], [1.0, 1.0]], [[50.0, 0.0], [1.0, 1.0]]])
    variances = torch.tensor([[[1.0, 2.0], [0.5, 0.5]], [[1.0, 2.0], [0.5, 0.5]]])
    e = entropy_decomposition(means, variances, generator, num_samples=32)
    gauss_h = 0.5 * torch.log(2 * math.pi * math.e * torch.tensor([[1.0, 2.0], [0.5, 0.5]])).sum(-1)
    assert_close(e.aleatoric, gauss_h, 1e-6, "aleatoric = Gaussian entropy")
    assert_close(e.epistemic, [math.log(2), 0.0], 1e-6, "MI: separated -> log 2, identical -> 0")
    assert_close(e.total, gauss_h + torch.tensor([math.log(2), 0.0]), 1e-6, "total")


def test_entropy_matches_quadrature_for_overlapping_mixture(generator: torch.Generator) -> None:
    # 1-D mixture of 3 overlapping Gaussians: total entropy by numerical integration
    mu = torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64)
    var = torch.tensor([0.5, 1.0, 0.3], dtype=torch.float64)
    x = torch.linspace(-15, 15, 200_001, dtype=torch.float64)
    dens = (torch.exp(-0.5 * (x[:, None] - mu) ** 2 / var) / torch.sqrt(2 * math.pi * var)).mean(1)
    h_quad = float(torch.trapezoid(-dens * dens.clamp_min(1e-300).log(), x))
    e = entropy_decomposition(mu[:, None, None], var[:, None, None], generator, num_samples=20_000)
    assert_close(e.total, [h_quad], 0.01, "mixture entropy vs quadrature")
    assert 0.0 < float(e.epistemic) < math.log(3)


def test_entropy_is_seeded_and_chunked_consistently() -> None:
    g = torch.Generator().manual_seed(3)
    means, variances = torch.randn(4, 10, 3, generator=g), torch.rand(4, 10, 3, generator=g) + 0.1
    a = entropy_decomposition(means, variances, torch.Generator().manual_seed(1), 16)
    b = entropy_decomposition(means, variances, torch.Generator().manual_seed(1), 16)
    assert torch.equal(a.total, b.total)
    assert a.total.shape == (10,) and a.epistemic.shape == (10,)


def test_decompose_model_of_conjugate_model_matches_closed_form() -> None:
    model = SlopeModel(obs_dim=2, noise_sd=NOISE)
    model.post_mean, model.post_sd = 0.5, 0.2
    obs, action = torch.zeros(3, 2), torch.tensor([[0.0], [1.0], [2.0]])
    d = decompose_model(
        model, obs, action, num_functions=4000, generator=torch.Generator().manual_seed(0)
    )
    # epistemic var = (a * post_sd)^2, aleatoric = noise^2, mean = s + post_mean * a
    assert_close(
        d.predictive.epistemic_var, (action * 0.2) ** 2 * torch.ones(1, 2), 0.006, "epistemic"
    )
    assert_close(d.predictive.aleatoric_var, torch.full((3, 2), NOISE**2), 1e-6, "aleatoric")
    assert_close(d.predictive.mean, 0.5 * action * torch.ones(1, 2), 0.01, "mean")
    assert_close(d.entropy.epistemic[0], 0.0, 1e-9, "no epistemic entropy at a = 0")
    assert float(d.entropy.epistemic[2]) > float(d.entropy.epistemic[1]) > 0.0
    assert d.num_functions == 4000


def test_decompose_model_on_ensemble(generator: torch.Generator) -> None:
    train = make_batch(100, seed=0)
    model = ProbabilisticEnsemble(2, 1, num_members=3, hidden_sizes=[16], max_epochs=2)
    model.fit(as_buffer(train), generator)
    d = decompose_model(model, train.obs[:7], train.action[:7], generator=generator)
    p = model.predict(train.obs[:7], train.action[:7])
    assert d.num_functions == 3
    assert_close(d.predictive.epistemic_var, p.epistemic_var, 1e-6, "same as model.predict")
    assert_close(d.predictive.aleatoric_var, p.aleatoric_var, 1e-6, "same as model.predict")
    assert bool((d.entropy.epistemic <= math.log(3) + 1e-9).all())


# ------------------------------------------------------------------------ calibration
def test_mixture_of_one_reduces_to_gaussian_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    mu, var, y = (
        torch.randn(1, 50, 2, generator=g),
        torch.rand(1, 50, 2, generator=g) + 0.2,
        torch.randn(50, 2, generator=g),
    )
    nll = -Normal(mu[0].double(), var[0].double().sqrt()).log_prob(y.double())
    assert_close(mixture_nll(mu, var, y), nll, 1e-10, "NLL of one Gaussian")
    assert_close(joint_mixture_nll(mu, var, y), nll.sum(-1), 1e-10, "joint NLL")
    assert_close(mixture_crps(mu, var, y), gaussian_crps(mu[0], var[0], y), 1e-10, "CRPS")
    pit = Normal(mu[0].double(), var[0].double().sqrt()).cdf(y.double())
    assert_close(mixture_pit(mu, var, y), pit, 1e-10, "PIT")
    # a Gaussian centred on the target: CRPS = sigma (sqrt(2) - 1) / sqrt(pi)
    sd = 0.7
    assert_close(
        gaussian_crps(torch.zeros(1), torch.full((1,), sd**2, dtype=torch.float64), torch.zeros(1)),
        sd * (math.sqrt(2) - 1) / math.sqrt(math.pi),
        1e-12,
        "CRPS at the mean",
    )


def test_mixture_crps_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1)
    n, m = 4, 400_000
    mu = torch.randn(n, 3, 1, generator=g, dtype=torch.float64) * 2
    var = torch.rand(n, 3, 1, generator=g, dtype=torch.float64) + 0.1
    y = torch.tensor([[-1.0], [0.5], [4.0]], dtype=torch.float64)
    comp = torch.randint(n, (2, m), generator=g)
    x = mu[comp, :, 0] + var[comp, :, 0].sqrt() * torch.randn(
        2, m, 3, generator=g, dtype=torch.float64
    )
    mc = (x[0] - y[:, 0]).abs().mean(0) - 0.5 * (x[0] - x[1]).abs().mean(0)  # (3,)
    assert_close(mixture_crps(mu, var, y)[:, 0], mc, 0.01, "mixture CRPS vs Monte Carlo")


def test_mixture_nll_is_logsumexp_over_functions() -> None:
    mu = torch.tensor([[[0.0]], [[3.0]]], dtype=torch.float64)
    var = torch.tensor([[[1.0]], [[0.25]]], dtype=torch.float64)
    y = torch.tensor([[1.0]], dtype=torch.float64)
    dens = 0.5 * (torch.exp(Normal(0.0, 1.0).log_prob(y)) + torch.exp(Normal(3.0, 0.5).log_prob(y)))
    assert_close(mixture_nll(mu, var, y), -dens.log(), 1e-10, "mixture NLL")


def _mixture_targets(means: Tensor, sd: float, g: torch.Generator) -> Tensor:
    """One draw per input from the equal-weight mixture N(means_i, sd^2)."""
    n, big_n, d = means.shape
    comp = torch.randint(n, (big_n,), generator=g)
    return means[comp, torch.arange(big_n)] + sd * torch.randn(big_n, d, generator=g)


def test_correct_model_covers_nominal_and_overconfident_model_undercovers() -> None:
    g = torch.Generator().manual_seed(5)
    big_n, n = 4000, 5
    means = 0.3 * torch.randn(n, big_n, 2, generator=g)  # 5 functions, noise dominates
    y = _mixture_targets(means, 0.5, g)
    levels = (0.5, 0.8, 0.9, 0.95)
    good = calibration_metrics_from_moments(means, torch.full_like(means, 0.25), y, levels)
    # coverage ~ Binomial(4000, alpha) / 4000: sd <= 0.008, tolerance 0.03 (about 4 sd)
    assert_close(good.coverage, torch.tensor(levels)[:, None].expand(4, 2), 0.03, "coverage")
    assert bool((good.calibration_error < 0.02).all())
    pit_hist = torch.histc(good.pit[:, 0].float(), bins=10, min=0, max=1) / big_n
    assert_close(pit_hist, torch.full((10,), 0.1), 0.025, "PIT is uniform")
    bad = calibration_metrics_from_moments(means, torch.full_like(means, 0.25 * 0.1), y, levels)
    assert bool((bad.coverage < good.coverage - 0.1).all()), "over-confident must under-cover"
    assert bool((bad.calibration_error > 0.1).all())
    assert bool((bad.nll > good.nll).all()) and bool((bad.crps > good.crps).all())


def test_calibration_metrics_on_conjugate_model() -> None:
    train, test = make_batch(300, seed=0), make_batch(1000, seed=1)
    model = fitted_slope_model(train)
    assert abs(model.post_mean - TRUE_SLOPE) < 4 * model.post_sd
    res = calibration_metrics(model, test.obs, test.action, test.next_obs, num_functions=32)
    assert res.coverage.shape == (4, 2) and res.nll.shape == (2,) and res.num_functions == 32
    assert_close(
        # Binomial(1000, alpha) / 1000 has sd <= 0.016; tolerance 0.045 (about 3 sd)
        res.coverage,
        res.levels[:, None].expand(4, 2),
        0.045,
        "coverage of a correct model",
    )
    # NLL close to the true conditional entropy of N(., 0.3^2)
    assert_close(res.nll, 0.5 * math.log(2 * math.pi * math.e * NOISE**2), 0.05, "NLL")
    overconfident = SlopeModel(obs_dim=2, noise_sd=NOISE / 3)
    overconfident.post_mean, overconfident.post_sd = model.post_mean, model.post_sd
    res_bad = calibration_metrics(
        overconfident, test.obs, test.action, test.next_obs, num_functions=32
    )
    assert bool((res_bad.coverage < res.coverage - 0.2).all())


def test_coverage_and_calibration_error_on_known_pit() -> None:
    pit = torch.tensor([[0.5], [0.3], [0.1], [0.99]], dtype=torch.float64)
    cov = central_coverage(pit, (0.5, 0.9))
    assert_close(cov[:, 0], [0.5, 0.75], 1e-12, "coverage")  # 0.5-interval [.25,.75] holds 2 of 4
    assert_close(calibration_error(pit, (0.5, 0.9)), [(0.0 + 0.15) / 2], 1e-12, "error")
    with pytest.raises(DataError, match=r"in \(0, 1\)"):
        central_coverage(pit, (0.5, 1.5))


# --------------------------------------------------------------------- InferenceData
def _no_group_warnings(caught: list[warnings.WarningMessage]) -> None:
    bad = [
        str(w.message)
        for w in caught
        if any(s in str(w.message).lower() for s in ("group", "log_likelihood", "log likelihood"))
    ]
    assert not bad, f"ArviZ warned about missing groups: {bad}"


def test_to_inference_data_groups_shapes_and_values() -> None:
    train = make_batch(40, seed=0)
    model = fitted_slope_model(train, num_chains=4)
    g = torch.Generator().manual_seed(2)
    idata = to_inference_data(model, as_buffer(train), num_draws=400, generator=g)
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
    }
    post = idata.posterior
    assert post["slope"].dims == ("chain", "draw") and post["slope"].shape == (4, 100)
    assert post["offset"].shape == (4, 100, 2)
    assert idata.posterior_predictive["next_obs"].dims == (
        "chain",
        "draw",
        "transition",
        "state_dim",
    )
    assert idata.log_likelihood["next_obs"].dims == ("chain", "draw", "transition")
    assert idata.observed_data["next_obs"].dims == ("transition", "state_dim")
    assert idata.constant_data["action"].dims == ("transition", "action_dim")
    # chain-major layout: the same draws of the same generator, reshaped
    slopes = model.sample_functions(400, torch.Generator().manual_seed(2)).slope
    np.testing.assert_allclose(
        post["slope"].values, slopes.reshape(4, 100).double().numpy(), rtol=1e-6
    )
    # the slope posterior is the conjugate one
    assert abs(float(post["slope"].mean()) - model.post_mean) < 4 * model.post_sd / 20
    # pointwise log-likelihood is the Gaussian log-density summed over state dims
    k = torch.as_tensor(post["slope"].values[1, 7])
    expected = Normal(train.obs + k.float() * train.action, NOISE).log_prob(train.next_obs).sum(-1)
    np.testing.assert_allclose(
        idata.log_likelihood["next_obs"].values[1, 7], expected.numpy(), rtol=1e-5
    )
    # posterior predictive residuals have the noise scale
    resid = idata.posterior_predictive["next_obs"].values - (
        train.obs.numpy() + post["slope"].values[..., None, None] * train.action.numpy()
    )
    assert abs(resid.std() - NOISE) < 0.01
    np.testing.assert_array_equal(
        idata.observed_data["next_obs"].values, train.next_obs.double().numpy()
    )


def test_to_inference_data_passes_summary_and_loo_without_group_warnings() -> None:
    train = make_batch(60, seed=0)
    for model in (
        fitted_slope_model(train, num_chains=2),
        fitted_slope_model(train, with_latents=False),
    ):
        idata = to_inference_data(model, train, num_draws=200)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = az.summary(idata)
            loo = az.loo(idata, pointwise=True)
        _no_group_warnings(caught)
        assert len(summary) >= 1 and np.isfinite(float(loo.elpd_loo))
        assert loo.loo_i.shape == (60,)
    # no latents: a function index is the posterior
    assert list(idata.posterior.data_vars) == ["function"]
    # an exchangeable, well-posed posterior: LOO elpd is close to the plain log predictive density
    ll = torch.as_tensor(idata.log_likelihood["next_obs"].values.reshape(-1, 60))
    lpd = float((torch.logsumexp(ll, 0) - math.log(ll.shape[0])).sum())
    assert lpd - 3.0 < float(loo.elpd_loo) <= lpd


def test_to_inference_data_of_ensemble_and_errors(generator: torch.Generator) -> None:
    train = make_batch(100, seed=0)
    model = ProbabilisticEnsemble(2, 1, num_members=4, hidden_sizes=[16], max_epochs=2)
    model.fit(as_buffer(train), generator)
    idata = to_inference_data(model, train)
    assert idata.posterior["member"].shape == (1, 4)
    np.testing.assert_array_equal(idata.posterior["member"].values[0], np.arange(4))
    ll = model.log_likelihood(train.obs, train.action, train.next_obs)
    np.testing.assert_allclose(
        idata.log_likelihood["next_obs"].values[0], ll.double().numpy(), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(DataError, match="ReplayBuffer or TransitionBatch"):
        to_inference_data(model, train.obs)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="shape"):
        to_inference_data(model, make_batch(5, seed=0, obs_dim=3))
    bad_chains = fitted_slope_model(train, num_chains=3)
    with pytest.raises(ModelError, match="multiple of num_chains"):
        to_inference_data(bad_chains, train, num_draws=100)


def tiny_nuts_bnn() -> BayesianNeuralNet:
    return BayesianNeuralNet(
        1, 1, hidden_sizes=[4], activation="tanh", inference="nuts", num_samples=20,
        warmup_steps=20, num_chains=2, max_tree_depth=4, map_steps=100, seed=0,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:Your data appears to have a single value")
def test_nuts_bnn_sample_stats_reach_summary_and_trace_plot() -> None:
    """A tiny NUTS BNN (2 chains of 20 + 20 iterations): its InferenceData has
    ``sample_stats`` per chain and draw, ``az.summary`` runs on it, and
    ``az.plot_trace(divergences=...)`` marks exactly the divergent draws. So short a
    warm-up diverges often (here 5 and 16 of 20 draws; the second chain is stuck, its
    acceptance near 0: what these statistics are for), which the marks must show."""
    train = as_buffer(make_batch(100, seed=0, obs_dim=1))
    model = tiny_nuts_bnn()
    model.fit(train, torch.Generator().manual_seed(0))
    idata = to_inference_data(model, train)
    stats = idata.sample_stats
    assert set(stats.data_vars) == {
        "diverging", "acceptance_rate", "step_size", "tree_depth", "n_steps", "lp",
    }  # fmt: skip
    assert all(stats[k].dims == ("chain", "draw") for k in stats.data_vars)
    diverging = stats["diverging"].values
    assert diverging.shape == (2, 20) and diverging.dtype == bool
    accept = stats["acceptance_rate"].values
    assert 0 <= accept.min() and accept.max() <= 1
    assert (stats["tree_depth"].values <= 4).all()
    assert [d["divergences"] for d in model.nuts_diagnostics] == diverging.sum(1).tolist()
    thinned = to_inference_data(model, train, num_draws=10).sample_stats
    assert thinned["diverging"].shape == (2, 5)
    # the statistics are saved with the samples (weights-only)
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    saved.seek(0)
    clone = tiny_nuts_bnn()
    clone.load_state_dict(torch.load(saved, weights_only=True))
    assert to_inference_data(clone, train).sample_stats.equals(stats)
    summary = az.summary(idata, round_to="none")
    assert list(summary.index) == ["noise_std[0]"]
    axes = az.plot_trace(idata, var_names=["noise_std"], divergences="bottom")
    marked = [
        line.get_xdata().tolist() for line in axes[0, 1].get_lines() if line.get_marker() == "|"
    ]
    expected = [np.flatnonzero(d).tolist() for d in diverging if d.any()]
    assert marked == expected and sum(map(len, marked)) > 0
    matplotlib.pyplot.close("all")


# --------------------------------------------------------------------------- compare
def test_compare_models_ranks_correct_model_first_stably() -> None:
    train, test = make_batch(80, seed=0), make_batch(300, seed=1)
    correct = fitted_slope_model(train)
    no_action = fitted_slope_model(train, fixed_slope=0.0)  # ignores the action
    too_noisy = SlopeModel(obs_dim=2, noise_sd=3 * NOISE)
    too_noisy.fit(as_buffer(train))
    models = {"no_action": no_action, "correct": correct, "too_noisy": too_noisy}
    tables = [
        compare_models(
            models, train, num_draws=100, generator=torch.Generator().manual_seed(s), held_out=test
        )
        for s in (0, 1)
    ]
    for table in tables:
        assert table.index[0] == "correct"
        assert {"elpd_loo", "p_loo", "weight", "held_out_nll"} <= set(table.columns)
        nll = table["held_out_nll"]
        assert nll["correct"] < nll["too_noisy"] and nll["correct"] < nll["no_action"]
        # the correct model's held-out NLL is near the entropy of the true noise (2 dims)
        assert abs(nll["correct"] - math.log(2 * math.pi * math.e * NOISE**2)) < 0.2
    assert list(tables[0].index) == list(tables[1].index)
    assert abs(tables[0].loc["correct", "elpd_loo"] - tables[1].loc["correct", "elpd_loo"]) < 1.0


def test_compare_models_single_model_and_bad_ic() -> None:
    train = make_batch(40, seed=0)
    model = fitted_slope_model(train)
    table = compare_models({"only": model}, train, num_draws=100)
    idata = to_inference_data(model, train, num_draws=100)
    assert list(table.index) == ["only"] and table.loc["only", "weight"] == 1.0
    assert abs(table.loc["only", "elpd_loo"] - float(az.loo(idata)["elpd_loo"])) < 1e-9
    ll = torch.as_tensor(idata.log_likelihood["next_obs"].values.reshape(100, -1))
    nll = -(torch.logsumexp(ll, 0) - math.log(100)).mean()
    assert abs(table.loc["only", "held_out_nll"] - float(nll)) < 1e-9  # same draws, no held_out
    with pytest.raises(ConfigError, match="choose one of"):
        compare_models({"only": model}, train, ic="aic")
    with pytest.raises(ConfigError, match="at least one model"):
        compare_models({}, train)
    with pytest.raises(ModelError, match="num_draws >= 2"):
        compare_models({"only": model}, train, num_draws=1)


# ----------------------------------------------------------------------------- plots
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01, f"{path} is blank"


def test_predictive_bands_have_the_known_epistemic_and_aleatoric_parts(tmp_path: Path) -> None:
    model = SlopeModel(obs_dim=2, noise_sd=NOISE)
    model.post_mean, model.post_sd = 0.5, 0.2
    traj = make_batch(30, seed=3)
    bands = plot_predictive_bands(
        model, traj.obs, traj.action, traj.next_obs, tmp_path / "bands.png", num_functions=4000
    )
    assert_png(tmp_path / "bands.png")
    a = traj.action.expand(-1, 2)
    assert_close(bands.mean, traj.obs + 0.5 * a, 0.01, "mean")
    assert_close(bands.epistemic_sd, 0.2 * a.abs(), 0.01, "epistemic sd = |a| * posterior sd")
    assert_close(bands.aleatoric_sd, torch.full_like(a, NOISE), 1e-6, "aleatoric sd = noise")
    assert_close(bands.total_sd**2, bands.epistemic_sd**2 + NOISE**2, 1e-5, "total")
    lo, hi = bands.inner()
    assert_close(hi - lo, 4 * bands.epistemic_sd, 1e-6, "inner band width")
    lo, hi = bands.outer()
    assert bool((hi - lo >= 4 * NOISE - 1e-6).all())
    assert torch.equal(bands.observed, traj.next_obs) and bands.num_functions == 4000


def test_plot_calibration_and_posterior_write_pngs(tmp_path: Path) -> None:
    train, test = make_batch(60, seed=0), make_batch(100, seed=1)
    model = fitted_slope_model(train, num_chains=2)
    result = calibration_metrics(model, test.obs, test.action, test.next_obs, num_functions=32)
    assert plot_calibration(result, tmp_path / "cal.png") == tmp_path / "cal.png"
    assert_png(tmp_path / "cal.png")
    idata = to_inference_data(model, train, num_draws=64)
    assert_png(plot_posterior(idata, tmp_path / "sub" / "post.png", var_names=["slope"]))
    with pytest.raises(DataError, match="choose from"):
        plot_posterior(idata, tmp_path / "x.png", var_names=["mass"])


# ---------------------------------------------------------------------------- report
def test_uncertainty_report_writes_consistent_files(tmp_path: Path) -> None:
    train, held_out = make_batch(120, seed=0), make_batch(60, seed=1)
    model = ProbabilisticEnsemble(2, 1, num_members=4, hidden_sizes=[16], max_epochs=3)
    model.fit(as_buffer(train), torch.Generator().manual_seed(0))
    paths = uncertainty_report(
        model, train, held_out, tmp_path / "analysis", generator=torch.Generator().manual_seed(1)
    )
    assert set(paths) == {
        "predictive_bands",
        "calibration",
        "posterior",
        "summary",
        "inference_data",
    }
    for key in ("predictive_bands", "calibration", "posterior"):
        assert_png(paths[key])
    table = pd.read_csv(paths["summary"], dtype={"state_dim": str}).fillna({"state_dim": ""})
    assert tuple(table.columns) == SUMMARY_COLUMNS
    value = {
        (r.section, r.variable, str(r.state_dim), r.statistic): r.value for r in table.itertuples()
    }
    # posterior: the member index of a 4-member ensemble, uniform over 0..3
    assert value[("posterior", "member", "", "mean")] == pytest.approx(1.5)
    # held-out metrics are those of calibration_metrics (all members: deterministic)
    cal = calibration_metrics(model, held_out.obs, held_out.action, held_out.next_obs)
    for d in range(2):
        assert value[("held_out", "next_obs", str(d), "nll")] == pytest.approx(float(cal.nll[d]))
        assert value[("held_out", "next_obs", str(d), "crps")] == pytest.approx(float(cal.crps[d]))
        assert value[("held_out", "next_obs", str(d), "coverage_0.9")] == pytest.approx(
            float(cal.coverage[2, d])
        )
    assert value[("held_out", "next_obs", "all", "joint_nll")] == pytest.approx(cal.joint_nll)
    # LOO on the training transitions, and the netCDF round trip
    idata = az.from_netcdf(paths["inference_data"])
    assert value[("loo", "next_obs", "all", "elpd_loo")] == pytest.approx(
        float(az.loo(idata)["elpd_loo"])
    )
    ll = model.log_likelihood(train.obs, train.action, train.next_obs)
    np.testing.assert_allclose(
        idata.log_likelihood["next_obs"].values[0], ll.double().numpy(), rtol=1e-5, atol=1e-5
    )
    assert idata.observed_data["next_obs"].shape == (120, 2)
    empty = held_out.index(torch.arange(0))
    with pytest.raises(DataError, match="no transitions"):
        uncertainty_report(model, train, empty, tmp_path / "x")


def test_chunked_evaluation_matches_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # the package exports a function named like the module: fetch the module itself
    decompose_module = importlib.import_module("bayes_mbrl.uncertainty.decompose")
    train = make_batch(50, seed=0)
    model = fitted_slope_model(train)
    full_ll = to_inference_data(model, train, num_draws=8).log_likelihood["next_obs"].values
    full = decompose_model(model, train.obs, train.action, num_functions=8)
    monkeypatch.setattr(decompose_module, "ROWS_PER_CALL", 24)  # 3 inputs per call
    assert len(decompose_module.input_chunks(8, 50)) == 17
    chunked_ll = to_inference_data(model, train, num_draws=8).log_likelihood["next_obs"].values
    chunked = decompose_model(model, train.obs, train.action, num_functions=8)
    np.testing.assert_array_equal(chunked_ll, full_ll)
    assert torch.equal(chunked.predictive.mean, full.predictive.mean)
    assert torch.equal(chunked.predictive.epistemic_var, full.predictive.epistemic_var)
