"""SNGP dynamics: the output layer's exact posterior, distance-aware epistemic variance,
the protocol (function draws along a trajectory, closed-form predict, checkpoints)."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import pytest
import torch

from bayes_mbrl.algorithms import build_model
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models import MODELS, FunctionSample, check_model, sngp
from bayes_mbrl.models.sngp import SNGPDynamics, SNGPOptions
from bayes_mbrl.options import OptionError

sys.path.insert(0, str(Path(__file__).parent))
from test_ensemble import noisy_sine_buffer  # the same gapped sine as the ensemble's tests


def small_buffer(n: int = 60, seed: int = 0) -> ReplayBuffer:
    """2-D states, heteroscedastic noise: s'_0 = s_0 + sin(s_1) a, s'_1 = 0.9 s_1 + noise."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g)
    a = torch.rand(n, 1, generator=g) * 2 - 1
    noise = (0.05 + 0.05 * s.abs()) * torch.randn(n, 2, generator=g)
    ns = torch.stack([s[:, 0] + torch.sin(s[:, 1]) * a[:, 0], 0.9 * s[:, 1]], -1) + noise
    buf = ReplayBuffer(2, 1, n)
    buf.add(s, a, torch.zeros(n), ns, torch.zeros(n), torch.zeros(n))
    return buf


@pytest.fixture(scope="module")
def fitted_sine() -> tuple[SNGPDynamics, float]:
    buf, sigma = noisy_sine_buffer()
    model = SNGPDynamics(1, 1, width=64, num_features=256, max_epochs=100, patience=10, seed=0)
    report = model.fit(buf, torch.Generator().manual_seed(0))
    assert report.epochs >= 10 and report.val_losses
    return model, sigma


@pytest.fixture(scope="module")
def fitted_small() -> tuple[SNGPDynamics, ReplayBuffer]:
    buf = small_buffer()
    model = SNGPDynamics(2, 1, width=16, num_blocks=2, num_features=64, max_epochs=30, seed=1)
    model.fit(buf, torch.Generator().manual_seed(1))
    return model, buf


def test_output_layer_posterior_is_the_gp_posterior_of_its_features(
    fitted_small: tuple[SNGPDynamics, ReplayBuffer],
) -> None:
    """The weight-space posterior (M x M precision per state dimension) predicts what the
    function-space GP with kernel ``phi(x)^T phi(x')`` and the learned heteroscedastic
    noise predicts, computed the other way round (N x N, float64)."""
    model, buf = fitted_small
    data = buf.all()
    net = model.net
    with torch.no_grad():
        x = model.input_normalizer.normalize(torch.cat([data.obs, data.action], -1))
        h = net.hidden(x)
        phi = net.features(h).double()  # (N, M)
        noise_var = net.logvar(h).exp().double()  # (N, D)
        y = model.delta_normalizer.normalize(data.next_obs - data.obs).double()
        y = y - net.out_bias.double()
        g = torch.Generator().manual_seed(3)
        obs_t, act_t = 2 * torch.randn(7, 2, generator=g), torch.rand(7, 1, generator=g)
        phi_t = net.features(
            net.hidden(model.input_normalizer.normalize(torch.cat([obs_t, act_t], -1)))
        ).double()
    pred = model.predict(obs_t, act_t)
    sd, mu = model.delta_normalizer.std.double(), model.delta_normalizer.mean.double()
    for d in range(2):
        gram = phi @ phi.T + torch.diag(noise_var[:, d])
        cross = phi_t @ phi.T  # (T, N)
        mean = cross @ torch.linalg.solve(gram, y[:, d]) + net.out_bias[d].double()
        var = (phi_t * phi_t).sum(-1) - (cross * torch.linalg.solve(gram, cross.T).T).sum(-1)
        torch.testing.assert_close(
            pred.mean[:, d].double(), obs_t[:, d].double() + mean * sd[d] + mu[d],
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
        torch.testing.assert_close(
            pred.epistemic_var[:, d].double(), var * sd[d] ** 2, rtol=1e-3, atol=1e-7
        )
        torch.testing.assert_close(
            pred.aleatoric_var[:, d].double(),
            net.logvar(
                net.hidden(model.input_normalizer.normalize(torch.cat([obs_t, act_t], -1)))
            )[:, d].exp().double().detach() * sd[d] ** 2,
            rtol=1e-5, atol=1e-8,
        )  # fmt: skip


def test_posterior_and_predict_in_row_chunks_equal_one_pass(
    fitted_small: tuple[SNGPDynamics, ReplayBuffer], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, buf = fitted_small
    data = buf.all()
    x = model.input_normalizer.normalize(torch.cat([data.obs, data.action], -1))
    y = model.delta_normalizer.normalize(data.next_obs - data.obs)
    whole = model.posterior_mean, model.precision_chol
    before = model.predict(data.obs, data.action)
    monkeypatch.setattr(sngp, "_CHUNK_ELEMENTS", 2 * 64 * 7)  # chunks of 7 rows
    assert len(model._rows(len(x))) == 9
    model._condition(x, y)
    assert model.posterior_mean is not None and whole[0] is not None
    # float32 features: rows batched differently round differently (~1e-5 relative)
    torch.testing.assert_close(model.posterior_mean, whole[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.precision_chol, whole[1], rtol=1e-4, atol=1e-6)
    after = model.predict(data.obs, data.action)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.epistemic_var, before.epistemic_var)


def test_closed_form_predict_is_the_moments_of_the_function_draws(
    fitted_small: tuple[SNGPDynamics, ReplayBuffer],
) -> None:
    model, buf = fitted_small
    obs, act = buf.all().obs[:6], buf.all().action[:6]
    pred = model.predict(obs, act)
    dist = model.sample_functions(4000, torch.Generator().manual_seed(0)).at(obs, act)
    torch.testing.assert_close(dist.mean.mean(0), pred.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(dist.mean.var(0), pred.epistemic_var, rtol=0.1, atol=1e-7)
    torch.testing.assert_close(dist.variance.mean(0), pred.aleatoric_var, rtol=1e-5, atol=1e-8)


def test_epistemic_variance_grows_in_the_gap_and_away_from_the_data(
    fitted_sine: tuple[SNGPDynamics, float],
) -> None:
    """Distance awareness: more epistemic variance in the gap between the two data
    clusters than inside them, and more still far away (measured: 250x and 30x more);
    the mean and the noise inside the data as the ensemble gets them (noise 1.01x)."""
    model, sigma = fitted_sine
    inside = torch.cat([torch.linspace(-0.95, -0.5, 10), torch.linspace(0.5, 0.95, 10)])[:, None]
    gap = torch.linspace(-0.15, 0.15, 7)[:, None]
    far = torch.tensor([[-3.0], [-2.5], [2.5], [3.0]])
    p_in, p_gap, p_far = (model.predict(torch.zeros(len(a), 1), a) for a in (inside, gap, far))
    torch.testing.assert_close(p_in.mean, torch.sin(3 * inside), atol=0.06, rtol=0)
    assert 0.75 < float(p_in.aleatoric_var.mean()) / sigma**2 < 1.25
    assert p_gap.epistemic_var.mean() > 10 * p_in.epistemic_var.mean()
    assert p_far.epistemic_var.mean() > 5 * p_gap.epistemic_var.mean()
    # the blocks honour their spectral-norm bound (the body stays distance-preserving)
    for w in model.net.normalized_block_weights(update=False):
        assert float(torch.linalg.matrix_norm(w.detach(), ord=2)) <= 0.95 * (1 + 1e-3)


def test_a_function_draw_is_one_function_along_a_trajectory(
    fitted_sine: tuple[SNGPDynamics, float],
) -> None:
    """Row i goes through function i only, and again through the same function on the
    next call (TS-inf); draws differ from one another, and repeat with the generator."""
    model, _ = fitted_sine
    n = 6
    fs = model.sample_functions(n, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    obs, act = torch.zeros(n, 5, 1), torch.rand(n, 5, 1, generator=g) * 2 - 1
    own = fs.mean(obs, act)  # (n, 5, 1): function i at its own inputs
    assert torch.equal(own, fs.mean(obs, act))
    everyone = fs.at(obs.reshape(-1, 1), act.reshape(-1, 1)).mean  # (n, n * 5, 1)
    picked = everyone.view(n, n, 5, 1)[torch.arange(n), torch.arange(n)]
    torch.testing.assert_close(own, picked, rtol=1e-5, atol=1e-6)
    assert float(everyone.std(0).min()) > 0  # different functions
    # `at` runs the shared network once: the same as the protocol's expand-and-call
    flat_obs, flat_act = obs.reshape(-1, 1), act.reshape(-1, 1)
    generic = FunctionSample.at(fs, flat_obs, flat_act)
    fast = fs.at(flat_obs, flat_act)
    torch.testing.assert_close(fast.mean, generic.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.stddev, generic.stddev, rtol=1e-5, atol=1e-7)
    with pytest.raises(DataError, match=r"obs of shape \(B, dim\)"):
        fs.at(obs, act)
    again = model.sample_functions(n, torch.Generator().manual_seed(2))
    assert torch.equal(again.mean(obs, act), own)
    draw = fs.sample(obs, act, torch.Generator().manual_seed(4))
    assert draw.shape == (n, 5, 1)
    assert torch.equal(draw, fs.sample(obs, act, torch.Generator().manual_seed(4)))
    assert check_model(model, torch.zeros(5, 1), act[0], num_functions=4) is None
    with pytest.raises(DataError, match="shape"):
        fs(torch.zeros(n - 1, 5, 1), torch.zeros(n - 1, 5, 1))


def test_state_dict_round_trip_and_mismatch(
    fitted_small: tuple[SNGPDynamics, ReplayBuffer],
) -> None:
    model, buf = fitted_small
    stream = io.BytesIO()
    torch.save(model.state_dict(), stream)
    stream.seek(0)
    state = torch.load(stream, weights_only=True)
    other = SNGPDynamics(2, 1, width=16, num_blocks=2, num_features=64, seed=9)
    with pytest.raises(ModelError, match="has not been fitted"):
        other.predict(buf.all().obs[:3], buf.all().action[:3])
    other.load_state_dict(state)
    obs, act = buf.all().obs[:8], buf.all().action[:8]
    a, b = model.predict(obs, act), other.predict(obs, act)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.epistemic_var, b.epistemic_var)
    f1 = model.sample_functions(3, torch.Generator().manual_seed(1))
    f2 = other.sample_functions(3, torch.Generator().manual_seed(1))
    o3, a3 = obs.expand(3, -1, -1), act.expand(3, -1, -1)
    assert torch.equal(f1.mean(o3, a3), f2.mean(o3, a3))
    wrong = SNGPDynamics(2, 1, width=16, num_blocks=2, num_features=32)
    with pytest.raises(ModelError, match="does not match"):
        wrong.load_state_dict(state)
    assert wrong.posterior_mean is None  # left unchanged


def test_registered_configured_and_validated() -> None:
    assert MODELS["sngp"] is SNGPDynamics and MODELS.options("sngp") is SNGPOptions
    config = load_config(None, ["model.kind=sngp", "model.width=32", "model.length_scale=0.5"])
    model = build_model(config, 3, 1)
    assert isinstance(model, SNGPDynamics)
    assert model.options.width == 32 and model.options.length_scale == 0.5
    with pytest.raises(OptionError, match="spectral_norm"):
        SNGPDynamics(1, 1, spectral_norm=0.0)
    with pytest.raises(OptionError, match="num_features"):
        SNGPDynamics(1, 1, num_features=0)
    with pytest.raises(ModelError, match="fit"):
        SNGPDynamics(1, 1).sample_functions(2)
    calls: list[int] = []
    model = SNGPDynamics(1, 1, width=8, num_features=16, max_epochs=4)
    model.fit(noisy_sine_buffer()[0], progress=lambda step, *_: calls.append(step))
    assert calls == list(range(len(calls))) and 1 <= len(calls) <= model.progress_total()
    assert math.isfinite(float(model.predict(torch.zeros(1, 1), torch.zeros(1, 1)).mean))
