"""Gaussian-process dynamics: exact and sparse variational multi-output GPs (GPyTorch).

One independent GP per state dimension, held as one *batched* GPyTorch model with
``batch_shape = (obs_dim,)``, over normalized inputs ``(s, a)`` and normalized
deltas ``s' - s``. The Gaussian likelihood's noise is the aleatoric part; the
posterior variance of ``f`` is the epistemic part.

Two flavours:

- :class:`ExactGPDynamics`: a BoTorch ``SingleTaskGP`` (batched over outputs), ARD
  squared-exponential or Matérn kernel, hyperparameters by the exact marginal
  likelihood (Adam, our loop). Cubic in the number of points: capped.
- :class:`SparseGPDynamics`: a GPyTorch ``ApproximateGP`` with ``M`` inducing
  points (initialized by k-means or subsampling), trained by minibatch
  variational ELBO, optionally with a natural-gradient step for ``q(u)``; linear
  in the number of points, for 10^4 - 10^5 transitions.

Posterior function draws (:meth:`sample_functions`) use pathwise conditioning
(Matheron's rule; Wilson et al., ICML 2020): a random-Fourier-feature prior path
plus a kernel-weighted data update,
``(f | D)(x) = f0(x) + k(x, Z) K^{-1} (u - f0(Z) - eps)``, so one draw is one
consistent function along a whole trajectory (``ts_inf`` = one function per
particle). The draws come from :func:`botorch.sampling.pathwise.draw_matheron_paths`.
The resulting path objects reference the live kernel modules and evaluate through
GPyTorch's lazy kernel tensors in the model's float64; planning calls a function
sample hundreds of times per plan, so we copy the drawn random features and update
weights into plain tensors (a snapshot that a later refit cannot change) and
evaluate them with explicit matmuls in ``path_dtype`` (float32 by default). The
test suite checks that this evaluation equals BoTorch's path evaluation.

Shapes: ``N`` transitions, ``d = obs_dim + action_dim`` inputs, ``D = obs_dim``
outputs, ``n`` functions, ``B`` inputs per function, ``F`` random features,
``M`` inducing points (``M = N`` points for the exact GP's update).
"""

from __future__ import annotations

import abc
import functools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import botorch
import gpytorch
import linear_operator
import torch
from botorch.models import SingleTaskGP
from botorch.sampling.pathwise import (
    draw_kernel_feature_paths,
    draw_matheron_paths,
    gaussian_update,
)
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel, MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import ConstantMean
from gpytorch.mlls import ExactMarginalLogLikelihood, VariationalELBO
from gpytorch.models import ApproximateGP
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    NaturalVariationalDistribution,
    VariationalStrategy,
)
from linear_operator.utils.errors import NotPSDError
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    DEFAULT_ANALYSIS_DRAWS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    Predictive,
)

__all__ = [
    "EXACT_GP_MAX_POINTS",
    "KERNELS",
    "ExactGPDynamics",
    "GPFunctionSample",
    "SparseGPDynamics",
    "kmeans_inducing_points",
    "with_jitter_escalation",
]

#: kernels by name -> Matérn smoothness (None: squared exponential)
KERNELS: dict[str, float | None] = {"se": None, "matern32": 1.5, "matern52": 2.5}
#: the exact GP refuses more training points than this unless ``max_train_points`` is set
EXACT_GP_MAX_POINTS = 8192
#: inputs per block in predict (the joint posterior covariance of a block is formed)
PREDICT_BLOCK = 1024
#: path evaluation dtypes
PATH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: largest Cholesky size solved exactly (GPyTorch otherwise switches to CG above 800)
_MAX_CHOLESKY = 10**6
LOG_2PI = math.log(2.0 * math.pi)

T = TypeVar("T")


# ------------------------------------------------------------------ numerics
def with_jitter_escalation(
    fn: Callable[[], T], what: str, start: float = 1e-8, max_jitter: float = 1e-3
) -> T:
    """Run ``fn`` (which factorizes kernel matrices), escalating Cholesky jitter on failure.

    The first attempt uses ``start`` as GPyTorch's diagonal jitter; each failure
    (``NotPSDError``, ``torch.linalg.LinAlgError``) retries with 10x the jitter
    until ``max_jitter``.

    Args:
        fn: the computation; re-run from scratch on every attempt.
        what: name of the computation for the error message.
        start: first jitter (in normalized target units).
        max_jitter: largest jitter tried.

    Returns:
        ``fn()``.

    Raises:
        ModelError: still not positive definite with ``max_jitter``, naming the
            jitter tried and the fix.
    """
    jitter = start
    while True:
        try:
            with (
                linear_operator.settings.cholesky_jitter(float_value=jitter, double_value=jitter),
                linear_operator.settings.cholesky_max_tries(1),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore", linear_operator.utils.warnings.NumericalWarning)
                return fn()
        except (NotPSDError, torch.linalg.LinAlgError) as exc:
            if jitter * 10 > max_jitter * (1 + 1e-9):
                raise ModelError(
                    f"{what}: the kernel matrix is not positive definite even with a diagonal "
                    f"jitter of {jitter:.0e} (tried {start:.0e} up to {jitter:.0e}; {exc}). "
                    "The hyperparameters are degenerate or the data contain non-finite or "
                    "extreme values: check the data, raise the noise lower bound "
                    "(min_noise) or refit from a fresh model"
                ) from exc
            jitter *= 10


def kmeans_inducing_points(
    x: Tensor,
    m: int,
    generator: torch.Generator | None = None,
    iterations: int = 25,
    max_points: int = 20000,
) -> Tensor:
    """``m`` k-means centres of ``x`` (k-means++ seeding, then Lloyd's algorithm).

    Args:
        x: ``(N, d)`` inputs.
        m: number of centres, ``<= N``.
        generator: source of randomness (initial centres, subsample of large ``x``).
        iterations: Lloyd iterations.
        max_points: run on a random subset of this many points when ``N`` is larger.

    Returns:
        ``(m, d)`` centres; a centre whose cluster empties keeps its last position.
    """
    n = x.shape[0]
    if not 1 <= m <= n:
        raise ConfigError(f"k-means needs 1 <= num_inducing <= {n} points, got {m}")
    if n > max_points:
        x = x[torch.randperm(n, generator=generator)[:max_points]]
    # k-means++ seeding (one sequential pick per centre), then Lloyd iterations
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centres = x[first].expand(m, -1).clone()
    d2 = (x - centres[0]).square().sum(-1)
    for i in range(1, m):
        pick = int(torch.multinomial(d2.clamp_min(0) + 1e-30, 1, generator=generator))
        centres[i] = x[pick]
        d2 = torch.minimum(d2, (x - x[pick]).square().sum(-1))
    ones = torch.ones(x.shape[0], dtype=x.dtype)
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.zeros(m, dtype=x.dtype).index_add_(0, assign, ones)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return centres


def _make_kernel(kernel: str, d: int, batch: torch.Size) -> ScaleKernel:
    if kernel not in KERNELS:
        raise ConfigError(f"unknown GP kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    nu = KERNELS[kernel]
    base: Kernel = (
        RBFKernel(ard_num_dims=d, batch_shape=batch)
        if nu is None
        else MaternKernel(nu=nu, ard_num_dims=d, batch_shape=batch)
    )
    base.lengthscale = torch.ones(*batch, 1, d)
    cov = ScaleKernel(base, batch_shape=batch)
    cov.outputscale = torch.ones(batch)
    return cov


def _stationary(kernel: str, r2: Tensor) -> Tensor:
    """Unit-variance kernel of the squared scaled distance ``r2`` (in place where possible)."""
    nu = KERNELS[kernel]
    if nu is None:
        return r2.mul_(-0.5).exp_()
    r = r2.clamp_min_(1e-30).sqrt_()
    if nu == 1.5:
        s = r.mul_(math.sqrt(3.0))
        return (1.0 + s) * torch.exp(-s)
    s = r.mul_(math.sqrt(5.0))
    return (1.0 + s + s * s / 3.0) * torch.exp(-s)


# ------------------------------------------------------------ function draws
class GPFunctionSample(FunctionSample):
    """``n`` GP posterior paths as plain tensors, evaluated in one batched computation.

    Path ``i`` of output ``j`` at a normalized input ``x``:
    ``f_ij(x) = c_j + [sin(x W_j^T), cos(x W_j^T)] w_ij + k_j(x, Z_j) v_ij``
    (random-Fourier-feature prior path plus Matheron update; lengthscales and
    outputscales are folded into ``W``, ``Z``, ``w`` and ``v``). The next state is
    ``Normal(obs + denormalize(f(x)), noise_std)``.

    Args:
        freqs: ``(D, F/2, d)`` spectral frequencies divided by the lengthscales.
        prior_weights: ``(n, D, F)`` prior path weights (feature scale folded in).
        constant: ``(D,)`` prior mean.
        points: ``(D, M, d)`` update points (training inputs or inducing points)
            divided by the lengthscales.
        update_weights: ``(n, D, M)`` update weights (outputscale folded in).
        inv_lengthscale_sq: ``(D, d)`` inverse squared lengthscales.
        kernel: a key of :data:`KERNELS`.
        input_mean: ``(d,)`` input normalizer mean.
        input_std: ``(d,)``.
        delta_mean: ``(D,)`` target normalizer mean.
        delta_std: ``(D,)``.
        noise_std: ``(D,)`` aleatoric standard deviation of the next state.
    """

    def __init__(
        self,
        freqs: Tensor,
        prior_weights: Tensor,
        constant: Tensor,
        points: Tensor,
        update_weights: Tensor,
        inv_lengthscale_sq: Tensor,
        kernel: str,
        input_mean: Tensor,
        input_std: Tensor,
        delta_mean: Tensor,
        delta_std: Tensor,
        noise_std: Tensor,
    ) -> None:
        self.n = int(prior_weights.shape[0])
        self.freqs = freqs
        self.prior_weights = prior_weights
        half = freqs.shape[1]
        sin_w, cos_w = prior_weights[..., :half], prior_weights[..., half:]
        self.amplitudes = torch.hypot(sin_w, cos_w)  # (n, D, F/2)
        self.phases = torch.atan2(sin_w, cos_w)  # (n, D, F/2)
        self.constant = constant
        self.points = points
        self.points_sq = points.square().sum(-1)  # (D, M)
        self.inv_ls2 = inv_lengthscale_sq  # (D, d)
        self.points_over_ls = points * inv_lengthscale_sq.sqrt().unsqueeze(1)  # (D, M, d)
        self.update_weights = update_weights
        self.kernel = kernel
        self.input_mean, self.input_std = input_mean, input_std
        self.delta_mean, self.delta_std = delta_mean, delta_std
        self.noise_std = noise_std
        self.dtype = freqs.dtype

    def latents(self) -> dict[str, Tensor]:
        """The aleatoric noise scale per output, ``(n, obs_dim)`` (shared by all paths)."""
        return {"noise_std": self.noise_std.float().expand(self.n, -1)}

    def path_values(self, x: Tensor) -> Tensor:
        """Values of the normalized-delta paths at normalized inputs.

        Args:
            x: ``(n, B, d)`` normalized inputs; row ``i`` goes through path ``i``.

        Returns:
            ``(n, D, B)``.
        """
        xb = x.unsqueeze(1)  # (n, 1, B, d)
        # a sin(p) + b cos(p) = r cos(p - phi): one cosine per feature instead of two
        feats = torch.matmul(xb, self.freqs.transpose(-1, -2))  # (n, D, B, F/2)
        feats = feats.sub_(self.phases.unsqueeze(-2)).cos_()
        prior = torch.matmul(feats, self.amplitudes.unsqueeze(-1))  # (n, D, B, 1)
        cross = torch.matmul(xb, self.points_over_ls.transpose(-1, -2))  # (n, D, B, M)
        x_sq = torch.matmul(x.square(), self.inv_ls2.T).transpose(1, 2)  # (n, D, B)
        r2 = cross.mul_(-2.0).add_(self.points_sq.unsqueeze(-2)).add_(x_sq.unsqueeze(-1))
        k = _stationary(self.kernel, r2.clamp_min_(0.0))
        update = torch.matmul(k, self.update_weights.unsqueeze(-1))
        return (prior + update).squeeze(-1) + self.constant[:, None]

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        """Next-state distribution of each path.

        Args:
            obs: ``(n, B, obs_dim)``.
            action: ``(n, B, action_dim)``.

        Returns:
            ``Independent(Normal)`` with batch ``(n, B)``, event ``(obs_dim,)``, in
            ``obs``'s dtype.
        """
        if obs.shape[0] != self.n or action.shape[:2] != obs.shape[:2]:
            raise DataError(
                f"GPFunctionSample holds {self.n} functions; pass obs (n={self.n}, B, D) and "
                f"action (n, B, A) with matching leading dims, got {tuple(obs.shape)} and "
                f"{tuple(action.shape)}"
            )
        out_dtype = obs.dtype
        inputs = torch.cat([obs, action], dim=-1).to(self.dtype)
        x = (inputs - self.input_mean) / self.input_std
        f = self.path_values(x).transpose(1, 2)  # (n, B, D)
        loc = obs.to(self.dtype) + f * self.delta_std + self.delta_mean
        scale = self.noise_std.expand_as(loc)
        return Independent(Normal(loc.to(out_dtype), scale.to(out_dtype)), 1)


# --------------------------------------------------------------- the models
class _GPDynamicsBase(DynamicsModel):
    """What exact and sparse GPs share: normalization, path extraction, the protocol."""

    num_functions_hint = None

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str,
        learning_rate: float,
        num_features: int,
        min_noise: float,
        max_jitter: float,
        path_dtype: str,
        seed: int,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        if kernel not in KERNELS:
            raise ConfigError(f"unknown GP kernel {kernel!r}; choose one of {sorted(KERNELS)}")
        if num_features < 2 or num_features % 2:
            raise ConfigError(
                f"num_features must be a positive even number (sine/cosine pairs), "
                f"got {num_features}"
            )
        if path_dtype not in PATH_DTYPES:
            raise ConfigError(
                f"unknown path_dtype {path_dtype!r}; choose one of {sorted(PATH_DTYPES)}"
            )
        if learning_rate < 0 or min_noise <= 0 or max_jitter <= 0:
            raise ConfigError(
                "learning_rate must be >= 0 and min_noise, max_jitter > 0, got "
                f"{learning_rate}, {min_noise}, {max_jitter}"
            )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.in_dim = obs_dim + action_dim
        self.kernel = kernel
        self.learning_rate = learning_rate
        self.num_features = num_features
        self.max_jitter = max_jitter
        self.path_dtype = PATH_DTYPES[path_dtype]
        self.seed = seed
        batch = torch.Size([obs_dim])
        self._batch = batch
        self.covar_module = _make_kernel(kernel, self.in_dim, batch).double()
        self.mean_module = ConstantMean(batch_shape=batch).double()
        self.likelihood = GaussianLikelihood(
            batch_shape=batch, noise_constraint=GreaterThan(min_noise)
        ).double()
        self.likelihood.noise = torch.full((obs_dim, 1), max(1e-2, 2 * min_noise))
        self.input_normalizer = Normalizer(self.in_dim).double()
        self.delta_normalizer = Normalizer(obs_dim).double()
        self.fitted = False

    # ------------------------------------------------------------- helpers
    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        return generator if generator is not None else torch.Generator().manual_seed(self.seed)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError(f"{type(self).__name__} has not been fitted; call fit(buffer) first")

    @staticmethod
    def _raw_xy(data: ReplayBuffer) -> tuple[Tensor, Tensor]:
        """Raw float64 ``(N, d)`` inputs ``(s, a)`` and ``(N, D)`` deltas ``s' - s``."""
        if len(data) < 2:
            raise DataError(
                f"need at least 2 transitions to fit a GP, got {len(data)}; collect more"
            )
        batch = data.all()
        inputs = torch.cat([batch.obs, batch.action], dim=-1).double()
        return inputs, batch.next_obs.double() - batch.obs.double()

    def _prepare(self, data: ReplayBuffer) -> tuple[Tensor, Tensor]:
        """Normalized ``(N, d)`` inputs and ``(N, D)`` deltas, float64; refits the normalizers."""
        return self._prepare_xy(*self._raw_xy(data))

    def _prepare_xy(self, inputs: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        """Normalize raw ``(N, d)`` inputs and ``(N, D)`` targets (refitting the normalizers)."""
        if inputs.shape[0] < 2:
            raise DataError(
                f"need at least 2 transitions to fit a GP, got {inputs.shape[0]}; collect more"
            )
        if inputs.shape[1:] != (self.in_dim,) or deltas.shape != (inputs.shape[0], self.obs_dim):
            raise DataError(
                f"GP regression data must be inputs (N, {self.in_dim}) and targets "
                f"(N, {self.obs_dim}), got {tuple(inputs.shape)} and {tuple(deltas.shape)}"
            )
        if not (torch.isfinite(inputs).all() and torch.isfinite(deltas).all()):
            raise DataError("GP regression data contain NaN or inf; drop those rows first")
        inputs, deltas = inputs.double(), deltas.double()
        self.input_normalizer.fit(inputs)
        self.delta_normalizer.fit(deltas)
        return self.input_normalizer.normalize(inputs), self.delta_normalizer.normalize(deltas)

    def _normalize_inputs(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.input_normalizer.normalize(torch.cat([obs, action], dim=-1).double())

    def hyperparameters(self) -> dict[str, Tensor]:
        """Current hyperparameters in normalized units.

        Returns:
            ``lengthscale (D, d)``, ``outputscale (D,)``, ``noise (D,)``, ``constant (D,)``.
        """
        return {
            "lengthscale": self.covar_module.base_kernel.lengthscale.detach()
            .reshape(self.obs_dim, self.in_dim)
            .clone(),
            "outputscale": self.covar_module.outputscale.detach().clone(),
            "noise": self.likelihood.noise.detach().reshape(self.obs_dim).clone(),
            "constant": self.mean_module.constant.detach().reshape(self.obs_dim).clone(),
        }

    def set_hyperparameters(
        self,
        lengthscale: Tensor | None = None,
        outputscale: Tensor | None = None,
        noise: Tensor | None = None,
        constant: Tensor | None = None,
    ) -> None:
        """Set hyperparameters (normalized units; broadcast to ``(D, d)`` / ``(D,)``).

        Call :meth:`fit` with ``training_steps=0`` / ``learning_rate=0`` afterwards to
        condition on data with these values kept fixed.
        """
        d, D = self.in_dim, self.obs_dim
        with torch.no_grad():
            if lengthscale is not None:
                ls = torch.as_tensor(lengthscale, dtype=torch.float64).expand(D, d)
                self.covar_module.base_kernel.lengthscale = ls.reshape(D, 1, d)
            if outputscale is not None:
                os_ = torch.as_tensor(outputscale, dtype=torch.float64).expand(D)
                self.covar_module.outputscale = os_
            if noise is not None:
                nz = torch.as_tensor(noise, dtype=torch.float64).expand(D)
                self.likelihood.noise = nz.reshape(D, 1)
            if constant is not None:
                c = torch.as_tensor(constant, dtype=torch.float64).expand(D)
                self.mean_module.constant.copy_(c.reshape(self.mean_module.constant.shape))

    @abc.abstractmethod
    def _gp(self) -> gpytorch.models.GP:
        """The fitted GPyTorch model (in eval mode); each flavour provides its own."""

    @abc.abstractmethod
    def _update_points(self) -> Tensor:
        """``(D, M, d)`` points of the Matheron update in normalized units (training
        inputs for the exact GP, inducing points for the sparse one)."""

    def _draw_paths(self, n: int, seed: int) -> Any:
        model = self._gp()
        prior_sampler = functools.partial(
            draw_kernel_feature_paths, num_features=self.num_features, **self._prior_kwargs()
        )

        def draw() -> Any:
            with (
                torch.random.fork_rng(devices=[]),
                torch.no_grad(),
                gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY),
            ):
                torch.manual_seed(seed)
                return draw_matheron_paths(
                    model,
                    torch.Size([n]),
                    prior_sampler=prior_sampler,
                    update_strategy=self._update_strategy(),
                )

        return with_jitter_escalation(
            draw, f"{type(self).__name__}.sample_functions", max_jitter=self.max_jitter
        )

    def _prior_kwargs(self) -> dict[str, Any]:
        return {}

    def _update_strategy(self) -> Callable[..., Any]:
        return gaussian_update

    def sample_functions(
        self, n: int, generator: torch.Generator | None = None
    ) -> GPFunctionSample:
        """``n`` posterior paths (Matheron's rule), one consistent function each.

        Args:
            n: number of functions.
            generator: source of randomness (a seed for BoTorch's draws is taken from it).

        Returns:
            A :class:`GPFunctionSample`; evaluating ``(n, B, obs_dim)`` inputs gives
            batch ``(n, B)``.
        """
        self._require_fitted()
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        g = self._generator(generator)
        seed = int(torch.randint(2**62, (1,), generator=g))
        paths = self._draw_paths(n, seed)
        prior, update = paths.paths["prior_paths"], paths.paths["update_paths"]
        dt = self.path_dtype
        with torch.no_grad():
            hp = self.hyperparameters()
            ls = hp["lengthscale"].unsqueeze(1)  # (D, 1, d)
            os_ = hp["outputscale"]
            freqs = prior.feature_map.weight.detach() / ls  # (D, F/2, d)
            feat_scale = (2.0 / self.num_features) ** 0.5 * os_.sqrt()
            prior_w = prior.weight.detach() * feat_scale[:, None]  # (n, D, F)
            points = self._update_points().detach() / ls  # (D, M, d)
            update_w = update.weight.detach() * os_[:, None]  # (n, D, M)
            noise_std = hp["noise"].sqrt() * self.delta_normalizer.std
            return GPFunctionSample(
                freqs.to(dt),
                prior_w.to(dt),
                hp["constant"].to(dt),
                points.to(dt),
                update_w.to(dt),
                hp["lengthscale"].pow(-2).to(dt),
                self.kernel,
                self.input_normalizer.mean.to(dt),
                self.input_normalizer.std.to(dt),
                self.delta_normalizer.mean.to(dt),
                self.delta_normalizer.std.to(dt),
                noise_std.to(dt),
            )

    def _latent_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of ``f`` at ``(B, d)`` normalized inputs, each ``(D, B)``.

        Evaluated in blocks of :data:`PREDICT_BLOCK` inputs: GPyTorch forms the joint
        posterior covariance of the inputs it is given, quadratic in their number.
        """
        model = self._gp()

        def run(xb: Tensor) -> tuple[Tensor, Tensor]:
            with (
                torch.no_grad(),
                gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY),
                gpytorch.settings.fast_pred_var(False),
            ):
                out = model(xb.unsqueeze(0).expand(self.obs_dim, -1, -1))
                return out.mean, out.variance.clamp_min(0.0)

        parts = [
            with_jitter_escalation(
                functools.partial(run, xb),
                f"{type(self).__name__}.predict",
                max_jitter=self.max_jitter,
            )
            for xb in x.split(PREDICT_BLOCK)
        ]
        return torch.cat([m for m, _ in parts], -1), torch.cat([v for _, v in parts], -1)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        """Exact (or variational) predictive moments; ``num_functions`` is not needed and ignored.

        Args:
            obs: ``(B, obs_dim)``.
            action: ``(B, action_dim)``.
            num_functions: ignored (the moments are analytic).

        Returns:
            Float32 :class:`Predictive`: mean ``obs + E[delta]``, epistemic = posterior
            variance of ``f``, aleatoric = likelihood noise (both in state units).
        """
        self._require_fitted()
        self.check_inputs(obs, action)
        mean, var = self._latent_moments(self._normalize_inputs(obs, action))
        sd, mu = self.delta_normalizer.std, self.delta_normalizer.mean
        noise = self.likelihood.noise.detach().reshape(self.obs_dim)
        return Predictive(
            mean=(obs.double() + mean.T * sd + mu).float(),
            epistemic_var=(var.T * sd.square()).float(),
            aleatoric_var=(noise * sd.square()).expand(obs.shape[0], -1).float(),
        )

    def log_predictive_density(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """``log N(s' | mean, epistemic + aleatoric)`` per transition, ``(N,)``, float64.

        The analytic (marginal) held-out log density used for model selection tables.
        """
        self._require_fitted()
        self.check_inputs(obs, action, next_obs)
        mean, var = self._latent_moments(self._normalize_inputs(obs, action))
        sd, mu = self.delta_normalizer.std, self.delta_normalizer.mean
        noise = self.likelihood.noise.detach().reshape(self.obs_dim, 1)
        loc = obs.double() + (mean * sd[:, None] + mu[:, None]).T
        scale = ((var + noise) * sd[:, None].square()).sqrt().T
        return Normal(loc, scale).log_prob(next_obs.double()).sum(-1)

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        """``(num_functions, N)`` log-density of each transition under each posterior path.

        Per-draw (not marginal) likelihoods, as PSIS-LOO needs; paths are drawn with
        the model's seed, so repeated calls agree.
        """
        self._require_fitted()
        self.check_inputs(obs, action, next_obs)
        f = self.sample_functions(num_functions or DEFAULT_ANALYSIS_DRAWS)
        return f.log_prob_at(obs, action, next_obs)

    def _hyper_state(self) -> dict[str, Any]:
        return {
            "covar": self.covar_module.state_dict(),
            "mean": self.mean_module.state_dict(),
            "likelihood": self.likelihood.state_dict(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "delta_normalizer": self.delta_normalizer.state_dict(),
            "fitted": self.fitted,
        }

    def _load_hyper_state(self, state: dict[str, Any]) -> None:
        try:
            self.covar_module.load_state_dict(state["covar"])
            self.mean_module.load_state_dict(state["mean"])
            self.likelihood.load_state_dict(state["likelihood"])
            self.input_normalizer.load_state_dict(state["input_normalizer"])
            self.delta_normalizer.load_state_dict(state["delta_normalizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(
                f"saved {type(self).__name__} does not match this configuration ({exc}); "
                "load it with the config it was saved with"
            ) from exc
        self.fitted = bool(state["fitted"])


class ExactGPDynamics(_GPDynamicsBase):
    """Exact GP dynamics: one GP per state dimension, batched, over normalized deltas.

    Hyperparameters (ARD lengthscales, outputscale, constant mean, noise per output)
    maximize the exact marginal likelihood with Adam. The posterior conditions on
    every training point (or ``max_train_points`` of them) by Cholesky in float64.

    Args:
        obs_dim: observation size ``D``.
        action_dim: action size ``A``.
        kernel: ``"se"`` (ARD squared exponential), ``"matern52"`` or ``"matern32"``.
        training_steps: Adam steps on the marginal likelihood per :meth:`fit`
            (continuing from the previous fit's hyperparameters).
        learning_rate: Adam step size (0 keeps the hyperparameters fixed).
        num_features: random Fourier features of the prior path in function draws.
        max_train_points: condition on a random subset of this many transitions
            when there are more (None: all, up to :data:`EXACT_GP_MAX_POINTS`).
        hyper_max_points: the marginal likelihood is optimized on a random subset of
            at most this many points (the posterior still uses all of them).
        min_noise: lower bound of the noise variance (normalized units).
        max_jitter: largest Cholesky jitter tried before giving up.
        path_dtype: ``"float32"`` or ``"float64"``: precision of function draws.
        seed: seed used when no generator is passed.

    Example:
        >>> model = ExactGPDynamics(obs_dim=3, action_dim=1, kernel="se")
        >>> # model.fit(buffer); f = model.sample_functions(20, generator)
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str = "se",
        training_steps: int = 100,
        learning_rate: float = 0.05,
        num_features: int = 1024,
        max_train_points: int | None = None,
        hyper_max_points: int = 512,
        min_noise: float = 1e-6,
        max_jitter: float = 1e-3,
        path_dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__(
            obs_dim,
            action_dim,
            kernel,
            learning_rate,
            num_features,
            min_noise,
            max_jitter,
            path_dtype,
            seed,
        )
        if training_steps < 0 or hyper_max_points < 2:
            raise ConfigError(
                f"training_steps must be >= 0 and hyper_max_points >= 2, got {training_steps}, "
                f"{hyper_max_points}"
            )
        if max_train_points is not None and not 2 <= max_train_points <= EXACT_GP_MAX_POINTS:
            raise ConfigError(
                f"max_train_points must be in [2, {EXACT_GP_MAX_POINTS}], got {max_train_points}; "
                "use SparseGPDynamics for more data"
            )
        self.training_steps = training_steps
        self.max_train_points = max_train_points
        self.hyper_max_points = hyper_max_points
        self.train_x: Tensor | None = None
        self.train_y: Tensor | None = None
        self._model: SingleTaskGP | None = None

    def _build(self, x: Tensor, y: Tensor) -> SingleTaskGP:
        """A ``SingleTaskGP`` on ``(N, d)`` / ``(N, D)`` data sharing our hyperparameter modules."""
        with botorch.settings.validate_input_scaling(False):
            return SingleTaskGP(
                x,
                y,
                likelihood=self.likelihood,
                covar_module=self.covar_module,
                mean_module=self.mean_module,
                outcome_transform=None,
            )

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: Callable[[int, float, float], None] | None = None,
    ) -> FitReport:
        """Maximize the marginal likelihood, then condition on the data.

        Args:
            data: all transitions so far.
            generator: source of randomness (subsets).
            progress: called as ``progress(step, loss, nan)``.

        Returns:
            Losses are the negative marginal log-likelihood per point, summed over outputs.

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: more than :data:`EXACT_GP_MAX_POINTS` transitions without
                ``max_train_points``, a non-finite loss, or a failed Cholesky.
        """
        return self.fit_regression(*self._raw_xy(data), generator, progress)

    def fit_regression(
        self,
        inputs: Tensor,
        targets: Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[int, float, float], None] | None = None,
    ) -> FitReport:
        """Fit the GPs to any regression data: ``(N, obs_dim + action_dim)`` inputs and
        ``(N, obs_dim)`` targets in raw units (what :meth:`fit` does with
        ``(s, a) -> s' - s``; PILCO uses it with angle features as inputs and state
        deltas as targets).

        Raises:
            DataError: wrong shapes, non-finite values or fewer than 2 rows.
            ModelError: as :meth:`fit`.
        """
        start = time.perf_counter()
        g = self._generator(generator)
        n_all = int(inputs.shape[0])
        if n_all > EXACT_GP_MAX_POINTS and self.max_train_points is None:
            raise ModelError(
                f"the exact GP would condition on {n_all} transitions (limit "
                f"{EXACT_GP_MAX_POINTS}; cost grows as N^3). Use SparseGPDynamics "
                "(model.kind = 'sparse_gp') or set max_train_points"
            )
        x, y = self._prepare_xy(inputs, targets)
        if self.max_train_points is not None and n_all > self.max_train_points:
            keep = torch.randperm(n_all, generator=g)[: self.max_train_points]
            x, y = x[keep], y[keep]
        report = FitReport()
        if self.training_steps > 0 and self.learning_rate > 0:
            hx, hy = x, y
            if x.shape[0] > self.hyper_max_points:
                sub = torch.randperm(x.shape[0], generator=g)[: self.hyper_max_points]
                hx, hy = x[sub], y[sub]
            self._train(hx, hy, report, progress)
        self.train_x, self.train_y = x.clone(), y.clone()
        self._condition()
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def _train(
        self,
        x: Tensor,
        y: Tensor,
        report: FitReport,
        progress: Callable[[int, float, float], None] | None,
    ) -> None:
        model = self._build(x, y)
        model.train()
        mll = ExactMarginalLogLikelihood(self.likelihood, model)
        params = [
            *self.covar_module.parameters(),
            *self.mean_module.parameters(),
            *self.likelihood.parameters(),
        ]
        backup = [p.detach().clone() for p in params]
        opt = torch.optim.Adam(params, lr=self.learning_rate)
        train_x, train_y = model.train_inputs[0], model.train_targets

        def step() -> Tensor:
            opt.zero_grad(set_to_none=True)
            with gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY):
                loss = -mll(model(train_x), train_y).sum()
            if not torch.isfinite(loss):
                raise ModelError("non-finite")
            loss.backward()
            return loss.detach()

        for i in range(self.training_steps):
            try:
                loss = with_jitter_escalation(
                    step, "ExactGPDynamics.fit", max_jitter=self.max_jitter
                )
            except ModelError as exc:
                with torch.no_grad():
                    for p, b in zip(params, backup, strict=True):
                        p.copy_(b)
                raise ModelError(
                    f"exact GP marginal-likelihood fit failed at step {i} ({exc}); "
                    "hyperparameters restored. Lower model.learning_rate or raise min_noise"
                ) from exc
            opt.step()
            report.train_losses.append(float(loss))
            report.epochs = i + 1
            if progress is not None:
                progress(i, float(loss), math.nan)

    def _condition(self) -> None:
        if self.train_x is None or self.train_y is None:
            raise ModelError("ExactGPDynamics has no training data; call fit(buffer) first")
        self._model = self._build(self.train_x, self.train_y)
        self._model.eval()
        self.likelihood.eval()

    def _gp(self) -> gpytorch.models.GP:
        self._require_fitted()
        if self._model is None:
            self._condition()
        assert self._model is not None
        return self._model

    def _update_points(self) -> Tensor:
        assert self.train_x is not None
        return self.train_x.unsqueeze(0).expand(self.obs_dim, -1, -1)

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, normalizers and the (normalized) training data, as tensors."""
        state = self._hyper_state()
        state["train_x"] = None if self.train_x is None else self.train_x.clone()
        state["train_y"] = None if self.train_y is None else self.train_y.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (rebuilds the conditioned GP)."""
        self._load_hyper_state(state)
        self.train_x, self.train_y = state.get("train_x"), state.get("train_y")
        self._model = None
        if self.fitted:
            self._condition()


class _BatchSVGP(ApproximateGP):
    """A batched (over outputs) SVGP: whitened variational strategy, learned inducing points."""

    def __init__(
        self,
        inducing_points: Tensor,
        mean_module: ConstantMean,
        covar_module: ScaleKernel,
        natural: bool,
    ) -> None:
        batch = inducing_points.shape[:-2]
        m = inducing_points.shape[-2]
        dist_cls = NaturalVariationalDistribution if natural else CholeskyVariationalDistribution
        dist = dist_cls(m, batch_shape=batch)
        strategy = VariationalStrategy(
            self, inducing_points, dist, learn_inducing_locations=True, jitter_val=1e-8
        )
        super().__init__(strategy)
        self.mean_module = mean_module
        self.covar_module = covar_module

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _svgp_update(model: _BatchSVGP, sample_values: Tensor, **kwargs: Any) -> Any:
    """BoTorch's Gaussian update for a whitened SVGP, with ``u ~ q(u)`` drawn here.

    BoTorch 0.18 forms ``u @ L^T`` with ``L`` a batched ``LinearOperator``, which fails
    to broadcast a sample dimension against a batch of outputs; we draw the
    inducing values with a dense ``L`` and pass them as ``target_values``.

    Args:
        model: the SVGP.
        sample_values: ``(n, D, M)`` prior path values at the inducing points.

    Returns:
        BoTorch's update path.
    """
    v = model.variational_strategy
    z = v.inducing_points
    chol = v._cholesky_factor(v(z, prior=True).lazy_covariance_matrix).to_dense()
    u = v.variational_distribution.rsample(sample_values.shape[:1])  # (n, D, M) whitened
    target = model.mean_module(z) + (chol @ u.unsqueeze(-1)).squeeze(-1)
    return gaussian_update(model, sample_values, target_values=target.to(sample_values), **kwargs)


class SparseGPDynamics(_GPDynamicsBase):
    """Sparse variational GP dynamics (SVGP, Hensman et al. 2013) for 10^4 - 10^5 transitions.

    One batched ``ApproximateGP`` over outputs with ``M`` learned inducing points
    per output, trained with minibatches of the variational ELBO (Adam for
    hyperparameters and inducing points; ``q(u)`` by Adam or, with
    ``natural_gradient=True``, by natural-gradient steps).

    Args:
        obs_dim: observation size ``D``.
        action_dim: action size ``A``.
        kernel: a key of :data:`KERNELS`.
        num_inducing: inducing points ``M`` (capped at the number of transitions).
        inducing_init: ``"kmeans"`` or ``"subsample"`` (random training inputs).
        batch_size: minibatch size.
        epochs: passes over the data per :meth:`fit`.
        min_steps: at least this many optimizer steps per fit (small data sets).
        learning_rate: Adam step size (0 keeps hyperparameters and inducing points fixed).
        natural_gradient: update ``q(u)`` by natural gradient (``ngd_learning_rate``).
        ngd_learning_rate: natural-gradient step size (1.0 on the full batch gives
            the optimal ``q(u)`` in one step for Gaussian likelihoods).
        num_features: random Fourier features of the prior path in function draws.
        min_noise: lower bound of the noise variance (normalized units).
        max_jitter: largest Cholesky jitter tried before giving up.
        path_dtype: ``"float32"`` or ``"float64"``.
        seed: seed used when no generator is passed.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str = "se",
        num_inducing: int = 256,
        inducing_init: str = "kmeans",
        batch_size: int = 1024,
        epochs: int = 10,
        min_steps: int = 300,
        learning_rate: float = 0.02,
        natural_gradient: bool = False,
        ngd_learning_rate: float = 0.1,
        num_features: int = 1024,
        min_noise: float = 1e-6,
        max_jitter: float = 1e-3,
        path_dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__(
            obs_dim,
            action_dim,
            kernel,
            learning_rate,
            num_features,
            min_noise,
            max_jitter,
            path_dtype,
            seed,
        )
        if inducing_init not in ("kmeans", "subsample"):
            raise ConfigError(
                f"unknown inducing_init {inducing_init!r}; choose 'kmeans' or 'subsample'"
            )
        if num_inducing < 1 or batch_size < 1 or epochs < 0 or min_steps < 0:
            raise ConfigError(
                "num_inducing and batch_size must be >= 1, epochs and min_steps >= 0; got "
                f"{num_inducing}, {batch_size}, {epochs}, {min_steps}"
            )
        if ngd_learning_rate <= 0:
            raise ConfigError(f"ngd_learning_rate must be > 0, got {ngd_learning_rate}")
        self.num_inducing = num_inducing
        self.inducing_init = inducing_init
        self.batch_size = batch_size
        self.epochs = epochs
        self.min_steps = min_steps
        self.natural_gradient = natural_gradient
        self.ngd_learning_rate = ngd_learning_rate
        self._model: _BatchSVGP | None = None

    def _init_inducing(self, x: Tensor, m: int, g: torch.Generator) -> Tensor:
        if self.inducing_init == "kmeans":
            z = kmeans_inducing_points(x, m, g)
        else:
            z = x[torch.randperm(x.shape[0], generator=g)[:m]].clone()
        return z.unsqueeze(0).repeat(self.obs_dim, 1, 1)

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: Callable[[int, float, float], None] | None = None,
    ) -> FitReport:
        """Minibatch ELBO training (inducing points re-initialized, hyperparameters warm).

        Args:
            data: all transitions so far.
            generator: source of randomness (inducing initialization, minibatches).
            progress: called as ``progress(step, loss, nan)`` every 50 steps and at the end.

        Returns:
            Losses are the negative ELBO per point (summed over outputs), every 50 steps.

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: a non-finite loss or a failed Cholesky (previous state restored).
        """
        start = time.perf_counter()
        g = self._generator(generator)
        x, y = self._prepare(data)
        # GPyTorch initializes q(u) from the global RNG: seed it from our generator
        seed = int(torch.randint(2**62, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._fit(x, y, g, progress, start)

    def _fit(
        self,
        x: Tensor,
        y: Tensor,
        g: torch.Generator,
        progress: Callable[[int, float, float], None] | None,
        start: float,
    ) -> FitReport:
        n = x.shape[0]
        m = min(self.num_inducing, n)
        z = self._init_inducing(x, m, g)
        model = _BatchSVGP(z, self.mean_module, self.covar_module, self.natural_gradient).double()
        model.train()
        self.likelihood.train()
        elbo = VariationalELBO(self.likelihood, model, num_data=n)
        hyper = [
            *self.covar_module.parameters(),
            *self.mean_module.parameters(),
            *self.likelihood.parameters(),
            model.variational_strategy.inducing_points,
        ]
        backup = [p.detach().clone() for p in hyper]
        var_params = list(model.variational_parameters())
        optimizers: list[torch.optim.Optimizer] = []
        if self.learning_rate > 0:
            optimizers.append(torch.optim.Adam(hyper, lr=self.learning_rate))
        if self.natural_gradient:
            optimizers.append(gpytorch.optim.NGD(var_params, num_data=n, lr=self.ngd_learning_rate))
        else:
            optimizers.append(torch.optim.Adam(var_params, lr=max(self.learning_rate, 0.01)))
        bs = min(self.batch_size, n)
        per_epoch = n // bs
        steps = max(self.min_steps, self.epochs * per_epoch)
        report = FitReport()
        yt = y.T.contiguous()  # (D, N)
        order = torch.randperm(n, generator=g)
        pos = 0

        def step(rows: Tensor) -> Tensor:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = -elbo(model(x[rows]), yt[:, rows]).sum()
            if not torch.isfinite(loss):
                raise ModelError("non-finite")
            loss.backward()
            return loss.detach()

        for i in range(steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            rows = order[pos : pos + bs]
            pos += bs
            try:
                loss = with_jitter_escalation(
                    functools.partial(step, rows),
                    "SparseGPDynamics.fit",
                    max_jitter=self.max_jitter,
                )
            except ModelError as exc:
                with torch.no_grad():
                    for p, b in zip(hyper, backup, strict=True):
                        p.copy_(b)
                raise ModelError(
                    f"sparse GP ELBO fit failed at step {i} ({exc}); hyperparameters restored. "
                    "Lower model.learning_rate or raise min_noise"
                ) from exc
            for opt in optimizers:
                opt.step()
            if i % 50 == 0 or i == steps - 1:
                report.train_losses.append(float(loss))
                if progress is not None:
                    progress(i, float(loss), math.nan)
        report.epochs = steps * bs // max(n, 1)
        model.eval()
        self.likelihood.eval()
        self._model = model
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def _gp(self) -> gpytorch.models.GP:
        self._require_fitted()
        assert self._model is not None
        return self._model

    def _prior_kwargs(self) -> dict[str, Any]:
        return {"num_inputs": self.in_dim}

    def _update_strategy(self) -> Callable[..., Any]:
        return _svgp_update

    def _update_points(self) -> Tensor:
        model = self._gp()
        assert isinstance(model, _BatchSVGP)
        return model.variational_strategy.inducing_points

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, normalizers, inducing points and ``q(u)``, as tensors."""
        state = self._hyper_state()
        state["svgp"] = None if self._model is None else self._model.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self._load_hyper_state(state)
        svgp = state.get("svgp")
        self._model = None
        if svgp is not None:
            z = svgp["variational_strategy.inducing_points"]
            model = _BatchSVGP(
                z.clone(), self.mean_module, self.covar_module, self.natural_gradient
            ).double()
            try:
                model.load_state_dict(svgp)
            except (KeyError, RuntimeError) as exc:
                raise ModelError(
                    f"saved SparseGPDynamics does not match this configuration ({exc}); "
                    "load it with the config it was saved with"
                ) from exc
            model.eval()
            self.likelihood.eval()
            self._model = model
