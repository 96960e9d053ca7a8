"""The exact GP dynamics model: BoTorch ``SingleTaskGP`` batched over state dimensions.

Hyperparameters maximize the exact marginal likelihood (Adam, on at most
``hyper_max_points`` random points); the posterior conditions on every training
point (or ``max_train_points`` of them) by Cholesky in float64. Cubic in the number
of points: capped at :data:`EXACT_GP_MAX_POINTS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import botorch
import gpytorch
import torch
from botorch.models import SingleTaskGP
from gpytorch.kernels import Kernel
from gpytorch.means import Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
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
from bayes_mbrl.models.gp.numerics import MAX_CHOLESKY, fit_hyperparameters
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

    Example:
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

    def _train(self, x: Tensor, y: Tensor, report: FitReport, progress: ProgressFn | None) -> None:
        model = self._build(x, y)
        model.train()
        mll = ExactMarginalLogLikelihood(self.likelihood, model)
        params = self._hyper_params()
        train_x, train_y = model.train_inputs[0], model.train_targets

        def loss() -> Tensor:
            with gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
                return -mll(model(train_x), train_y).sum()

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
        if self.fitted:
            self._condition()
