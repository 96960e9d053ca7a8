"""What the exact and the sparse GP share: options, normalization, the prior modules,
function draws, analytic prediction and persistence.

One independent GP per state dimension, held as one *batched* GPyTorch model with
``batch_shape = (obs_dim,)``, over normalized inputs ``(s, a)`` and normalized
deltas ``s' - s``, in float64. The Gaussian likelihood's noise is the aleatoric
part; the posterior variance of ``f`` is the epistemic part. A flavour supplies its
fitted GPyTorch model (:meth:`GPDynamicsBase._gp`) and the points of its Matheron
update (:meth:`GPDynamicsBase._update_points`).

Shapes: ``N`` transitions, ``d = obs_dim + action_dim`` inputs, ``D = obs_dim``
outputs, ``n`` functions, ``B`` inputs per function, ``F`` random features,
``M`` update points.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gpytorch
import torch
from botorch.sampling.pathwise import (
    draw_kernel_feature_paths,
    draw_matheron_paths,
    gaussian_update,
)
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import ConstantMean, Mean
from torch import Tensor
from torch.distributions import Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import DEFAULT_ANALYSIS_DRAWS, DynamicsModel, Predictive
from bayes_mbrl.models.gp.kernels import (
    KERNELS,
    MEANS,
    ModuleFactory,
    describe_module,
    kernel_or_spec,
    mean_or_spec,
    resolve_kernel,
    resolve_mean,
)
from bayes_mbrl.models.gp.numerics import MAX_CHOLESKY, with_jitter_escalation
from bayes_mbrl.models.gp.paths import GPFunctionSample, ModulePathSample
from bayes_mbrl.options import OptionError, Options, described, greater_than, one_of, option
from bayes_mbrl.user_code import load_user_function

__all__ = ["PATH_DTYPES", "PREDICT_BLOCK", "GPDynamicsBase", "GPPriorOptions"]

#: inputs per block in predict (the joint posterior covariance of a block is formed)
PREDICT_BLOCK = 1024
#: path evaluation dtypes
PATH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@described("a positive even integer (sine/cosine pairs)")
def _even_features(v: int) -> str | None:
    return None if v >= 2 and v % 2 == 0 else "a positive even integer (sine/cosine pairs)"


@dataclass
class GPPriorOptions(Options):
    """Options every GP flavour has: its prior modules, noise floor and function draws."""

    kernel: str = option(
        "se",
        kernel_or_spec,
        "'se' (ARD squared exponential), 'matern52', 'matern32', or a kernel factory "
        "'path/to/file.py:function' ((input_dim, batch_shape) -> gpytorch kernel)",
    )
    mean: str = option(
        "constant",
        mean_or_spec,
        "'constant' (a learned constant per output) or a mean factory "
        "'path/to/file.py:function' ((input_dim, batch_shape) -> gpytorch mean)",
    )
    num_features: int = option(
        1024, _even_features, "random Fourier features of each posterior function draw"
    )
    min_noise: float = option(1e-6, greater_than(0), "lower bound of the noise variance")
    max_jitter: float = option(
        1e-3, greater_than(0), "largest Cholesky jitter tried before giving up"
    )
    path_dtype: str = option(
        "float32", one_of(list(PATH_DTYPES)), "precision of function draws in planning"
    )


def checked_options(cls: type[Any], owner: str, renamed: dict[str, str], **values: Any) -> Any:
    """``cls.of(owner, **values)``, with an error naming the constructor's argument
    (``renamed``: option name -> argument name) rather than the option."""
    try:
        return cls.of(owner, **values)
    except OptionError as exc:
        raise OptionError(owner, renamed.get(exc.name, exc.name), exc.value, exc.expected) from None


def load_module_spec(spec: str, shortcuts: Any, key: str) -> str | ModuleFactory:
    """A shortcut name as is, or the factory a ``'file.py:function'`` spec names."""
    return spec if spec in shortcuts else load_user_function(spec, key)


def shortcut_or(value: Any, default: str) -> str:
    """The option value standing for a constructor argument: the name it is, or
    ``default`` for a module or factory (checked when it is built)."""
    return value if isinstance(value, str) else default


class GPDynamicsBase(DynamicsModel):
    """The shared part of :class:`ExactGPDynamics` and :class:`SparseGPDynamics`.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        kernel: a shortcut name, a GPyTorch kernel or a factory.
        mean: ``"constant"``, a GPyTorch mean or a factory.
        options: the flavour's checked options (``learning_rate``, ``num_features``,
            ``min_noise``, ``max_jitter``, ``path_dtype`` are read here).
        seed: seed used when no generator is passed (and while factories run).
    """

    num_functions_hint = None

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str | Kernel | ModuleFactory,
        mean: str | Mean | ModuleFactory,
        options: Any,
        seed: int,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.in_dim = obs_dim + action_dim
        self.learning_rate: float = options.learning_rate
        self.num_features: int = options.num_features
        self.max_jitter: float = options.max_jitter
        self.path_dtype = PATH_DTYPES[options.path_dtype]
        min_noise: float = options.min_noise
        self.seed = seed
        batch = torch.Size([obs_dim])
        self._batch = batch
        self.covar_module = resolve_kernel(kernel, self.in_dim, batch, seed)
        self.mean_module = resolve_mean(mean, self.in_dim, batch, seed)
        #: the kernel's name: a key of KERNELS, or the structure of a user's kernel
        self.kernel = kernel if isinstance(kernel, str) else describe_module(self.covar_module)
        #: function draws use the explicit built-in evaluation (else BoTorch's paths)
        self.builtin_prior = isinstance(kernel, str) and isinstance(mean, str)
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

    def _hyper_params(self) -> list[Tensor]:
        """The prior's and the likelihood's parameters (what a fit optimizes and restores)."""
        return [
            *self.covar_module.parameters(),
            *self.mean_module.parameters(),
            *self.likelihood.parameters(),
        ]

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

    # ------------------------------------------------------- hyperparameters
    def _scaled_base(self) -> Kernel:
        """The lengthscale kernel inside the ``ScaleKernel`` (built-in structure only)."""
        cov = self.covar_module
        base = cov.base_kernel if isinstance(cov, ScaleKernel) else None
        constant_mean = isinstance(self.mean_module, ConstantMean)
        if base is None or not base.has_lengthscale or not constant_mean:
            raise ModelError(
                f"hyperparameters() reads a ScaleKernel around a kernel with lengthscales and a "
                f"ConstantMean; this GP has {self.kernel} and "
                f"{describe_module(self.mean_module)}: read model.covar_module and "
                "model.mean_module directly"
            )
        return base

    def hyperparameters(self) -> dict[str, Tensor]:
        """Current hyperparameters in normalized units.

        Returns:
            ``lengthscale (D, d)``, ``outputscale (D,)``, ``noise (D,)``, ``constant (D,)``.

        Raises:
            ModelError: a user's kernel that is not a ``ScaleKernel`` around a kernel
                with lengthscales, or a mean that is not a ``ConstantMean``.
        """
        ls = self._scaled_base().lengthscale.detach()
        return {
            "lengthscale": ls.expand(*self._batch, 1, self.in_dim)
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
                self._scaled_base().lengthscale = ls.reshape(D, 1, d)
            if outputscale is not None:
                os_ = torch.as_tensor(outputscale, dtype=torch.float64).expand(D)
                self.covar_module.outputscale = os_
            if noise is not None:
                nz = torch.as_tensor(noise, dtype=torch.float64).expand(D)
                self.likelihood.noise = nz.reshape(D, 1)
            if constant is not None:
                c = torch.as_tensor(constant, dtype=torch.float64).expand(D)
                self.mean_module.constant.copy_(c.reshape(self.mean_module.constant.shape))

    # ------------------------------------------------------- function draws
    @abc.abstractmethod
    def _gp(self) -> gpytorch.models.GP:
        """The fitted GPyTorch model (in eval mode); each flavour provides its own."""

    @abc.abstractmethod
    def _update_points(self) -> Tensor:
        """``(D, M, d)`` points of the Matheron update in normalized units (training
        inputs for the exact GP, inducing points for the sparse one)."""

    def _prior_kwargs(self) -> dict[str, Any]:
        return {}

    def _update_strategy(self) -> Callable[..., Any]:
        return gaussian_update

    def _draw_paths(self, n: int, seed: int) -> Any:
        """BoTorch's Matheron paths of ``n`` draws, its random numbers from ``seed``."""
        model = self._gp()
        update_strategy = self._update_strategy()
        prior_sampler = functools.partial(
            draw_kernel_feature_paths, num_features=self.num_features, **self._prior_kwargs()
        )

        def draw() -> Any:
            with (
                torch.random.fork_rng(devices=[]),
                torch.no_grad(),
                gpytorch.settings.max_cholesky_size(MAX_CHOLESKY),
            ):
                torch.manual_seed(seed)
                return draw_matheron_paths(
                    model,
                    torch.Size([n]),
                    prior_sampler=prior_sampler,
                    update_strategy=update_strategy,
                )

        return with_jitter_escalation(
            draw, f"{type(self).__name__}.sample_functions", max_jitter=self.max_jitter
        )

    def sample_functions(
        self, n: int, generator: torch.Generator | None = None
    ) -> GPFunctionSample | ModulePathSample:
        """``n`` posterior paths (Matheron's rule), one consistent function each.

        Args:
            n: number of functions.
            generator: source of randomness (a seed for BoTorch's draws is taken from it).

        Returns:
            A :class:`GPFunctionSample` (built-in kernel and mean) or a
            :class:`ModulePathSample` (a user's module); evaluating ``(n, B, obs_dim)``
            inputs gives batch ``(n, B)``.
        """
        self._require_fitted()
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        g = self._generator(generator)
        seed = int(torch.randint(2**62, (1,), generator=g))
        paths = self._draw_paths(n, seed)
        # BoTorch evaluates a user's modules in the model's float64
        dt = self.path_dtype if self.builtin_prior else torch.float64
        noise_std = self.likelihood.noise.detach().reshape(self.obs_dim).sqrt()
        # copies: a refit updates the normalizers in place
        normalizers = (
            self.input_normalizer.mean.to(dt, copy=True),
            self.input_normalizer.std.to(dt, copy=True),
            self.delta_normalizer.mean.to(dt, copy=True),
            self.delta_normalizer.std.to(dt, copy=True),
            (noise_std * self.delta_normalizer.std).to(dt),
        )
        if not self.builtin_prior:
            return ModulePathSample(paths, n, *normalizers)
        prior, update = paths.paths["prior_paths"], paths.paths["update_paths"]
        with torch.no_grad():
            hp = self.hyperparameters()
            ls = hp["lengthscale"].unsqueeze(1)  # (D, 1, d)
            os_ = hp["outputscale"]
            freqs = prior.feature_map.weight.detach() / ls  # (D, F/2, d)
            feat_scale = (2.0 / self.num_features) ** 0.5 * os_.sqrt()
            prior_w = prior.weight.detach() * feat_scale[:, None]  # (n, D, F)
            points = self._update_points().detach() / ls  # (D, M, d)
            update_w = update.weight.detach() * os_[:, None]  # (n, D, M)
            return GPFunctionSample(
                freqs.to(dt),
                prior_w.to(dt),
                hp["constant"].to(dt),
                points.to(dt),
                update_w.to(dt),
                hp["lengthscale"].pow(-2).to(dt),
                self.kernel,
                *normalizers,
            )

    # ----------------------------------------------------------- prediction
    def _latent_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of ``f`` at ``(B, d)`` normalized inputs, each ``(D, B)``.

        Evaluated in blocks of :data:`PREDICT_BLOCK` inputs: GPyTorch forms the joint
        posterior covariance of the inputs it is given, quadratic in their number.
        """
        model = self._gp()

        def run(xb: Tensor) -> tuple[Tensor, Tensor]:
            with (
                torch.no_grad(),
                gpytorch.settings.max_cholesky_size(MAX_CHOLESKY),
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

    # ----------------------------------------------------------- persistence
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

    @staticmethod
    def _prior_arguments(options: GPPriorOptions) -> dict[str, Any]:
        """Constructor arguments of the shared options (a spec loaded as a factory)."""
        return {
            "kernel": load_module_spec(options.kernel, KERNELS, "model.kernel"),
            "mean": load_module_spec(options.mean, MEANS, "model.mean"),
            "num_features": options.num_features,
            "min_noise": options.min_noise,
            "max_jitter": options.max_jitter,
            "path_dtype": options.path_dtype,
        }
