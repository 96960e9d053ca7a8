"""The sparse variational GP dynamics model (SVGP, Hensman et al. 2013).

A GPyTorch ``ApproximateGP`` batched over state dimensions, with ``M`` inducing
points per output (initialized by k-means or subsampling), trained by minibatch
variational ELBO, optionally with natural-gradient steps for ``q(u)``; linear in
the number of points, for 10^4 - 10^5 transitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gpytorch
import torch
from botorch.sampling.pathwise import gaussian_update
from gpytorch.kernels import Kernel
from gpytorch.means import Mean
from gpytorch.mlls import VariationalELBO
from gpytorch.models import ApproximateGP
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    NaturalVariationalDistribution,
    VariationalStrategy,
)
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.base import MODELS, FitReport, ProgressFn
from bayes_mbrl.models.gp.common import (
    GPDynamicsBase,
    GPPriorOptions,
    checked_options,
    shortcut_or,
)
from bayes_mbrl.models.gp.kernels import ModuleFactory
from bayes_mbrl.models.gp.numerics import (
    fit_hyperparameters,
    kmeans_inducing_points,
    logged_steps,
)
from bayes_mbrl.options import at_least, greater_than, one_of, option

__all__ = ["SparseGPDynamics", "SparseGPOptions"]

#: the sparse GP logs (and reports progress) every this many steps, and at the last
LOG_EVERY = 50


@dataclass
class SparseGPOptions(GPPriorOptions):
    """Options of :class:`SparseGPDynamics` (``model.kind = "sparse_gp"``)."""

    num_inducing: int = option(
        256, at_least(1, "an integer"), "inducing points M (capped at the data size)"
    )
    inducing_init: str = option(
        "kmeans", one_of(["kmeans", "subsample"]), "how inducing points start each fit"
    )
    batch_size: int = option(1024, at_least(1, "an integer"), "minibatch size")
    max_epochs: int = option(10, at_least(0, "an integer"), "passes over the data per fit")
    min_steps: int = option(300, at_least(0, "an integer"), "at least this many steps per fit")
    learning_rate: float = option(
        0.02, at_least(0), "Adam step size (0 keeps hyperparameters and inducing points fixed)"
    )
    natural_gradient: bool = option(False, None, "update q(u) by natural gradient")
    ngd_learning_rate: float = option(0.1, greater_than(0), "natural-gradient step size")


class _BatchSVGP(ApproximateGP):
    """A batched (over outputs) SVGP: whitened variational strategy, learned inducing points."""

    def __init__(
        self, inducing_points: Tensor, mean_module: Mean, covar_module: Kernel, natural: bool
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


@MODELS.register("sparse_gp", options=SparseGPOptions)
class SparseGPDynamics(GPDynamicsBase):
    """Sparse variational GP dynamics (SVGP, Hensman et al. 2013) for 10^4 - 10^5 transitions.

    One batched ``ApproximateGP`` over outputs with ``M`` learned inducing points
    per output, trained with minibatches of the variational ELBO (Adam for
    hyperparameters and inducing points; ``q(u)`` by Adam or, with
    ``natural_gradient=True``, by natural-gradient steps).

    Args:
        obs_dim: observation size ``D``.
        action_dim: action size ``A``.
        kernel: a shortcut name, a user's GPyTorch kernel or a factory (see
            :class:`ExactGPDynamics`).
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
        mean: ``"constant"`` or a user's GPyTorch mean (or factory).

    Raises:
        OptionError: an argument is out of its bounds (see :class:`SparseGPOptions`).
        ConfigError, ModelError: a user's module (see :class:`ExactGPDynamics`).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        kernel: str | Kernel | ModuleFactory = "se",
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
        mean: str | Mean | ModuleFactory = "constant",
    ) -> None:
        self.options: SparseGPOptions = checked_options(
            SparseGPOptions,
            "SparseGPDynamics",
            {"max_epochs": "epochs"},
            kernel=shortcut_or(kernel, "se"),
            mean=shortcut_or(mean, "constant"),
            num_inducing=num_inducing,
            inducing_init=inducing_init,
            batch_size=batch_size,
            max_epochs=epochs,
            min_steps=min_steps,
            learning_rate=learning_rate,
            natural_gradient=natural_gradient,
            ngd_learning_rate=ngd_learning_rate,
            num_features=num_features,
            min_noise=min_noise,
            max_jitter=max_jitter,
            path_dtype=path_dtype,
        )
        super().__init__(obs_dim, action_dim, kernel, mean, self.options, seed)
        self.num_inducing = num_inducing
        self.inducing_init = inducing_init
        self.batch_size = batch_size
        self.epochs = epochs
        self.min_steps = min_steps
        self.natural_gradient = natural_gradient
        self.ngd_learning_rate = ngd_learning_rate
        self._model: _BatchSVGP | None = None

    @classmethod
    def from_options(  # type: ignore[override]
        cls, options: SparseGPOptions, obs_dim: int, action_dim: int, seed: int = 0
    ) -> SparseGPDynamics:
        """Build from a config's ``model`` section (``max_epochs`` -> ``epochs``, a
        ``kernel``/``mean`` spec -> its loaded factory)."""
        return cls(
            obs_dim,
            action_dim,
            num_inducing=options.num_inducing,
            inducing_init=options.inducing_init,
            batch_size=options.batch_size,
            epochs=options.max_epochs,
            min_steps=options.min_steps,
            learning_rate=options.learning_rate,
            natural_gradient=options.natural_gradient,
            ngd_learning_rate=options.ngd_learning_rate,
            seed=seed,
            **cls._prior_arguments(options),
        )

    def progress_total(self) -> int | None:
        """Progress calls per fit (one every 50 steps and at the last step); the number
        of steps grows with the data unless ``epochs = 0`` (then None: unknown)."""
        return logged_steps(self.min_steps, LOG_EVERY) if self.epochs == 0 else None

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
        progress: ProgressFn | None = None,
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
        progress: ProgressFn | None,
        start: float,
    ) -> FitReport:
        n = x.shape[0]
        m = min(self.num_inducing, n)
        z = self._init_inducing(x, m, g)
        model = _BatchSVGP(z, self.mean_module, self.covar_module, self.natural_gradient).double()
        model.train()
        self.likelihood.train()
        elbo = VariationalELBO(self.likelihood, model, num_data=n)
        hyper = [*self._hyper_params(), model.variational_strategy.inducing_points]
        var_params = list(model.variational_parameters())
        optimizers: list[torch.optim.Optimizer] = []
        if self.learning_rate > 0:
            optimizers.append(torch.optim.Adam(hyper, lr=self.learning_rate))
        if self.natural_gradient:
            optimizers.append(gpytorch.optim.NGD(var_params, num_data=n, lr=self.ngd_learning_rate))
        else:
            optimizers.append(torch.optim.Adam(var_params, lr=max(self.learning_rate, 0.01)))
        bs = min(self.batch_size, n)
        steps = max(self.min_steps, self.epochs * (n // bs))
        report = FitReport()
        yt = y.T.contiguous()  # (D, N)
        order = torch.randperm(n, generator=g)
        pos = 0

        def loss_at(i: int) -> Callable[[], Tensor]:
            nonlocal order, pos
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            rows = order[pos : pos + bs]
            pos += bs
            return lambda: -elbo(model(x[rows]), yt[:, rows]).sum()

        fit_hyperparameters(
            loss_at,
            optimizers,
            steps,
            hyper,
            report,
            what="SparseGPDynamics.fit",
            objective="sparse GP ELBO",
            max_jitter=self.max_jitter,
            progress=progress,
            log_every=LOG_EVERY,
        )
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
