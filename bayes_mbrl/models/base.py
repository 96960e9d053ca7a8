"""The protocol every dynamics model implements.

A dynamics model is a distribution over functions ``p(f | D)``. Each function ``f``
gives an aleatoric distribution ``p(s' | s, a, f)``. Epistemic uncertainty is the
spread across functions, aleatoric the noise within one. Planners never see a model
directly: they see :class:`FunctionSample` objects through the rollout evaluator.

Shapes: ``n`` functions, ``B`` inputs per function, ``N`` transitions.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.devices import randn_like_on
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.registry import Registry

if TYPE_CHECKING:
    from bayes_mbrl.options import Check, Options

__all__ = [
    "DEFAULT_ANALYSIS_DRAWS",
    "MODELS",
    "DynamicsModel",
    "FitReport",
    "FunctionSample",
    "Predictive",
    "ProgressFn",
    "check_arguments",
    "check_function_inputs",
    "check_model_inputs",
    "state_mismatch",
]

ProgressFn = Callable[[int, float, float], None]
"""``progress(step, train_loss, val_loss)``: called by ``fit`` after each epoch or
logged step (``val_loss`` NaN without a validation set)."""

#: posterior draws used for analysis when a model has no finite posterior support
DEFAULT_ANALYSIS_DRAWS = 100


@dataclass
class FitReport:
    """What a fit did.

    Attributes:
        train_losses: training loss per epoch (or per logged step).
        val_losses: validation loss per epoch (empty without a validation set).
        epochs: epochs run.
        best_epoch: epoch whose parameters were kept (early stopping), or -1.
        wall_seconds: wall-clock time of the fit.
    """

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = -1
    wall_seconds: float = 0.0

    @property
    def final_train_loss(self) -> float:
        """Last training loss, NaN if none was logged."""
        return self.train_losses[-1] if self.train_losses else float("nan")

    @property
    def best_val_loss(self) -> float:
        """Lowest validation loss, NaN without a validation set."""
        return min(self.val_losses) if self.val_losses else float("nan")


@dataclass
class Predictive:
    """Predictive moments of the next observation, split by the law of total variance.

    ``Var[s'] = Var_f[E[s'|f]] + E_f[Var[s'|f]] = epistemic + aleatoric``, per
    output dimension.

    Attributes:
        mean: ``(B, obs_dim)`` predictive mean.
        epistemic_var: ``(B, obs_dim)`` variance of the per-function means.
        aleatoric_var: ``(B, obs_dim)`` mean of the per-function noise variances.
    """

    mean: Tensor
    epistemic_var: Tensor
    aleatoric_var: Tensor

    @property
    def total_var(self) -> Tensor:
        """``(B, obs_dim)`` total predictive variance."""
        return self.epistemic_var + self.aleatoric_var

    @staticmethod
    def from_function_moments(means: Tensor, variances: Tensor) -> Predictive:
        """Combine per-function moments.

        Args:
            means: ``(n, B, obs_dim)`` mean of ``p(s'|s,a,f_i)``.
            variances: ``(n, B, obs_dim)`` variance of ``p(s'|s,a,f_i)``.
        """
        return Predictive(
            mean=means.mean(0),
            epistemic_var=means.var(0, unbiased=False),
            aleatoric_var=variances.mean(0),
        )


class FunctionSample(abc.ABC):
    """``n`` posterior draws of the dynamics function, evaluated in one vectorized call.

    Subclasses implement :meth:`__call__`; :meth:`sample` has a default that works
    for Gaussian next-state distributions and may be overridden for speed.
    """

    #: number of functions in this sample
    n: int
    #: functions are laid out chain-major, ``n = num_chains * draws_per_chain``;
    #: 1 unless the draws come from several MCMC chains (the ArviZ export keeps them apart)
    num_chains: int = 1

    def latents(self) -> dict[str, Tensor]:
        """Named global latent values of each function, each ``(n, *shape)``.

        What ``az.summary`` reports for the model: physical parameters of a user's
        Pyro model, noise scales of a BNN, the member index of an ensemble. Keep it
        to quantities worth summarizing (not every weight of a large net). Default: none.
        """
        return {}

    def sample_stats(self) -> dict[str, Tensor]:
        """Per function, the MCMC sampler's statistics of the iteration that drew it, each
        ``(n,)``, under ArviZ's ``sample_stats`` names (``diverging``, ``acceptance_rate``,
        ``step_size``, ``tree_depth``, ``n_steps``, ``lp``; see
        :data:`~bayes_mbrl.models.posterior_draws.SAMPLE_STATS`). Default: none (draws
        that do not come from MCMC).
        """
        return {}

    @abc.abstractmethod
    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        """Next-observation distribution of each function.

        Args:
            obs: ``(n, B, obs_dim)``; row ``i`` is evaluated by function ``i``.
            action: ``(n, B, action_dim)``.

        Returns:
            A distribution with batch shape ``(n, B)`` and event shape ``(obs_dim,)``.
        """

    def sample(self, obs: Tensor, action: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw one next observation per row, ``(n, B, obs_dim)``.

        Randomness comes only from ``generator`` so that seeded runs repeat bit for bit.
        """
        dist = self(obs, action)
        base = dist.base_dist if isinstance(dist, Independent) else dist
        if isinstance(base, Normal):
            return base.loc + base.scale * randn_like_on(base.loc, generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return dist.sample()

    def mean(self, obs: Tensor, action: Tensor) -> Tensor:
        """Mean next observation of each function, ``(n, B, obs_dim)``."""
        return self(obs, action).mean

    def at(self, obs: Tensor, action: Tensor) -> Distribution:
        """Every function at the same inputs (for predict, log-likelihood and analysis).

        Args:
            obs: ``(B, obs_dim)``.
            action: ``(B, action_dim)``.

        Returns:
            Next-observation distributions with batch shape ``(n, B)``.
        """
        for name, t in (("obs", obs), ("action", action)):
            if not isinstance(t, Tensor) or t.dim() != 2:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise DataError(
                    f"FunctionSample.at expects {name} of shape (B, dim) (the same inputs for "
                    f"every function), got {shape}; call the sample itself with (n, B, dim) "
                    "inputs to give each function its own"
                )
        return self(obs.float().expand(self.n, -1, -1), action.float().expand(self.n, -1, -1))

    def log_prob_at(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """``(n, B)`` log-density of the observed ``(B, obs_dim)`` next observations
        under every function (inputs as for :meth:`at`)."""
        return self.at(obs, action).log_prob(next_obs.float().expand(self.n, -1, -1))

    def with_compute_dtype(self, dtype: torch.dtype) -> FunctionSample:
        """A copy that computes in ``dtype`` (inputs/outputs stay float32).

        The default supports float32 only; models with reduced-precision kernels
        override it.

        Raises:
            ModelError: the precision is not supported by this model.
        """
        if dtype != torch.float32:
            raise ModelError(
                f"{type(self).__name__} computes in float32 only, not {dtype}; "
                "set planner.precision = 'float32'"
            )
        return self


class DynamicsModel(abc.ABC):
    """A posterior over dynamics functions ``p(f | D)``.

    Attributes:
        obs_dim: observation size.
        action_dim: action size.
        num_functions_hint: size of a finite posterior support that planners
            should stratify particles over (ensemble members), or None when
            functions are continuous draws (BNN weights, GP paths).
        compute_dtypes: the dtypes its function draws compute in
            (:meth:`FunctionSample.with_compute_dtype`); ``planner.precision = "auto"``
            plans in bfloat16 only for a model that lists it.
    """

    obs_dim: int
    action_dim: int
    num_functions_hint: int | None = None
    compute_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32,)

    @classmethod
    def from_options(
        cls, options: Options, obs_dim: int, action_dim: int, seed: int = 0
    ) -> DynamicsModel:
        """Build the model from its registered options (``model`` section of a config).

        The default passes every option as a keyword argument of the constructor,
        with ``seed``; override it when an option needs translating (a user's
        function to import, a renamed argument).
        """
        return cls(obs_dim, action_dim, **dataclasses.asdict(options), seed=seed)  # type: ignore[call-arg]

    @abc.abstractmethod
    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit to (or update the posterior with) all transitions in ``data``.

        Args:
            data: the transitions.
            generator: source of randomness (bootstraps, minibatches, initial values).
            progress: called after each epoch or logged step (see :data:`ProgressFn`).
        """

    def progress_total(self) -> int | None:
        """How many times :meth:`fit` calls ``progress`` at most (for progress bars),
        or None when it cannot tell."""
        return None

    @property
    def device(self) -> torch.device:
        """Where the model computes: the CPU, unless a model that can move was moved
        with :meth:`to`."""
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> DynamicsModel:
        """Move the model to ``device`` (``experiment.device``); returns ``self``.

        Raises:
            ConfigError: the model computes on the CPU only (the default).
        """
        if torch.device(device).type == "cpu":
            return self
        raise ConfigError(
            f"{type(self).__name__} computes on the CPU only; set experiment.device = 'cpu' "
            "(models that move to a GPU override DynamicsModel.to)"
        )

    #: capability: the model is an exact squared-exponential GP whose moments under a
    #: Gaussian input have a closed form (moment-matching propagation, PILCO)
    supports_moment_matching: bool = False

    def se_gp_posterior(self) -> Any:
        """The fitted model as an SE-ARD GP in plain tensors (an ``SEGP``), for moment
        matching; only models with :attr:`supports_moment_matching`.

        Raises:
            ModelError: the model does not support moment matching.
        """
        raise ModelError(
            f"{type(self).__name__} has no closed-form moments under a Gaussian input; "
            "moment matching needs an exact GP with the squared-exponential kernel"
        )

    @abc.abstractmethod
    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """Draw ``n`` functions from the posterior."""

    #: seed of the draws that :meth:`predict` and :meth:`log_likelihood` average over
    #: (the same functions on every call); None: they come from the global RNG
    predict_seed: int | None = None

    def predictive_functions(self, num_functions: int | None = None) -> FunctionSample:
        """The functions :meth:`predict` and :meth:`log_likelihood` average over.

        ``num_functions=None``: :meth:`posterior_functions` (every member of an ensemble,
        every stored MCMC sample, else :data:`DEFAULT_ANALYSIS_DRAWS` draws); otherwise
        ``num_functions`` draws of :meth:`sample_functions`. Draws come from a generator
        seeded with :attr:`predict_seed` when it is set.

        Raises:
            DataError: ``num_functions < 1``.
        """
        if num_functions is not None and num_functions < 1:
            raise DataError(
                f"num_functions must be >= 1 or None, got {num_functions}; None averages over "
                "the model's default functions (every ensemble member or stored MCMC sample)"
            )
        gen = None
        if self.predict_seed is not None:
            gen = torch.Generator().manual_seed(self.predict_seed)
        if num_functions is None:
            return self.posterior_functions(None, gen)
        return self.sample_functions(num_functions, gen)

    @torch.no_grad()
    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        """Predictive moments at ``(B, obs_dim)`` / ``(B, action_dim)`` inputs.

        The default splits the moments of :meth:`predictive_functions` by the law of
        total variance (:meth:`Predictive.from_function_moments`); a family with a
        closed form overrides it.

        Args:
            obs: ``(B, obs_dim)``.
            action: ``(B, action_dim)``.
            num_functions: functions to average over (None: the model's default).

        Raises:
            DataError: bad inputs or ``num_functions``.
        """
        self.check_inputs(obs, action)
        dist = self.predictive_functions(num_functions).at(obs, action)
        return Predictive.from_function_moments(dist.mean, dist.variance)

    def posterior_functions(
        self, num_draws: int | None = None, generator: torch.Generator | None = None
    ) -> FunctionSample:
        """Functions for analysis: ArviZ export, model comparison, calibration.

        The default draws ``num_draws`` functions with :meth:`sample_functions`
        (``num_draws=None``: the finite support for ensembles, else
        :data:`DEFAULT_ANALYSIS_DRAWS`). Models with stored MCMC samples override it
        to return every sample, chain-major, with ``num_chains`` set.
        """
        n = num_draws or self.num_functions_hint or DEFAULT_ANALYSIS_DRAWS
        return self.sample_functions(n, generator)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted posterior, as tensors and plain
        containers only (loadable with ``torch.load(weights_only=True)``)."""
        raise ModelError(f"{type(self).__name__} does not implement state_dict()")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a model built with the same arguments."""
        raise ModelError(f"{type(self).__name__} does not implement load_state_dict()")

    @torch.no_grad()
    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        """Pointwise log-density ``log p(s'_j | s_j, a_j, f_i)``, shape ``(num_functions, N)``.

        The default evaluates :meth:`predictive_functions` at the ``(N, dim)`` inputs.

        Raises:
            DataError: bad inputs or ``num_functions``.
        """
        self.check_inputs(obs, action, next_obs)
        return self.predictive_functions(num_functions).log_prob_at(obs, action, next_obs)

    def check_inputs(self, obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
        """Raise :class:`DataError` unless the shapes fit this model.

        See :func:`check_model_inputs`.
        """
        check_model_inputs(self.obs_dim, self.action_dim, obs, action, next_obs)


def check_arguments(owner: str, checks: Sequence[tuple[str, Any, Check]]) -> None:
    """Check constructor arguments that are not options (not set from a config) with
    the same checks and errors as options.

    Args:
        owner: the component ("BayesianNeuralNet").
        checks: ``(name, value, check)`` triples, checked in order.

    Raises:
        OptionError: the first argument whose check fails.
    """
    from bayes_mbrl.options import OptionError

    for name, value, check in checks:
        problem = check(value)
        if problem is not None:
            raise OptionError(owner, name, value, problem)


MODELS: Registry[type[DynamicsModel]] = Registry("model kind", "model.kind")
"""Dynamics model families by ``model.kind``; each registers next to its class
with its options dataclass (the ``model`` section of a config)."""


def check_model_inputs(
    obs_dim: int, action_dim: int, obs: Tensor, action: Tensor, next_obs: Tensor | None = None
) -> None:
    """Raise :class:`DataError` unless ``obs``/``action``(/``next_obs``) are ``(B, dim)`` and match.

    Args:
        obs_dim: the model's observation size.
        action_dim: the model's action size.
        obs: ``(B, obs_dim)``.
        action: ``(B, action_dim)``.
        next_obs: ``(B, obs_dim)`` or None.
    """
    parts = [("obs", obs, obs_dim), ("action", action, action_dim)]
    if next_obs is not None:
        parts.append(("next_obs", next_obs, obs_dim))
    for name, t, d in parts:
        if not isinstance(t, Tensor):
            raise DataError(
                f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                f"convert it with torch.as_tensor({name}, dtype=torch.float32)"
            )
        if t.dim() != 2 or t.shape[1] != d:
            raise DataError(f"{name} must have shape (B, {d}), got {tuple(t.shape)}")
        if t.shape[0] != obs.shape[0]:
            raise DataError(
                f"{name} has {t.shape[0]} rows but obs has {obs.shape[0]}; pass matching batches"
            )
        if t.is_complex() or t.dtype == torch.bool:
            raise DataError(f"{name} has dtype {t.dtype}; pass real floating-point values")
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise DataError(
                f"{name} contains NaN or inf (row {row}: {t[row].tolist()}); drop or fix those rows"
            )


def check_function_inputs(
    n: int, obs_dim: int, action_dim: int | None, obs: Tensor, action: Tensor
) -> None:
    """Raise :class:`DataError` unless ``obs`` is ``(n, B, obs_dim)`` and ``action``
    ``(n, B, action_dim)`` (the inputs of a :class:`FunctionSample` of ``n`` functions).

    Shape checks only (no host sync): cheap enough for every step of a planning horizon.

    Args:
        n: number of functions.
        obs_dim: observation size.
        action_dim: action size, or None to check only the leading ``(n, B)``.
        obs: ``(n, B, obs_dim)``.
        action: ``(n, B, action_dim)``.
    """
    if (
        not isinstance(obs, Tensor)
        or obs.dim() != 3
        or obs.shape[0] != n
        or obs.shape[2] != obs_dim
    ):
        shape = tuple(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
        raise DataError(
            f"FunctionSample of {n} functions expects obs of shape ({n}, B, {obs_dim}), got {shape}"
        )
    b = obs.shape[1]
    if (
        not isinstance(action, Tensor)
        or action.dim() != 3
        or action.shape[:2] != (n, b)
        or (action_dim is not None and action.shape[2] != action_dim)
    ):
        shape = tuple(action.shape) if isinstance(action, Tensor) else type(action).__name__
        want = action_dim if action_dim is not None else "action_dim"
        raise DataError(
            f"FunctionSample of {n} functions expects action of shape ({n}, {b}, {want}) "
            f"to go with obs {tuple(obs.shape)}, got {shape}"
        )


def state_mismatch(what: str, exc: Exception) -> ModelError:
    """The error of a ``load_state_dict`` whose state does not fit the model (raised
    after the model was restored): ``exc``'s message on one line, at most 400
    characters (torch lists every mismatched tensor on its own line).

    Args:
        what: the model, for the message ("ensemble", "SNGP model").
        exc: what loading raised (a missing key names the entry).
    """
    text = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
    text = " ".join(text.split())
    text = text if len(text) <= 400 else text[:400] + " ..."
    return ModelError(
        f"saved {what} does not match this configuration ({text}); "
        "load it with the config it was saved with (the model was left unchanged)"
    )
