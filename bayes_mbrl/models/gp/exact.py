"""The exact GP dynamics model: BoTorch ``SingleTaskGP`` batched over state dimensions.

Hyperparameters maximize the exact marginal likelihood (Adam, on at most
``hyper_max_points`` random points); the posterior conditions on every training
point (or ``max_train_points`` of them) by Cholesky in float64. Cubic in the number
of points: capped at :data:`EXACT_GP_MAX_POINTS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botorch
import gpytorch
import torch
from botorch.models import SingleTaskGP
from botorch.sampling.pathwise import (
    GeneralizedLinearPath,
    KernelEvaluationMap,
    MatheronPath,
    draw_kernel_feature_paths,
)
from botorch.sampling.pathwise.utils import (
    get_input_transform,
    get_train_inputs,
    get_train_targets,
)
from gpytorch.kernels import Kernel
from gpytorch.means import Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.operators import SumLinearOperator
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import MODELS, FitReport, ProgressFn
from bayes_mbrl.models.gp.common import (
    GPDynamicsBase,
    GPPriorOptions,
    checked_options,
    shortcut_or,
)
from bayes_mbrl.models.gp.kernels import ModuleFactory, is_se_ard
from bayes_mbrl.models.gp.numerics import (
    MAX_CHOLESKY,
    fit_hyperparameters,
    gaussian_nll,
    with_jitter_escalation,
)
from bayes_mbrl.models.gp.se_posterior import SEGP, se_gp_from_data
from bayes_mbrl.options import at_least, described, option

__all__ = ["EXACT_GP_MAX_POINTS", "ExactGPDynamics", "GPOptions"]

#: the exact GP refuses more training points than this unless ``max_train_points`` is set
EXACT_GP_MAX_POINTS = 8192


@described(f"0 (all) or an integer in [2, {EXACT_GP_MAX_POINTS}]")
def _max_train_points(v: int) -> str | None:
    ok = v == 0 or 2 <= v <= EXACT_GP_MAX_POINTS
    return None if ok else f"0 (all) or an integer in [2, {EXACT_GP_MAX_POINTS}]"


@dataclass
class GPOptions(GPPriorOptions):
    """Options of :class:`ExactGPDynamics` (``model.kind = "gp"``)."""

    num_steps: int = option(
        100, at_least(0, "an integer"), "Adam steps on the marginal likelihood per fit"
    )
    learning_rate: float = option(
        0.05, at_least(0), "Adam step size (0 keeps the hyperparameters fixed)"
    )
    max_train_points: int = option(
        0,
        _max_train_points,
        "condition on a random subset of this many transitions (0: all, up to "
        f"{EXACT_GP_MAX_POINTS}); use sparse_gp for more",
    )
    hyper_max_points: int = option(
        512, at_least(2, "an integer"), "points the marginal likelihood is optimized on"
    )


def _cached_gaussian_update(
    model: SingleTaskGP, sample_values: Tensor, target_values: Tensor, scale_tril: Tensor
) -> GeneralizedLinearPath:
    """BoTorch's exact Gaussian (Matheron) update given the Cholesky factor of
    ``K(X, X) + sigma^2 I``: the same random numbers and the same update path as
    ``gaussian_update(model, sample_values, target_values=..., scale_tril=...)``.

    BoTorch solves the ``(n, D, N)`` errors against the ``(D, N, N)`` factor by
    broadcasting, which copies the factor once per draw; here the draws are the
    columns of one right-hand side per output.

    Args:
        model: the conditioned ``SingleTaskGP``.
        sample_values: ``(n, D, N)`` prior path values at the training inputs.
        target_values: ``(D, N)`` training targets.
        scale_tril: ``(D, N, N)`` the factor.

    Returns:
        The update path ``k(., X) (K + sigma^2 I)^{-1} (y - f(X) - eps)``, weights ``(n, D, N)``.
    """
    (points,) = get_train_inputs(model, transformed=True)
    noise_covariance = model.likelihood.noise_covar(shape=points.shape[:-1])
    noise_values = noise_covariance.cholesky() @ torch.randn_like(sample_values).unsqueeze(-1)
    errors = target_values - (sample_values + noise_values.squeeze(-1))  # (n, D, N)
    weight = torch.cholesky_solve(errors.permute(1, 2, 0), scale_tril).permute(2, 0, 1)
    feature_map = KernelEvaluationMap(
        kernel=model.covar_module, points=points, input_transform=get_input_transform(model)
    )
    return GeneralizedLinearPath(feature_map=feature_map, weight=weight, is_ensemble=False)


@MODELS.register("gp", options=GPOptions)
class ExactGPDynamics(GPDynamicsBase):
    """Exact GP dynamics: one GP per state dimension, batched, over normalized deltas.

    Hyperparameters (kernel hyperparameters, mean, noise per output) maximize the
    exact marginal likelihood with Adam. The posterior conditions on every training
    point (or ``max_train_points`` of them) by Cholesky in float64.

    Args:
        obs_dim: observation size ``D``.
        action_dim: action size ``A``.
        kernel: ``"se"`` (ARD squared exponential), ``"matern52"`` or ``"matern32"``
            (shortcuts for built-in ARD kernels with an outputscale), or a user's
            GPyTorch kernel with ``batch_shape = (D,)``, or a factory
            ``(input_dim, batch_shape) -> kernel``. A user's kernel needs a BoTorch
            feature map (``RBFKernel``, ``MaternKernel``, in a ``ScaleKernel`` or not).
        mean: ``"constant"`` or a user's GPyTorch mean (or factory, as ``kernel``).
        training_steps: Adam steps on the marginal likelihood per :meth:`fit`
            (continuing from the previous fit's hyperparameters).
        learning_rate: Adam step size (0 keeps the hyperparameters fixed).
        num_features: random Fourier features of the prior path in function draws.
        max_train_points: condition on a random subset of this many transitions
            when there are more (None or 0: all, up to :data:`EXACT_GP_MAX_POINTS`).
        hyper_max_points: the marginal likelihood is optimized on a random subset of
            at most this many points (the posterior still uses all of them).
        min_noise: lower bound of the noise variance (normalized units).
        max_jitter: largest Cholesky jitter tried before giving up.
        path_dtype: ``"float32"`` or ``"float64"``: precision of function draws of
            the built-in kernels (BoTorch evaluates a user's kernel in float64).
        seed: seed used when no generator is passed.

    Raises:
        OptionError: an argument is out of its bounds (see :class:`GPOptions`).
        ConfigError: a user's module of the wrong kind or shape.
        ModelError: a user's kernel without a feature map for function draws.

    Examples:
        >>> model = ExactGPDynamics(obs_dim=3, action_dim=1, kernel="se")
        >>> # model.fit(buffer); f = model.sample_functions(20, generator)
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str | Kernel | ModuleFactory = "se",
        training_steps: int = 100,
        learning_rate: float = 0.05,
        num_features: int = 1024,
        max_train_points: int | None = 0,
        hyper_max_points: int = 512,
        min_noise: float = 1e-6,
        max_jitter: float = 1e-3,
        path_dtype: str = "float32",
        seed: int = 0,
        mean: str | Mean | ModuleFactory = "constant",
    ) -> None:
        self.options: GPOptions = checked_options(
            GPOptions,
            "ExactGPDynamics",
            {"num_steps": "training_steps"},
            kernel=shortcut_or(kernel, "se"),
            mean=shortcut_or(mean, "constant"),
            num_steps=training_steps,
            learning_rate=learning_rate,
            num_features=num_features,
            max_train_points=max_train_points or 0,
            hyper_max_points=hyper_max_points,
            min_noise=min_noise,
            max_jitter=max_jitter,
            path_dtype=path_dtype,
        )
        super().__init__(obs_dim, action_dim, kernel, mean, self.options, seed)
        self.training_steps = training_steps
        self.max_train_points = max_train_points or None
        self.hyper_max_points = hyper_max_points
        #: moment matching (closed-form moments under Gaussian inputs) needs an SE-ARD
        #: kernel and a constant mean
        self.supports_moment_matching = is_se_ard(self.covar_module) and isinstance(
            self.mean_module, gpytorch.means.ConstantMean
        )
        self.train_x: Tensor | None = None
        self.train_y: Tensor | None = None
        self._model: SingleTaskGP | None = None
        #: (hyperparameter values it was formed with, Cholesky factor) for function draws
        self._scale_tril: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_options(  # type: ignore[override]
        cls, options: GPOptions, obs_dim: int, action_dim: int, seed: int = 0
    ) -> ExactGPDynamics:
        """Build from a config's ``model`` section (``num_steps`` -> ``training_steps``,
        ``max_train_points = 0`` -> all, a ``kernel``/``mean`` spec -> its loaded factory)."""
        return cls(
            obs_dim,
            action_dim,
            training_steps=options.num_steps,
            learning_rate=options.learning_rate,
            max_train_points=options.max_train_points or None,
            hyper_max_points=options.hyper_max_points,
            seed=seed,
            **cls._prior_arguments(options),
        )

    def progress_total(self) -> int:
        """Adam steps per fit (each reported), 0 when the hyperparameters are fixed."""
        return self.training_steps if self.learning_rate > 0 else 0

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
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Maximize the marginal likelihood, then condition on the data.

        Args:
            data: all transitions so far.
            generator: source of randomness (subsets).
            progress: called as ``progress(step, loss, nan)`` after each Adam step.

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
        progress: ProgressFn | None = None,
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

    def _plain_marginal_likelihood(self) -> bool:
        """Whether the marginal likelihood is the Gaussian density alone (no priors on
        the modules, whose log densities GPyTorch's ``ExactMarginalLogLikelihood`` adds)."""
        modules = (self.covar_module, self.mean_module, self.likelihood)
        return not any(True for m in modules for _ in m.named_priors())

    def _marginal_nll(self, x: Tensor, y: Tensor, fast: bool | None = None) -> Callable[[], Tensor]:
        """The training objective on ``(N, d)`` / ``(N, D)`` normalized data: the negative
        exact marginal log-likelihood per point, summed over outputs.

        ``fast`` (default: whenever the modules carry no priors) evaluates GPyTorch's
        kernel and mean modules on the inputs laid out as ``SingleTaskGP`` lays out
        multi-output data and the Gaussian density by :func:`gaussian_nll` (the same
        Cholesky, a closed-form gradient instead of backpropagation through it); else
        GPyTorch's ``ExactMarginalLogLikelihood`` of a ``SingleTaskGP`` (which adds the
        priors' log densities).
        """
        if fast is None:
            fast = self._plain_marginal_likelihood()
        if not fast:
            model = self._build(x, y)
            model.train()
            mll = ExactMarginalLogLikelihood(self.likelihood, model)
            gp_x, gp_y = model.train_inputs[0], model.train_targets

            def gpytorch_loss() -> Tensor:
                with gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
                    return -mll(model(gp_x), gp_y).sum()

            return gpytorch_loss
        train_x = x.unsqueeze(0).expand(self.obs_dim, *x.shape)
        train_y = y.T.contiguous()
        n = x.shape[0]
        for module in (self.covar_module, self.mean_module, self.likelihood):
            module.train()

        def loss() -> Tensor:
            with gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
                covar = self.covar_module(train_x).to_dense()
                residual = train_y - self.mean_module(train_x)
            noise = self.likelihood.noise.reshape(self.obs_dim, 1)
            return gaussian_nll(covar, noise, residual).sum() / n

        return loss

    def _train(self, x: Tensor, y: Tensor, report: FitReport, progress: ProgressFn | None) -> None:
        params = self._hyper_params()
        loss = self._marginal_nll(x, y)
        fit_hyperparameters(
            lambda i: loss,
            [torch.optim.Adam(params, lr=self.learning_rate)],
            self.training_steps,
            params,
            report,
            what="ExactGPDynamics.fit",
            objective="exact GP marginal-likelihood",
            max_jitter=self.max_jitter,
            progress=progress,
        )

    def _condition(self) -> None:
        if self.train_x is None or self.train_y is None:
            raise ModelError("ExactGPDynamics has no training data; call fit(buffer) first")
        self._model = self._build(self.train_x, self.train_y)
        self._model.eval()
        self.likelihood.eval()
        self._scale_tril = None

    def _noisy_scale_tril(self) -> Tensor:
        """``(D, N, N)`` Cholesky factor of ``K(X, X) + sigma^2 I`` at the conditioned
        points, what BoTorch's exact Gaussian update factorizes for every draw.

        Formed as BoTorch forms it (the same operators, jitter escalation and
        ``max_cholesky_size``) and kept until the data or a hyperparameter changes, so a
        planning call's draws cost prior values and triangular solves, not a Cholesky.
        """
        model = self._gp()
        key = torch.cat([p.detach().reshape(-1) for p in self._hyper_params()])
        cached = self._scale_tril
        if cached is not None and torch.equal(cached[0], key):
            return cached[1]
        points = model.train_inputs[0]

        def factor() -> Tensor:
            with torch.no_grad(), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
                noise = self.likelihood.noise_covar(shape=points.shape[:-1])
                covar = SumLinearOperator(model.covar_module(points), noise)
                return covar.cholesky().to_dense()

        tril = with_jitter_escalation(
            factor, "ExactGPDynamics.sample_functions", max_jitter=self.max_jitter
        )
        self._scale_tril = (key, tril)
        return tril

    def _draw_paths(self, n: int, seed: int) -> MatheronPath:
        """BoTorch's Matheron paths of ``n`` draws (``draw_matheron_paths`` for an exact
        GP, the same random numbers from ``seed``), from the cached factor of the noisy
        kernel matrix, with the prior paths evaluated at the training inputs once per
        output rather than once per draw."""
        model = self._gp()
        tril = self._noisy_scale_tril()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            prior = draw_kernel_feature_paths(
                model, torch.Size([n]), num_features=self.num_features
            )
            (points,) = get_train_inputs(model, transformed=True)
            targets = get_train_targets(model, transformed=True)
            features = prior.feature_map(points)  # (D, N, F)
            if features.dim() == 3 and prior.weight.dim() == 3:
                # contiguous: the update's randn_like fills in memory order
                values = (features @ prior.weight.permute(1, 2, 0)).permute(2, 0, 1).contiguous()
                if prior.bias_module is not None:
                    values = values + prior.bias_module(points)
            else:
                values = prior.forward(points)
            update = _cached_gaussian_update(model, values, targets, tril)
        return MatheronPath(prior_paths=prior, update_paths=update)

    def _gp(self) -> gpytorch.models.GP:
        self._require_fitted()
        if self._model is None:
            self._condition()
        assert self._model is not None
        return self._model

    def _update_points(self) -> Tensor:
        assert self.train_x is not None
        return self.train_x.unsqueeze(0).expand(self.obs_dim, -1, -1)

    def se_gp_posterior(self) -> SEGP:
        """The fitted SE-ARD GP as an :class:`SEGP` (inputs and outputs in model units),
        for moment matching.

        The GP's normalizers become the affine maps, so beliefs stay in the model's raw
        input units and predictions in raw target units (deltas). ``(K + sigma^2 I)^{-1}``
        is formed by a Cholesky in float64, with the model's jitter escalation.

        Raises:
            ConfigError: the kernel is not squared exponential (moment matching is
                exact only for it); see :attr:`supports_moment_matching`.
            ModelError: the model has not been fitted.
        """
        if not self.supports_moment_matching:
            raise ConfigError(
                f"moment matching needs the squared-exponential kernel and a constant mean, the "
                f"GP uses {self.kernel!r}; build it with kernel='se' (or a user's "
                "ScaleKernel(RBFKernel) and ConstantMean)"
            )
        if not self.fitted or self.train_x is None or self.train_y is None:
            raise ModelError("ExactGPDynamics has not been fitted; call fit first")
        return se_gp_from_data(
            self.train_x,
            self.train_y,
            self.hyperparameters(),
            self.input_normalizer.mean,
            self.input_normalizer.std,
            self.delta_normalizer.mean,
            self.delta_normalizer.std,
            self.max_jitter,
        )

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
        self._scale_tril = None
        if self.fitted:
            self._condition()
