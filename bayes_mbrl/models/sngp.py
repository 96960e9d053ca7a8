"""Spectral-normalized neural Gaussian process (SNGP; Liu et al., NeurIPS 2020, "Simple and
Principled Uncertainty Estimation with Deterministic Deep Learning via Distance Awareness").

A deterministic residual network whose hidden map preserves distances, followed by a
Gaussian-process output layer, over the normalized state delta ``s' - s``
(normalization as in the ensemble):

* **distance-preserving body**: a fixed random projection of the normalized inputs
  (``N(0, 1 / in_dim)`` entries, not trained), then ``num_blocks`` residual blocks
  ``h <- h + act(W h + b)`` whose weights are spectral-normalized to
  ``||W||_2 <= spectral_norm`` (power iteration, Miyato et al. 2018). With a bound below 1
  the body is bi-Lipschitz: inputs far apart stay far apart in ``h``, so the output layer
  can tell how far an input is from the data;
* **GP output layer**: random Fourier features ``phi(h) = amplitude sqrt(2 / M)
  cos(Omega^T h / l + b)`` (``M = num_features``; ``Omega ~ N(0, I)`` scaled so that ``l``,
  the ``length_scale``, is measured in normalized input units while the blocks are near
  the identity; ``b ~ U(0, 2 pi)``), whose linear weights ``beta`` (one column per state
  dimension) have the prior ``N(0, I)``: a GP with an RBF kernel of that amplitude and
  length scale on ``h``;
* **noise**: a heteroscedastic log-variance head on ``h``, soft-bounded as in the
  ensemble (a point estimate: aleatoric, not part of the posterior).

Fitting: the whole network (``beta`` included) by maximum a posteriori, Adam on
minibatches of the Gaussian NLL plus ``||beta||^2 / 2`` per data set, early-stopped on
the held-out NLL (:func:`~bayes_mbrl.models.training.train_early_stopped`). Then the
posterior over ``beta`` given the body and the noise head: the output layer is linear in
``beta`` and the likelihood Gaussian, so SNGP's Laplace approximation is exact Bayesian
linear regression, computed in closed form on all the data in float64, per state
dimension ``d`` with the predicted noise variances ``sigma_d^2(x_i)`` as weights::

    P_d = I + sum_i phi_i phi_i^T / sigma_d^2(x_i)         (precision, M x M)
    mu_d = P_d^-1 sum_i phi_i (y_id - c_d) / sigma_d^2(x_i)   (c: the output bias)

A posterior function is one draw ``beta ~ N(mu, P^-1)`` through the shared body: one
consistent function along a whole trajectory (as TS-inf needs), all draws evaluated in
one batched call (:meth:`SNGPFunctionSample.at`, every draw at the same inputs as the
analysis functions ask, runs the shared network once). :meth:`SNGPDynamics.predict` is
the closed form: epistemic variance ``phi^T P_d^-1 phi``, aleatoric the noise head. The
mean is ``phi^T mu``, which is also copied into the trained ``beta`` (a refit starts
from it).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    Predictive,
    ProgressFn,
    check_function_inputs,
    state_mismatch,
)
from bayes_mbrl.models.ensemble import (
    ACTIVATIONS,
    LOG_2PI,
    _soft_bound_logvar,
    fit_delta_normalizers,
)
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import Options, at_least, greater_than, interval, one_of, option

__all__ = ["SNGPDynamics", "SNGPFunctionSample", "SNGPNetwork", "SNGPOptions"]

#: power-iteration steps that settle the spectral norms after a fit (one per training step)
_SETTLE_ITERATIONS = 50
#: largest ``(D, M, rows)`` intermediate of the posterior and of ``predict``, in elements
_CHUNK_ELEMENTS = 1 << 22
_INT1 = at_least(1, "an integer")


class SNGPNetwork(nn.Module):
    """The network: fixed projection, spectral-normalized residual blocks, random Fourier
    features, linear output ``beta`` with bias, and a log-variance head.

    Args:
        in_dim: input size (``obs_dim + action_dim``).
        out_dim: output size ``D``.
        width: hidden width ``H``.
        num_blocks: residual blocks.
        activation: one of :data:`~bayes_mbrl.models.ensemble.ACTIVATIONS`.
        spectral_norm: bound ``c`` on each block's spectral norm.
        num_features: random Fourier features ``M``.
        length_scale: the RBF kernel's length scale (normalized input units).
        amplitude: the output function's prior standard deviation.
        generator: source of the random projection, features and initial weights.
    """

    projection: Tensor
    power_u: Tensor
    frequencies: Tensor
    phases: Tensor

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int,
        num_blocks: int,
        activation: str,
        spectral_norm: float,
        num_features: int,
        length_scale: float,
        amplitude: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.activation, self.spectral_norm = activation, spectral_norm
        self.num_blocks, self.num_features = num_blocks, num_features
        self.register_buffer(
            "projection", torch.randn(in_dim, width, generator=generator) / math.sqrt(in_dim)
        )
        bound = 1.0 / math.sqrt(width)
        self.block_weights = nn.ParameterList(
            nn.Parameter((torch.rand(width, width, generator=generator) * 2 - 1) * bound)
            for _ in range(num_blocks)
        )
        self.block_biases = nn.ParameterList(
            nn.Parameter((torch.rand(width, generator=generator) * 2 - 1) * bound)
            for _ in range(num_blocks)
        )
        u = F.normalize(torch.randn(num_blocks, width, generator=generator), dim=-1)
        self.register_buffer("power_u", u)  # left singular vector estimates, one per block
        # Omega / (l sqrt(H / in_dim)): |h| ~ sqrt(H / in_dim) |x| after the projection
        scale = length_scale * math.sqrt(width / in_dim)
        self.register_buffer(
            "frequencies", torch.randn(width, num_features, generator=generator) / scale
        )
        self.register_buffer(
            "phases", torch.rand(num_features, generator=generator) * (2 * math.pi)
        )
        self.feature_scale = amplitude * math.sqrt(2.0 / num_features)
        self.beta = nn.Parameter(torch.zeros(num_features, out_dim))
        self.out_bias = nn.Parameter(torch.zeros(out_dim))
        self.noise_weight = nn.Parameter(
            (torch.rand(width, out_dim, generator=generator) * 2 - 1) * bound
        )
        self.noise_bias = nn.Parameter(torch.zeros(out_dim))
        self.max_logvar = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), -10.0))

    def normalized_block_weights(self, update: bool) -> list[Tensor]:
        """Block weights scaled to spectral norm at most ``spectral_norm``: ``W / max(1,
        sigma / c)``, ``sigma`` by power iteration (one step when ``update``, as in
        training; the stored estimate otherwise). Differentiable in ``W``."""
        out = []
        for k, w in enumerate(self.block_weights):
            with torch.no_grad():
                u = self.power_u[k]
                v = F.normalize(w.T @ u, dim=0)
                if update:
                    u = F.normalize(w @ v, dim=0)
                    self.power_u[k] = u
            sigma = u @ w @ v
            out.append(w / torch.clamp(sigma / self.spectral_norm, min=1.0))
        return out

    def settle_spectral_norms(self, iterations: int = _SETTLE_ITERATIONS) -> None:
        """Run power iteration to convergence (after training, before the weights are used)."""
        with torch.no_grad():
            for _ in range(iterations):
                self.normalized_block_weights(update=True)

    def hidden(self, x: Tensor, update: bool = False) -> Tensor:
        """``(..., in_dim)`` normalized inputs -> ``(..., H)`` hidden representation."""
        act = ACTIVATIONS[self.activation]
        h = x @ self.projection
        for w, b in zip(self.normalized_block_weights(update), self.block_biases, strict=True):
            h = h + act(h @ w + b)
        return h

    def features(self, h: Tensor) -> Tensor:
        """``(..., H) -> (..., M)`` random Fourier features (amplitude included)."""
        return torch.cos(h @ self.frequencies + self.phases) * self.feature_scale

    def logvar(self, h: Tensor) -> Tensor:
        """``(..., H) -> (..., D)`` bounded log noise variance."""
        raw = h @ self.noise_weight + self.noise_bias
        return _soft_bound_logvar(raw, self.min_logvar, self.max_logvar)

    def forward(self, x: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, in_dim)`` -> ``(mean, logvar, features)``: ``(B, D)``, ``(B, D)``, ``(B, M)``
        with the mean through the trained ``beta``."""
        h = self.hidden(x, update)
        phi = self.features(h)
        return phi @ self.beta + self.out_bias, self.logvar(h), phi


class SNGPFunctionSample(FunctionSample):
    """``n`` draws of the output weights through the shared body, one batched call.

    Function ``i`` at ``(s, a)``: ``N(s + phi(h(x))^T beta_i + c, sigma(h(x))^2)`` with the
    input normalization folded into the projection and the delta scale into ``beta_i``,
    ``c`` and the noise.

    Args:
        projection: ``(in_dim, H)`` acting on raw inputs; proj_bias: ``(H,)``.
        block_weights: per block ``(H, H)`` (spectral-normalized); block_biases: ``(H,)``.
        frequencies: ``(H, M)``; phases: ``(M,)``.
        beta: ``(n, M, D)`` per function, the features' factor and the delta scale
            folded in; out_bias: ``(D,)`` in delta units.
        noise_weight: ``(H, D)``; noise_bias: ``(D,)``; min_logvar, max_logvar: ``(D,)``
            (normalized space); log_delta_std: ``(D,)``.
        activation: the blocks' activation.
        obs_dim: ``D``.
    """

    def __init__(
        self,
        projection: Tensor,
        proj_bias: Tensor,
        block_weights: list[Tensor],
        block_biases: list[Tensor],
        frequencies: Tensor,
        phases: Tensor,
        beta: Tensor,
        out_bias: Tensor,
        noise_weight: Tensor,
        noise_bias: Tensor,
        min_logvar: Tensor,
        max_logvar: Tensor,
        log_delta_std: Tensor,
        activation: str,
        obs_dim: int,
    ) -> None:
        self.projection, self.proj_bias = projection, proj_bias
        self.block_weights, self.block_biases = block_weights, block_biases
        self.frequencies, self.phases = frequencies, phases
        self.beta, self.out_bias = beta, out_bias
        self.noise_weight, self.noise_bias = noise_weight, noise_bias
        self.min_logvar, self.max_logvar = min_logvar, max_logvar
        self.log_delta_std = log_delta_std
        self.activation = activation
        self.obs_dim = obs_dim
        self.action_dim = int(projection.shape[0]) - obs_dim
        self.n = int(beta.shape[0])

    def _body(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(R, M)`` and log noise std ``(R, D)`` of ``(..., obs_dim)`` /
        ``(..., action_dim)`` inputs flattened to ``R`` rows."""
        act = ACTIVATIONS[self.activation]
        x = torch.cat([obs, action], dim=-1).float()
        h = torch.addmm(self.proj_bias, x.reshape(-1, x.shape[-1]), self.projection)
        for w, b in zip(self.block_weights, self.block_biases, strict=True):
            h = h + act(torch.addmm(b, h, w))
        phi = torch.addmm(self.phases, h, self.frequencies).cos_()
        raw = torch.addmm(self.noise_bias, h, self.noise_weight)
        logvar = _soft_bound_logvar(raw, self.min_logvar, self.max_logvar)
        return phi, 0.5 * logvar + self.log_delta_std

    def _head(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Delta mean and log-std, each ``(n, B, obs_dim)``: row ``i`` through function ``i``."""
        check_function_inputs(self.n, self.obs_dim, self.action_dim, obs, action)
        phi, log_std = self._body(obs, action)
        phi = phi.view(self.n, -1, phi.shape[-1])  # (n, B, M)
        mean = torch.baddbmm(self.out_bias, phi, self.beta)
        return mean, log_std.view_as(mean)

    def at(self, obs: Tensor, action: Tensor) -> Distribution:
        """Every function at the same ``(B, dim)`` inputs: the shared network runs once
        (``B`` rows, not ``n B``), then one ``(B, M) x (n, M, D)`` product."""
        b = obs.shape[0] if isinstance(obs, Tensor) and obs.dim() == 2 else -1
        if (
            b < 0
            or obs.shape[1] != self.obs_dim
            or not isinstance(action, Tensor)
            or tuple(action.shape) != (b, self.action_dim)
        ):
            return super().at(obs, action)  # raises the protocol's error
        phi, log_std = self._body(obs, action)
        mean = obs.float() + torch.matmul(phi, self.beta) + self.out_bias  # (n, B, D)
        scale = log_std.exp().expand_as(mean)
        return Independent(Normal(mean, scale, validate_args=False), 1)

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean, log_std = self._head(obs, action)
        return Independent(Normal(obs + mean, log_std.exp(), validate_args=False), 1)

    def mean(self, obs: Tensor, action: Tensor) -> Tensor:
        return obs + self._head(obs, action)[0]

    def sample(self, obs: Tensor, action: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, log_std = self._head(obs, action)
        eps = torch.randn(mean.shape, generator=generator)
        return (obs + mean).addcmul_(log_std.exp_(), eps)


@dataclass
class SNGPOptions(Options):
    """Options of :class:`SNGPDynamics` (``model.kind = "sngp"``)."""

    width: int = option(128, _INT1, "hidden width of the residual blocks")
    num_blocks: int = option(3, _INT1, "residual blocks h <- h + act(W h + b)")
    activation: str = option("silu", one_of(list(ACTIVATIONS)), "blocks' activation")
    spectral_norm: float = option(
        0.95, greater_than(0), "bound on each block's spectral norm (< 1: distance-preserving)"
    )
    num_features: int = option(512, _INT1, "random Fourier features of the GP output layer")
    length_scale: float = option(
        1.0, greater_than(0), "the output GP's RBF length scale, in normalized input units"
    )
    amplitude: float = option(
        1.0, greater_than(0), "prior std of the output GP (normalized-delta units)"
    )
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    weight_decay: float = option(5e-5, at_least(0), "L2 penalty on the blocks and noise head")
    batch_size: int = option(64, _INT1, "minibatch size")
    max_epochs: int = option(100, _INT1, "upper bound on epochs per fit")
    patience: int = option(5, _INT1, "epochs without a held-out improvement before stopping")
    val_fraction: float = option(
        0.1, interval(0.0, 0.5, hi_open=True), "fraction of the data held out for early stopping"
    )


@MODELS.register(
    "sngp",
    options=SNGPOptions,
    summary="spectral-normalized residual net with a random-feature GP output layer "
    "(SNGP): distance-aware epistemic uncertainty, exact posterior of the output layer",
)
class SNGPDynamics(DynamicsModel):
    """SNGP dynamics: distance-preserving residual net + GP output layer (see the module).

    Args:
        obs_dim: observation size.
        action_dim: action size.
        seed: seeds the projection, the features and the initialization.

    The other arguments (``width``, ``num_blocks``, ``activation``, ``spectral_norm``,
    ``num_features``, ``length_scale``, ``amplitude``, ``learning_rate``,
    ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``, ``val_fraction``)
    are the fields of :class:`SNGPOptions`.

    Raises:
        OptionError: an argument is out of its bounds.

    Examples:
        >>> model = SNGPDynamics(obs_dim=3, action_dim=1, width=16, num_features=32)
        >>> model.num_functions_hint is None
        True
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        width: int = 128,
        num_blocks: int = 3,
        activation: str = "silu",
        spectral_norm: float = 0.95,
        num_features: int = 512,
        length_scale: float = 1.0,
        amplitude: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 5e-5,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.options: SNGPOptions = SNGPOptions.of(
            "SNGPDynamics",
            width=width,
            num_blocks=num_blocks,
            activation=activation,
            spectral_norm=spectral_norm,
            num_features=num_features,
            length_scale=length_scale,
            amplitude=amplitude,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=max_epochs,
            patience=patience,
            val_fraction=val_fraction,
        )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.num_functions_hint = None
        self.seed = self.predict_seed = seed
        self.net = SNGPNetwork(
            obs_dim + action_dim,
            obs_dim,
            width,
            num_blocks,
            activation,
            spectral_norm,
            num_features,
            length_scale,
            amplitude,
            torch.Generator().manual_seed(seed),
        )
        self.input_normalizer = Normalizer(obs_dim + action_dim)
        self.delta_normalizer = Normalizer(obs_dim)
        net = self.net
        decay = [*net.block_weights, net.noise_weight]
        no_decay = [*net.block_biases, net.noise_bias, net.out_bias, net.beta]
        no_decay += [net.min_logvar, net.max_logvar]
        self.optimizer = torch.optim.Adam(
            [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=learning_rate,
        )
        #: posterior of the output weights per state dimension: mean ``(D, M)`` and the
        #: lower Cholesky factor of the precision ``(D, M, M)``, float64
        self.posterior_mean: Tensor | None = None
        self.precision_chol: Tensor | None = None

    # ------------------------------------------------------------------ fitting
    def progress_total(self) -> int:
        """``max_epochs``: :meth:`fit` reports each epoch."""
        return self.options.max_epochs

    def _nll(self, x: Tensor, y: Tensor, update: bool = False) -> Tensor:
        """Mean Gaussian NLL per transition of ``(B, in)`` inputs, ``(B, D)`` targets."""
        mean, logvar, _ = self.net(x, update)
        return (0.5 * ((y - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)).sum(-1).mean()

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """MAP training of the network, then the exact posterior of the output weights.

        Training continues from the current weights (warm start across MPC episodes);
        the parameters of the best held-out epoch are kept.

        Args:
            data: all transitions so far.
            generator: source of randomness for the split and the minibatches.
            progress: called as ``progress(epoch, train_loss, val_loss)`` after each epoch.

        Returns:
            Losses are the mean Gaussian NLL per transition of normalized deltas (the
            training loss with the prior term of ``beta``).

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: the loss became non-finite (the last good parameters are restored).
        """
        start = time.perf_counter()
        if len(data) < 2:
            raise DataError(f"need at least 2 transitions to fit, got {len(data)}; collect more")
        x_all, y_all = fit_delta_normalizers(data, self.input_normalizer, self.delta_normalizer)
        train_idx, val_idx = data.split(self.options.val_fraction, generator)
        n_train = len(train_idx)
        bs = min(self.options.batch_size, n_train)
        net = self.net

        def batches(epoch: int) -> Iterator[Tensor]:
            order = train_idx[torch.randperm(n_train, generator=generator)]
            return (order[lo : lo + bs] for lo in range(0, n_train - bs + 1, bs))

        def step_loss(rows: Tensor) -> StepLoss:
            nll = self._nll(x_all[rows], y_all[rows], update=True)
            prior = 0.5 * net.beta.square().sum() / n_train
            bound_penalty = 0.01 * (net.max_logvar.sum() - net.min_logvar.sum())
            return StepLoss(nll + prior + bound_penalty, nll.detach(), bs)

        def val_nll() -> Tensor:
            return self._nll(x_all[val_idx], y_all[val_idx]).reshape(1)

        report = train_early_stopped(
            list(net.parameters()),
            self.optimizer,
            batches,
            step_loss,
            max_epochs=self.options.max_epochs,
            validate=val_nll if len(val_idx) > 0 else None,
            patience=self.options.patience,
            progress=progress,
            what="SNGP fit",
            fix="Lower model.learning_rate or check the data for extreme values",
        )
        net.settle_spectral_norms()
        self._condition(x_all, y_all)
        report.wall_seconds = time.perf_counter() - start
        return report

    def _rows(self, n: int) -> list[Tensor]:
        """Row chunks that keep the ``(D, M, rows)`` intermediates at most
        :data:`_CHUNK_ELEMENTS` elements."""
        per_row = self.obs_dim * self.options.num_features
        return list(torch.arange(n).split(max(1, _CHUNK_ELEMENTS // per_row)))

    @torch.no_grad()
    def _condition(self, x: Tensor, y: Tensor) -> None:
        """The exact posterior of ``beta`` given the body and the noise head (float64),
        on ``(N, in)`` normalized inputs and ``(N, D)`` normalized deltas."""
        net = self.net
        d, m = self.obs_dim, self.options.num_features
        precision = torch.eye(m, dtype=torch.float64).expand(d, m, m).clone()  # (D, M, M)
        rhs = torch.zeros(d, m, dtype=torch.float64)
        for rows in self._rows(x.shape[0]):
            h = net.hidden(x[rows])
            phi = net.features(h).double()  # (n, M)
            weight = torch.exp(-net.logvar(h)).double().T  # (D, n): 1 / sigma_d^2(x_i)
            target = (y[rows] - net.out_bias).double().T  # (D, n)
            precision += (phi.T * weight[:, None, :]) @ phi
            rhs += (weight * target) @ phi
        chol = torch.linalg.cholesky(precision)
        mean = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)  # (D, M)
        self.posterior_mean, self.precision_chol = mean, chol
        net.beta.copy_(mean.T.float())

    # --------------------------------------------------------------- functions
    def _require_fitted(self) -> tuple[Tensor, Tensor]:
        if self.posterior_mean is None or self.precision_chol is None:
            raise ModelError("the SNGP model has not been fitted; call fit(buffer) first")
        return self.posterior_mean, self.precision_chol

    def sample_functions(
        self, n: int, generator: torch.Generator | None = None
    ) -> SNGPFunctionSample:
        """``n`` draws ``beta ~ N(mu, P^-1)`` through the shared body, one batched sample.

        Raises:
            DataError: ``n < 1``.
            ModelError: not fitted.
        """
        mean, chol = self._require_fitted()
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        d, m = mean.shape
        eps = torch.randn(n, d, m, 1, generator=generator, dtype=torch.float64)
        # beta = mu + L^-T eps has covariance (L L^T)^-1 = P^-1
        draws = mean.unsqueeze(-1) + torch.linalg.solve_triangular(
            chol.transpose(-1, -2), eps, upper=True
        )
        net = self.net
        with torch.no_grad():
            mu_in, sd_in = self.input_normalizer.mean, self.input_normalizer.std
            projection = net.projection / sd_in[:, None]
            proj_bias = -(mu_in / sd_in) @ net.projection
            sd_out, mu_out = self.delta_normalizer.std, self.delta_normalizer.mean
            beta = draws.squeeze(-1).transpose(1, 2).float() * (net.feature_scale * sd_out)
            return SNGPFunctionSample(
                projection,
                proj_bias,
                [w.detach().clone() for w in net.normalized_block_weights(update=False)],
                [b.detach().clone() for b in net.block_biases],
                net.frequencies.clone(),
                net.phases.clone(),
                beta.contiguous(),
                net.out_bias.detach() * sd_out + mu_out,
                net.noise_weight.detach().clone(),
                net.noise_bias.detach().clone(),
                net.min_logvar.detach().clone(),
                net.max_logvar.detach().clone(),
                sd_out.log(),
                net.activation,
                self.obs_dim,
            )

    @torch.no_grad()
    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        """Closed-form predictive moments; ``num_functions`` is not needed and ignored.

        Args:
            obs: ``(B, obs_dim)``.
            action: ``(B, action_dim)``.
            num_functions: ignored (the moments are analytic).

        Returns:
            :class:`Predictive`: mean ``obs + phi^T mu``, epistemic ``phi^T P^-1 phi``,
            aleatoric the noise head (state units).
        """
        mean, chol = self._require_fitted()
        self.check_inputs(obs, action)
        x = self.input_normalizer.normalize(torch.cat([obs, action], -1).float())
        locs, epistemics, logvars = [], [], []
        for rows in self._rows(x.shape[0]):
            h = self.net.hidden(x[rows])
            phi = self.net.features(h).double()  # (n, M)
            locs.append(phi @ mean.T + self.net.out_bias.double())  # (n, D)
            v = torch.linalg.solve_triangular(chol, phi.T.expand(len(chol), -1, -1), upper=False)
            epistemics.append(v.square().sum(1).T)  # (n, D): phi^T P^-1 phi
            logvars.append(self.net.logvar(h))
        sd = self.delta_normalizer.std.double()
        return Predictive(
            mean=(obs.double() + torch.cat(locs) * sd + self.delta_normalizer.mean).float(),
            epistemic_var=(torch.cat(epistemics) * sd.square()).float(),
            aleatoric_var=torch.cat(logvars).exp() * sd.square().float(),
        )

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Network, normalizers, optimizer state and the output-layer posterior
        (``torch.load(weights_only=True)``-safe)."""
        return {
            "net": self.net.state_dict(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "delta_normalizer": self.delta_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "posterior_mean": self.posterior_mean,
            "precision_chol": self.precision_chol,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: the state does not fit this model (other sizes, missing entries);
                the model keeps its current parameters.
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            if not isinstance(state, dict):
                raise TypeError(f"expected a dict, got {type(state).__name__}")
            mean, chol = state["posterior_mean"], state["precision_chol"]
            m, d = self.options.num_features, self.obs_dim
            if mean is not None and (tuple(mean.shape) != (d, m) or tuple(chol.shape) != (d, m, m)):
                raise ValueError(
                    f"posterior of shape {tuple(mean.shape)}, this model's is {(d, m)}"
                )
            self.net.load_state_dict(state["net"])
            self.input_normalizer.load_state_dict(state["input_normalizer"])
            self.delta_normalizer.load_state_dict(state["delta_normalizer"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            self.net.load_state_dict(backup["net"])
            self.input_normalizer.load_state_dict(backup["input_normalizer"])
            self.delta_normalizer.load_state_dict(backup["delta_normalizer"])
            self.optimizer.load_state_dict(backup["optimizer"])
            raise state_mismatch("SNGP model", exc) from exc
        self.posterior_mean, self.precision_chol = mean, chol
