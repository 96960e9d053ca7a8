"""The latent state-space model: its Gaussian algebra against closed forms, its encoders
against exact inference on a linear-Gaussian system, the model end to end on a small
partially observed pendulum data set, and clear errors on bad input.

Tolerances (what a failure means):

* closed-form pieces (float64): ``condition``, ``unscented_predict`` and
  ``backward_kernels`` + ``smoothed_marginals`` equal the Kalman update / linear
  prediction / RTS smoother to ``1e-9`` with the Cholesky jitter removed and to
  ``1e-4`` with the library's jitter (``JITTER = 1e-5`` on the diagonal biases results
  by about that much); ``MarkovPrior`` and ``BackwardMarkovGaussian`` log-densities equal
  the joint Gaussian's to ``1e-8``; Monte Carlo moments within 5 standard errors.
* encoders trained on a :class:`KnownLinearModel` (position-velocity system, sequences of
  8 steps; see :func:`test_filtering_encoder_is_the_kalman_filter`).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import make_env
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.latent import gaussian
from bayes_mbrl.models.latent.gaussian import (
    backward_kernels,
    condition,
    smoothed_marginals,
    symmetrize,
    unscented_predict,
)
from bayes_mbrl.models.latent.kalman import LinearGaussianSSM, kalman_filter, rts_smoother
from bayes_mbrl.models.latent.linear import KnownLinearModel
from bayes_mbrl.models.latent.model import ENCODERS, LatentStateSpaceModel
from bayes_mbrl.models.latent.sequences import BackwardMarkovGaussian, MarkovPrior
from bayes_mbrl.options import OptionError

F64 = torch.float64
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "latent_kalman.py"


# --------------------------------------------------------------------------- helpers
def random_spd(b: int, n: int, g: torch.Generator, scale: float = 1.0) -> Tensor:
    m = torch.randn(b, n, n, generator=g, dtype=F64)
    return scale * (m @ m.mT / n + 0.5 * torch.eye(n, dtype=F64))


def random_ssm(g: torch.Generator, dz: int = 3, da: int = 2, do: int = 2) -> LinearGaussianSSM:
    """A random stable, fully coupled system with covariances of order one (the jitter
    of the Cholesky factorizations is then negligible against them)."""
    a = torch.randn(dz, dz, generator=g, dtype=F64)
    return LinearGaussianSSM(
        A=0.9 * a / torch.linalg.matrix_norm(a, ord=2),
        B=torch.randn(dz, da, generator=g, dtype=F64),
        C=torch.randn(do, dz, generator=g, dtype=F64),
        d=torch.randn(do, generator=g, dtype=F64),
        Q=random_spd(1, dz, g, 0.3)[0],
        R=random_spd(1, do, g, 0.5)[0],
        mu0=torch.randn(dz, generator=g, dtype=F64),
        P0=random_spd(1, dz, g, 1.5)[0],
    )


def _no_jitter_cholesky(cov: Tensor, jitter: float = 0.0) -> Tensor:
    return torch.linalg.cholesky(symmetrize(cov))


@pytest.fixture(params=["exact", "jittered"])
def tol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Run a closed-form test twice: with the Cholesky jitter removed (the algebra, to
    1e-9) and as shipped (to 1e-4 absolute plus 1e-4 relative: the jitter on a
    precision matrix moves a covariance entry by about ``JITTER * (1 + entry^2)``)."""
    if request.param == "exact":
        monkeypatch.setattr(gaussian, "safe_cholesky", _no_jitter_cholesky)
        return {"atol": 1e-9, "rtol": 0.0}
    return {"atol": 1e-4, "rtol": 1e-4}


def mc_close(draws: Tensor, mean: Tensor, cov: Tensor, sigmas: float = 5.0) -> None:
    """Sample mean and covariance of ``draws (n, k)`` within ``sigmas`` standard errors
    of ``mean (k,)`` and ``cov (k, k)``."""
    n = draws.shape[0]
    var = cov.diagonal()
    se_mean = (var / n).sqrt()
    assert ((draws.mean(0) - mean).abs() <= sigmas * se_mean).all(), (draws.mean(0), mean)
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    emp = torch.cov(draws.T)
    assert ((emp - cov).abs() <= sigmas * se_cov).all(), (emp, cov)


# ------------------------------------------------------------------ closed-form pieces
def test_condition_is_the_kalman_measurement_update(tol: dict[str, float]) -> None:
    g = torch.Generator().manual_seed(0)
    b, dz, do = 4, 3, 2
    m = torch.randn(b, dz, generator=g, dtype=F64)
    p = random_spd(b, dz, g)
    c = torch.randn(b, do, dz, generator=g, dtype=F64)
    r = random_spd(b, do, g, 0.5)
    o = torch.randn(b, do, generator=g, dtype=F64)
    r_inv = torch.linalg.inv(r)
    j = c.mT @ r_inv @ c
    h = (c.mT @ r_inv @ o.unsqueeze(-1)).squeeze(-1)
    post_m, post_p = condition(m, p, h, j)
    # the Kalman measurement update (covariance form)
    s = c @ p @ c.mT + r
    k = p @ c.mT @ torch.linalg.inv(s)
    innov = o - (c @ m.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(post_m, m + (k @ innov.unsqueeze(-1)).squeeze(-1), **tol)
    torch.testing.assert_close(post_p, p - k @ c @ p, **tol)
    # an uninformative potential leaves the belief unchanged
    same_m, same_p = condition(m, p, torch.zeros_like(h), torch.zeros_like(p))
    torch.testing.assert_close(same_m, m, **tol)
    torch.testing.assert_close(same_p, p, **tol)


def test_unscented_predict_is_exact_for_linear_transitions(tol: dict[str, float]) -> None:
    g = torch.Generator().manual_seed(1)
    b, dz, da = 3, 3, 2
    m = torch.randn(b, dz, generator=g, dtype=F64)
    p = random_spd(b, dz, g)
    act = torch.randn(b, da, generator=g, dtype=F64)
    a = torch.randn(2, dz, dz, generator=g, dtype=F64)  # two "members"
    bb = torch.randn(2, dz, da, generator=g, dtype=F64)
    q = torch.tensor([0.1, 0.2, 0.3], dtype=F64)

    def one(z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return z @ a[0].T + u @ bb[0].T, q.expand_as(z)

    pm, pp, cross = unscented_predict(m, p, act, one)
    mean0 = m @ a[0].T + act @ bb[0].T
    torch.testing.assert_close(pm, mean0, **tol)
    torch.testing.assert_close(pp, a[0] @ p @ a[0].T + torch.diag(q), **tol)
    torch.testing.assert_close(cross, p @ a[0].T, **tol)

    # a mixture of two linear transitions, member-major blocks of the sigma points (as
    # LatentStateSpaceModel._transition_all lays them out): the mixture's moments
    def mixture(z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        means = [z @ a[k].T + u @ bb[k].T for k in range(2)]
        return torch.cat(means, -2), q.expand_as(torch.cat([z, z], -2))

    pm, pp, cross = unscented_predict(m, p, act, mixture)
    mean1 = m @ a[1].T + act @ bb[1].T
    avg = (mean0 + mean1) / 2
    spread = sum(((mk - avg).unsqueeze(-1) @ (mk - avg).unsqueeze(-2)) for mk in (mean0, mean1))
    want = (a[0] @ p @ a[0].T + a[1] @ p @ a[1].T) / 2 + spread / 2 + torch.diag(q)
    torch.testing.assert_close(pm, avg, **tol)
    torch.testing.assert_close(pp, want, **tol)
    torch.testing.assert_close(cross, p @ ((a[0] + a[1]) / 2).T, **tol)


def test_backward_kernels_on_the_exact_filter_are_the_rts_smoother(tol: dict[str, float]) -> None:
    g = torch.Generator().manual_seed(2)
    ssm = random_ssm(g)
    n, t_len = 3, 6
    acts = torch.randn(n, t_len, ssm.action_dim, generator=g, dtype=F64)
    _, obs = ssm.simulate(n, t_len, acts, g)
    kf = kalman_filter(ssm, obs, acts)
    ref = rts_smoother(ssm, obs, acts)
    cross = kf.filtered_covs[:, :-1] @ ssm.A.T  # Cov[z_t, z_{t+1} | o_{1:t}]
    gain, offset, back = backward_kernels(
        kf.filtered_means, kf.filtered_covs, kf.predicted_means, kf.predicted_covs, cross
    )
    torch.testing.assert_close(gain, ref.gains, **tol)
    means, covs = smoothed_marginals(kf.filtered_means, kf.filtered_covs, gain, offset, back)
    torch.testing.assert_close(means, ref.smoothed_means, **tol)
    torch.testing.assert_close(covs, ref.smoothed_covs, **tol)


def _linear_prior(g: torch.Generator, n: int, t_len: int) -> dict[str, Any]:
    dz, da = 2, 1
    a = torch.tensor([[0.9, 0.2], [-0.3, 0.8]], dtype=F64)
    b = torch.tensor([[0.5], [1.0]], dtype=F64)
    q = torch.tensor([0.2, 0.4], dtype=F64)
    m0 = torch.tensor([0.5, -1.0], dtype=F64)
    p0 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    acts = torch.randn(n, t_len, da, generator=g, dtype=F64)

    def transition(z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return z @ a.T + u @ b.T, q.expand_as(z)

    # the joint of z_{1:T} as a linear map of independent (z_1 - m0, w_1, ..., w_{T-1})
    big = torch.zeros(t_len * dz, t_len * dz, dtype=F64)
    for t in range(t_len):
        for s in range(t + 1):
            big[t * dz : (t + 1) * dz, s * dz : (s + 1) * dz] = torch.linalg.matrix_power(a, t - s)
    base = torch.block_diag(p0, *[torch.diag(q)] * (t_len - 1))
    means = [m0.expand(n, dz)]
    for t in range(t_len - 1):
        means.append(means[-1] @ a.T + acts[:, t] @ b.T)
    return {
        "prior": MarkovPrior(m0, torch.linalg.cholesky(p0), acts, transition),
        "mean": torch.stack(means, 1).reshape(n, -1),
        "cov": big @ base @ big.T,
    }


def test_markov_prior_log_prob_and_draws_are_the_linear_gaussian_joint() -> None:
    g = torch.Generator().manual_seed(3)
    n, t_len = 5, 3
    lin = _linear_prior(g, n, t_len)
    value = lin["mean"].reshape(n, t_len, 2) + torch.randn(n, t_len, 2, generator=g, dtype=F64)
    joint = MultivariateNormal(lin["mean"], lin["cov"])
    torch.testing.assert_close(
        lin["prior"].log_prob(value), joint.log_prob(value.reshape(n, -1)), atol=1e-8, rtol=0
    )
    # draws: one independent sequence per batch element (same actions for all)
    draws_n = 4000
    lin = _linear_prior(torch.Generator().manual_seed(4), 1, t_len)
    prior = lin["prior"]
    many = MarkovPrior(
        prior.init.loc,
        prior.init.scale_tril,
        prior.actions.expand(draws_n, -1, -1),
        prior.transition,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = many.rsample().reshape(draws_n, -1)
    mc_close(z, lin["mean"][0], lin["cov"])


def _rts_backward(
    seed: int, n: int, t_len: int
) -> tuple[LinearGaussianSSM, Any, dict[str, Tensor]]:
    """A random system, sequences, their RTS smoother and its backward kernels written
    from the smoother's gains (independently of :func:`backward_kernels`)."""
    g = torch.Generator().manual_seed(seed)
    ssm = random_ssm(g)
    acts = torch.randn(n, t_len, ssm.action_dim, generator=g, dtype=F64)
    _, obs = ssm.simulate(n, t_len, acts, g)
    ref = rts_smoother(ssm, obs, acts)
    f = ref.filtered
    gain = ref.gains
    offset = f.filtered_means[:, :-1] - (gain @ f.predicted_means[:, 1:].unsqueeze(-1)).squeeze(-1)
    back = symmetrize(f.filtered_covs[:, :-1] - gain @ ssm.A @ f.filtered_covs[:, :-1])
    kernels = {
        "last_mean": f.filtered_means[:, -1],
        "last_scale_tril": torch.linalg.cholesky(f.filtered_covs[:, -1]),
        "gain": gain,
        "offset": offset,
        "back_scale_tril": torch.linalg.cholesky(back),
    }
    return ssm, ref, kernels


def test_backward_markov_gaussian_is_the_rts_smoothing_posterior() -> None:
    n, t_len = 2, 3
    _, ref, k = _rts_backward(5, n, t_len)
    dz = ref.smoothed_means.shape[-1]
    # the joint of z_{1:3} from the smoother's marginals and lag-one cross-covariances
    cov = torch.zeros(n, t_len * dz, t_len * dz, dtype=F64)

    def blk(i: int, j: int, value: Tensor) -> None:
        cov[:, i * dz : (i + 1) * dz, j * dz : (j + 1) * dz] = value
        cov[:, j * dz : (j + 1) * dz, i * dz : (i + 1) * dz] = value.mT

    for t in range(t_len):
        blk(t, t, ref.smoothed_covs[:, t])
    for t in range(t_len - 1):
        blk(t, t + 1, ref.cross_covs[:, t])
    blk(0, 2, ref.gains[:, 0] @ ref.cross_covs[:, 1])  # Cov[z_1, z_3] = G_1 Cov[z_2, z_3]
    joint = MultivariateNormal(ref.smoothed_means.reshape(n, -1), symmetrize(cov))
    q = BackwardMarkovGaussian(**k)
    assert q.batch_shape == (n,) and q.event_shape == (t_len, dz)
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        value = ref.smoothed_means + torch.randn(n, t_len, dz, generator=g, dtype=F64)
        torch.testing.assert_close(
            q.log_prob(value), joint.log_prob(value.reshape(n, -1)), atol=1e-8, rtol=0
        )

    # Monte Carlo marginals of rsample (one draw per batch element): the RTS marginals
    draws_n = 4000
    many = BackwardMarkovGaussian(**{key: v.repeat_interleave(draws_n, 0) for key, v in k.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = many.rsample().reshape(n, draws_n, -1)
    for i in range(n):
        mc_close(z[i], joint.loc[i], joint.covariance_matrix[i])


# ----------------------------------------------------- encoders against exact inference
def _experiment() -> ModuleType:
    spec = importlib.util.spec_from_file_location("latent_kalman_experiment", EXPERIMENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kalman_task() -> dict[str, Any]:
    exp = _experiment()
    ssm = LinearGaussianSSM.position_velocity()
    train = exp.data(ssm, 2000, 8, seed=100)
    test = exp.data(ssm, 200, 8, seed=200)
    cache: dict[str, dict[str, float]] = {}

    def metrics(encoder: str, steps: int) -> dict[str, float]:
        if encoder not in cache:
            model = KnownLinearModel(ssm, encoder, seed=0)
            with torch.random.fork_rng(devices=[]):
                exp.train_encoder(model, *train, steps, batch=32, seed=0)
            cache[encoder] = exp.compare(model, *test)
        return cache[encoder]

    return {"metrics": metrics}


FILTER_STEPS, SMOOTHER_STEPS, SINGLE_STEPS = 300, 400, 150


def test_filtering_encoder_is_the_kalman_filter(kalman_task: dict[str, Any]) -> None:
    """The generative model is the true position-velocity system (only the position is
    observed) and only the recognition network is trained, on the filtering bound
    (Adam, lr 1e-2 cosine, 32 sequences of 8 steps, 300 steps). On 200 fresh sequences
    its marginals ``q(z_t | o_{1:t})`` match the Kalman filter's: mean error < 0.1
    exact posterior sd and sd relative error < 0.1 (per coordinate, averaged), and the
    ELBO per step is within 0.03 nats of the exact log-likelihood per step (observed
    over 3 seeds: mean <= 0.033 sd, sd <= 0.027, gap <= 0.003 nats/step)."""
    r = kalman_task["metrics"]("filtering", FILTER_STEPS)
    assert r["mean_error_pos_in_sd"] < 0.1 and r["mean_error_vel_in_sd"] < 0.1, r
    assert r["sd_rel_error_pos"] < 0.1 and r["sd_rel_error_vel"] < 0.1, r
    gap = r["exact_loglik_per_step"] - r["elbo_per_step"]
    assert -0.01 < gap < 0.03, r  # a bound: at most MC noise above the log-likelihood


def test_smoothing_encoder_is_the_rts_smoother(kalman_task: dict[str, Any]) -> None:
    """As above with the sequence ELBO and the backward (RTS) factorization, 400 steps:
    the marginals match the RTS smoother's (mean error < 0.2 sd, sd relative error
    < 0.15) and the ELBO is within 0.05 nats/step of the exact log-likelihood (observed
    over 5 seeds: mean <= 0.09 sd, sd <= 0.064, gap <= 0.006 nats/step)."""
    r = kalman_task["metrics"]("smoothing", SMOOTHER_STEPS)
    assert r["mean_error_pos_in_sd"] < 0.2 and r["mean_error_vel_in_sd"] < 0.2, r
    assert r["sd_rel_error_pos"] < 0.15 and r["sd_rel_error_vel"] < 0.15, r
    gap = r["exact_loglik_per_step"] - r["elbo_per_step"]
    assert -0.01 < gap < 0.05, r


def test_single_step_encoder_cannot_infer_the_velocity(kalman_task: dict[str, Any]) -> None:
    """``q(z_t | o_t)`` sees one position: its velocity error (in exact filter sd) is
    more than 5x the filtering encoder's (observed: ~1.8 sd against <= 0.03)."""
    single = kalman_task["metrics"]("single_step", SINGLE_STEPS)
    filt = kalman_task["metrics"]("filtering", FILTER_STEPS)
    assert single["mean_error_vel_in_sd"] > 5 * filt["mean_error_vel_in_sd"], (single, filt)
    assert single["mean_error_vel_in_sd"] > 0.5, single


def test_overshooting_kl_is_the_kl_to_the_d_step_linear_gaussian_prediction() -> None:
    """Latent overshooting on a known linear system: the term for distance ``d`` is
    ``KL(q_{t+d} || N(A^d m_t + sum_k A^(d-1-k) B a_{t+k}, A^d P_t A^dT + sum_k A^k Q A^kT))``
    summed over ``t``, and the loss is the mean over ``d = 2..D``."""
    g = torch.Generator().manual_seed(3)
    ssm = random_ssm(g, dz=3, da=2, do=2)
    model = KnownLinearModel(ssm, "filtering")
    model.options.overshooting = 4
    b, t_len, dz = 2, 7, 3
    mean = torch.randn(b, t_len, dz, generator=g)
    cov = random_spd(b * t_len, dz, g).float().reshape(b, t_len, dz, dz)
    acts = torch.randn(b, t_len, 2, generator=g)
    a, bm = model.f["A"].double(), model.f["B"].double()
    q = torch.diag(model.f["Q"].diagonal()).double()
    want = torch.zeros((), dtype=F64)
    for d in (2, 3, 4):
        for i in range(b):
            for t in range(t_len - d):
                m, p = mean[i, t].double(), cov[i, t].double()
                for k in range(d):
                    m, p = a @ m + bm @ acts[i, t + k].double(), a @ p @ a.T + q
                post = MultivariateNormal(mean[i, t + d].double(), cov[i, t + d].double())
                want += torch.distributions.kl_divergence(post, MultivariateNormal(m, p))
    got = model._overshooting_kl(mean, cov, acts)
    torch.testing.assert_close(got.double(), want / 3, rtol=2e-3, atol=1e-3)
    # the targets get no gradient: the last two beliefs (targets only) none at all
    mean.requires_grad_(True)
    (grad,) = torch.autograd.grad(model._overshooting_kl(mean, cov, acts), mean)
    assert grad[:, t_len - 2 :].abs().sum() == 0 and (grad[:, : t_len - 2].abs() > 0).all()


def test_overshooting_needs_a_belief_with_a_covariance() -> None:
    with pytest.raises(OptionError, match=r"overshooting.*deterministic"):
        LatentStateSpaceModel(2, 1, encoder="deterministic", overshooting=3)


# ------------------------------------------------------------ end to end on a pendulum
TINY = {
    "latent_dim": 3,
    "num_members": 2,
    "hidden_sizes": [16],
    "embed_dim": 8,
    "seq_len": 8,
    "batch_size": 8,
    "first_fit_steps": 100,
    "train_steps": 50,
    "learning_rate": 3e-3,
}


@pytest.fixture(scope="module")
def pendulum_buffer() -> ReplayBuffer:
    """4 random episodes of 25 steps of Pendulum-v1 seen through noisy [cos, sin]."""
    env = make_env("bayes_mbrl/PendulumPartial-v0", max_episode_steps=25)
    buf = ReplayBuffer(env.observation_space.shape[0], env.action_space.shape[0], 100)
    for ep in range(4):
        obs, _ = env.reset(seed=ep)
        env.action_space.seed(ep)
        done = False
        while not done:
            action = env.action_space.sample()
            nxt, reward, term, trunc, _ = env.step(action)
            buf.add(obs, action, reward, nxt, term, trunc)
            obs, done = nxt, term or trunc
    env.close()
    assert len(buf) == 100 and buf.obs_dim == 2
    return buf


def _history(buf: ReplayBuffer, steps: int = 6) -> tuple[Tensor, Tensor]:
    batch = buf.all()
    return batch.obs[25 : 25 + steps], batch.action[25 : 25 + steps]


def _nets(model: LatentStateSpaceModel) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.nets.state_dict().items()}


@pytest.mark.parametrize("encoder", ENCODERS)
def test_model_end_to_end(encoder: str, pendulum_buffer: ReplayBuffer, tmp_path: Path) -> None:
    model = LatentStateSpaceModel(2, 1, encoder=encoder, seed=0, **TINY)
    assert model.progress_total() == 2  # first_fit_steps / 50
    with pytest.raises(ModelError, match="not been fitted"):
        model.encode(_history(pendulum_buffer)[0])
    first = model.fit(pendulum_buffer)
    assert model.fitted and model.fits == 1
    assert first.epochs == 2 and len(first.train_losses) == 2
    assert all(math.isfinite(v) for v in first.train_losses)
    assert first.train_losses[-1] < first.train_losses[0], first.train_losses
    assert model.progress_total() == 1  # train_steps / 50 from now on

    # the belief over the current latent state, from a history
    obs, acts = _history(pendulum_buffer)
    belief = model.encode(obs, acts[:-1])
    assert belief.mean.shape == (3,) and belief.cov.shape == (3, 3)
    assert torch.isfinite(belief.mean).all() and torch.isfinite(belief.cov).all()
    if encoder == "deterministic":
        assert torch.equal(belief.cov, torch.zeros(3, 3))
    else:
        torch.testing.assert_close(belief.cov, belief.cov.T)
        assert float(torch.linalg.eigvalsh(belief.cov).min()) > 0
    # a trailing action is ignored; the run-time filter is the batched one's last step
    torch.testing.assert_close(model.encode(obs, acts).mean, belief.mean, atol=0, rtol=0)
    means, covs = model.posterior_marginals(obs[None], acts[None])
    assert means.shape == (1, 6, 3) and covs.shape == (1, 6, 3, 3)
    torch.testing.assert_close(means[0, -1], belief.mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(covs[0, -1], belief.cov, atol=1e-4, rtol=1e-4)
    elbo = model.elbo(obs[None], acts[None], pendulum_buffer.all().reward[25:31][None])
    assert elbo.shape == (1,) and torch.isfinite(elbo).all()

    # latent transitions as functions, batch (n, B), equal to the model's members
    fs = model.sample_functions(5, torch.Generator().manual_seed(0))
    z = torch.randn(5, 7, 3)
    a = torch.rand(5, 7, 1) * 4 - 2
    d = fs(z, a)
    assert d.batch_shape == (5, 7) and d.event_shape == (3,)
    assert torch.isfinite(d.mean).all() and torch.isfinite(d.stddev).all()
    with torch.no_grad():
        mu, var = model._transition_all(z.reshape(1, 35, 3), a.reshape(1, 35, 1))
    mu, var = mu.reshape(2, 5, 7, 3), var.reshape(2, 5, 7, 3)  # (member, n, B, dz)
    idx = fs.member_index
    rows = torch.arange(5)
    torch.testing.assert_close(d.mean, mu[idx, rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d.variance, var[idx, rows], atol=1e-5, rtol=1e-4)

    reward_fn = model.reward_function()
    r = reward_fn(z.reshape(35, 3), a.reshape(35, 1), z.reshape(35, 3))
    assert r.shape == (35,) and torch.isfinite(r).all()
    assert model.decode(z).shape == (5, 7, 2)

    # state_dict -> file -> weights_only load -> a fresh model: the same beliefs
    path = tmp_path / "latent.pt"
    torch.save(model.state_dict(), path)
    fresh = LatentStateSpaceModel(2, 1, encoder=encoder, seed=123, **TINY)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.fitted and fresh.fits == 1
    again = fresh.encode(obs, acts[:-1])
    assert torch.equal(again.mean, belief.mean) and torch.equal(again.cov, belief.cov)

    # a second fit continues from the first (fewer steps, not from scratch)
    before = _nets(model)
    second = model.fit(pendulum_buffer)
    assert model.fits == 2 and second.epochs == 1 and len(second.train_losses) == 1
    assert second.train_losses[0] < first.train_losses[0]
    assert any(not torch.equal(before[k], v) for k, v in model.nets.state_dict().items())


def test_min_transition_std_adds_its_square_to_every_transition_variance() -> None:
    """The floor enters the filter's transition, the planner's functions and the actor-critic's
    imagination alike: each member's variance plus ``min_transition_std ** 2``."""
    plain = LatentStateSpaceModel(2, 1, seed=4, **TINY)
    floored = LatentStateSpaceModel(2, 1, seed=4, min_transition_std=0.3, **TINY)
    plain.fitted = floored.fitted = True
    z, a = torch.randn(1, 6, 3), torch.rand(1, 6, 1) * 4 - 2
    with torch.no_grad():
        mu0, var0 = plain._transition_all(z, a)
        mu1, var1 = floored._transition_all(z, a)
        torch.testing.assert_close(mu1, mu0, atol=0, rtol=0)
        torch.testing.assert_close(var1, var0 + 0.09)
        x = torch.cat([z, a], -1).expand(2, -1, -1)
        torch.testing.assert_close(floored.member_heads(x)[1], plain.member_heads(x)[1] + 0.09)
    for model, floor in ((plain, 0.0), (floored, 0.09)):
        fs = model.sample_functions(4, torch.Generator().manual_seed(0))
        zz, aa = z.expand(4, -1, -1), a.expand(4, -1, -1)
        mean, var = fs(zz, aa).mean, fs(zz, aa).variance
        want = var0.reshape(2, 6, 3)[fs.member_index] + floor
        torch.testing.assert_close(var, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            mean, mu0.reshape(2, 6, 3)[fs.member_index], atol=1e-5, rtol=1e-5
        )
        g = torch.Generator().manual_seed(1)
        draws = torch.stack([fs.sample(zz, aa, g) for _ in range(4000)])
        emp = draws.var(0)
        assert ((emp / want - 1).abs() < 0.15).all(), emp / want


def test_fit_is_seeded(pendulum_buffer: ReplayBuffer) -> None:
    opts = {**TINY, "first_fit_steps": 50}

    def fitted(seed: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        model = LatentStateSpaceModel(2, 1, encoder="single_step", seed=seed, **opts)
        model.fit(pendulum_buffer, generator=generator)
        return _nets(model)

    def same(x: dict[str, Tensor], y: dict[str, Tensor]) -> bool:
        return all(torch.equal(x[k], y[k]) for k in x)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # the global RNG does not matter
        one = fitted(0)
        torch.manual_seed(2)
        assert same(one, fitted(0))
    assert not same(one, fitted(1))
    assert not same(one, fitted(0, torch.Generator().manual_seed(7)))


def test_fresh_refit_starts_over_and_keeps_the_old_model_when_it_fails(
    pendulum_buffer: ReplayBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``refit = "fresh"``: every later fit re-initializes the parameters (a new seed per
    fit), the optimizer and the normalizers and runs ``first_fit_steps``; a fresh fit
    that fails leaves the previously fitted model in place."""
    model = LatentStateSpaceModel(2, 1, encoder="filtering", seed=0, refit="fresh", **TINY)
    model.fit(pendulum_buffer)
    first_nets = _nets(model)
    assert model.progress_total() == 2  # first_fit_steps again, not train_steps
    # the refit sees a different buffer: half the episodes, other normalizers
    half = ReplayBuffer(2, 1, 50)
    b = pendulum_buffer.all()
    half.add(b.obs[50:], b.action[50:], b.reward[50:], b.next_obs[50:], b.terminated[50:],
             b.truncated[50:])  # fmt: skip
    report = model.fit(half)
    assert model.fits == 2 and report.epochs == 2  # first_fit_steps / 50
    step = model.optimizer.state_dict()["state"][0]["step"]
    assert float(step) == TINY["first_fit_steps"]  # a new Adam, not the first fit's
    torch.testing.assert_close(model.obs_mean, b.obs[50:].mean(0))
    assert any(not torch.equal(first_nets[k], v) for k, v in model.nets.state_dict().items())

    # a fresh refit whose ELBO turns non-finite keeps the model fitted before it
    kept = _nets(model)
    obs, acts = _history(pendulum_buffer)
    belief = model.encode(obs, acts[:-1])
    monkeypatch.setattr(model, "_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ModelError):
        model.fit(pendulum_buffer)
    assert all(torch.equal(kept[k], v) for k, v in model.nets.state_dict().items())
    torch.testing.assert_close(model.obs_mean, b.obs[50:].mean(0))
    again = model.encode(obs, acts[:-1])
    assert torch.equal(again.mean, belief.mean) and torch.equal(again.cov, belief.cov)


# ------------------------------------------------------------------ frames, bad input
FRAME = (1, 16, 16)
CONV = {**TINY, "seq_len": 6, "batch_size": 4, "first_fit_steps": 50}


def _frame_buffer(low: float = 0.0, high: float = 1.0, obs_dim: int = 256) -> ReplayBuffer:
    """3 episodes of 10 random frames (uniform in [low, high])."""
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(obs_dim, 1, 30)
    for _ in range(3):
        frames = low + (high - low) * torch.rand(11, obs_dim, generator=g)
        done = torch.zeros(10, dtype=torch.bool)
        done[-1] = True
        buf.add(
            frames[:-1], torch.rand(10, 1, generator=g) * 2 - 1, torch.rand(10, generator=g),
            frames[1:], torch.zeros(10, dtype=torch.bool), done,
        )  # fmt: skip
    return buf


@pytest.fixture(scope="module")
def conv_model() -> LatentStateSpaceModel:
    model = LatentStateSpaceModel(256, 1, frame_shape=FRAME, seed=0, **CONV)
    report = model.fit(_frame_buffer())
    assert model.fitted and all(math.isfinite(v) for v in report.train_losses)
    return model


def _frames(steps: int = 4) -> Tensor:
    return torch.rand(steps, *FRAME, generator=torch.Generator().manual_seed(1))


def test_conv_model_fits_and_decodes_frames(conv_model: LatentStateSpaceModel) -> None:
    frames = _frames()
    acts = torch.zeros(3, 1)
    belief = conv_model.encode(frames, acts)
    assert belief.mean.shape == (3,) and torch.isfinite(belief.cov).all()
    flat = conv_model.encode(frames.reshape(4, 256), acts)  # flat rows are the same frames
    assert torch.equal(flat.mean, belief.mean)
    out = conv_model.decode(torch.randn(2, 5, 3) * 3)
    assert out.shape == (2, 5, 256)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_conv_autoencoder_learns_sparse_frames() -> None:
    """The convolutional embedding and decoder can represent a frame that is mostly
    black with a small bright mark (as a pendulum frame is): an autoencoder through
    a 2-d bottleneck fitted on marks at angles around a circle reconstructs them far
    better than the mean frame does (a sigmoid decoder stayed at the all-black frame)."""
    from bayes_mbrl.models.latent.networks import ConvDecoder, ConvEmbedding

    g = torch.Generator().manual_seed(0)
    angles = torch.rand(256, generator=g) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    cy, cx = 7.5 - 5 * torch.cos(angles), 7.5 + 5 * torch.sin(angles)
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    frames = (d2 < 2.0).float().reshape(256, 256)  # ~6 bright pixels of 256
    baseline = float((frames - frames.mean(0)).pow(2).mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc, dec = ConvEmbedding(FRAME, 16, 8), ConvDecoder(2, FRAME, 32, 8)
        head = torch.nn.Linear(16, 2)
    params = [*enc.parameters(), *dec.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(400):
        rows = torch.randint(256, (64,), generator=g)
        loss = (dec(head(enc(frames[rows]))) - frames[rows]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = float((dec(head(enc(frames))) - frames).pow(2).mean())
    assert mse < 0.3 * baseline, (mse, baseline)


def test_uint8_frames_are_scaled(conv_model: LatentStateSpaceModel) -> None:
    raw = (_frames() * 255).round().to(torch.uint8)
    acts = torch.zeros(3, 1)
    from_uint8 = conv_model.encode(raw, acts)
    from_float = conv_model.encode(raw.float() / 255.0, acts)
    assert torch.equal(from_uint8.mean, from_float.mean)
    assert torch.equal(from_uint8.cov, from_float.cov)
    # numpy input too
    torch.testing.assert_close(conv_model.encode(raw.numpy(), acts.numpy()).mean, from_float.mean)


def _with_nan(frames: Tensor) -> Tensor:
    frames = frames.clone()
    frames[2, 0, 3, 4] = float("nan")
    return frames


BAD_HISTORIES: dict[str, tuple[Callable[[], Any], Callable[[], Any], list[str]]] = {
    "small frames": (lambda: torch.rand(4, 1, 8, 8), lambda: torch.zeros(3, 1),
                     ["shape (T, 256)", "got (4, 1, 8, 8)"]),
    "flat rows of the wrong size": (lambda: torch.rand(4, 100), lambda: torch.zeros(3, 1),
                                    ["shape (T, 256)", "(4, 100)"]),
    "int64 frames": (lambda: torch.ones(4, *FRAME, dtype=torch.int64), lambda: torch.zeros(3, 1),
                     ["dtype torch.int64", "float32", "uint8"]),
    "empty history": (lambda: torch.zeros(0, *FRAME), lambda: None, ["empty"]),
    "too few actions": (lambda: _frames(5), lambda: torch.zeros(2, 1),
                        ["5 observations needs 4 actions", "got 2"]),
    "NaN pixels": (lambda: _with_nan(_frames()), lambda: torch.zeros(3, 1),
                   ["NaN or inf", "step 2"]),
    "NaN actions": (lambda: _frames(), lambda: torch.tensor([[0.0], [float("nan")], [0.0]]),
                    ["actions contain NaN"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_HISTORIES))
def test_bad_histories_raise_data_errors(conv_model: LatentStateSpaceModel, case: str) -> None:
    good = conv_model.encode(_frames(), torch.zeros(3, 1))
    make_obs, make_acts, fragments = BAD_HISTORIES[case]
    with pytest.raises(DataError) as info:
        conv_model.encode(make_obs(), make_acts())
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # nothing was lost: the model still encodes, identically
    after = conv_model.encode(_frames(), torch.zeros(3, 1))
    assert torch.equal(after.mean, good.mean) and torch.equal(after.cov, good.cov)


def test_vector_model_rejects_integer_observations() -> None:
    model = LatentStateSpaceModel(2, 1, seed=0, **TINY)
    with pytest.raises(DataError, match=r"dtype torch.uint8; pass float32 values"):
        model.check_observations(np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \(T, 2\).*got \(3, 4\)"):
        model.check_observations(np.zeros((3, 4), dtype=np.float32))
    assert model.check_observations(np.zeros(2)).shape == (1, 2)


def test_fit_rejects_frames_outside_unit_interval_and_stays_unfitted() -> None:
    model = LatentStateSpaceModel(256, 1, frame_shape=FRAME, seed=0, **CONV)
    before = _nets(model)
    with pytest.raises(DataError, match=r"intensities in \[0, 1\].*divide uint8 frames by 255"):
        model.fit(_frame_buffer(high=255.0))
    assert not model.fitted and model.fits == 0
    assert all(torch.equal(before[k], v) for k, v in model.nets.state_dict().items())
    assert torch.equal(model.reward_std, torch.ones(()))
    with pytest.raises(ModelError, match="not been fitted"):
        model.encode(_frames())


def test_fit_rejects_buffers_that_do_not_fit_the_model() -> None:
    model = LatentStateSpaceModel(256, 1, frame_shape=FRAME, seed=0, **CONV)
    with pytest.raises(DataError, match=r"observations of size 256 .* the buffer holds 100"):
        model.fit(_frame_buffer(obs_dim=100))
    single = ReplayBuffer(256, 1, 4)
    for _ in range(3):  # one-step episodes
        single.add(torch.rand(256), [0.0], 0.0, torch.rand(256), True, False)
    with pytest.raises(DataError, match="episode of at least 2 steps"):
        model.fit(single)
    assert not model.fitted
    with pytest.raises(DataError, match="frame_shape"):
        LatentStateSpaceModel(255, 1, frame_shape=FRAME, **CONV)
