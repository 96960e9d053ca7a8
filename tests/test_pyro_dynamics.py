"""User-written Pyro models as dynamics: recovery, conjugate posteriors, vectorized draws,
persistence, and the errors a bad model gets."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models import check_model
from bayes_mbrl.models.pyro_dynamics import PyroDynamics
from bayes_mbrl.options import OptionError
from bayes_mbrl.uncertainty import to_inference_data

A_TRUE, B_TRUE, SIGMA_TRUE = 0.8, 0.5, 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: threads only add overhead (and the test machine has 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_model(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    """s' = a s + b u + N(0, sigma^2) with unknown a, b, sigma (obs_dim = action_dim = 1)."""
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.LogNormal(-2.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = a.unsqueeze(-1) * obs + b.unsqueeze(-1) * action
        pyro.sample("next_obs", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=next_obs)


CONJ_SIGMA, CONJ_PRIOR = 0.5, 1.0


def conjugate_model(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    """Bayesian linear regression with known noise: w ~ N(0, I), s' ~ N([s, u] w, 0.5^2)."""
    w = pyro.sample("w", dist.Normal(0.0, CONJ_PRIOR).expand([2]).to_event(1))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        x = torch.cat([obs, action], -1)  # (..., N, 2)
        loc = (x * w).sum(-1, keepdim=True)  # w (..., 1, 2) when vectorized -> (..., N, 1)
        pyro.sample("next_obs", dist.Normal(loc, CONJ_SIGMA).to_event(1), obs=next_obs)


def make_buffer(
    n: int, seed: int = 0, a: float = A_TRUE, b: float = B_TRUE, sigma: float = SIGMA_TRUE
) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 1, generator=g)
    u = torch.rand(n, 1, generator=g) * 2 - 1
    ns = a * s + b * u + sigma * torch.randn(n, 1, generator=g)
    buf = ReplayBuffer(1, 1, n)
    buf.add(s, u, torch.zeros(n), ns, torch.zeros(n), torch.zeros(n))
    return buf


def closed_form(buf: ReplayBuffer) -> tuple[Tensor, Tensor]:
    """Posterior mean (2,) and covariance (2, 2) of the conjugate model, float64."""
    data = buf.all()
    x = torch.cat([data.obs, data.action], -1).double()
    y = data.next_obs.double()[:, 0]
    precision = x.T @ x / CONJ_SIGMA**2 + torch.eye(2) / CONJ_PRIOR**2
    cov = torch.linalg.inv(precision)
    return cov @ x.T @ y / CONJ_SIGMA**2, cov


@pytest.fixture(scope="module")
def svi_model() -> PyroDynamics:
    model = PyroDynamics(
        linear_model, 1, 1, num_steps=250, learning_rate=0.05, final_learning_rate=0.005
    )
    model.fit(make_buffer(200))
    return model


@pytest.fixture(scope="module")
def nuts_conjugate() -> tuple[PyroDynamics, ReplayBuffer]:
    buf = make_buffer(50, seed=3, sigma=CONJ_SIGMA)
    model = PyroDynamics(
        conjugate_model, 1, 1, inference="nuts", num_samples=150, warmup_steps=100, num_chains=2
    )
    model.fit(buf)
    return model, buf


# ---------------------------------------------------------------------------- recovery
def test_svi_recovers_known_linear_dynamics(svi_model: PyroDynamics) -> None:
    lat = svi_model.sample_functions(2000, torch.Generator().manual_seed(0)).latents()
    assert abs(float(lat["a"].mean()) - A_TRUE) < 0.04
    assert abs(float(lat["b"].mean()) - B_TRUE) < 0.04
    assert abs(float(lat["sigma"].mean()) - SIGMA_TRUE) < 0.02
    # a posterior, not a point: spread of the order of sigma / sqrt(N) ~ 0.007
    assert 0.002 < float(lat["a"].std()) < 0.03


def test_nuts_matches_closed_form_posterior(
    nuts_conjugate: tuple[PyroDynamics, ReplayBuffer],
) -> None:
    model, buf = nuts_conjugate
    mean, cov = closed_form(buf)
    w = model.posterior_functions().latents()["w"].double()  # (300, 2)
    sd = cov.diagonal().sqrt()
    # 300 draws (ESS >= ~100): Monte Carlo error of the mean < 0.1 sd; tolerance 0.3 sd
    assert ((w.mean(0) - mean).abs() / sd).max() < 0.3, (w.mean(0), mean)
    assert ((w.std(0) / sd) - 1).abs().max() < 0.2, (w.std(0), sd)


def test_multivariate_normal_guide_matches_closed_form() -> None:
    buf = make_buffer(50, seed=3, sigma=CONJ_SIGMA)
    mean, cov = closed_form(buf)
    model = PyroDynamics(
        conjugate_model,
        1,
        1,
        guide="multivariate_normal",
        num_steps=300,
        learning_rate=0.05,
        final_learning_rate=0.002,
    )
    model.fit(buf)
    w = model.sample_functions(4000, torch.Generator().manual_seed(0)).latents()["w"].double()
    sd = cov.diagonal().sqrt()
    # a Gaussian posterior is in the guide family: mean, sd and correlation are exact at the
    # optimum; tolerances cover the optimizer's end point (measured <= 0.15 sd, 5%, 0.07)
    assert ((w.mean(0) - mean).abs() / sd).max() < 0.3, (w.mean(0), mean)
    assert ((w.std(0) / sd) - 1).abs().max() < 0.12, (w.std(0), sd)
    corr = torch.corrcoef(w.T)[0, 1]
    assert abs(float(corr) - float(cov[0, 1] / (sd[0] * sd[1]))) < 0.12


def test_minibatch_likelihood_is_scaled_to_all_transitions() -> None:
    buf = make_buffer(50, seed=3, sigma=CONJ_SIGMA)
    mean, cov = closed_form(buf)
    model = PyroDynamics(
        conjugate_model, 1, 1, num_steps=400, learning_rate=0.05, final_learning_rate=0.002,
        batch_size=25,
    )  # fmt: skip
    model.fit(buf)
    w = model.sample_functions(4000, torch.Generator().manual_seed(0)).latents()["w"].double()
    # mean-field VI of a Gaussian: exact mean, sd = 1 / sqrt(diag(precision)); without the
    # N / batch_size scaling the sd would be sqrt(2) times larger
    mf_sd = torch.linalg.inv(cov).diagonal().rsqrt()
    assert ((w.mean(0) - mean).abs() / mf_sd).max() < 0.4, (w.mean(0), mean)
    assert ((w.std(0) / mf_sd) - 1).abs().max() < 0.2, (w.std(0), mf_sd)


# ----------------------------------------------------------------- function samples
def test_function_sample_is_the_model_at_each_latent_draw(svi_model: PyroDynamics) -> None:
    g = torch.Generator().manual_seed(5)
    n, b = 7, 11
    fs = svi_model.sample_functions(n, g)
    lat = fs.latents()
    assert {k: tuple(v.shape) for k, v in lat.items()} == {"a": (n,), "b": (n,), "sigma": (n,)}
    assert len(torch.unique(lat["a"])) == n
    s, u = torch.randn(n, b, 1, generator=g), torch.rand(n, b, 1, generator=g)
    d = fs(s, u)
    assert tuple(d.batch_shape) == (n, b) and tuple(d.event_shape) == (1,)
    expected = lat["a"][:, None, None] * s + lat["b"][:, None, None] * u
    torch.testing.assert_close(d.mean, expected)
    torch.testing.assert_close(d.stddev, lat["sigma"][:, None, None].expand(n, b, 1))
    draw = fs.sample(s, u, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draw, fs.sample(s, u, torch.Generator().manual_seed(0)))
    with pytest.raises(DataError, match="expects obs of shape"):
        fs(s[:, :, 0], u)


def test_sample_functions_is_seeded(svi_model: PyroDynamics) -> None:
    one = svi_model.sample_functions(5, torch.Generator().manual_seed(1)).latents()
    two = svi_model.sample_functions(5, torch.Generator().manual_seed(1)).latents()
    other = svi_model.sample_functions(5, torch.Generator().manual_seed(2)).latents()
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    assert not torch.equal(one["a"], other["a"])
    # the global torch RNG is neither used nor advanced
    state = torch.get_rng_state()
    svi_model.sample_functions(5, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def test_check_model_passes_for_svi_and_nuts(
    svi_model: PyroDynamics, nuts_conjugate: tuple[PyroDynamics, ReplayBuffer]
) -> None:
    data = make_buffer(6, seed=9).all()
    # check_model raises a ModelError naming the broken method; passing returns None
    assert check_model(svi_model, data.obs, data.action, data.next_obs) is None
    assert check_model(nuts_conjugate[0], data.obs, data.action, data.next_obs) is None


def test_nuts_keeps_chains_and_draws_stored_samples(
    nuts_conjugate: tuple[PyroDynamics, ReplayBuffer],
) -> None:
    model, _ = nuts_conjugate
    post = model.posterior_functions()
    assert post.n == 300 and post.num_chains == 2
    torch.testing.assert_close(post.latents()["w"], model.samples["w"])
    thinned = model.posterior_functions(20)
    assert thinned.n == 20 and thinned.num_chains == 2
    # chain-major: the first 10 thinned draws come from chain 0
    first = model.samples["w"][:150]
    assert all(bool((first == row).all(-1).any()) for row in thinned.latents()["w"][:10])
    fs = model.sample_functions(8, torch.Generator().manual_seed(0))
    assert fs.num_chains == 1
    w = fs.latents()["w"]
    match = (w[:, None, :] == model.samples["w"][None]).all(-1)  # (8, 300)
    assert bool(match.any(1).all()) and len(torch.unique(w[:, 0])) == 8


def test_nuts_sample_stats_reach_arviz_per_chain_and_draw(
    nuts_conjugate: tuple[PyroDynamics, ReplayBuffer], svi_model: PyroDynamics
) -> None:
    """Each draw carries the statistics of the NUTS iteration that produced it; the
    InferenceData holds them as ``sample_stats`` (chain, draw), thinned with the draws."""
    model, buf = nuts_conjugate
    idata = to_inference_data(model, buf, num_draws=40)
    stats = idata.sample_stats
    assert stats["diverging"].dims == ("chain", "draw") and stats["diverging"].shape == (2, 20)
    assert stats["diverging"].dtype == bool
    accept = stats["acceptance_rate"].values
    assert accept.shape == (2, 20) and 0 <= accept.min() and accept.max() <= 1
    # the thinned draws' statistics are those of the same stored samples
    index = model.draws.thinned_index(40)
    np.testing.assert_array_equal(
        stats["n_steps"].values.reshape(-1), model.draws.stats["n_steps"][index].numpy()
    )
    # a tree of depth d holds 2**(d-1) .. 2**d - 1 leapfrog steps; the depth is bounded
    steps, depth = stats["n_steps"].values, stats["tree_depth"].values
    assert ((2 ** (depth - 1) <= steps) & (steps <= 2**depth - 1)).all()
    assert depth.max() <= model.max_tree_depth
    # lp is the log joint density of the draw (w is unconstrained: no Jacobian)
    data = buf.all()
    w = torch.as_tensor(idata.posterior["w"].values[1, 3])
    x = torch.cat([data.obs, data.action], -1).double()
    log_joint = (
        dist.Normal(0.0, CONJ_PRIOR).log_prob(w).sum()
        + dist.Normal((x * w).sum(-1), CONJ_SIGMA).log_prob(data.next_obs.double()[:, 0]).sum()
    )
    assert float(stats["lp"].values[1, 3]) == pytest.approx(float(log_joint), abs=1e-3)
    # per chain: one step size after warm-up, and the summary in nuts_diagnostics
    every = to_inference_data(model, buf).sample_stats
    for c, diag in enumerate(model.nuts_diagnostics):
        assert set(every["step_size"].values[c]) == {diag["step_size"]}
        assert diag["accept_prob"] == pytest.approx(every["acceptance_rate"].values[c].mean())
        assert diag["divergences"] == every["diverging"].values[c].sum()
        assert diag["leapfrog_per_sample"] == pytest.approx(every["n_steps"].values[c].mean())
        assert diag["tree_depth_max"] == every["tree_depth"].values[c].max()
        assert diag["seconds"] > 0
    # SVI draws carry no sampler statistics
    assert "sample_stats" not in to_inference_data(svi_model, make_buffer(20), 8).groups()


def test_predict_splits_variance_over_draws(svi_model: PyroDynamics) -> None:
    s, u = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0]])
    p = svi_model.predict(s, u, num_functions=500)
    # at s = u = 0 every function predicts 0: no epistemic variance
    assert float(p.epistemic_var[0, 0]) < 1e-10 < float(p.epistemic_var[1, 0])
    torch.testing.assert_close(
        p.aleatoric_var.sqrt(), torch.full((2, 1), SIGMA_TRUE), atol=0.02, rtol=0
    )
    ll = svi_model.log_likelihood(s, u, torch.zeros(2, 1), num_functions=3)
    assert ll.shape == (3, 2) and bool(torch.isfinite(ll).all())


# ------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("which", ["svi", "nuts"])
def test_state_dict_round_trip(
    which: str, svi_model: PyroDynamics, nuts_conjugate: tuple[PyroDynamics, ReplayBuffer]
) -> None:
    if which == "svi":
        model, fresh = svi_model, PyroDynamics(linear_model, 1, 1, seed=0)
    else:
        model = nuts_conjugate[0]
        fresh = PyroDynamics(conjugate_model, 1, 1, inference="nuts", num_chains=2)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    s, u = torch.randn(4, 3, 1), torch.randn(4, 3, 1)
    f1 = model.sample_functions(4, torch.Generator().manual_seed(3))
    f2 = fresh.sample_functions(4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(f1.latents(), f2.latents(), rtol=0, atol=0)
    torch.testing.assert_close(f1(s, u).mean, f2(s, u).mean, rtol=0, atol=0)
    assert fresh.posterior_functions().num_chains == model.posterior_functions().num_chains
    # NUTS: each sample's sampler statistics come back with it
    stats, loaded = model.posterior_functions().sample_stats(), fresh.posterior_functions()
    torch.testing.assert_close(loaded.sample_stats(), stats, rtol=0, atol=0)
    assert bool(stats) == (which == "nuts")
    with pytest.raises(ModelError, match="inference"):
        PyroDynamics(linear_model, 1, 1, inference="nuts" if which == "svi" else "svi")\
            .load_state_dict(model.state_dict())  # fmt: skip


def test_param_store_is_not_shared_and_fits_repeat() -> None:
    buf = make_buffer(40)
    pyro.clear_param_store()
    one = PyroDynamics(linear_model, 1, 1, num_steps=30, seed=4)
    one.fit(buf)
    before = one.sample_functions(3, torch.Generator().manual_seed(0)).latents()
    two = PyroDynamics(linear_model, 1, 1, num_steps=30, seed=4)
    two.fit(buf)
    assert len(pyro.get_param_store().keys()) == 0  # nothing leaked into the global store
    after = one.sample_functions(3, torch.Generator().manual_seed(0)).latents()
    torch.testing.assert_close(before, after, rtol=0, atol=0)  # `two` did not touch `one`
    # same seed, same data: the same fit, bit for bit
    torch.testing.assert_close(
        two.sample_functions(3, torch.Generator().manual_seed(0)).latents(), after, rtol=0, atol=0
    )


# ---------------------------------------------------------------------------- errors
def _no_site(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    pyro.sample("a", dist.Normal(0.0, 1.0))


def _not_observed(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        pyro.sample("next_obs", dist.Normal(a.unsqueeze(-1) * obs, 1.0).to_event(1))


def _no_to_event(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = torch.cat([obs, obs], -1)[..., 0] * a  # (..., N): event shape () not (2,)
        pyro.sample(
            "next_obs", dist.Normal(loc, 1.0), obs=None if next_obs is None else next_obs[..., 0]
        )


def _no_plate(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("next_obs", dist.Normal(a.unsqueeze(-1) * obs, 1.0).to_event(1), obs=next_obs)


def _wrong_plate_size(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", 5, dim=-1):
        pyro.sample("next_obs", dist.Normal(a.unsqueeze(-1) * obs, 1.0).to_event(1), obs=next_obs)


def _nan_loc(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    mass = pyro.sample("mass", dist.Normal(1.0, 0.1))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = torch.log(mass - 2.0).unsqueeze(-1) * obs  # mass used outside its support: NaN
        pyro.sample("next_obs", dist.Normal(loc, 1.0).to_event(1), obs=next_obs)


def _negative_scale(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    length = pyro.sample("length", dist.LogNormal(0.0, 0.1))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        scale = (length - 3.0).unsqueeze(-1)
        pyro.sample("next_obs", dist.Normal(obs, scale).to_event(1), obs=next_obs)


def _raises(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    raise KeyError("missing_constant")


def _not_vectorizable(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = a * obs  # a scalar latent is (n, 1) when vectorized: needs a.unsqueeze(-1)
        pyro.sample("next_obs", dist.Normal(loc, 1.0).to_event(1), obs=next_obs)


def _colon_indexing(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        # runs when vectorized, but obs[:, 0:1] is then the first transition, not a column
        loc = a.unsqueeze(-1) * obs[:, 0:1]
        pyro.sample("next_obs", dist.Normal(loc, 1.0).to_event(1), obs=next_obs)


def _uses_param(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.param("a", torch.tensor(0.5))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        pyro.sample("next_obs", dist.Normal(a * obs, s.unsqueeze(-1)).to_event(1), obs=next_obs)


BAD_MODELS: list[tuple[Callable[..., None], str]] = [
    (_no_site, "no sample site named 'next_obs'"),
    (_not_observed, "not observed; pass obs=next_obs"),
    (_no_to_event, r"event shape \(\), expected \(1,\).*to_event"),
    (_no_plate, r"inside plates \[\], expected exactly \['transitions'\]"),
    (_wrong_plate_size, r"(?s)raised ValueError.*Shape mismatch inside plate.*fix the model"),
    (_nan_loc, r"log-density of site 'next_obs' is nan.*mean/loc has 20 non-finite.*support"),
    (_negative_scale, r"log-density of site 'next_obs' is nan.*variance/scale is not positive"),
    (_raises, r"raised KeyError.*missing_constant"),
    (_not_vectorizable, r"not vectorizable.*unsqueeze\(-1\)"),
    (_colon_indexing, r"not vectorizable.*means differ"),
    (_uses_param, r"pyro.param sites \['a'\]"),
]


@pytest.mark.parametrize("bad, message", BAD_MODELS, ids=[f.__name__ for f, _ in BAD_MODELS])
def test_bad_models_get_a_named_error(bad: Callable[..., None], message: str) -> None:
    model = PyroDynamics(bad, 1, 1, num_steps=5)
    with pytest.raises(ModelError, match=message):
        model.fit(make_buffer(20))
    assert not model.fitted


def test_failure_during_a_refit_keeps_the_previous_posterior() -> None:
    def breaks_on_more_data(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
        if obs.shape[-2] > 100:
            raise RuntimeError("this model cannot handle long buffers")
        linear_model(obs, action, next_obs)

    model = PyroDynamics(breaks_on_more_data, 1, 1, num_steps=20)
    model.fit(make_buffer(50))
    before = model.sample_functions(4, torch.Generator().manual_seed(0)).latents()
    with pytest.raises(
        ModelError, match=r"(?s)SVI step 0 failed.*cannot handle long buffers.*restored"
    ):
        model.fit(make_buffer(150))  # the contract check (64 rows) passes, the step fails
    after = model.sample_functions(4, torch.Generator().manual_seed(0)).latents()
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(OptionError, match=r"PyroDynamics: guide = 'laplace' .*'normal'"):
        PyroDynamics(linear_model, 1, 1, guide="laplace")
    with pytest.raises(OptionError, match=r"inference = 'hmc' .*one of 'svi', 'nuts'"):
        PyroDynamics(linear_model, 1, 1, inference="hmc")
    with pytest.raises(OptionError, match=r"max_tree_depth = 16 .*\[1, 15\]"):
        PyroDynamics(linear_model, 1, 1, max_tree_depth=16)
    with pytest.raises(OptionError, match="batch_size = 0"):
        PyroDynamics(linear_model, 1, 1, batch_size=0)
    with pytest.raises(OptionError, match=r"final_learning_rate = 0\.1 "):
        PyroDynamics(linear_model, 1, 1, learning_rate=0.01, final_learning_rate=0.1)
    with pytest.raises(ConfigError, match="num_chains"):
        PyroDynamics(linear_model, 1, 1, num_chains=0)
    with pytest.raises(ModelError, match="not been fitted"):
        PyroDynamics(linear_model, 1, 1).sample_functions(2)
    with pytest.raises(OptionError, match=r"nuts_init = 'mode' .*one of 'map', 'median'"):
        PyroDynamics(linear_model, 1, 1, nuts_init="mode")
    with pytest.raises(ConfigError, match="map_steps"):
        PyroDynamics(linear_model, 1, 1, map_steps=-1)


def test_map_start_of_nuts_is_the_posterior_mode() -> None:
    """The conjugate posterior is Gaussian, so its mode is the closed-form mean; the MAP
    climb must reach it from a prior draw and leave nothing in the param store."""
    buf = make_buffer(50, seed=3, sigma=CONJ_SIGMA)
    mean, cov = closed_form(buf)
    model = PyroDynamics(conjugate_model, 1, 1, inference="nuts", map_steps=600)
    data = buf.all()
    with model._scope():
        pyro.set_rng_seed(0)
        point = model._map_point(data.obs, data.action, data.next_obs)
        assert len(pyro.get_param_store()) == 0
    sd = cov.diagonal().sqrt()
    assert torch.allclose(point["w"].double(), mean, atol=float(0.05 * sd.min())), (point, mean)
