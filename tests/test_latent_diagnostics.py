"""Diagnostics of the latent state-space model (bayes_mbrl.models.latent.diagnostics).

The reference is a model whose generative part is a known linear-Gaussian system and
whose recognition potential is the exact likelihood, so that its filter is the Kalman
filter: open-loop predictions and one-step predictive densities then have closed
forms to compare with.
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.latent import LatentStateSpaceModel
from bayes_mbrl.models.latent import diagnostics as D
from bayes_mbrl.models.latent.kalman import LinearGaussianSSM, kalman_filter
from bayes_mbrl.models.latent.linear import KnownLinearModel


# ---------------------------------------------------------------------- helpers
class ExactPotential(nn.Module):
    """The likelihood of ``o = C z + d + v`` as a potential: ``J = C^T R^-1 C``,
    ``h = C^T R^-1 (o - d)`` (with an identity embedding the filter is the Kalman filter)."""

    def __init__(self, ssm: LinearGaussianSSM) -> None:
        super().__init__()
        c, r = ssm.C.float(), ssm.R.float()
        self.ct_rinv = c.T @ torch.linalg.inv(r)
        self.j = self.ct_rinv @ c
        self.d = ssm.d.float()

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        h = (e - self.d) @ self.ct_rinv.T
        return h, self.j.expand(*e.shape[:-1], *self.j.shape)


def exact_model(ssm: LinearGaussianSSM, encoder: str = "filtering") -> KnownLinearModel:
    model = KnownLinearModel(ssm, encoder)
    model.nets.embed = nn.Identity()
    model.nets.potential = ExactPotential(ssm)
    return model


def simulate(
    ssm: LinearGaussianSSM, n: int, t_len: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randn(n, t_len, ssm.action_dim, generator=gen, dtype=torch.float64)
    states, obs = ssm.simulate(n, t_len, actions, gen)
    return states.float(), obs.float(), actions.float()


def to_buffer(obs: Tensor, actions: Tensor) -> ReplayBuffer:
    n, t_len, do = obs.shape
    buf = ReplayBuffer(do, actions.shape[-1], n * t_len)
    nxt = torch.cat([obs[:, 1:], obs[:, -1:]], dim=1)
    trunc = torch.zeros(n, t_len, dtype=torch.bool)
    trunc[:, -1] = True
    buf.add(
        obs.reshape(n * t_len, do),
        actions.reshape(n * t_len, -1),
        torch.zeros(n * t_len),
        nxt.reshape(n * t_len, do),
        torch.zeros(n * t_len, dtype=torch.bool),
        trunc.reshape(-1),
    )
    return buf


@pytest.fixture(scope="module")
def ssm() -> LinearGaussianSSM:
    return LinearGaussianSSM.position_velocity()


@pytest.fixture(scope="module")
def fitted(ssm: LinearGaussianSSM) -> tuple[LatentStateSpaceModel, Tensor, Tensor, Tensor]:
    """A tiny latent model (3 members) fitted briefly on the linear system's data."""
    states, obs, actions = simulate(ssm, 16, 40, seed=0)
    model = LatentStateSpaceModel(
        1,
        1,
        latent_dim=2,
        num_members=3,
        hidden_sizes=[16],
        embed_dim=8,
        seq_len=16,
        batch_size=12,
        first_fit_steps=50,
        seed=0,
    )
    model.fit(to_buffer(obs, actions))
    return model, states, obs, actions


def random_model(encoder: str = "filtering", frames: bool = False) -> LatentStateSpaceModel:
    """An untrained model flagged as fitted (its random nets are enough to test the
    plumbing: member blocks, shapes, figures)."""
    if frames:
        model = LatentStateSpaceModel(
            64, 1, latent_dim=3, num_members=2, hidden_sizes=[16], embed_dim=8,
            frame_shape=(1, 8, 8), encoder=encoder, seed=1,
        )  # fmt: skip
    else:
        model = LatentStateSpaceModel(
            2, 1, latent_dim=3, num_members=3, hidden_sizes=[16], embed_dim=8,
            encoder=encoder, seed=1,
        )  # fmt: skip
        model.obs_mean = torch.tensor([0.5, -1.0])
        model.obs_std = torch.tensor([2.0, 0.5])
    model.fitted = True
    return model


# ------------------------------------------------------------------ linear probe
def test_probe_recovers_a_noiseless_linear_map_with_intercept() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=gen)
    w = torch.randn(4, 3, generator=gen)
    y = x @ w + torch.tensor([3.0, -2.0, 10.0])
    r2 = D.linear_probe(x[:200], y[:200], x[200:], y[200:], ridge=0.0)
    assert r2.shape == (3,)
    assert torch.all(r2 > 1 - 1e-9)
    assert torch.all(D.linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.999)


def test_probe_r2_matches_the_known_signal_to_noise_ratio() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40_000, 2, generator=gen)
    noise = torch.randn(40_000, generator=gen)
    y = torch.stack([2.0 * x[:, 0] + noise, 5.0 + noise], dim=1)  # R^2 = 4/5 and 0
    r2 = D.linear_probe(x[:20_000], y[:20_000], x[20_000:], y[20_000:])
    assert r2[0].item() == pytest.approx(0.8, abs=0.01)
    assert abs(r2[1].item()) < 0.005


def test_probe_rejects_bad_input_and_flags_constant_targets() -> None:
    x = torch.randn(10, 2)
    assert torch.isnan(D.linear_probe(x, x[:, 0], x, torch.ones(10)))[0]
    with pytest.raises(DataError):
        D.linear_probe(x, x[:5], x, x)
    with pytest.raises(DataError):
        D.linear_probe(x, x, x[:, :1], x)


def test_state_targets() -> None:
    s = torch.tensor([[0.0, 1.5], [math.pi / 2, -2.0]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 0.0, 1.5], [0.0, 1.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(D.state_targets(s), expected, atol=1e-12)


def test_probe_state_reads_the_exact_filter_state(ssm: LinearGaussianSSM) -> None:
    """With the Kalman filter as encoder, the belief mean carries the position (theta)
    almost perfectly and the velocity well; the split is by sequence."""
    states, obs, actions = simulate(ssm, 10, 30, seed=3)
    r2 = D.probe_state(exact_model(ssm), obs, actions, states)
    # targets (cos x, sin x, v): the belief mean is linear in (x, v), x spans a few units
    assert r2[2] > 0.6  # velocity, inferred from successive positions
    with pytest.raises(DataError):
        D.probe_state(exact_model(ssm), obs[:1], actions[:1], states[:1])


# ------------------------------------------------------------------ beliefs
def test_exact_model_filter_is_the_kalman_filter(ssm: LinearGaussianSSM) -> None:
    _, obs, actions = simulate(ssm, 4, 12, seed=4)
    means, covs = D.filter_beliefs(exact_model(ssm), obs, actions)
    ref = kalman_filter(ssm, obs.double(), actions.double())
    # float32 and the jitter of the Cholesky factors (1e-5) are the only differences
    assert torch.allclose(means.double(), ref.filtered_means, atol=2e-3)
    assert torch.allclose(covs.double(), ref.filtered_covs, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("encoder", ["filtering", "smoothing", "single_step", "deterministic"])
def test_filter_beliefs_are_what_encode_returns(encoder: str) -> None:
    model = random_model(encoder)
    gen = torch.Generator().manual_seed(5)
    obs, actions = torch.randn(2, 6, 2, generator=gen), torch.randn(2, 6, 1, generator=gen)
    means, covs = D.filter_beliefs(model, obs, actions)
    for n in range(2):
        for t in (0, 3, 5):
            b = model.encode(obs[n, : t + 1], actions[n, :t])
            assert torch.allclose(means[n, t], b.mean, atol=1e-4)
            assert torch.allclose(covs[n, t], b.cov, atol=1e-4)


# ---------------------------------------------------------------- open loop
def test_open_loop_matches_a_hand_rolled_kalman_prediction(ssm: LinearGaussianSSM) -> None:
    _, obs, actions = simulate(ssm, 8, 25, seed=6)
    context, horizons = 7, [1, 3, 10]
    model = exact_model(ssm)
    errors = D.open_loop_errors(model, obs, actions, context, horizons)
    kf = kalman_filter(ssm, obs[:, :context].double(), actions[:, :context].double())
    z = kf.filtered_means[:, -1]
    a_mat, b_mat, c_mat, d = ssm.A, ssm.B, ssm.C, ssm.d
    expected = {}
    for h in range(1, 11):
        z = z @ a_mat.T + actions[:, context + h - 2].double() @ b_mat.T
        if h in horizons:
            pred = z @ c_mat.T + d
            expected[h] = float((pred - obs[:, context + h - 1].double()).pow(2).mean())
    assert errors.keys() == expected.keys()
    for h in horizons:
        assert errors[h] == pytest.approx(expected[h], rel=1e-3, abs=1e-6)


def test_open_loop_errors_grow_with_horizon_and_vanish_without_noise() -> None:
    noisy = LinearGaussianSSM.position_velocity()
    _, obs, actions = simulate(noisy, 64, 30, seed=7)
    errors = D.open_loop_errors(exact_model(noisy), obs, actions, 10, [1, 5, 10, 20])
    assert errors[1] < errors[5] < errors[10] < errors[20]
    assert errors[1] > noisy.R.item()  # at least the observation noise
    # a nearly noiseless system: the filter pins the state, open loop is exact
    quiet = LinearGaussianSSM.position_velocity(
        process_std=1e-4, obs_std=1e-3, position_process_std=1e-4
    )
    _, obs, actions = simulate(quiet, 8, 30, seed=8)
    quiet_errors = D.open_loop_errors(exact_model(quiet), obs, actions, 10, [1, 10, 20])
    assert max(quiet_errors.values()) < 10 * quiet.R.item()  # just the observation noise
    assert max(quiet_errors.values()) < 1e-3 * errors[1]


def test_open_loop_errors_grow_with_horizon_on_a_fitted_model(
    fitted: tuple[LatentStateSpaceModel, Tensor, Tensor, Tensor],
) -> None:
    model, _, obs, actions = fitted
    summary = D.open_loop_summary(model, obs, actions, 10, [1, 5, 20])
    mse = [summary[h]["mse"] for h in (1, 5, 20)]
    assert mse[0] < mse[1] < mse[2]
    epi = [summary[h]["epistemic_var"] for h in (1, 5, 20)]
    assert 0 < epi[0] < epi[2]
    # the members' average is no worse than one member on average (Jensen)
    assert all(summary[h]["mse"] <= summary[h]["member_mse"] + 1e-9 for h in (1, 5, 20))
    alea = float((model._obs_scale().detach() * model.obs_std).pow(2).mean())
    assert summary[1]["aleatoric_var"] == pytest.approx(alea, rel=1e-5)


def test_open_loop_members_roll_their_own_transition() -> None:
    """Member f's rollout is member f of sample_functions applied step by step from
    the belief that encode() gives for the prefix."""
    model = random_model("filtering")
    gen = torch.Generator().manual_seed(9)
    obs, actions = torch.randn(3, 12, 2, generator=gen), torch.randn(3, 12, 1, generator=gen)
    context, horizon = 5, 6
    pred = D.open_loop_predictions(model, obs, actions, context, horizon)
    e = model.num_members
    assert pred.member_latents.shape == (e, 3, horizon, 3)
    assert pred.member_obs.shape == (e, 3, horizon, 2)
    assert torch.equal(pred.target, obs[:, context : context + horizon])
    fs = model.sample_functions(e)
    for n in range(3):
        z = model.encode(obs[n, :context], actions[n, : context - 1]).mean
        assert torch.allclose(pred.start_mean[n], z, atol=1e-4)
        z = z.expand(e, 1, -1)
        for k in range(horizon):
            z = fs.mean(z, actions[n, context - 1 + k].expand(e, 1, -1))
            assert torch.allclose(pred.member_latents[:, n, k], z[:, 0], atol=1e-4)
            assert torch.allclose(pred.member_obs[:, n, k], model.decode(z[:, 0]), atol=1e-4)
    # members differ (epistemic spread), and the prediction is their average
    assert float(pred.epistemic_var.mean()) > 0
    assert torch.allclose(pred.mean, pred.member_obs.mean(0))


def test_open_loop_rejects_short_sequences_and_unfitted_models() -> None:
    model = random_model()
    obs, actions = torch.randn(2, 8, 2), torch.randn(2, 8, 1)
    with pytest.raises(DataError):
        D.open_loop_errors(model, obs, actions, 5, [4])
    with pytest.raises(DataError):
        D.open_loop_errors(model, obs, actions, 5, [0])
    with pytest.raises(DataError):
        D.open_loop_errors(model, obs[..., :1], actions, 2, [1])
    model.fitted = False
    with pytest.raises(ModelError):
        D.open_loop_errors(model, obs, actions, 2, [1])


def test_sampled_rollouts_match_the_mean_rollout_without_noise(ssm: LinearGaussianSSM) -> None:
    quiet = LinearGaussianSSM.position_velocity(
        process_std=1e-4, obs_std=1e-3, position_process_std=1e-4
    )
    _, obs, actions = simulate(quiet, 2, 16, seed=10)
    model = exact_model(quiet)
    lat, dec = D.sample_open_loop(model, obs, actions, 6, 8, num_particles=5)
    assert lat.shape == (1, 5, 2, 8, 2) and dec.shape == (1, 5, 2, 8, 1)
    pred = D.open_loop_predictions(model, obs, actions, 6, 8)
    # (the particles start from the belief plus the 1e-5 Cholesky jitter)
    assert torch.allclose(dec.mean(1), pred.member_obs, atol=1e-2)


# ----------------------------------------------------------- log-likelihood
def test_pointwise_log_likelihood_is_the_kalman_predictive(ssm: LinearGaussianSSM) -> None:
    _, obs, actions = simulate(ssm, 6, 15, seed=11)
    ll = D.pointwise_log_likelihood(exact_model(ssm), obs, actions, num_particles=20_000)
    assert ll.shape == (1, 6, 14)
    ref = kalman_filter(ssm, obs.double(), actions.double()).step_log_likelihoods[:, 1:]
    diff = ll[0] - ref  # Monte Carlo error only (an index shift would be off by nats)
    assert float(diff.abs().max()) < 0.06
    assert float(diff.abs().mean()) < 0.01 and abs(float(diff.mean())) < 0.01


def test_pointwise_log_likelihood_prefers_true_data_to_shuffled(
    ssm: LinearGaussianSSM, fitted: tuple[LatentStateSpaceModel, Tensor, Tensor, Tensor]
) -> None:
    _, obs, actions = simulate(ssm, 8, 20, seed=12)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shuffled = obs[:, perm]
    exact = exact_model(ssm)
    assert D.pointwise_log_likelihood(exact, obs, actions).mean() > (
        D.pointwise_log_likelihood(exact, shuffled, actions).mean() + 1.0
    )
    model = fitted[0]
    ll = D.pointwise_log_likelihood(model, obs, actions, num_particles=8)
    assert ll.shape == (3, 8, 19) and torch.isfinite(ll).all()
    assert ll.mean() > D.pointwise_log_likelihood(model, shuffled, actions, 8).mean()


def test_to_inference_data_runs_waic_and_loo(
    fitted: tuple[LatentStateSpaceModel, Tensor, Tensor, Tensor],
) -> None:
    model, _, obs, actions = fitted
    idata = D.to_inference_data(model, obs[:6, :12], actions[:6, :12], num_particles=8)
    ll = idata.log_likelihood["next_obs"]
    assert ll.dims == ("chain", "draw", "sequence", "step")
    assert ll.shape == (1, 3, 6, 11)
    assert idata.observed_data["next_obs"].shape == (6, 11, 1)
    assert np.allclose(idata.observed_data["next_obs"].values, obs[:6, 1:12].numpy())
    assert list(idata.posterior["function"].values[0]) == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waic = az.waic(idata)
        loo = az.loo(idata)
    assert math.isfinite(waic.elpd_waic) and math.isfinite(loo.elpd_loo)
    # waic's lppd is the log of the members' average density, summed over transitions
    ll_t = torch.as_tensor(ll.values[0])
    lppd = float((torch.logsumexp(ll_t, 0) - math.log(3)).sum())
    assert waic.elpd_waic + waic.p_waic == pytest.approx(lppd, rel=1e-6)


# ------------------------------------------------------------------ figures
def test_figures_are_written_for_vectors_and_frames(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(13)
    vec = random_model("smoothing")
    obs, actions = torch.randn(3, 14, 2, generator=gen), torch.randn(3, 14, 1, generator=gen)
    states = torch.randn(3, 14, 2, generator=gen)
    paths = [
        D.reconstruction_figure(vec, obs, actions, tmp_path / "v_rec.png"),
        D.open_loop_figure(vec, obs, actions, 6, 8, tmp_path / "v_ol.png", states=states),
    ]
    pix = random_model("filtering", frames=True)
    frames = torch.rand(2, 12, 1, 8, 8, generator=gen)  # (N, T, C, H, W) is accepted
    paths += [
        D.reconstruction_figure(pix, frames, actions[:2, :12], tmp_path / "p_rec.png"),
        D.open_loop_figure(pix, frames, actions[:2, :11], 4, 8, tmp_path / "p_ol.png"),
    ]
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError):
        D.open_loop_figure(vec, obs, actions, 6, 8, tmp_path / "x.png", states=states[:2])


def test_write_diagnostics(
    tmp_path,  # type: ignore[no-untyped-def]
    fitted: tuple[LatentStateSpaceModel, Tensor, Tensor, Tensor],
) -> None:
    model, states, obs, actions = fitted
    buf = to_buffer(obs, actions)
    flat_states = states.reshape(-1, 2)  # (position, velocity) stand in for (theta, theta_dot)
    metrics = D.write_diagnostics(model, buf, tmp_path / "diag", states=flat_states)
    for name in ("metrics.json", "reconstructions.png", "open_loop.png"):
        assert (tmp_path / "diag" / name).exists()
    assert metrics["horizons"] == [1, 5, 10] and metrics["context"] == 10
    # 16 episodes of 40 steps: two 20-step windows each, subsampled to 32
    assert metrics["num_sequences"] == 32
    assert set(metrics["open_loop_mse"]) == {"1", "5", "10"}
    assert metrics["open_loop_mse"]["1"] < metrics["open_loop_mse"]["10"]
    assert set(metrics["probe_r2"]) == set(D.STATE_TARGETS)
    # short episodes: the context shrinks and unreachable horizons are dropped
    short = D.write_diagnostics(model, to_buffer(obs[:4, :8], actions[:4, :8]), tmp_path / "s")
    assert short["context"] == 7 and short["horizons"] == [1]
    assert "probe_r2" not in short
    with pytest.raises(DataError):
        D.write_diagnostics(model, buf, tmp_path / "bad", states=flat_states[:10])


def test_frames_are_accepted_flat_stacked_or_uint8() -> None:
    pix = random_model("filtering", frames=True)
    gen = torch.Generator().manual_seed(14)
    frames = (torch.rand(2, 5, 1, 8, 8, generator=gen) * 255).to(torch.uint8)
    actions = torch.randn(2, 4, 1, generator=gen)  # T - 1 actions are padded
    flat = frames.reshape(2, 5, 64).float() / 255
    m_u8, _ = D.filter_beliefs(pix, frames, actions)
    m_flat, _ = D.filter_beliefs(pix, flat, torch.cat([actions, torch.zeros(2, 1, 1)], 1))
    assert torch.allclose(m_u8, m_flat)
