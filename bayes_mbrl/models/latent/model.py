"""A latent state-space model: a Pyro program over latent trajectories, with four
encoders side by side and an ensemble latent transition that carries epistemic
uncertainty.

Generative model (one sequence of ``T`` steps, ``a_t`` drives ``t -> t + 1``)::

    z_1 ~ N(mu_0, P_0)
    z_{t+1} | z_t, a_t, f ~ N(z_t + delta_f(z_t, a_t), diag(var_f(z_t, a_t)))   # member f
    o_t | z_t ~ N(decoder(z_t), diag(sigma_o^2))        # an MLP, or transposed convolutions
    r_t | z_t, a_t ~ N(reward(z_t, a_t), sigma_r^2)

The transition is an ensemble of ``E`` Gaussian MLPs (:class:`GaussianMLPEnsemble`):
each training sequence is assigned to one member (different sequences per member,
different initializations), so the spread across members is the epistemic
uncertainty of the latent dynamics, and the planner draws members as functions
(TS-inf in latent space, exactly as for the ensemble on states).

Encoders (``encoder``), all built on one recognition network: an embedding of an
observation ``e(o_t)`` and its *potential*, a Gaussian factor
``exp(h(e)^T z - z^T J(e) z / 2)`` (:class:`~bayes_mbrl.models.latent.networks.Potential`):

* ``filtering``: ``q(z_t | o_{1:t}, a_{1:t-1})``, a learned (unscented) Kalman filter:
  predict the belief through the transition (averaged over members; cubature rule),
  multiply by the potential of ``o_t``. Trained on the filtering bound
  ``sum_t E_q[log p(o_t, r_t | z_t)] - KL(q(z_t | o_{1:t}) || p^(z_t | o_{1:t-1}))``, with
  the predicted belief ``p^`` as the prior of step ``t``: the sum of one-step ELBOs of
  the sequential model ``prod_t p^(o_t | o_{1:t-1})``. For a linear-Gaussian system
  the optimum is the Kalman filter and the bound equals its log-likelihood.
* ``smoothing``: the full posterior ``q(z_{1:T} | o_{1:T}, a_{1:T})`` in the backward
  (Rauch-Tung-Striebel) factorization ``q(z_T | o_{1:T}) prod_t q(z_t | z_{t+1}, o_{1:t})``
  built from the same filter; trained on the sequence ELBO. Exact for a
  linear-Gaussian system (its marginals are the RTS smoother's).
* ``single_step``: ``q(z_t | o_t)``, the potential times a learned Gaussian base
  (the prior of a frame seen alone); sequence ELBO.
* ``deterministic``: ``z_t = E_q[z_t | o_t]`` of the single-step encoder as a point mass
  (the autoencoder limit: the ELBO loses the entropy term).

The belief a planner starts from is the filter's ``q(z_t | o_{1:t})`` for ``filtering``
and ``smoothing`` (the smoothing posterior of the last step is the filter), the
single-step posterior of the newest observation otherwise.

In the toolkit's protocol the model is a :class:`DynamicsModel` *in latent space*:
``obs_dim`` is the latent size, :meth:`sample_functions` draws latent transitions and
:meth:`reward_function` is the learned reward with the signature of a task's reward
function, so the rollout evaluator, CEM/MPPI, the propagations and the objectives
work unchanged from ``encode(history).mean``. :meth:`fit` takes the replay buffer of
*observations* (``observation_dim``) and reads it as trajectories.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO
from torch import Tensor, nn

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import MODELS, DynamicsModel, FitReport, FunctionSample, ProgressFn
from bayes_mbrl.models.ensemble import (
    EnsembleFunctionSample,
    GaussianMLPEnsemble,
    stratified_members,
)
from bayes_mbrl.models.latent.gaussian import (
    backward_kernels,
    condition,
    safe_cholesky,
    smoothed_marginals,
    unscented_predict,
)
from bayes_mbrl.models.latent.networks import (
    ConvDecoder,
    ConvEmbedding,
    MLPDecoder,
    Potential,
    RewardHead,
    VectorEmbedding,
)
from bayes_mbrl.models.latent.sequences import BackwardMarkovGaussian, MarkovPrior
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import (
    OptionError,
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)

__all__ = [
    "ENCODERS",
    "Belief",
    "LatentOptions",
    "LatentStateSpaceModel",
    "Sequences",
]

#: the encoders, by name
ENCODERS = ("filtering", "smoothing", "single_step", "deterministic")

#: optimizer steps per reported training loss (one "epoch" of the fit report)
STEPS_PER_REPORT = 50


@dataclass
class LatentOptions(Options):
    """Options of :class:`LatentStateSpaceModel` (``model.kind = "latent"``)."""

    latent_dim: int = option(6, at_least(1, "an integer"), "size dz of the latent state")
    encoder: str = option(
        "filtering", one_of(ENCODERS), "the posterior over latent states (see the model's doc)"
    )
    num_members: int = option(
        5, at_least(1, "an integer"), "latent transition ensemble size E (epistemic spread)"
    )
    hidden_sizes: list[int] = option(
        [128, 128], positive_list, "hidden widths of the transition, decoder and reward nets"
    )
    embed_dim: int = option(64, at_least(1, "an integer"), "size of an observation's embedding")
    seq_len: int = option(32, at_least(2, "an integer"), "length of the training sequences")
    batch_size: int = option(
        40, at_least(1, "an integer"), "sequences per step (rounded up to a multiple of E)"
    )
    first_fit_steps: int = option(
        1500, at_least(STEPS_PER_REPORT, "an integer"), "gradient steps of the first fit"
    )
    train_steps: int = option(
        300,
        at_least(STEPS_PER_REPORT, "an integer"),
        "gradient steps of every later fit with refit = 'warm' (it continues from the last)",
    )
    refit: str = option(
        "warm",
        one_of(("warm", "fresh")),
        "later fits: 'warm' continues from the last parameters for train_steps; 'fresh' "
        "re-initializes every parameter and runs first_fit_steps on all the data",
    )
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    min_obs_std: float = option(
        0.02, interval(0.0, 1.0, lo_open=True), "floor of the observation noise scale"
    )
    conv_channels: int = option(
        16,
        at_least(1, "an integer"),
        "frames: width of the first convolution (doubling per layer, at most 8x)",
    )
    min_transition_std: float = option(
        0.0,
        at_least(0.0, "a number"),
        "floor of the latent transition noise: its variance is the member's own plus "
        "this squared (PlaNet and Dreamer floor their state std at 0.1)",
    )
    overshooting: int = option(
        1,
        at_least(1, "an integer"),
        "latent overshooting distance D (PlaNet): for d = 2..D, also fit the d-step "
        "open-loop prediction from the belief at t to the belief at t + d (1: none)",
    )
    overshooting_scale: float = option(
        1.0, at_least(0.0, "a number"), "weight of the overshooting KL terms (all d together)"
    )


@dataclass
class Belief:
    """A Gaussian belief over the latent state.

    Attributes:
        mean: ``(dz,)``.
        cov: ``(dz, dz)`` (zeros for the deterministic encoder).
    """

    mean: Tensor
    cov: Tensor


@dataclass
class Sequences:
    """Windows of trajectories, batch-first.

    Attributes:
        obs: ``(N, T, observation_dim)``.
        action: ``(N, T, action_dim)``; ``action[:, t]`` drives ``t -> t + 1``.
        reward: ``(N, T)``; the reward of ``(obs[:, t], action[:, t])``.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor

    @staticmethod
    def episodes(data: ReplayBuffer) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of each trajectory in ``data`` (insertion order; a
        trajectory ends at a terminated or truncated transition, or at the end)."""
        batch = data.all()
        ends = (batch.terminated | batch.truncated).nonzero().flatten().tolist()
        bounds, start = [], 0
        for e in ends:
            bounds.append((start, e + 1))
            start = e + 1
        if start < len(batch):
            bounds.append((start, len(batch)))
        return bounds


class _Nets(nn.Module):
    """Every trained parameter of the model, in one module (one optimizer, one state_dict)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        latent_dim: int,
        num_members: int,
        hidden_sizes: list[int],
        embed_dim: int,
        frame_shape: tuple[int, int, int] | None,
        generator: torch.Generator,
        conv_channels: int = 16,
    ) -> None:
        super().__init__()
        if frame_shape is None:
            self.embed: nn.Module = VectorEmbedding(observation_dim, hidden_sizes, embed_dim)
            self.decoder: nn.Module = MLPDecoder(latent_dim, observation_dim, hidden_sizes)
            self.obs_raw = nn.Parameter(torch.zeros(observation_dim))
        else:
            self.embed = ConvEmbedding(frame_shape, embed_dim, conv_channels)
            self.decoder = ConvDecoder(latent_dim, frame_shape, hidden_sizes[0], conv_channels)
            self.obs_raw = nn.Parameter(torch.full((1,), -2.0))
        self.potential = Potential(embed_dim, latent_dim)
        self.init_mean = nn.Parameter(torch.zeros(latent_dim))
        self.init_raw = nn.Parameter(torch.full((latent_dim,), 0.5413))  # softplus -> 1
        self.base_raw = nn.Parameter(torch.full((latent_dim,), 0.5413))
        self.transition = GaussianMLPEnsemble(
            latent_dim + action_dim, latent_dim, hidden_sizes, num_members, generator=generator
        )
        with torch.no_grad():  # start near the identity map with moderate noise
            self.transition.weights[-1].mul_(0.1)
            self.transition.max_logvar.fill_(0.0)
        self.reward = RewardHead(latent_dim, action_dim, hidden_sizes)


class _LatentFunctionSample(EnsembleFunctionSample):
    """Latent transition members whose noise variance has a floor added
    (``min_transition_std ** 2``), as in :meth:`LatentStateSpaceModel.member_heads`."""

    def __init__(self, *args: Any, floor_var: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.floor_var = floor_var

    def _head(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = super()._head(obs, action)
        if self.floor_var > 0:
            log_std = 0.5 * torch.log(torch.exp(2.0 * log_std) + self.floor_var)
        return mean, log_std


@MODELS.register(
    "latent",
    options=LatentOptions,
    summary="latent state-space VAE (Pyro): filtering/smoothing/single-step/deterministic "
    "encoders, ensemble latent transition, learned reward; for experiment.mode = latent_mpc",
)
class LatentStateSpaceModel(DynamicsModel):
    """A latent state-space model of observations (vectors or frames), actions and rewards.

    Args:
        obs_dim: size of the *observations* it is fitted on (a frame stack counts
            ``C * H * W``); the protocol's ``obs_dim`` attribute is the latent size.
        action_dim: action size.
        frame_shape: ``(C, H, W)`` when the observations are flattened frames in
            ``[0, 1]`` (convolutional encoder and decoder); None for vectors.
        seed: seeds the initialization.

    The other arguments (``latent_dim``, ``encoder``, ``num_members``, ``hidden_sizes``,
    ``embed_dim``, ``seq_len``, ``batch_size``, ``first_fit_steps``, ``train_steps``,
    ``refit``, ``learning_rate``, ``min_obs_std``, ``conv_channels``,
    ``min_transition_std``, ``overshooting``, ``overshooting_scale``) are the fields of
    :class:`LatentOptions`.

    Attributes:
        observation_dim: the observation size.
        obs_dim: the latent size ``dz`` (what the planner's states are).
        needs_history: True: an agent must act through :meth:`encode`/:meth:`update`,
            not on raw observations.

    Raises:
        OptionError: an option is out of bounds.
        DataError: ``frame_shape`` does not match ``obs_dim``.
    """

    needs_history = True

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        latent_dim: int = 6,
        encoder: str = "filtering",
        num_members: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        embed_dim: int = 64,
        seq_len: int = 32,
        batch_size: int = 40,
        first_fit_steps: int = 1500,
        train_steps: int = 300,
        refit: str = "warm",
        learning_rate: float = 1e-3,
        min_obs_std: float = 0.02,
        conv_channels: int = 16,
        min_transition_std: float = 0.0,
        overshooting: int = 1,
        overshooting_scale: float = 1.0,
        frame_shape: tuple[int, int, int] | None = None,
        seed: int = 0,
    ) -> None:
        opts = LatentOptions.of(
            type(self).__name__,
            latent_dim=latent_dim,
            encoder=encoder,
            num_members=num_members,
            hidden_sizes=list(hidden_sizes),
            embed_dim=embed_dim,
            seq_len=seq_len,
            batch_size=batch_size,
            first_fit_steps=first_fit_steps,
            train_steps=train_steps,
            refit=refit,
            learning_rate=learning_rate,
            min_obs_std=min_obs_std,
            conv_channels=conv_channels,
            min_transition_std=min_transition_std,
            overshooting=overshooting,
            overshooting_scale=overshooting_scale,
        )
        if opts.overshooting > 1 and opts.encoder == "deterministic":
            raise OptionError(
                type(self).__name__,
                "overshooting",
                opts.overshooting,
                "1 with encoder = 'deterministic' (a point belief has no covariance to "
                "predict from; use the filtering, smoothing or single-step encoder to overshoot)",
            )
        self.options = opts
        if frame_shape is not None:
            frame_shape = (int(frame_shape[0]), int(frame_shape[1]), int(frame_shape[2]))
            c, h, w = frame_shape
            if c * h * w != obs_dim or h != w or h < 8 or h & (h - 1):
                raise DataError(
                    f"frame_shape {frame_shape} does not fit observations of size {obs_dim}: "
                    "frames must be square with a power-of-two side >= 8 and "
                    "C * H * W = obs_dim"
                )
        self.frame_shape = frame_shape
        self.observation_dim = obs_dim
        self.obs_dim = opts.latent_dim
        self.action_dim = action_dim
        self.latent_dim = opts.latent_dim
        self.encoder = opts.encoder
        self.num_members = opts.num_members
        self.num_functions_hint = opts.num_members
        self.seed = seed
        self._initialize(seed)
        self.obs_mean = torch.zeros(obs_dim)
        self.obs_std = torch.ones(obs_dim)
        self.reward_mean = torch.zeros(())
        self.reward_std = torch.ones(())
        self.fitted = False
        self.fits = 0
        # fits without a generator continue one stream (each fit draws new batches)
        self._default_generator = torch.Generator().manual_seed(seed + 1)

    def _initialize(self, seed: int) -> None:
        """Fresh parameters (seeded by ``seed``) and a fresh optimizer."""
        opts = self.options
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.nets = _Nets(
                self.observation_dim,
                self.action_dim,
                opts.latent_dim,
                opts.num_members,
                opts.hidden_sizes,
                opts.embed_dim,
                self.frame_shape,
                gen,
                opts.conv_channels,
            )
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=opts.learning_rate)

    #: what a fresh refit replaces (and restores when it fails)
    _FIT_STATE = ("nets", "optimizer", "obs_mean", "obs_std", "reward_mean", "reward_std")

    def _warm(self) -> bool:
        """Whether the next fit continues from the current parameters."""
        return self.fitted and self.options.refit == "warm"

    @classmethod
    def from_options(
        cls,
        options: Options,
        obs_dim: int,
        action_dim: int,
        seed: int = 0,
        frame_shape: tuple[int, int, int] | None = None,
    ) -> LatentStateSpaceModel:
        """Build from :class:`LatentOptions` (``frame_shape`` from the task for pixels)."""
        return cls(
            obs_dim, action_dim, **dataclasses.asdict(options), frame_shape=frame_shape, seed=seed
        )

    # ------------------------------------------------------------ the generative parts
    def _transition(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Grouped transition: the ``B`` leading rows are ``E`` equal blocks, block ``e``
        evaluated by member ``e``. ``(B, *S, dz), (B, *S, da) -> (mean, var)``."""
        shape = z.shape
        e = self.num_members
        if shape[0] % e:
            raise DataError(f"grouped transition needs a batch divisible by {e}, got {shape[0]}")
        x = torch.cat([z, action], dim=-1).reshape(e, -1, self.latent_dim + self.action_dim)
        mean, var = self.member_heads(x)
        return z + mean.reshape(shape), var.reshape(shape)

    def member_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's step ``(E, N, dz + da) -> (delta mean, variance)``, both
        ``(E, N, dz)``; the variance includes the floor ``min_transition_std ** 2``."""
        mean, logvar = self.nets.transition(x)
        return mean, logvar.exp() + self.options.min_transition_std**2

    def _transition_all(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Every member on every row: ``(B, S, dz) -> (B, E * S, dz)`` means and variances
        (member-major within each row), the mixture the run-time belief predicts through."""
        b, s, _ = z.shape
        e = self.num_members
        x = torch.cat([z, action], dim=-1).reshape(1, b * s, -1).expand(e, -1, -1)
        mean, var = self.member_heads(x)
        mean = (z.reshape(1, b * s, -1) + mean).reshape(e, b, s, -1).transpose(0, 1)
        var = var.reshape(e, b, s, -1).transpose(0, 1)
        return mean.reshape(b, e * s, -1), var.reshape(b, e * s, -1)

    def _init(self) -> tuple[Tensor, Tensor]:
        """Mean ``(dz,)`` and covariance ``(dz, dz)`` of ``p(z_1)``."""
        return self.nets.init_mean, torch.diag(F.softplus(self.nets.init_raw) + 1e-3)

    def _decode(self, z: Tensor) -> Tensor:
        """Observation means (normalized units for vectors, intensities for frames)."""
        return self.nets.decoder(z)

    def _obs_scale(self) -> Tensor:
        return F.softplus(self.nets.obs_raw) + self.options.min_obs_std

    def _embed(self, obs_n: Tensor) -> Tensor:
        return self.nets.embed(obs_n)

    # ------------------------------------------------------------------ the encoders
    def _filter(self, emb: Tensor, actions: Tensor, grouped: bool = True) -> dict[str, Tensor]:
        """The filter over ``(B, T)`` embeddings: filtered and predicted moments and the
        cross-covariances ``Cov[z_t, z_{t+1}]`` (keys ``mean, cov, pred_mean,
        pred_cov, cross``)."""
        b, t_len = emb.shape[:2]
        h, j = self.nets.potential(emb)
        m0, p0 = self._init()
        pm, pc = m0.expand(b, -1), p0.expand(b, -1, -1)
        trans = self._transition if grouped else self._transition_all
        out: dict[str, list[Tensor]] = {k: [] for k in ("mean", "cov", "pred_mean", "pred_cov")}
        cross: list[Tensor] = []
        for t in range(t_len):
            out["pred_mean"].append(pm)
            out["pred_cov"].append(pc)
            m, p = condition(pm, pc, h[:, t], j[:, t])
            out["mean"].append(m)
            out["cov"].append(p)
            if t < t_len - 1:
                pm, pc, c = unscented_predict(m, p, actions[:, t], trans)
                cross.append(c)
        res = {k: torch.stack(v, 1) for k, v in out.items()}
        d = self.latent_dim
        res["cross"] = torch.stack(cross, 1) if cross else emb.new_zeros(b, 0, d, d)
        return res

    def _single_step(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z_t | o_t)``: the potential times the learned base ``N(0, diag(b))``."""
        h, j = self.nets.potential(emb)
        base = torch.diag_embed(F.softplus(self.nets.base_raw) + 1e-3).expand_as(j)
        return condition(torch.zeros_like(h), base, h, j)

    # ------------------------------------------------------------------- the program
    def _normalize_obs(self, obs: Tensor) -> Tensor:
        return obs if self.frame_shape is not None else (obs - self.obs_mean) / self.obs_std

    def _guide_and_prior(
        self, emb: Tensor, actions: Tensor
    ) -> tuple[dist.TorchDistribution, dist.TorchDistribution, tuple[Tensor, Tensor]]:
        """The guide's and the model's distributions over ``z`` (event ``(T, dz)``), and the
        beliefs ``q(z_t | o_{1:t})`` (the filter's; the single-step encoder's
        ``q(z_t | o_t)``) as ``(mean (B, T, dz), cov (B, T, dz, dz))``."""
        m0, p0 = self._init()
        prior: dist.TorchDistribution = MarkovPrior(
            m0, safe_cholesky(p0), actions, self._transition
        )
        if self.encoder in ("filtering", "smoothing"):
            f = self._filter(emb, actions)
            if self.encoder == "filtering":
                pred = dist.MultivariateNormal(
                    f["pred_mean"], scale_tril=safe_cholesky(f["pred_cov"])
                )
                post = dist.MultivariateNormal(f["mean"], scale_tril=safe_cholesky(f["cov"]))
                return post.to_event(1), pred.to_event(1), (f["mean"], f["cov"])
            gain, offset, back = backward_kernels(
                f["mean"], f["cov"], f["pred_mean"], f["pred_cov"], f["cross"]
            )
            guide = BackwardMarkovGaussian(
                f["mean"][:, -1],
                safe_cholesky(f["cov"][:, -1]),
                gain,
                offset,
                safe_cholesky(back),
            )
            return guide, prior, (f["mean"], f["cov"])
        m, p = self._single_step(emb)
        if self.encoder == "single_step":
            post = dist.MultivariateNormal(m, scale_tril=safe_cholesky(p))
            return post.to_event(1), prior, (m, p)
        return dist.Delta(m, event_dim=2), prior, (m, torch.zeros_like(p))

    def model(
        self,
        obs_n: Tensor,
        actions: Tensor,
        rewards_n: Tensor | None,
        prior: dist.TorchDistribution,
    ) -> None:
        """The Pyro program: ``z ~ prior``, observations and rewards given ``z``.

        Args:
            obs_n: ``(B, T, observation_dim)`` normalized observations.
            actions: ``(B, T, action_dim)``.
            rewards_n: ``(B, T)`` normalized rewards, or None (no reward site).
            prior: the distribution of ``z`` (:class:`MarkovPrior`, or the filter's
                predicted beliefs for the filtering bound).
        """
        with pyro.plate("sequences", obs_n.shape[0]):
            z = pyro.sample("z", prior)
            scale = self._obs_scale().expand(obs_n.shape)
            pyro.sample("obs", dist.Normal(self._decode(z), scale).to_event(2), obs=obs_n)
            if rewards_n is not None:
                r_scale = self.nets.reward.scale().expand(rewards_n.shape)
                pyro.sample(
                    "reward",
                    dist.Normal(self.nets.reward(z, actions), r_scale).to_event(1),
                    obs=rewards_n,
                )

    @staticmethod
    def guide(
        obs_n: Tensor,
        actions: Tensor,
        rewards_n: Tensor | None,
        posterior: dist.TorchDistribution,
    ) -> None:
        """The guide: ``z ~ posterior`` (the encoder's distribution)."""
        with pyro.plate("sequences", obs_n.shape[0]):
            pyro.sample("z", posterior)

    def _loss(self, obs: Tensor, actions: Tensor, rewards: Tensor | None) -> Tensor:
        """``-ELBO`` per sequence (one sample; analytic KL for the filtering bound),
        summed over the batch."""
        obs_n = self._normalize_obs(obs)
        rewards_n = None if rewards is None else (rewards - self.reward_mean) / self.reward_std
        posterior, prior, beliefs = self._guide_and_prior(self._embed(obs_n), actions)
        loss = TraceMeanField_ELBO().differentiable_loss(
            lambda: self.model(obs_n, actions, rewards_n, prior),
            lambda: self.guide(obs_n, actions, rewards_n, posterior),
        )
        if self.options.overshooting > 1 and obs.shape[1] > 2:
            loss = loss + self.options.overshooting_scale * self._overshooting_kl(*beliefs, actions)
        return loss

    def _overshooting_kl(self, mean: Tensor, cov: Tensor, actions: Tensor) -> Tensor:
        """Latent overshooting (PlaNet, Hafner et al. 2019): the mean over ``d = 2..D`` of
        ``sum_t KL(q(z_{t+d} | o_{1:t+d}) || p_d(z_{t+d} | q(z_t | o_{1:t}), a_{t:t+d-1}))``,
        summed over the batch.

        ``p_d`` pushes the belief at ``t`` through ``d`` steps of the sequence's own
        transition member with the recorded actions and no observation (the cubature
        rule, as in the filter), so the transition is trained on the open-loop
        predictions a planner makes. The later beliefs are targets only (no gradient),
        so the encoder is not pulled towards the worse multi-step prior.
        """
        t_len = mean.shape[1]
        depth = min(self.options.overshooting, t_len - 1)
        target_m, target_l = mean.detach(), safe_cholesky(cov.detach())
        m, p = mean, cov
        total = mean.new_zeros(())
        for d in range(1, depth + 1):
            # afterwards m[:, i] is the belief over z_{i + d} predicted from the one at i
            act = actions[:, d - 1 : -1]
            m, p, _ = unscented_predict(m[:, :-1], p[:, :-1], act, self._transition)
            if d == 1:
                continue  # the bound already holds the one-step term
            pred = dist.MultivariateNormal(m, scale_tril=safe_cholesky(p))
            post = dist.MultivariateNormal(target_m[:, d:], scale_tril=target_l[:, d:])
            total = total + torch.distributions.kl_divergence(post, pred).sum()
        return total / max(1, depth - 1)

    # --------------------------------------------------------------------------- fit
    def _check_data(self, data: ReplayBuffer) -> list[tuple[int, int]]:
        if data.obs_dim != self.observation_dim or data.action_dim != self.action_dim:
            raise DataError(
                f"the latent model was built for observations of size {self.observation_dim} "
                f"and actions of size {self.action_dim}; the buffer holds "
                f"{data.obs_dim} and {data.action_dim}"
            )
        bounds = Sequences.episodes(data)
        if not bounds or max(b - a for a, b in bounds) < 2:
            raise DataError(
                "the latent model learns from trajectories: the buffer needs an episode of "
                f"at least 2 steps, it holds {len(data)} transition(s)"
            )
        if self.frame_shape is not None:
            obs = data.all().obs
            lo, hi = float(obs.min()), float(obs.max())
            if lo < 0.0 or hi > 1.0:
                raise DataError(
                    f"frames must be intensities in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
                    "divide uint8 frames by 255 (the toolkit's PixelObservation wrapper does)"
                )
        return bounds

    def _windows(self, data: ReplayBuffer, bounds: list[tuple[int, int]]) -> tuple[Tensor, int]:
        """Start rows of every window of the training length, and that length."""
        longest = max(b - a for a, b in bounds)
        length = min(self.options.seq_len, longest)
        starts = [torch.arange(a, b - length + 1) for a, b in bounds if b - a >= length]
        return torch.cat(starts), length

    def _batch_size(self) -> int:
        e = self.num_members
        return int(math.ceil(self.options.batch_size / e) * e)

    def sequences(self, data: ReplayBuffer, starts: Tensor, length: int) -> Sequences:
        """Windows of ``length`` steps from the given start rows of ``data``."""
        batch = data.all()
        idx = starts.unsqueeze(1) + torch.arange(length)
        return Sequences(batch.obs[idx], batch.action[idx], batch.reward[idx])

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """SVI on the ELBO of windows of the trajectories in ``data``.

        The first fit sets the observation and reward normalizers and runs
        ``first_fit_steps``; later fits continue from the current parameters (and
        Adam's state) for ``train_steps`` (``refit = "warm"``), or start again from
        fresh parameters, normalizers and optimizer and run ``first_fit_steps``
        (``refit = "fresh"``; a new initialization seed per fit). Each step draws
        ``batch_size`` windows of ``seq_len`` steps (block ``e`` of the batch trains
        transition member ``e``).

        Raises:
            DataError: the buffer does not fit the model (sizes, no trajectory of 2
                steps, frames outside ``[0, 1]``).
            ModelError: the ELBO turned non-finite; the last good parameters are kept (for
                a fresh refit: the previously fitted model).
        """
        start_time = time.perf_counter()
        bounds = self._check_data(data)
        gen = generator if generator is not None else self._default_generator
        warm = self._warm()
        previous: dict[str, Any] | None = None
        if self.fitted and not warm:  # keep the fitted model until the fresh one succeeds
            previous = {k: getattr(self, k) for k in self._FIT_STATE}
            self._initialize(self.seed + 7919 * self.fits)
        if not warm:
            batch = data.all()
            if self.frame_shape is None:
                self.obs_mean = batch.obs.mean(0)
                self.obs_std = batch.obs.std(0).clamp_min(1e-3)
            self.reward_mean = batch.reward.mean()
            self.reward_std = batch.reward.std().clamp_min(1e-3)
        starts, length = self._windows(data, bounds)
        steps = self.options.train_steps if warm else self.options.first_fit_steps
        bsz = self._batch_size()
        windows = self.sequences(data, starts, length)
        params = list(self.nets.parameters())
        seed = int(torch.randint(2**62, (1,), generator=gen))

        def batches(epoch: int) -> list[Tensor]:
            return [
                torch.randint(len(starts), (bsz,), generator=gen) for _ in range(STEPS_PER_REPORT)
            ]

        def step_loss(rows: Tensor) -> StepLoss:
            loss = self._loss(windows.obs[rows], windows.action[rows], windows.reward[rows])
            per_step = loss / (len(rows) * length)
            return StepLoss(per_step, per_step.detach(), len(rows))

        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                report = train_early_stopped(
                    params,
                    self.optimizer,
                    batches,
                    step_loss,
                    max_epochs=max(1, steps // STEPS_PER_REPORT),
                    progress=progress,
                    what="latent model fit",
                    loss_name="ELBO",
                    fix="Lower model.learning_rate or check the observations",
                )
        except ModelError:
            for k, v in (previous or {}).items():
                setattr(self, k, v)
            raise
        self.fitted = True
        self.fits += 1
        report.wall_seconds = time.perf_counter() - start_time
        return report

    def progress_total(self) -> int:
        steps = self.options.train_steps if self._warm() else self.options.first_fit_steps
        return max(1, steps // STEPS_PER_REPORT)

    # ------------------------------------------------------------------ observations
    def check_observations(self, obs: Any, what: str = "observations") -> Tensor:
        """``(T, observation_dim)`` float32 from ``(T, observation_dim)``, ``(observation_dim,)``
        or, for frames, ``(T, C, H, W)`` / ``(C, H, W)`` (uint8 frames are scaled by 1/255).

        Raises:
            DataError: wrong size, dtype or non-finite values; the message names the fix.
        """
        t = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs)
        if t.dtype == torch.uint8 and self.frame_shape is not None:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise DataError(
                f"{what} have dtype {t.dtype}; pass float32 "
                + ("intensities in [0, 1] (or uint8 frames)" if self.frame_shape else "values")
            )
        t = t.float()
        if t.numel() == 0:
            raise DataError(f"{what} are empty: the encoder needs at least one observation")
        want = self.observation_dim
        if self.frame_shape is not None and t.shape[-3:] == self.frame_shape:
            t = t.reshape(*t.shape[:-3], want)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[1] != want:
            shape = f"frames {self.frame_shape} or flat " if self.frame_shape else ""
            raise DataError(
                f"{what} must have shape (T, {want}) ({shape}observations of the task the "
                f"model was fitted on), got {tuple(t.shape)}"
            )
        if t.shape[0] < 1:
            raise DataError(f"{what} are empty: the encoder needs at least one observation")
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise DataError(
                f"{what} contain NaN or inf (step {row}); the encoder cannot condition on "
                "them: drop that step or fix the frame"
            )
        return t

    def _check_actions(self, actions: Any, steps: int) -> Tensor:
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, Tensor) else actions)
        a = a.float().reshape(-1, self.action_dim) if a.numel() else a.float()
        if a.numel() == 0:
            a = torch.zeros(0, self.action_dim)
        if a.shape[0] not in (steps - 1, steps):
            raise DataError(
                f"a history of {steps} observations needs {steps - 1} actions (the ones taken "
                f"between them; a trailing one is ignored), got {a.shape[0]}"
            )
        if not bool(torch.isfinite(a).all()):
            raise DataError("actions contain NaN or inf")
        return a[: steps - 1]

    # ----------------------------------------------------------------------- beliefs
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("the latent model has not been fitted; call fit(buffer) first")

    @torch.no_grad()
    def initial_belief(self) -> Belief:
        """``p(z_1)``: the belief before the first observation."""
        m, p = self._init()
        return Belief(m.detach().clone(), p.detach().clone())

    @torch.no_grad()
    def predict_belief(self, belief: Belief, action: Tensor) -> Belief:
        """The belief one step later under ``action``: the cubature rule through every
        transition member (the members' spread enters the covariance)."""
        a = torch.as_tensor(action, dtype=torch.float32).reshape(1, self.action_dim)
        cov = belief.cov
        if not bool(cov.abs().sum() > 0):
            cov = torch.eye(self.latent_dim) * 1e-8
        m, p, _ = unscented_predict(belief.mean[None], cov[None], a, self._transition_all)
        return Belief(m[0], p[0])

    @torch.no_grad()
    def update_belief(self, predicted: Belief, obs: Any) -> Belief:
        """Condition a predicted belief on one observation (filtering and smoothing
        encoders); the single-step and deterministic encoders ignore the prediction.

        Raises:
            DataError: a bad observation (see :meth:`check_observations`).
        """
        o = self.check_observations(obs, "observation")
        if o.shape[0] != 1:
            raise DataError(f"update_belief takes one observation, got {o.shape[0]}")
        emb = self._embed(self._normalize_obs(o))
        if self.encoder in ("filtering", "smoothing"):
            h, j = self.nets.potential(emb)
            m, p = condition(predicted.mean[None], predicted.cov[None], h, j)
            return Belief(m[0], p[0])
        m, p = self._single_step(emb)
        if self.encoder == "deterministic":
            p = torch.zeros_like(p)
        return Belief(m[0], p[0])

    @torch.no_grad()
    def encode(self, observations: Any, actions: Any = None) -> Belief:
        """The belief over the current latent state given a history.

        Args:
            observations: ``(T, observation_dim)`` (or frames ``(T, C, H, W)``), oldest first.
            actions: the ``T - 1`` actions taken between them (a trailing ``T``-th is
                ignored; None for ``T = 1``).

        Returns:
            The filter's ``q(z_T | o_{1:T}, a_{1:T-1})`` (filtering and smoothing encoders),
            else the single-step posterior of the last observation.

        Raises:
            ModelError: the model is not fitted.
            DataError: a bad history (size, dtype, NaN, too few actions, empty).
        """
        self._require_fitted()
        obs = self.check_observations(observations)
        acts = self._check_actions(actions if actions is not None else torch.zeros(0), obs.shape[0])
        belief = self.initial_belief()
        for t in range(obs.shape[0]):
            if t > 0:
                belief = self.predict_belief(belief, acts[t - 1])
            belief = self.update_belief(belief, obs[t])
        return belief

    @torch.no_grad()
    def posterior_marginals(self, observations: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's marginals ``q(z_t | ...)`` along whole sequences.

        Args:
            observations: ``(N, T, observation_dim)``.
            actions: ``(N, T, action_dim)``.

        Returns:
            ``(means (N, T, dz), covs (N, T, dz, dz))``: the filter's for ``filtering``,
            the smoother's for ``smoothing``, the single-step posterior's (zero
            covariance for ``deterministic``) otherwise. Transitions are averaged over
            members (as at run time).
        """
        emb = self._embed(self._normalize_obs(observations.float()))
        if self.encoder in ("filtering", "smoothing"):
            f = self._filter(emb, actions.float(), grouped=False)
            if self.encoder == "filtering":
                return f["mean"], f["cov"]
            gain, offset, back = backward_kernels(
                f["mean"], f["cov"], f["pred_mean"], f["pred_cov"], f["cross"]
            )
            return smoothed_marginals(f["mean"], f["cov"], gain, offset, back)
        m, p = self._single_step(emb)
        return m, (torch.zeros_like(p) if self.encoder == "deterministic" else p)

    @torch.no_grad()
    def elbo(
        self,
        observations: Tensor,
        actions: Tensor,
        rewards: Tensor | None = None,
        num_samples: int = 16,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Monte Carlo estimate of each sequence's ELBO (nats), ``(N,)``, in the units of
        the raw observations (the normalization's Jacobian is accounted for).

        For the ``filtering`` encoder it is the filtering bound (see the module doc).
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        n = observations.shape[0]
        reps = self.num_members
        # every sequence evaluated once per member block, so the grouped transition applies
        obs = observations.float().repeat(reps, 1, 1)
        acts = actions.float().repeat(reps, 1, 1)
        rew = None if rewards is None else rewards.float().repeat(reps, 1)
        total = torch.zeros(n, dtype=torch.float64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            for _ in range(num_samples):
                total += self._per_sequence_elbo(obs, acts, rew).reshape(reps, n).mean(0).double()
        jac = 0.0 if self.frame_shape is not None else float(self.obs_std.log().sum())
        return total / num_samples - jac * observations.shape[1]

    def _per_sequence_elbo(self, obs: Tensor, actions: Tensor, rewards: Tensor | None) -> Tensor:
        """One-sample ELBO per sequence (normalized units), ``(B,)``."""
        obs_n = self._normalize_obs(obs)
        rewards_n = None if rewards is None else (rewards - self.reward_mean) / self.reward_std
        posterior, prior, _ = self._guide_and_prior(self._embed(obs_n), actions)
        z = posterior.rsample()
        lp = prior.log_prob(z) - (posterior.log_prob(z) if self.encoder != "deterministic" else 0)
        scale = self._obs_scale().expand(obs_n.shape)
        lp = lp + dist.Normal(self._decode(z), scale).log_prob(obs_n).sum((-1, -2))
        if rewards_n is not None:
            r = dist.Normal(self.nets.reward(z, actions), self.nets.reward.scale())
            jac = math.log(float(self.reward_std)) * obs.shape[1]
            lp = lp + r.log_prob(rewards_n).sum(-1) - jac
        return lp

    # ------------------------------------------------------ the protocol in latent space
    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """Draw ``n`` latent transitions (ensemble members, stratified), as functions of
        ``(z (n, B, dz), a (n, B, da))``."""
        self._require_fitted()
        idx = stratified_members(n, self.num_members, generator)
        net = self.nets.transition
        ws = [w.detach()[idx] for w in net.weights]
        bs = [b.detach()[idx] for b in net.biases]
        return _LatentFunctionSample(
            ws,
            bs,
            net.min_logvar.detach(),
            net.max_logvar.detach(),
            torch.ones(self.latent_dim),
            self.latent_dim,
            net.activation,
            idx,
            floor_var=self.options.min_transition_std**2,
        )

    def reward_function(self) -> Any:
        """The learned mean reward as a task reward function
        ``(z (..., dz), action (..., da), next_z) -> (...)`` (``next_z`` unused). It
        reads the model's current parameters on every call, so it follows refits."""

        def reward_fn(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
            with torch.no_grad():
                return self.nets.reward(obs, action) * self.reward_std + self.reward_mean

        return reward_fn

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Mean observation ``(..., observation_dim)`` of latent states ``(..., dz)``
        (frames: clipped to the intensity range ``[0, 1]``)."""
        out = self._decode(z)
        if self.frame_shape is not None:
            return out.clamp(0.0, 1.0)
        return out * self.obs_std + self.obs_mean

    # ------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Parameters, normalizers and Adam's state (``weights_only``-safe)."""
        return {
            "nets": self.nets.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "reward_mean": self.reward_mean,
            "reward_std": self.reward_std,
            "fitted": self.fitted,
            "fits": self.fits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: it does not fit this configuration (the model is left unchanged).
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            values = {
                k: state[k]
                for k in ("obs_mean", "obs_std", "reward_mean", "reward_std", "fitted", "fits")
            }
            self.nets.load_state_dict(state["nets"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.obs_mean, self.obs_std = values["obs_mean"], values["obs_std"]
            self.reward_mean, self.reward_std = values["reward_mean"], values["reward_std"]
            self.fitted, self.fits = bool(values["fitted"]), int(values["fits"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            self.nets.load_state_dict(backup["nets"])
            self.optimizer.load_state_dict(backup["optimizer"])
            raise ModelError(
                f"saved latent model does not match this configuration ({exc}); load it "
                "with the config it was saved with (the model was left unchanged)"
            ) from exc
