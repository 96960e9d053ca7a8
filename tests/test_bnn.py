"""The Bayesian neural network: recovery of known noise and means, the ELBO's scaling,
seeded weight draws, persistence, errors, and the uncertainty split next to the ensemble."""

from __future__ import annotations

import io
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models import DynamicsModel, ProbabilisticEnsemble, check_model
from bayes_mbrl.models.bnn import BayesianNeuralNet
from bayes_mbrl.options import OptionError


def buffer(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> ReplayBuffer:
    n = obs.shape[0]
    buf = ReplayBuffer(obs.shape[1], action.shape[1], n)
    buf.add(obs, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    return buf


def linear_gaussian(n: int, seed: int = 0, sigma: float = 0.1) -> ReplayBuffer:
    """``s' = s + 0.8 a - 0.3 s + N(0, sigma^2)``, s and a uniform on [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, 1, generator=g) * 2 - 1
    a = torch.rand(n, 1, generator=g) * 2 - 1
    ns = s + 0.8 * a - 0.3 * s + sigma * torch.randn(n, 1, generator=g)
    return buffer(s, a, ns)


@pytest.fixture(scope="module")
def fitted_linear() -> BayesianNeuralNet:
    torch.manual_seed(0)
    model = BayesianNeuralNet(
        1, 1, hidden_sizes=[16], noise="homoscedastic", max_epochs=150, learning_rate=1e-2, seed=0
    )
    model.fit(linear_gaussian(600), torch.Generator().manual_seed(0))
    return model


def test_recovers_linear_gaussian_mean_and_noise(fitted_linear: BayesianNeuralNet) -> None:
    s = torch.linspace(-0.9, 0.9, 7)[:, None]
    a = torch.linspace(0.8, -0.8, 7)[:, None]
    p = fitted_linear.predict(s, a)
    # mean-field VI fits the mean a little loosely, and the noise absorbs the misfit
    torch.testing.assert_close(p.mean, s + 0.8 * a - 0.3 * s, atol=0.07, rtol=0)
    ratio = float(p.aleatoric_var.mean() / 0.1**2)
    assert 0.8 < ratio < 1.4, ratio
    # the noise latent (reported for ArviZ) is the noise level in observation units
    noise = fitted_linear.sample_functions(50, torch.Generator().manual_seed(1)).latents()
    assert noise["noise_std"].shape == (50, 1)
    assert abs(float(noise["noise_std"].mean()) - 0.1) < 0.02
    # inside the data, the function uncertainty is small against the noise
    assert float(p.epistemic_var.mean()) < 0.2 * 0.1**2


def test_negative_elbo_is_pyros_trace_mean_field_elbo() -> None:
    for noise in ("heteroscedastic", "homoscedastic"):
        model = BayesianNeuralNet(2, 1, hidden_sizes=[8, 8], noise=noise)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.guide_params.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        x, y, rows = (
            torch.randn(10, 3, generator=g),
            torch.randn(10, 2, generator=g),
            torch.arange(10),
        )
        torch.manual_seed(3)
        with pyro.validation_enabled(False):
            ref = TraceMeanField_ELBO().differentiable_loss(
                model.model, model.guide, x, y, rows, 50
            )
        torch.manual_seed(3)
        ours = model.negative_elbo(x, y, 50)
        torch.testing.assert_close(ours, ref)


def test_minibatch_elbo_counts_the_kl_once_per_data_set() -> None:
    """With (almost) deterministic weights, the mean of the minibatch losses over a
    partition equals the full-data loss: sum of NLLs + KL once."""
    model = BayesianNeuralNet(1, 1, hidden_sizes=[8], noise="homoscedastic")
    with torch.no_grad():
        for name, p in model.guide_params.named_parameters():
            if "rho" in name:
                p.fill_(-20.0)  # scale ~2e-9: draws equal the means
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=g), torch.randn(40, 1, generator=g)
    full = model.negative_elbo(x, y, 40)
    parts = torch.stack(
        [model.negative_elbo(x[i : i + 10], y[i : i + 10], 40) for i in (0, 10, 20, 30)]
    )
    torch.testing.assert_close(parts.mean(), full, rtol=1e-5, atol=1e-3)
    # and the KL term is the closed form between the guide and the prior
    with torch.no_grad():
        kl = 0.0
        for loc, rho in zip(
            [*model.guide_params.w_loc, *model.guide_params.b_loc],
            [*model.guide_params.w_rho, *model.guide_params.b_rho],
            strict=True,
        ):
            s = F.softplus(rho)
            kl += float((0.5 * (s**2 + loc**2 - 1) - s.log()).sum())
        s = F.softplus(model.guide_params.noise_rho)
        z = (model.guide_params.noise_loc + 2.0) / 3.0
        kl += float((0.5 * ((s / 3) ** 2 + z**2 - 1) - (s / 3).log()).sum())
    nll_zero_data = model.negative_elbo(x[:1], y[:1], 1e-9)  # likelihood weight ~0
    assert math.isclose(float(nll_zero_data.detach()), kl, rel_tol=1e-4)


def test_more_data_narrows_the_posterior_and_no_data_keeps_the_prior() -> None:
    def median_weight_scale(n: int) -> float:
        model = BayesianNeuralNet(
            1,
            1,
            hidden_sizes=[4],
            noise="homoscedastic",
            batch_size=n,
            max_epochs=600,
            learning_rate=0.05,
            val_fraction=0.0,
            prior_scale=1.0,
            seed=0,
        )
        model.fit(linear_gaussian(n, seed=1), torch.Generator().manual_seed(0))
        scales = torch.cat([F.softplus(r).flatten() for r in model.guide_params.w_rho])
        return float(scales.detach().median())

    tiny, few, many = median_weight_scale(2), median_weight_scale(100), median_weight_scale(400)
    # two transitions cannot move the posterior far from the N(0, 1) prior
    assert tiny > 0.6, tiny
    # the posterior narrows as the data grows (roughly 1 / sqrt(N))
    assert many < few < 0.5 * tiny, (tiny, few, many)
    assert many < 0.75 * few, (few, many)


def test_sample_functions_seeded_vectorized_and_different(fitted_linear: BayesianNeuralNet) -> None:
    s = torch.linspace(-1, 1, 5)[:, None].expand(6, -1, -1)
    a = torch.zeros(6, 5, 1)
    f1 = fitted_linear.sample_functions(6, torch.Generator().manual_seed(7))
    f2 = fitted_linear.sample_functions(6, torch.Generator().manual_seed(7))
    f3 = fitted_linear.sample_functions(6, torch.Generator().manual_seed(8))
    assert f1.n == 6 and f1.num_chains == 1
    assert [tuple(w.shape) for w in f1.weights] == [(6, 2, 16)]
    assert tuple(f1.out_weight_t.shape) == (6, 2, 16)
    dist = f1(s, a)
    assert tuple(dist.batch_shape) == (6, 5) and tuple(dist.event_shape) == (1,)
    torch.testing.assert_close(f1.mean(s, a), f2.mean(s, a), rtol=0, atol=0)
    assert not torch.equal(f1.mean(s, a), f3.mean(s, a))
    m = f1.mean(s, a)
    assert float((m - m.mean(0)).abs().max()) > 1e-5  # the draws are different functions
    x = f1.sample(s, a, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, f1.sample(s, a, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    assert fitted_linear.num_functions_hint is None
    ll = fitted_linear.log_likelihood(s[0], a[0], s[0], 9)
    assert ll.shape == (9, 5) and bool(torch.isfinite(ll).all())


def test_check_model_and_state_dict_round_trip(fitted_linear: BayesianNeuralNet) -> None:
    buf = linear_gaussian(20, seed=3)
    data = buf.all()
    check_model(fitted_linear, data.obs, data.action, data.next_obs)
    f = io.BytesIO()
    torch.save(fitted_linear.state_dict(), f)
    f.seek(0)
    state = torch.load(f, weights_only=True)
    clone = BayesianNeuralNet(1, 1, hidden_sizes=[16], noise="homoscedastic", seed=5)
    with pytest.raises(ModelError, match="fit"):
        clone.predict(data.obs, data.action)
    clone.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    o, a = data.obs.expand(4, -1, -1), data.action.expand(4, -1, -1)
    torch.testing.assert_close(
        clone.sample_functions(4, g1).mean(o, a),
        fitted_linear.sample_functions(4, g2).mean(o, a),
        rtol=0,
        atol=0,
    )
    wrong = BayesianNeuralNet(1, 1, hidden_sizes=[32], noise="homoscedastic")
    with pytest.raises(ModelError, match="config it was saved with"):
        wrong.load_state_dict(state)


def test_errors_name_the_problem() -> None:
    with pytest.raises(OptionError, match=r"BayesianNeuralNet: noise = 'laplace'.*heteroscedastic"):
        BayesianNeuralNet(1, 1, noise="laplace")
    with pytest.raises(OptionError, match=r"inference = 'hmc'.*one of 'svi', 'nuts'"):
        BayesianNeuralNet(1, 1, inference="hmc")
    with pytest.raises(ConfigError, match="activation"):
        BayesianNeuralNet(1, 1, activation="gelu2")
    with pytest.raises(ConfigError, match="prior_scale"):
        BayesianNeuralNet(1, 1, prior_scale=0.0)
    with pytest.raises(OptionError, match=r"val_fraction = 0\.5 .*\[0, 0\.5\)"):
        BayesianNeuralNet(1, 1, val_fraction=0.5)
    model = BayesianNeuralNet(1, 1, hidden_sizes=[4])
    with pytest.raises(ModelError, match="not been fitted"):
        model.sample_functions(3)
    with pytest.raises(DataError, match="at least 2"):
        model.fit(linear_gaussian(1))


def test_non_finite_elbo_restores_parameters_and_says_what_to_change() -> None:
    model = BayesianNeuralNet(1, 1, hidden_sizes=[4], max_epochs=3, learning_rate=1e12)
    before = [p.detach().clone() for p in model.guide_params.parameters()]
    with pytest.raises(ModelError, match=r"non-finite ELBO.*learning_rate"):
        model.fit(linear_gaussian(50), torch.Generator().manual_seed(0))
    # the first step overflowed: the parameters are back at their last good (initial) values
    for p, b in zip(model.guide_params.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)


# ------------------------------------------------------------------ must show
def gap_buffer(n: int, seed: int) -> ReplayBuffer:
    """``s' = s + sin(s) + N(0, (0.05 + 0.1|s|)^2)``, s on [-3, -1] U [1, 3], irrelevant action."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, generator=g) * 4 - 2
    x = u + torch.sign(u)
    a = torch.rand(n, 1, generator=g) * 2 - 1
    ns = x + torch.sin(x) + (0.05 + 0.1 * x.abs()) * torch.randn(n, 1, generator=g)
    return buffer(x, a, ns)


@pytest.mark.parametrize("kind", ["ensemble", "bnn"])
def test_aleatoric_recovered_and_epistemic_grows_off_the_data(kind: str) -> None:
    """Both recover the known noise inside the data. The ensemble's epistemic variance
    grows in the gap between the two data clusters; the mean-field BNN's does not
    (a known limitation of factorized Gaussian posteriors: Foong et al. 2019, "'In-Between'
    Uncertainty in Bayesian Neural Networks"), but it grows away from the data."""
    torch.manual_seed(0)
    model: DynamicsModel
    if kind == "ensemble":
        model = ProbabilisticEnsemble(1, 1, 5, hidden_sizes=[32, 32], max_epochs=60, patience=10)
        nf = None
    else:
        model = BayesianNeuralNet(
            1, 1, hidden_sizes=[32, 32], max_epochs=60, patience=10, learning_rate=1e-2
        )
        nf = 100
    model.fit(gap_buffer(1000, seed=0), torch.Generator().manual_seed(0))
    inside = torch.cat([torch.linspace(-2.9, -1.1, 30), torch.linspace(1.1, 2.9, 30)])[:, None]
    gap = torch.linspace(-0.6, 0.6, 13)[:, None]
    p_in = model.predict(inside, torch.zeros_like(inside), nf)
    p_gap = model.predict(gap, torch.zeros_like(gap), nf)
    torch.testing.assert_close(p_in.mean, inside + torch.sin(inside), atol=0.15, rtol=0)
    ratio = float(p_in.aleatoric_var.mean() / ((0.05 + 0.1 * inside.abs()) ** 2).mean())
    assert 0.7 < ratio < 1.35, ratio
    gap_ratio = float(p_gap.epistemic_var.mean() / p_in.epistemic_var.mean())
    far = torch.tensor([[-8.0], [8.0]])
    p_far = model.predict(far, torch.zeros_like(far), nf)
    far_ratio = float(p_far.epistemic_var.mean() / p_in.epistemic_var.mean())
    assert far_ratio > 5, far_ratio
    if kind == "ensemble":
        assert gap_ratio > 3, gap_ratio


def test_nuts_keeps_the_chains_apart() -> None:
    model = BayesianNeuralNet(
        1,
        1,
        hidden_sizes=[2],
        inference="nuts",
        noise="homoscedastic",
        num_samples=10,
        warmup_steps=10,
        num_chains=2,
        map_steps=200,
        max_tree_depth=4,
    )
    g = torch.Generator().manual_seed(0)
    s = torch.rand(20, 1, generator=g) * 2 - 1
    buf = buffer(s, torch.rand(20, 1, generator=g), 1.5 * s + 0.1 * torch.randn(20, 1, generator=g))
    model.fit(buf, torch.Generator().manual_seed(1))
    f = model.posterior_functions()
    assert (f.n, f.num_chains) == (20, 2)
    torch.testing.assert_close(f.member_index, torch.arange(20))  # chain-major sample order
    thinned = model.posterior_functions(10)
    assert (thinned.n, thinned.num_chains) == (10, 2)
    assert thinned.member_index.tolist() == [0, 2, 4, 7, 9, 10, 12, 14, 17, 19]
    noise = f.latents()["noise_std"]
    assert noise.shape == (20, 1) and 0.05 < float(noise.mean()) < 0.3
    # NUTS draws are the stored samples: the same draw index gives the same function
    data = buf.all()
    o, a = data.obs.expand(20, -1, -1), data.action.expand(20, -1, -1)
    again = model.posterior_functions()
    torch.testing.assert_close(f.mean(o, a), again.mean(o, a), rtol=0, atol=0)
    assert float(f.mean(o, a).std(0).mean()) > 1e-4  # different samples, different functions


@pytest.mark.parametrize("noise", ["heteroscedastic", "homoscedastic"])
def test_nuts_potential_is_minus_the_log_joint_of_the_pyro_program(noise: str) -> None:
    from pyro import poutine

    model = BayesianNeuralNet(2, 1, hidden_sizes=[5, 3], noise=noise, prior_scale=0.7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)
    with pyro.validation_enabled(False):
        trace = poutine.trace(model.model).get_trace(x, y, torch.arange(30), 30)
    params = {k: v["value"] for k, v in trace.nodes.items() if k[0] in "wbl" and k != "delta"}
    assert len(params) == 6 + (noise == "homoscedastic")
    torch.testing.assert_close(model.potential_energy(params, x, y), -trace.log_prob_sum())


def test_nuts_options_are_validated() -> None:
    with pytest.raises(OptionError, match=r"max_tree_depth = 0 .*\[1, 15\]"):
        BayesianNeuralNet(1, 1, inference="nuts", max_tree_depth=0)
    with pytest.raises(OptionError, match=r"max_tree_depth = 16 "):
        BayesianNeuralNet(1, 1, inference="nuts", max_tree_depth=16)
    with pytest.raises(ConfigError, match="target_accept_prob"):
        BayesianNeuralNet(1, 1, inference="nuts", target_accept_prob=1.0)
    with pytest.raises(ConfigError, match=r"nuts_init.*map"):
        BayesianNeuralNet(1, 1, inference="nuts", nuts_init="median")
    with pytest.raises(ConfigError, match="map_steps"):
        BayesianNeuralNet(1, 1, inference="nuts", map_steps=-1)


def test_nuts_has_in_between_uncertainty_where_mean_field_does_not() -> None:
    """NUTS, started at a MAP fit, raises the epistemic variance in the gap between the two
    data clusters above that inside them, as the full posterior should (Foong et al. 2019);
    the mean-field SVI posterior does not (about 1x, see experiments/synthetic_uncertainty.py).
    This short chain (80 + 80 iterations, tree depth 4) gave 9.0 here, and 5.0 and 3.1 with
    data and fit seeds 1 and 2, so the stated factor is 3. The tree depth bounds the
    leapfrog steps."""
    model = BayesianNeuralNet(
        1,
        1,
        hidden_sizes=[16],
        activation="tanh",
        inference="nuts",
        num_samples=80,
        warmup_steps=80,
        max_tree_depth=4,
        map_steps=500,
        seed=0,
    )
    model.fit(gap_buffer(1000, seed=0), torch.Generator().manual_seed(0))
    (diag,) = model.nuts_diagnostics
    assert diag["leapfrog_per_sample"] <= 2**4 - 1, diag
    assert diag["accept_prob"] > 0.6 and diag["divergences"] == 0, diag
    assert model.posterior_functions().n == 80
    inside = torch.cat([torch.linspace(-2.9, -1.1, 30), torch.linspace(1.1, 2.9, 30)])[:, None]
    gap = torch.linspace(-0.6, 0.6, 13)[:, None]
    p_in = model.predict(inside, torch.zeros_like(inside))
    p_gap = model.predict(gap, torch.zeros_like(gap))
    torch.testing.assert_close(p_in.mean, inside + torch.sin(inside), atol=0.15, rtol=0)
    ratio = float(p_in.aleatoric_var.mean() / ((0.05 + 0.1 * inside.abs()) ** 2).mean())
    assert 0.75 < ratio < 1.25, ratio
    gap_ratio = float(p_gap.epistemic_var.mean() / p_in.epistemic_var.mean())
    assert gap_ratio > 3, gap_ratio
