"""Diagnostics of a fitted :class:`~bayes_mbrl.models.latent.model.LatentStateSpaceModel`.

Pure functions of a fitted model and observation sequences ``obs (N, T, do)``,
``actions (N, T, da)`` (``actions[:, t]`` drives ``t -> t + 1``; frames flattened):

* open-loop prediction (:func:`open_loop_predictions`, :func:`open_loop_errors`,
  :func:`open_loop_summary`): filter the first ``context`` steps, then roll the
  belief's mean forward with the recorded actions through every transition member
  (no observations), decode, and compare with the true observations ``h`` steps
  ahead; the members' spread is the epistemic part, the decoder's noise the aleatoric;
* a linear probe of the true state (:func:`linear_probe`, :func:`probe_state`): how
  much of ``(cos theta, sin theta, theta_dot)`` the encoder's belief means carry
  linearly (held-out R^2);
* the pointwise one-step predictive log-likelihood per transition member
  (:func:`pointwise_log_likelihood`) and its ArviZ export (:func:`to_inference_data`)
  for ``az.waic``/``az.loo``;
* figures (:func:`reconstruction_figure`, :func:`open_loop_figure`) and
  :func:`write_diagnostics`, which writes all of it for a replay buffer.

"Belief" means what :meth:`LatentStateSpaceModel.encode` returns for a history: the
filter's ``q(z_t | o_{1:t}, a_{1:t-1})`` for the ``filtering`` and ``smoothing``
encoders (the smoother's marginal at the last step is the filter's), the single-step
posterior ``q(z_t | o_t)`` for ``single_step`` and ``deterministic``
(:func:`filter_beliefs`, all steps at once). Transitions are the model's own
(``_transition``, the grouped call the filter and the ELBO use), so a model with a
fixed generative part (:class:`~bayes_mbrl.models.latent.linear.KnownLinearModel`)
is diagnosed with its true transition.

Units: observations, errors and log-densities are in the raw observation units
(vectors are de-normalized; frames are intensities in ``[0, 1]``).

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot, headless), as in :mod:`bayes_mbrl.uncertainty.plots`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.latent.gaussian import safe_cholesky
from bayes_mbrl.models.latent.model import LatentStateSpaceModel, Sequences

__all__ = [
    "STATE_TARGETS",
    "OpenLoop",
    "filter_beliefs",
    "linear_probe",
    "open_loop_errors",
    "open_loop_figure",
    "open_loop_predictions",
    "open_loop_summary",
    "pointwise_log_likelihood",
    "probe_state",
    "reconstruction_figure",
    "sample_open_loop",
    "state_targets",
    "to_inference_data",
    "write_diagnostics",
]

#: names of the probe's targets (:func:`state_targets`)
STATE_TARGETS = ("cos_theta", "sin_theta", "theta_dot")

#: decoded values per chunk of :func:`pointwise_log_likelihood` (bounds its memory)
_CHUNK_VALUES = 2**23


# ----------------------------------------------------------------------- inputs
def _check_fitted(model: LatentStateSpaceModel) -> None:
    if not model.fitted:
        raise ModelError("the latent model has not been fitted; call fit(buffer) first")


def _sequences(model: LatentStateSpaceModel, obs: Any, actions: Any) -> tuple[Tensor, Tensor]:
    """``(N, T, do)`` observations and ``(N, T, da)`` actions as float32 tensors.

    Frames may come as ``(N, T, C, H, W)`` (uint8 ones are scaled by 1/255); one
    sequence as ``(T, do)``; ``T - 1``
    actions per sequence are padded with a zero action (the last one drives no
    observed step).

    Raises:
        DataError: shapes that do not fit the model, or non-finite values.
    """
    o = torch.as_tensor(obs)
    o = o.float() / 255.0 if o.dtype == torch.uint8 and model.frame_shape else o.float()
    a = torch.as_tensor(actions).float()
    if model.frame_shape is not None and tuple(o.shape[-3:]) == model.frame_shape:
        o = o.reshape(*o.shape[:-3], model.observation_dim)
    if o.dim() == 2:
        o = o.unsqueeze(0)
    if a.dim() == 2 and o.shape[0] == 1:
        a = a.unsqueeze(0)
    if o.dim() != 3 or o.shape[-1] != model.observation_dim:
        raise DataError(
            f"observations must have shape (N, T, {model.observation_dim}), got {tuple(o.shape)}"
        )
    n, t_len = o.shape[:2]
    if a.dim() != 3 or a.shape[0] != n or a.shape[-1] != model.action_dim:
        raise DataError(
            f"actions must have shape ({n}, {t_len}, {model.action_dim}) for observations "
            f"of shape {tuple(o.shape)}, got {tuple(a.shape)}"
        )
    if a.shape[1] == t_len - 1:
        a = torch.cat([a, a.new_zeros(n, 1, model.action_dim)], dim=1)
    if a.shape[1] != t_len:
        raise DataError(
            f"{t_len} observations per sequence need {t_len} (or {t_len - 1}) actions, "
            f"got {a.shape[1]}"
        )
    if t_len < 1 or n < 1:
        raise DataError(f"no sequences to diagnose (observations {tuple(o.shape)})")
    if not bool(torch.isfinite(o).all()) or not bool(torch.isfinite(a).all()):
        raise DataError("observations or actions contain NaN or inf")
    return o, a


def _noise_var(model: LatentStateSpaceModel) -> Tensor:
    """Observation noise variance in raw units, ``(do,)``."""
    scale = model._obs_scale().detach()
    if model.frame_shape is None:
        scale = scale * model.obs_std
    return scale.expand(model.observation_dim).pow(2)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


# ---------------------------------------------------------------------- beliefs
@torch.no_grad()
def filter_beliefs(model: LatentStateSpaceModel, obs: Any, actions: Any) -> tuple[Tensor, Tensor]:
    """The run-time belief after every step: ``encode(obs[n, :t + 1], actions[n, :t])``
    for all ``n, t`` at once.

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)`` observations.
        actions: ``(N, T, da)`` actions.

    Returns:
        ``(means (N, T, dz), covs (N, T, dz, dz))``: the filter (transitions averaged
        over members) for ``filtering`` and ``smoothing``; the single-step posterior
        otherwise (zero covariance for ``deterministic``).

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes.
    """
    _check_fitted(model)
    o, a = _sequences(model, obs, actions)
    if model.encoder in ("filtering", "smoothing"):
        emb = model._embed(model._normalize_obs(o))
        f = model._filter(emb, a, grouped=False)
        return f["mean"], f["cov"]
    return model.posterior_marginals(o, a)


# ------------------------------------------------------------------- open loop
@dataclass
class OpenLoop:
    """Open-loop predictions of ``N`` sequences from step ``context``.

    Step ``k`` (0-based) of the horizon predicts ``obs[:, context + k]``, i.e. the
    observation ``h = k + 1`` steps after the last one filtered.

    Attributes:
        context: observations filtered before predicting.
        start_mean: ``(N, dz)`` the belief's mean after ``context`` observations.
        start_cov: ``(N, dz, dz)`` its covariance.
        member_latents: ``(E, N, H, dz)`` each member's latent mean rollout.
        member_obs: ``(E, N, H, do)`` their decoded observations (raw units).
        target: ``(N, H, do)`` the true observations.
        noise_var: ``(do,)`` the decoder's observation noise variance (raw units).
    """

    context: int
    start_mean: Tensor
    start_cov: Tensor
    member_latents: Tensor
    member_obs: Tensor
    target: Tensor
    noise_var: Tensor

    @property
    def mean(self) -> Tensor:
        """``(N, H, do)`` prediction: the members' decoded predictions averaged."""
        return self.member_obs.mean(0)

    @property
    def epistemic_var(self) -> Tensor:
        """``(N, H, do)`` variance of the decoded predictions across members."""
        return self.member_obs.var(0, unbiased=False)

    def squared_error(self) -> Tensor:
        """``(N, H, do)`` squared error of :attr:`mean` against :attr:`target`."""
        return (self.mean - self.target).pow(2)


@torch.no_grad()
def open_loop_predictions(
    model: LatentStateSpaceModel, obs: Any, actions: Any, context: int, horizon: int
) -> OpenLoop:
    """Filter ``context`` observations, then predict ``horizon`` steps open loop.

    The belief's mean after ``obs[:, :context]`` is pushed through each transition
    member's mean ``z' = mu_f(z, a)`` with ``actions[:, context - 1 + k]`` at step
    ``k``, and decoded.

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)`` observations with ``T >= context + horizon``.
        actions: ``(N, T, da)``.
        context: observations to filter (>= 1).
        horizon: steps to predict (>= 1).

    Returns:
        The :class:`OpenLoop` predictions.

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes, or sequences too short for ``context + horizon``.
    """
    o, a = _sequences(model, obs, actions)
    t_len = o.shape[1]
    if context < 1 or horizon < 1 or context + horizon > t_len:
        raise DataError(
            f"open-loop prediction needs context >= 1, horizon >= 1 and context + horizon <= "
            f"T = {t_len}; got context {context}, horizon {horizon}"
        )
    means, covs = filter_beliefs(model, o[:, :context], a[:, :context])
    return _roll_means(model, means[:, -1], covs[:, -1], o, a, context, horizon)


def _roll_means(
    model: LatentStateSpaceModel,
    mean: Tensor,
    cov: Tensor,
    o: Tensor,
    a: Tensor,
    context: int,
    horizon: int,
) -> OpenLoop:
    """:func:`open_loop_predictions` from the belief ``(mean (N, dz), cov)`` after
    ``context`` observations."""
    e, n = model.num_members, mean.shape[0]
    z = mean.repeat(e, 1)  # block f of the E * N rows is rolled by member f
    latents = []
    for k in range(horizon):
        z, _ = model._transition(z, a[:, context - 1 + k].repeat(e, 1))
        latents.append(z.reshape(e, n, -1))
    member_latents = torch.stack(latents, dim=2)
    return OpenLoop(
        context=context,
        start_mean=mean,
        start_cov=cov,
        member_latents=member_latents,
        member_obs=model.decode(member_latents),
        target=o[:, context : context + horizon],
        noise_var=_noise_var(model),
    )


def _horizons(horizons: Sequence[int]) -> list[int]:
    hs = sorted({int(h) for h in horizons})
    if not hs or hs[0] < 1:
        raise DataError(f"horizons must be integers >= 1, got {list(horizons)}")
    return hs


def open_loop_errors(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    context: int,
    horizons: Sequence[int],
) -> dict[int, float]:
    """Mean squared error per observation dimension of open-loop predictions.

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)`` with ``T >= context + max(horizons)``.
        actions: ``(N, T, da)``.
        context: observations filtered first.
        horizons: steps ahead (1 = the observation right after the context).

    Returns:
        ``{h: mean over sequences and dims of (prediction - obs[:, context + h - 1])^2}``.

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes or horizons.
    """
    return {
        h: v["mse"] for h, v in open_loop_summary(model, obs, actions, context, horizons).items()
    }


def open_loop_summary(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    context: int,
    horizons: Sequence[int],
) -> dict[int, dict[str, float]]:
    """:func:`open_loop_errors` with the uncertainty the model claims at each horizon.

    Returns:
        ``{h: {"mse", "member_mse", "epistemic_var", "aleatoric_var"}}``, each a mean
        over sequences and observation dimensions: the error of the members' average,
        the average error of a single member, the variance of the decoded predictions
        across members, and the decoder's noise variance. (The belief's and the
        transition's noise are not propagated here; :func:`sample_open_loop` does.)

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes or horizons.
    """
    hs = _horizons(horizons)
    pred = open_loop_predictions(model, obs, actions, context, hs[-1])
    sq = pred.squared_error()
    member_sq = (pred.member_obs - pred.target).pow(2).mean(0)
    epi = pred.epistemic_var
    alea = float(pred.noise_var.mean())
    return {
        h: {
            "mse": float(sq[:, h - 1].mean()),
            "member_mse": float(member_sq[:, h - 1].mean()),
            "epistemic_var": float(epi[:, h - 1].mean()),
            "aleatoric_var": alea,
        }
        for h in hs
    }


def _draw_gaussian(
    mean: Tensor, cov: Tensor, num: int, gen: torch.Generator, deterministic: bool
) -> Tensor:
    """``num`` draws ``(num, *batch, dz)`` from ``N(mean, cov)`` (batched)."""
    eps = torch.randn((num, *mean.shape), generator=gen)
    if deterministic:
        return mean.expand_as(eps).clone()
    chol = safe_cholesky(cov)
    return mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_open_loop(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    context: int,
    horizon: int,
    num_particles: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sampled open-loop rollouts: the total predictive uncertainty.

    ``num_particles`` draws from the belief after ``context`` observations are rolled
    through each member *with* its transition noise.

    Returns:
        ``(latents (E, K, N, H, dz), decoded (E, K, N, H, do))``: the decoded means
        (add :func:`OpenLoop` ``noise_var`` for the observation noise).

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes.
    """
    o, a = _sequences(model, obs, actions)
    t_len = o.shape[1]
    if context < 1 or horizon < 1 or context + horizon > t_len or num_particles < 1:
        raise DataError(
            f"sampled rollouts need context, horizon, num_particles >= 1 and context + horizon "
            f"<= T = {t_len}; got {context}, {horizon}, {num_particles}"
        )
    means, covs = filter_beliefs(model, o[:, :context], a[:, :context])
    return _roll_samples(
        model, means[:, -1], covs[:, -1], a, context, horizon, num_particles, _generator(generator)
    )


def _roll_samples(
    model: LatentStateSpaceModel,
    mean: Tensor,
    cov: Tensor,
    a: Tensor,
    context: int,
    horizon: int,
    num_particles: int,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """:func:`sample_open_loop` from the belief ``(mean (N, dz), cov)`` after
    ``context`` observations."""
    e, k, n = model.num_members, num_particles, mean.shape[0]
    z0 = _draw_gaussian(mean, cov, k, gen, model.encoder == "deterministic")  # (K, N, dz)
    z = z0.reshape(1, k * n, -1).expand(e, -1, -1).reshape(e * k * n, -1)
    steps = []
    for j in range(horizon):
        act = a[:, context - 1 + j].repeat(e * k, 1)
        mu, var = model._transition(z, act)
        z = mu + var.sqrt() * torch.randn(mu.shape, generator=gen)
        steps.append(z.reshape(e, k, n, -1))
    latents = torch.stack(steps, dim=3)
    return latents, model.decode(latents)


# ------------------------------------------------------------------------ probes
def _ridge_fit(features: Tensor, targets: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """``(W (p, k), b (k,))`` of the ridge regression ``y = x W + b`` (float64); the
    penalty ``ridge * n * |w|^2`` is on standardized features (scale-free)."""
    x, y = features.double(), targets.double()
    mx, sx = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    my = y.mean(0)
    xs = (x - mx) / sx
    gram = xs.T @ xs + ridge * x.shape[0] * torch.eye(x.shape[1], dtype=torch.float64)
    w_std = torch.linalg.solve(gram, xs.T @ (y - my))
    w = w_std / sx.unsqueeze(1)
    return w, my - mx @ w


def _as_2d(t: Any, what: str) -> Tensor:
    x = torch.as_tensor(t).double()
    if x.dim() == 1:
        x = x.unsqueeze(1)
    if x.dim() != 2 or x.shape[0] < 1:
        raise DataError(f"{what} must be a non-empty (rows, k) array, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what} contain NaN or inf")
    return x


def linear_probe(
    features_train: Any,
    targets_train: Any,
    features_test: Any,
    targets_test: Any,
    ridge: float = 1e-3,
) -> Tensor:
    """Ridge regression with intercept, scored by R^2 on a test split.

    Args:
        features_train: ``(n, p)``.
        targets_train: ``(n, k)`` (or ``(n,)``).
        features_test: ``(m, p)``.
        targets_test: ``(m, k)`` (or ``(m,)``).
        ridge: penalty relative to the data: ``ridge * n * |w|^2`` on standardized
            features (``0`` is least squares).

    Returns:
        ``(k,)`` float64 ``R^2 = 1 - SS_res / SS_tot`` per target on the test split
        (``SS_tot`` about the test mean; NaN for a constant test target). 1 is a
        perfect linear read-out, 0 no better than the test mean, < 0 worse.

    Raises:
        DataError: mismatched shapes or non-finite values.
    """
    xtr, ytr = _as_2d(features_train, "features_train"), _as_2d(targets_train, "targets_train")
    xte, yte = _as_2d(features_test, "features_test"), _as_2d(targets_test, "targets_test")
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise DataError("features and targets must have the same number of rows")
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise DataError(
            f"train and test splits differ in width: features {xtr.shape[1]} vs "
            f"{xte.shape[1]}, targets {ytr.shape[1]} vs {yte.shape[1]}"
        )
    if ridge < 0:
        raise DataError(f"ridge must be >= 0, got {ridge}")
    w, b = _ridge_fit(xtr, ytr, ridge)
    res = (yte - (xte @ w + b)).pow(2).sum(0)
    tot = (yte - yte.mean(0)).pow(2).sum(0)
    return torch.where(tot > 0, 1.0 - res / tot.clamp_min(1e-300), torch.nan)


def state_targets(states: Any) -> Tensor:
    """``(cos theta, sin theta, theta_dot)`` of pendulum states ``(..., 2)`` (theta,
    theta_dot) as ``(..., 3)`` float64.

    Raises:
        DataError: the last dimension is not 2.
    """
    s = torch.as_tensor(states).double()
    if s.shape[-1] != 2:
        raise DataError(f"states must be (..., 2) = (theta, theta_dot), got {tuple(s.shape)}")
    return torch.stack([s[..., 0].cos(), s[..., 0].sin(), s[..., 1]], dim=-1)


def probe_state(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    states: Any,
    train_fraction: float = 0.7,
    ridge: float = 1e-3,
) -> Tensor:
    """R^2 of a linear read-out of the pendulum state from the encoder's belief means.

    Features are the :meth:`~LatentStateSpaceModel.posterior_marginals` means at every
    step; targets :func:`state_targets` of the true states. Split by sequence: the
    first ``ceil(train_fraction * N)`` (at least one, leaving at least one) train.

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)`` with ``N >= 2``.
        actions: ``(N, T, da)``.
        states: ``(N, T, 2)`` true ``(theta, theta_dot)`` at each observation.
        train_fraction: share of the sequences the probe is fitted on.
        ridge: see :func:`linear_probe`.

    Returns:
        ``(3,)`` R^2 of ``(cos theta, sin theta, theta_dot)`` (:data:`STATE_TARGETS`).

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes, fewer than two sequences.
    """
    _check_fitted(model)
    o, a = _sequences(model, obs, actions)
    n, t_len = o.shape[:2]
    y = state_targets(states)
    if tuple(y.shape[:2]) != (n, t_len):
        raise DataError(f"states must have shape ({n}, {t_len}, 2), got {tuple(y.shape)[:2]}+(2,)")
    if n < 2:
        raise DataError("the probe splits by sequence: pass at least two sequences")
    n_train = min(max(1, math.ceil(train_fraction * n)), n - 1)
    with torch.no_grad():
        feats, _ = model.posterior_marginals(o, a)
    dz = feats.shape[-1]
    return linear_probe(
        feats[:n_train].reshape(-1, dz),
        y[:n_train].reshape(-1, 3),
        feats[n_train:].reshape(-1, dz),
        y[n_train:].reshape(-1, 3),
        ridge,
    )


# --------------------------------------------------------------- log-likelihood
@torch.no_grad()
def pointwise_log_likelihood(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    num_particles: int = 32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One-step filter-predictive log-density of every next observation, per member.

    For member ``f``: ``log p_f(o_{t+1} | o_{1:t}, a_{1:t}) ~= logmeanexp_k
    log N(o_{t+1}; decode(z^k), sigma)`` with ``z_t^k ~ q(z_t | o_{1:t})`` (the belief,
    :func:`filter_beliefs`) and ``z^k ~ N(mu_f(z_t^k, a_t), var_f(z_t^k, a_t))``
    (ancestral draws, so the density estimate is unbiased; its log is biased low by
    about ``Var / (2 K)``). Raw observation units (vectors de-normalized).

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)`` with ``T >= 2``.
        actions: ``(N, T, da)``.
        num_particles: ``K`` draws per member and step.
        generator: source of the draws (None: seeded with 0).

    Returns:
        ``(E, N, T - 1)`` float64 log-densities (nats), ``[f, n, t]`` for ``o_{t+2}``
        given ``o_{1:t+1}`` (0-based: the observation ``obs[n, t + 1]``).

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes, ``T < 2`` or ``num_particles < 1``.
    """
    o, a = _sequences(model, obs, actions)
    n, t_len = o.shape[:2]
    if t_len < 2 or num_particles < 1:
        raise DataError(
            f"the one-step predictive needs T >= 2 and num_particles >= 1, got T = {t_len}, "
            f"num_particles = {num_particles}"
        )
    gen = _generator(generator)
    means, covs = filter_beliefs(model, o, a)
    e, k, dz, do = model.num_members, num_particles, model.latent_dim, model.observation_dim
    m = means[:, :-1].reshape(-1, dz)
    c = covs[:, :-1].reshape(-1, dz, dz)
    act = a[:, :-1].reshape(-1, model.action_dim)
    target = o[:, 1:].reshape(-1, do)
    sd = _noise_var(model).sqrt()
    rows = m.shape[0]
    chunk = max(1, _CHUNK_VALUES // (e * k * do))
    out = []
    for s in range(0, rows, chunk):
        sl = slice(s, min(rows, s + chunk))
        r = sl.stop - sl.start
        z = _draw_gaussian(m[sl], c[sl], k, gen, model.encoder == "deterministic")  # (K, r, dz)
        z = z.reshape(1, k * r, dz).expand(e, -1, -1).reshape(e * k * r, dz)
        mu, var = model._transition(z, act[sl].repeat(e * k, 1))
        z_next = mu + var.sqrt() * torch.randn(mu.shape, generator=gen)
        dec = model.decode(z_next).reshape(e, k, r, do)
        lp = torch.distributions.Normal(dec.double(), sd.double()).log_prob(target[sl].double())
        out.append(torch.logsumexp(lp.sum(-1), dim=1) - math.log(k))  # (E, r)
    return torch.cat(out, dim=1).reshape(e, n, t_len - 1)


def to_inference_data(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    num_particles: int = 32,
    generator: torch.Generator | None = None,
) -> az.InferenceData:
    """The members' pointwise one-step predictive log-likelihood as ``InferenceData``.

    Layout as :func:`bayes_mbrl.uncertainty.inference_data.to_inference_data`, with a
    transition indexed by ``(sequence, step)`` (``step`` ``t`` predicts observation
    ``t``, ``t = 1 .. T - 1``) and one chain whose draws are the ``E`` members:

    * ``posterior``: ``function`` (the member index), ``(chain, draw)``;
    * ``log_likelihood``: ``next_obs`` from :func:`pointwise_log_likelihood`,
      ``(chain, draw, sequence, step)``;
    * ``observed_data``: ``next_obs (sequence, step, observation_dim)``;
    * ``constant_data``: ``obs (sequence, step, observation_dim)`` (the observation
      before), ``action (sequence, step, action_dim)``.

    ``az.waic`` and ``az.loo`` run on it, comparing encoders or fits on held-out
    sequences; with ``E`` draws only (5 by default) PSIS-LOO warns about its k-hat
    diagnostics, and the steps of one sequence are not exchangeable: read the numbers
    as a comparison of predictive fit, not as a calibrated LOO estimate.

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes.
    """
    o, a = _sequences(model, obs, actions)
    ll = pointwise_log_likelihood(model, o, a, num_particles, generator)
    e, n, steps = ll.shape
    coords: dict[str, Any] = {
        "sequence": np.arange(n),
        "step": np.arange(1, steps + 1),
        "observation_dim": np.arange(model.observation_dim),
        "action_dim": np.arange(model.action_dim),
    }
    attrs = {"bayes_mbrl_model": type(model).__name__, "encoder": model.encoder}

    def dataset(values: dict[str, np.ndarray], dims: dict[str, list[str]], sampled: bool) -> Any:
        return az.dict_to_dataset(
            values, coords=coords, dims=dims, default_dims=None if sampled else [], attrs=attrs
        )

    seq_obs = ["sequence", "step", "observation_dim"]
    return az.InferenceData(
        posterior=dataset({"function": np.arange(e).reshape(1, e)}, {}, True),
        log_likelihood=dataset(
            {"next_obs": ll.numpy().reshape(1, e, n, steps)},
            {"next_obs": ["sequence", "step"]},
            True,
        ),
        observed_data=dataset(
            {"next_obs": o[:, 1:].double().numpy()}, {"next_obs": seq_obs}, False
        ),
        constant_data=dataset(
            {"obs": o[:, :-1].double().numpy(), "action": a[:, :-1].double().numpy()},
            {"obs": seq_obs, "action": ["sequence", "step", "action_dim"]},
            False,
        ),
    )


# ----------------------------------------------------------------------- figures
def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=100)
    return out


def _frame(model: LatentStateSpaceModel, flat: Tensor) -> np.ndarray:
    """One flattened frame as an ``(H, W)`` image (channels side by side)."""
    assert model.frame_shape is not None
    c, h, w = model.frame_shape
    img = flat.reshape(c, h, w).permute(1, 0, 2).reshape(h, c * w)
    return img.numpy()


def _mosaic(model: LatentStateSpaceModel, rows: list[list[Tensor]], gap: int = 2) -> np.ndarray:
    """Frames laid out in a grid (one image: one axes draws fast), separated by
    ``gap`` pixels of mid-gray; each frame's values should be in ``[0, 1]``."""
    imgs = [[_frame(model, f) for f in row] for row in rows]
    h, w = imgs[0][0].shape
    cols = max(len(r) for r in imgs)
    out = np.full((len(imgs) * (h + gap) - gap, cols * (w + gap) - gap), 0.5)
    for i, row in enumerate(imgs):
        for j, img in enumerate(row):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img
    return out


def _label_mosaic(
    ax: Any, model: LatentStateSpaceModel, row_names: list[str], col_names: list[str]
) -> None:
    assert model.frame_shape is not None
    _, h, w = model.frame_shape
    w *= model.frame_shape[0]
    ax.set_yticks([i * (h + 2) + h / 2 for i in range(len(row_names))], row_names, fontsize=8)
    ax.set_xticks([j * (w + 2) + w / 2 for j in range(len(col_names))], col_names, fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _steps(total: int, num: int) -> list[int]:
    return sorted({round(float(x)) for x in np.linspace(0, total - 1, min(num, total))})


def _title_room(fig: Figure) -> tuple[float, float, float, float]:
    return (0.0, 0.0, 1.0, 1.0 - 0.45 / fig.get_figheight())


@torch.no_grad()
def reconstruction_figure(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    path: str | Path,
    num_sequences: int = 3,
    num_steps: int = 8,
) -> Path:
    """True observations against their reconstructions ``decode(E_q[z_t])`` from the
    encoder's posterior means (:meth:`~LatentStateSpaceModel.posterior_marginals`).

    Frames: for each of the first ``num_sequences`` sequences, a row of true frames
    and a row of reconstructions at ``num_steps`` evenly spaced steps. Vectors: traces
    of the first sequence, true against decoded (with +-2 sd observation noise), one
    panel per dimension (at most 4).

    Returns:
        The path written (PNG).

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes.
    """
    _check_fitted(model)
    o, a = _sequences(model, obs, actions)
    seqs = min(num_sequences, o.shape[0]) if model.frame_shape is not None else 1
    o, a = o[:seqs], a[:seqs]
    means, _ = model.posterior_marginals(o, a)
    recon = model.decode(means)
    t_len = o.shape[1]
    if model.frame_shape is not None:
        steps = _steps(t_len, num_steps)
        rows, names = [], []
        for s in range(seqs):
            rows += [[o[s, t] for t in steps], [recon[s, t] for t in steps]]
            names += [f"seq {s} true", f"seq {s} recon"]
        fig = Figure(figsize=(1.0 * len(steps) + 1.2, 1.0 * len(rows) + 0.8))
        ax = fig.subplots()
        ax.imshow(_mosaic(model, rows), cmap="gray", vmin=0.0, vmax=1.0)
        _label_mosaic(ax, model, names, [f"t={t}" for t in steps])
    else:
        dims = min(model.observation_dim, 4)
        sd = _noise_var(model).sqrt().numpy()
        steps_axis = np.arange(t_len)
        fig = Figure(figsize=(8, 1.9 * dims + 0.6))
        axes = np.asarray(fig.subplots(dims, 1, sharex=True, squeeze=False))[:, 0]
        for d in range(dims):
            ax = axes[d]
            trace = recon[0, :, d].numpy()
            ax.fill_between(steps_axis, trace - 2 * sd[d], trace + 2 * sd[d], color="tab:blue",
                            alpha=0.2, label="±2 sd observation noise")  # fmt: skip
            ax.plot(steps_axis, trace, color="tab:blue", lw=1.2, label="decoded posterior mean")
            ax.plot(steps_axis, o[0, :, d].numpy(), "k.", ms=3, label="observed")
            ax.set_ylabel(f"o[{d}]")
            if d == 0:
                ax.legend(loc="upper right", fontsize=7)
        axes[-1].set_xlabel("step")
    fig.suptitle(f"{model.encoder} encoder: reconstructions from the posterior mean")
    fig.tight_layout(rect=_title_room(fig))
    return _save(fig, path)


def _band(ax: Any, t: np.ndarray, x: Tensor, sd: Tensor, color: str, label: str) -> None:
    xm, s = x.numpy(), sd.numpy()
    ax.fill_between(t, xm - 2 * s, xm + 2 * s, color=color, alpha=0.3, lw=0, label=label)


#: sequences the open-loop figure's state probe is fitted on (at most)
_FIGURE_PROBE_SEQUENCES = 8


@torch.no_grad()
def open_loop_figure(
    model: LatentStateSpaceModel,
    obs: Any,
    actions: Any,
    context: int,
    horizon: int,
    path: str | Path,
    states: Any = None,
    sequence: int = 0,
    num_particles: int = 16,
    generator: torch.Generator | None = None,
) -> Path:
    """Open-loop prediction of one sequence with its uncertainty bands, in observation
    and latent space.

    Bands are +-2 sd: *epistemic* is the spread of the members' mean rollouts
    (:func:`open_loop_predictions`); *total* is that of sampled rollouts
    (:func:`sample_open_loop`: the belief's uncertainty, the transition noise and the
    members) plus, in observation space, the observation noise. Before ``context``
    the latent panels show the belief (+-2 sd) and the observation panels the decoded
    belief mean.

    Panels: vectors: the first 3 observation dimensions; frames: rows of true frames,
    predicted frames (the members' mean), and per pixel the epistemic sd and the sd of
    the sampled rollouts' decoded means (white = the larger maximum, in the title with
    the observation noise's sd, a single number for frames); then the first 3 latent
    dimensions;
    with ``states`` ``(N, T, 2)``, also ``(cos theta, sin theta, theta_dot)`` read out
    of the latents by a linear probe fitted on the beliefs of (up to 8 of) the
    sequences (in-sample), against the truth.

    Args:
        model: a fitted latent model.
        obs: ``(N, T, do)``, ``T >= context + horizon``.
        actions: ``(N, T, da)``.
        context: observations filtered before predicting.
        horizon: steps predicted.
        path: the PNG to write.
        states: optional true pendulum states ``(N, T, 2)``.
        sequence: which sequence to draw.
        num_particles: particles of the sampled rollouts (per member).
        generator: source of the particles (None: seeded with 0).

    Returns:
        The path written.

    Raises:
        ModelError: the model is not fitted.
        DataError: bad shapes.
    """
    o, a = _sequences(model, obs, actions)
    if not 0 <= sequence < o.shape[0]:
        raise DataError(f"sequence {sequence} out of range for {o.shape[0]} sequences")
    length = context + horizon
    if context < 1 or horizon < 1 or length > o.shape[1] or num_particles < 1:
        raise DataError(
            f"the open-loop figure needs context, horizon, num_particles >= 1 and context + "
            f"horizon <= T = {o.shape[1]}; got {context}, {horizon}, {num_particles}"
        )
    probe: tuple[Tensor, Tensor] | None = None
    truth = None
    if states is not None:
        y = state_targets(states)
        if tuple(y.shape[:2]) != tuple(o.shape[:2]):
            raise DataError(
                f"states must have shape {tuple(o.shape[:2])} + (2,), got {tuple(y.shape)}"
            )
        rows = sorted({sequence, *range(min(_FIGURE_PROBE_SEQUENCES, o.shape[0]))})
        feats, _ = filter_beliefs(model, o[rows, :length], a[rows, :length])
        probe = _ridge_fit(
            feats.reshape(-1, model.latent_dim), y[rows, :length].reshape(-1, 3), 1e-3
        )
        truth = y[sequence, :length]
    o1, a1 = o[sequence : sequence + 1, :length], a[sequence : sequence + 1, :length]
    bel_m, bel_c = filter_beliefs(model, o1[:, :context], a1[:, :context])
    pred = _roll_means(model, bel_m[:, -1], bel_c[:, -1], o1, a1, context, horizon)
    lat_s, dec_s = _roll_samples(
        model, bel_m[:, -1], bel_c[:, -1], a1, context, horizon, num_particles,
        _generator(generator),
    )  # fmt: skip
    bel_sd = bel_c[0].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    epi_lat_sd = pred.member_latents[:, 0].std(0, unbiased=False)  # (H, dz)
    flat_lat = lat_s[:, :, 0].reshape(-1, horizon, model.latent_dim)
    tot_lat_m, tot_lat_sd = flat_lat.mean(0), flat_lat.std(0, unbiased=False)
    flat_dec = dec_s[:, :, 0].reshape(-1, horizon, model.observation_dim)
    tot_dec_sd = (flat_dec.var(0, unbiased=False) + pred.noise_var).sqrt()
    tot_dec_m = flat_dec.mean(0)
    epi_dec_sd = pred.epistemic_var[0].sqrt()
    t_ctx = np.arange(context)
    t_pred = np.arange(context, length)

    n_lat = min(model.latent_dim, 3)
    n_state = 3 if probe is not None else 0
    frames = model.frame_shape is not None
    n_obs = 0 if frames else min(model.observation_dim, 3)
    n_line = n_obs + n_lat + n_state
    heights = ([3.2] if frames else []) + [1.6] * n_line
    fig = Figure(figsize=(9.0, 0.6 + sum(heights) * 1.3))
    axes = np.atleast_1d(fig.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}))
    line_axes = list(axes[1:] if frames else axes)
    sd_note = ""
    if frames:
        # the frame noise is one scalar: the images show the sd of the decoded means
        # (sampled: belief, transition noise and members), the noise sd is in the title
        cols = _steps(horizon, 10)
        samp_sd = flat_dec.var(0, unbiased=False).sqrt()
        vmax = float(torch.maximum(samp_sd.max(), epi_dec_sd.max()).clamp_min(1e-6))
        rows_img = [
            [pred.target[0, k] for k in cols],
            [pred.mean[0, k].clamp(0, 1) for k in cols],
            [(epi_dec_sd[k] / vmax).clamp(0, 1) for k in cols],
            [(samp_sd[k] / vmax).clamp(0, 1) for k in cols],
        ]
        axes[0].imshow(_mosaic(model, rows_img), cmap="gray", vmin=0.0, vmax=1.0)
        names = ["true", "predicted", "epistemic sd", "sampled sd"]
        _label_mosaic(axes[0], model, names, [f"h={k + 1}" for k in cols])
        noise_sd = float(pred.noise_var.sqrt().mean())
        sd_note = f";\nsd images: white = {vmax:.3g}; observation noise sd {noise_sd:.3g}"

    def members(ax: Any, x: Tensor) -> None:  # x: (E, H)
        for f in range(x.shape[0]):
            ax.plot(t_pred, x[f].numpy(), color="tab:orange", lw=0.6, alpha=0.7)

    recon = model.decode(bel_m[0])
    for d in range(n_obs):
        ax = line_axes[d]
        ax.plot(np.arange(length), o1[0, :, d].numpy(), "k.", ms=3, label="observed")
        ax.plot(t_ctx, recon[:, d].numpy(), color="0.4", ls="--", lw=1, label="decoded belief")
        _band(ax, t_pred, tot_dec_m[:, d], tot_dec_sd[:, d], "tab:blue", "±2 sd total")
        _band(ax, t_pred, pred.mean[0, :, d], epi_dec_sd[:, d], "tab:orange", "±2 sd epistemic")
        members(ax, pred.member_obs[:, 0, :, d])
        ax.plot(t_pred, pred.mean[0, :, d].numpy(), color="tab:blue", lw=1.4, label="prediction")
        ax.set_ylabel(f"o[{d}]")
    for i in range(n_lat):
        ax = line_axes[n_obs + i]
        _band(ax, t_ctx, bel_m[0, :, i], bel_sd[:, i], "0.6", "±2 sd belief")
        ax.plot(t_ctx, bel_m[0, :, i].numpy(), color="0.3", lw=1, label="belief mean")
        _band(ax, t_pred, tot_lat_m[:, i], tot_lat_sd[:, i], "tab:blue", "±2 sd total")
        member_mean = pred.member_latents[:, 0, :, i].mean(0)
        _band(ax, t_pred, member_mean, epi_lat_sd[:, i], "tab:orange", "±2 sd epistemic")
        members(ax, pred.member_latents[:, 0, :, i])
        ax.set_ylabel(f"z[{i}]")
    if probe is not None and truth is not None:
        w, b = probe
        read_members = pred.member_latents[:, 0].double() @ w + b  # (E, H, 3)
        read_samples = flat_lat.double() @ w + b  # (E K, H, 3)
        read_ctx = bel_m[0].double() @ w + b
        for i, name in enumerate(STATE_TARGETS):
            ax = line_axes[n_obs + n_lat + i]
            ax.plot(np.arange(length), truth[:, i].numpy(), "k.", ms=3, label="true state")
            ax.plot(t_ctx, read_ctx[:, i].numpy(), color="0.4", ls="--", lw=1)
            _band(ax, t_pred, read_samples[..., i].mean(0), read_samples[..., i].std(0),
                  "tab:blue", "±2 sd total")  # fmt: skip
            _band(ax, t_pred, read_members[..., i].mean(0), read_members[..., i].std(0),
                  "tab:orange", "±2 sd epistemic")  # fmt: skip
            members(ax, read_members[..., i])
            ax.set_ylabel(f"probe {name}", fontsize=8)
    for ax in line_axes:
        ax.axvline(context - 0.5, color="k", lw=0.8, ls=":")
    if line_axes:
        line_axes[0].legend(loc="upper left", fontsize=7, ncol=3)
        line_axes[-1].set_xlabel(f"step (filtered until {context - 1}, then open loop)")
    fig.suptitle(
        f"{model.encoder} encoder: {horizon}-step open-loop prediction "
        f"({model.num_members} members, {num_particles} particles each{sd_note})",
        fontsize=10,
    )
    fig.tight_layout(rect=_title_room(fig))
    return _save(fig, path)


# ----------------------------------------------------------------- the report
def _windows(bounds: list[tuple[int, int]], length: int, max_sequences: int) -> Tensor:
    """Row indices ``(S, length)`` of non-overlapping windows of the episodes, at most
    ``max_sequences`` of them, evenly spaced, in buffer order."""
    starts = [s for a, b in bounds for s in range(a, b - length + 1, length)]
    if len(starts) > max_sequences:
        keep = np.unique(np.round(np.linspace(0, len(starts) - 1, max_sequences)).astype(int))
        starts = [starts[i] for i in keep]
    return torch.tensor(starts).unsqueeze(1) + torch.arange(length)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_diagnostics(
    model: LatentStateSpaceModel,
    buffer: ReplayBuffer,
    out_dir: str | Path,
    states: Any = None,
    context: int = 10,
    horizons: Sequence[int] = (1, 5, 10),
    max_sequences: int = 32,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``reconstructions.png`` and ``open_loop.png`` for the
    trajectories of a replay buffer.

    The episodes (:meth:`Sequences.episodes`) are cut into non-overlapping windows of
    ``context + max(horizons)`` steps, at most ``max_sequences`` of them (evenly
    spaced, in buffer order). Episodes too short for that shorten the context (down
    to 1) and then drop the horizons they cannot reach.

    Args:
        model: a fitted latent model.
        buffer: transitions in insertion order (``obs`` of each row is used).
        out_dir: directory to write into (created).
        states: optional ``(len(buffer), 2)`` true pendulum states ``(theta, theta_dot)``
            of each row's ``obs``: adds the probe's R^2 (:func:`probe_state`) and its
            panels in the open-loop figure.
        context: observations filtered before predicting.
        horizons: steps ahead to score.
        max_sequences: windows used at most. This bounds the time: about 3 s for the
            32 default windows of 32 x 32 frames (2000 transitions) with one torch
            thread, two thirds of it drawing the figures. (The filter's many small ops
            are slow with several torch threads on a busy machine: 2 s instead of
            40 ms for one 20-step window with 2 threads on 2 loaded cores.)
        generator: source of the figure's particles (None: seeded with 0).

    Returns:
        The metrics written: ``context``, ``horizons``, ``num_sequences``,
        ``open_loop`` (``{h: open_loop_summary entry}``), ``open_loop_mse``
        (``{h: mse}``), ``probe_r2`` (``{target: R^2}``, with ``states``), ``files``
        and ``seconds``. Non-finite numbers are written as null.

    Raises:
        ModelError: the model is not fitted.
        DataError: the buffer holds no episode of 2 steps, or ``states`` does not
            match it.
    """
    start = time.perf_counter()
    _check_fitted(model)
    hs = _horizons(horizons)
    bounds = Sequences.episodes(buffer)
    longest = max((b - a for a, b in bounds), default=0)
    if longest < 2:
        raise DataError(
            f"diagnostics need an episode of at least 2 steps; the buffer holds {len(buffer)} "
            "transition(s)"
        )
    ctx = max(1, min(int(context), longest - hs[0]))
    hs = [h for h in hs if ctx + h <= longest]
    length = ctx + hs[-1]
    rows = _windows(bounds, length, max_sequences)
    batch = buffer.all()
    obs, actions = batch.obs[rows].float(), batch.action[rows].float()
    win_states = None
    if states is not None:
        st = torch.as_tensor(np.asarray(states)).double()
        if tuple(st.shape) != (len(buffer), 2):
            raise DataError(
                f"states must have shape ({len(buffer)}, 2) (one (theta, theta_dot) per buffer "
                f"row), got {tuple(st.shape)}"
            )
        win_states = st[rows]
    summary = open_loop_summary(model, obs, actions, ctx, hs)
    metrics: dict[str, Any] = {
        "encoder": model.encoder,
        "context": ctx,
        "horizons": hs,
        "num_sequences": int(rows.shape[0]),
        "open_loop": {str(h): v for h, v in summary.items()},
        "open_loop_mse": {str(h): v["mse"] for h, v in summary.items()},
    }
    if win_states is not None and rows.shape[0] >= 2:
        r2 = probe_state(model, obs, actions, win_states)
        metrics["probe_r2"] = dict(zip(STATE_TARGETS, r2.tolist(), strict=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "reconstructions": str(
            reconstruction_figure(model, obs, actions, out / "reconstructions.png")
        ),
        "open_loop": str(
            open_loop_figure(
                model,
                obs,
                actions,
                ctx,
                hs[-1],
                out / "open_loop.png",
                win_states,
                generator=generator,
            )
        ),
        "metrics": str(out / "metrics.json"),
    }
    metrics["files"] = files
    metrics["seconds"] = time.perf_counter() - start
    metrics = _json_safe(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
