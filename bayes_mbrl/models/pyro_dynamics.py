"""Any user-written Pyro model as a dynamics model, fitted by SVI or NUTS.

The user model contract (checked at the start of :meth:`PyroDynamics.fit`; see
``docs/pyro_models.md``)::

    def model(obs, action, next_obs=None):
        # obs (..., N, obs_dim), action (..., N, action_dim), next_obs (N, obs_dim) or None
        mass = pyro.sample("mass", dist.LogNormal(0.0, 0.5))            # global latents:
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))  # outside plates,
        with pyro.plate("transitions", obs.shape[-2], dim=-1):        # vectors via to_event
            loc = ...  # (..., N, obs_dim), written with `...` indexing: obs[..., 0]
            pyro.sample("next_obs", dist.Normal(loc, scale).to_event(1), obs=next_obs)

1. **Global latents** (physical parameters, noise scales, weights of a small residual
   net) are ``pyro.sample`` sites outside any plate, with batch shape ``()``; vector
   latents use ``.to_event(k)``. Unknown quantities are latents with a prior, not
   ``pyro.param`` (``guide="delta"`` gives a MAP point estimate).
2. **One plate** ``pyro.plate("transitions", N, dim=-1)`` over transitions, and no
   other plate.
3. **Exactly one observed site**, ``"next_obs"``, inside that plate, with batch shape
   ``(N,)`` and event shape ``(obs_dim,)``, observed with ``obs=next_obs``.
   ``pyro.deterministic`` sites are allowed.
4. **Vectorizable**: the model also runs with extra batch dimensions on the left, as
   Pyro's ``Predictive(parallel=True)`` requires. :meth:`PyroDynamics.sample_functions`
   evaluates ``n`` draws in one call: each latent becomes ``(n, 1, *event_shape)``,
   inputs ``(n, B, dim)``, under ``pyro.plate("functions", n, dim=-2)``. Index with
   ``...`` (``obs[..., 2]``, never ``obs[:, 2]``) and let latents broadcast.

A *function* is one draw of the global latents (from the SVI guide, or one stored
NUTS sample); its next-observation distribution is the model's ``"next_obs"`` site
with the latents conditioned, read in one pass of the model per call (no loop over draws).

Shapes: ``n`` functions, ``B`` inputs per function, ``N`` transitions.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.infer.autoguide as autoguide
import torch
from pyro import poutine
from pyro.infer import NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide.initialization import (
    InitMessenger,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from pyro.optim import Adam, ClippedAdam  # type: ignore[attr-defined]
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Distribution, Independent

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    DEFAULT_ANALYSIS_DRAWS,
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    ProgressFn,
    check_arguments,
    check_function_inputs,
)
from bayes_mbrl.models.posterior_draws import NutsChain, PosteriorDraws, run_nuts_chain
from bayes_mbrl.options import (
    OptionError,
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
)

__all__ = [
    "FUNCTIONS_PLATE",
    "GUIDES",
    "INFERENCES",
    "NEXT_OBS",
    "OPTIMIZERS",
    "TRANSITIONS_PLATE",
    "PyroDynamics",
    "PyroFunctionSample",
    "PyroOptions",
]

#: name of the observed site a user model must declare
NEXT_OBS = "next_obs"
#: name of the plate over transitions a user model must declare (``dim=-1``)
TRANSITIONS_PLATE = "transitions"
#: name of the plate over function draws that vectorized evaluation adds (``dim=-2``)
FUNCTIONS_PLATE = "functions"
INFERENCES = ("svi", "nuts")
GUIDES: dict[str, Callable[..., autoguide.AutoGuide]] = {
    "normal": autoguide.AutoNormal,
    "multivariate_normal": autoguide.AutoMultivariateNormal,
    "delta": autoguide.AutoDelta,
    "lowrank": autoguide.AutoLowRankMultivariateNormal,
}
OPTIMIZERS = ("adam", "clipped_adam")
#: where NUTS chains start (see PyroDynamics)
NUTS_INITS = ("map", "median")
#: step size of the MAP start of NUTS chains, first and last
_MAP_LR, _MAP_FINAL_LR = 0.05, 5e-5
#: NUTS adapts a dense mass matrix by default up to this many latent dimensions
DENSE_MASS_MAX_DIM = 32
_FUNCTION_DIM = -2
#: transitions used to check the model's contract at the start of fit
_CHECK_ROWS = 64
#: progress/loss records per SVI fit
_LOG_POINTS = 100

ModelFn = Callable[..., Any]


class _Evaluate(Messenger):
    """Conditions global latents, keeps ``next_obs`` from being sampled, captures its law.

    Sits below the plates in the handler stack, so the captured distribution is the
    plate-broadcast one.
    """

    def __init__(self, values: dict[str, Tensor], next_obs: Tensor) -> None:
        super().__init__()
        self.values, self.next_obs = values, next_obs
        self.fn: Distribution | None = None

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        if name == NEXT_OBS:
            self.fn = msg["fn"]
            msg["value"], msg["is_observed"] = self.next_obs, True
        elif name in self.values:
            msg["value"], msg["is_observed"] = self.values[name], True


def _law_problem(fn: Any) -> str:
    """Which moment of a distribution is broken, as a clause for an error message."""
    try:
        base = fn.base_dist if isinstance(fn, Independent) else fn
        mean, sd = fn.mean, getattr(base, "scale", None)
        sd = fn.stddev if not isinstance(sd, Tensor) else sd
    except Exception:  # laws without moments: say nothing more
        return ""
    if not bool(torch.isfinite(mean).all()):
        return f" (its mean/loc has {int((~torch.isfinite(mean)).sum())} non-finite entries)"
    if not bool((torch.isfinite(sd) & (sd > 0)).all()):
        return " (its variance/scale is not positive and finite everywhere)"
    return ""


class _ScaleSite(Messenger):
    """Scale the log-density of one site (the minibatched likelihood) by ``scale``."""

    def __init__(self, name: str, scale: float) -> None:
        super().__init__()
        self.name, self.scale = name, scale

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] == self.name:
            msg["scale"] = self.scale * msg["scale"]


def _run_vectorized(
    model_fn: ModelFn, values: dict[str, Tensor], obs: Tensor, action: Tensor, n: int
) -> Distribution | None:
    """The ``next_obs`` law of ``n`` latent draws at ``(n, B, dim)`` inputs, one model pass."""
    handler = _Evaluate(values, obs)
    with handler, pyro.plate(FUNCTIONS_PLATE, n, dim=_FUNCTION_DIM):
        model_fn(obs, action, None)
    return handler.fn


class PyroFunctionSample(FunctionSample):
    """``n`` draws of a user model's global latents, evaluated in one model pass per call.

    Args:
        model_fn: the user's Pyro model (see the module docstring for the contract).
        latents: global latent values, each ``(n, *shape)``.
        obs_dim: observation size.
        num_chains: MCMC chains the draws come from (chain-major), 1 for SVI.
        action_dim: action size, checked on every call (None: not checked).
        sample_stats: NUTS statistics of each draw, ``(n,)`` each (None: none).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        latents: dict[str, Tensor],
        obs_dim: int,
        num_chains: int = 1,
        action_dim: int | None = None,
        sample_stats: dict[str, Tensor] | None = None,
    ) -> None:
        if not latents:
            raise ModelError("a PyroFunctionSample needs at least one latent draw")
        self.model_fn = model_fn
        self._latents = latents
        self.n = int(next(iter(latents.values())).shape[0])
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.num_chains = num_chains
        self._sample_stats = dict(sample_stats or {})
        # (n, *shape) -> (n, 1, *shape): the plate over functions sits at dim -2
        self._values = {k: v.reshape(self.n, 1, *v.shape[1:]) for k, v in latents.items()}

    def latents(self) -> dict[str, Tensor]:
        """Global latents of each function, ``(n, *shape)`` per site."""
        return dict(self._latents)

    def sample_stats(self) -> dict[str, Tensor]:
        """NUTS statistics of each function's draw, ``(n,)`` each (empty for SVI)."""
        return dict(self._sample_stats)

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        """Next-observation law of each function: batch ``(n, B)``, event ``(obs_dim,)``.

        Args:
            obs: ``(n, B, obs_dim)``.
            action: ``(n, B, action_dim)``.
        """
        check_function_inputs(self.n, self.obs_dim, self.action_dim, obs, action)
        with pyro.validation_enabled(False):
            fn = _run_vectorized(self.model_fn, self._values, obs, action, self.n)
        if fn is None:  # checked at fit; a model may still branch on its inputs
            raise ModelError(f"the Pyro model did not reach its '{NEXT_OBS}' sample site")
        return fn


def _model_spec(v: str) -> str | None:
    """``path/to/file.py:function`` or ``package.module:function`` (or empty: see
    :meth:`PyroOptions.validate`)."""
    if not v:
        return None
    target, sep, func = v.rpartition(":")
    if sep and target and func.isidentifier():
        return None
    return "'path/to/file.py:function' or 'package.module:function'"


_INT1 = at_least(1, "an integer")


@dataclass
class PyroOptions(Options):
    """Options of :class:`PyroDynamics` (``model.kind = "pyro"``)."""

    pyro_model: str = option(
        "",
        _model_spec,
        "the user's Pyro model, 'path/to/file.py:function' (relative to the working "
        "directory) or 'package.module:function'",
    )
    inference: str = option("svi", one_of(INFERENCES), "an autoguide fitted by SVI, or NUTS")
    guide: str = option("normal", one_of(list(GUIDES)), "SVI autoguide")
    num_steps: int = option(2000, _INT1, "SVI steps per fit")
    learning_rate: float = option(0.01, greater_than(0), "SVI step size")
    num_samples: int = option(500, _INT1, "NUTS samples kept per chain")
    warmup_steps: int = option(500, at_least(0, "an integer"), "NUTS warm-up steps per chain")
    num_chains: int = option(1, _INT1, "NUTS chains, run one after the other")
    max_tree_depth: int = option(
        10, interval(1, 15), "NUTS: at most 2**depth - 1 leapfrog steps per iteration"
    )

    def validate(self) -> None:
        if not self.pyro_model.strip():
            raise OptionError(
                type(self).__name__,
                "pyro_model",
                self.pyro_model,
                "the user's Pyro model as 'path/to/file.py:function' when model.kind = 'pyro'",
            )


def _callable_spec(fn: Callable[..., Any]) -> str:
    """``module:name`` of a callable (what :attr:`PyroOptions.pyro_model` records for a
    model passed as a function)."""
    module = getattr(fn, "__module__", None) or "python"
    name = getattr(fn, "__name__", "")
    return f"{module}:{name if name.isidentifier() else 'model_fn'}"


@MODELS.register("pyro", options=PyroOptions)
class PyroDynamics(DynamicsModel):
    """A user-written Pyro model ``model(obs, action, next_obs=None)`` as dynamics.

    Args:
        model_fn: the Pyro model; contract in the module docstring and ``docs/pyro_models.md``.
        obs_dim: observation size.
        action_dim: action size.
        inference: ``"svi"`` (an autoguide trained with the ELBO) or ``"nuts"``.
        guide: SVI autoguide, one of :data:`GUIDES` (``normal``: AutoNormal,
            ``multivariate_normal``, ``delta`` (MAP), ``lowrank``).
        num_steps: SVI steps per :meth:`fit` (training continues from the current guide).
        learning_rate: SVI step size.
        batch_size: SVI minibatch size (the likelihood is scaled to all ``N``
            transitions), or None for full batches.
        num_samples: NUTS samples kept per chain.
        warmup_steps: NUTS adaptation steps per chain.
        num_chains: NUTS chains (run one after another, seeded apart).
        seed: seeds Pyro's randomness of a fit (when no generator is given) and the
            draws of :meth:`predict` / :meth:`log_likelihood`.
        optimizer: ``"clipped_adam"`` (gradient norm clipped at 10) or ``"adam"``.
        final_learning_rate: with ``clipped_adam``, decay the step size geometrically
            from ``learning_rate`` to this over each fit's ``num_steps`` (None: constant).
            Decaying makes the final guide settle instead of jittering around the optimum.
        max_tree_depth: NUTS trajectories take at most ``2**max_tree_depth - 1`` steps. Lower
            it (e.g. 6) when latents have very different posterior scales (a sharply
            identified physical parameter next to a vague noise scale): early warmup,
            before the mass matrix is adapted, then stays cheap.
        full_mass: NUTS adapts a dense mass matrix (learns posterior correlations, e.g.
            of a mass and a length seen only through ``m l^2``) instead of a diagonal
            one. None: dense when the latents have at most
            :data:`DENSE_MASS_MAX_DIM` dimensions in all.
        nuts_init: where each NUTS chain starts: ``"map"`` (default) climbs from its own
            prior draw to the posterior mode (``map_steps`` Adam steps on the log joint,
            step size decaying from 0.05 to 5e-5) so that warmup adapts step size and
            mass matrix at the posterior, not on the way to it; ``"median"``: the prior
            median. A sharply identified parameter (sd 1e-4 of its prior's) otherwise
            spends the warmup travelling.
        map_steps: steps of the ``"map"`` start.

    Raises:
        OptionError: an argument is out of its bounds (see :class:`PyroOptions`).

    Examples:
        >>> def model(obs, action, next_obs=None):
        ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("transitions", obs.shape[-2], dim=-1):
        ...         loc = a * obs + action
        ...         pyro.sample("next_obs", dist.Normal(loc, 0.1).to_event(1), obs=next_obs)
        >>> dyn = PyroDynamics(model, obs_dim=1, action_dim=1, num_steps=100)
    """

    def __init__(
        self,
        model_fn: ModelFn,
        obs_dim: int,
        action_dim: int,
        inference: str = "svi",
        guide: str = "normal",
        num_steps: int = 2000,
        learning_rate: float = 0.01,
        batch_size: int | None = None,
        num_samples: int = 500,
        warmup_steps: int = 500,
        num_chains: int = 1,
        seed: int = 0,
        optimizer: str = "clipped_adam",
        final_learning_rate: float | None = None,
        max_tree_depth: int = 10,
        full_mass: bool | None = None,
        nuts_init: str = "map",
        map_steps: int = 1000,
    ) -> None:
        if not callable(model_fn):
            raise ConfigError(
                f"model_fn must be a callable Pyro model, got {type(model_fn).__name__}"
            )
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.options: PyroOptions = PyroOptions.of(
            "PyroDynamics",
            pyro_model=_callable_spec(model_fn),
            inference=inference,
            guide=guide,
            num_steps=num_steps,
            learning_rate=learning_rate,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            max_tree_depth=max_tree_depth,
        )
        check_arguments(
            "PyroDynamics",
            [
                ("optimizer", optimizer, one_of(OPTIMIZERS)),
                ("nuts_init", nuts_init, one_of(NUTS_INITS)),
                ("map_steps", map_steps, at_least(0, "an integer")),
            ],
        )
        if batch_size is not None and batch_size < 1:
            raise OptionError("PyroDynamics", "batch_size", batch_size, "an integer >= 1 or None")
        if final_learning_rate is not None:
            if not (0 < final_learning_rate <= learning_rate):
                raise OptionError(
                    "PyroDynamics",
                    "final_learning_rate",
                    final_learning_rate,
                    f"a number in (0, learning_rate={learning_rate}] or None",
                )
            if optimizer != "clipped_adam":
                raise ConfigError(
                    "final_learning_rate (a decaying step size) needs optimizer='clipped_adam'"
                )
        self.final_learning_rate = final_learning_rate
        self.max_tree_depth = max_tree_depth
        self.full_mass = full_mass
        self.nuts_init, self.map_steps = nuts_init, map_steps
        self.model_fn = model_fn
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.inference, self.guide_name, self.optimizer_name = inference, guide, optimizer
        self.num_steps, self.learning_rate, self.batch_size = num_steps, learning_rate, batch_size
        self.num_samples, self.warmup_steps, self.num_chains = (
            num_samples,
            warmup_steps,
            num_chains,
        )
        self.seed = self.predict_seed = seed
        self.num_functions_hint = None
        #: latent site name -> shape of one draw (set by the first fit or load)
        self.latent_shapes: dict[str, tuple[int, ...]] = {}
        self.guide: autoguide.AutoGuide | None = None
        #: NUTS samples, chain-major ``(num_chains * num_samples, *shape)`` per site
        self.draws = PosteriorDraws(num_chains)
        self.fitted = False
        self._proto: tuple[Tensor, Tensor, Tensor] | None = None
        self._store: Any = {"params": {}, "constraints": {}}

    @classmethod
    def from_options(
        cls, options: Options, obs_dim: int, action_dim: int, seed: int = 0
    ) -> PyroDynamics:
        """Build from :class:`PyroOptions`, importing the user's ``pyro_model``.

        Raises:
            ConfigError: the model function cannot be imported.
        """
        from bayes_mbrl.user_code import load_user_function

        assert isinstance(options, PyroOptions)
        options.validate()
        model_fn = load_user_function(options.pyro_model, "model.pyro_model")
        values = {k: v for k, v in vars(options).items() if k != "pyro_model"}
        model = cls(model_fn, obs_dim, action_dim, **values, seed=seed)
        model.options = options
        return model

    @property
    def samples(self) -> dict[str, Tensor]:
        """NUTS samples, chain-major: site name -> ``(num_chains * num_samples, *shape)``."""
        return self.draws.samples

    @property
    def nuts_diagnostics(self) -> list[dict[str, float]]:
        """Per NUTS chain of the last fit (also one whose samples were refused):
        ``step_size``, ``accept_prob`` (mean acceptance probability), ``divergences``,
        ``leapfrog_per_sample``, ``tree_depth`` (mean), ``tree_depth_max`` and the
        chain's wall ``seconds``, its MAP start included (see
        :meth:`~bayes_mbrl.models.posterior_draws.PosteriorDraws.run_chains`); the
        per-sample statistics go to ArviZ's ``sample_stats``. Empty for SVI."""
        return self.draws.run_diagnostics

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """This model's own Pyro param store; the global one is restored after."""
        with pyro.get_param_store().scope(self._store) as state:
            yield
        self._store = state

    def _seed_from(self, generator: torch.Generator | None) -> int:
        if generator is None:
            return self.seed
        # pyro.set_rng_seed also seeds numpy, which takes seeds below 2**32
        return int(torch.randint(2**31 - 1, (1,), generator=generator))

    def _describe_call(self, obs: Tensor, action: Tensor) -> str:
        return (
            f"model(obs {tuple(obs.shape)}, action {tuple(action.shape)}, "
            f"next_obs {tuple(obs.shape)})"
        )

    # --------------------------------------------------------------- validation
    def check_model_fn(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> dict[str, Any]:
        """Trace the user model once and check the contract.

        Runs the model at the prior median of its latents on ``(N, dim)`` inputs, then
        once vectorized over 2 functions, and compares the two.

        Args:
            obs: ``(N, obs_dim)``.
            action: ``(N, action_dim)``.
            next_obs: ``(N, obs_dim)``.

        Returns:
            The latent values at the prior median, ``{name: (*shape)}``.

        Raises:
            ModelError: naming what breaks the contract and how to fix it.
        """
        n_rows = obs.shape[0]
        call = self._describe_call(obs, action)
        fix = "see docs/pyro_models.md for the contract"
        try:
            with (
                torch.random.fork_rng(devices=[]),
                pyro.validation_enabled(False),
                torch.no_grad(),
            ):
                torch.manual_seed(self.seed)
                init = InitMessenger(init_to_median(num_samples=15))
                trace = poutine.trace(init(self.model_fn)).get_trace(obs, action, next_obs)
                trace.compute_log_prob()
                nodes: dict[str, Any] = dict(trace.nodes)
        except ModelError:
            raise
        except Exception as exc:
            if "Shape mismatch inside plate" in str(exc):
                fix = (
                    f"a law inside pyro.plate('{TRANSITIONS_PLATE}', N, dim=-1) needs batch shape "
                    "(N,): compute loc as (..., N, obs_dim) and declare the obs_dim coordinates "
                    "as one event with .to_event(1); " + fix
                )
            raise ModelError(
                f"the Pyro model raised {type(exc).__name__} when traced as {call}: {exc}; "
                f"fix the model ({fix})"
            ) from exc
        params = [name for name, s in nodes.items() if s["type"] == "param"]
        if params:
            raise ModelError(
                f"the Pyro model declares pyro.param sites {params}; make unknown quantities "
                "latent pyro.sample sites with a prior (guide='delta' fits a MAP point estimate)"
            )
        sites = {
            name: s
            for name, s in nodes.items()
            if s["type"] == "sample"
            and not site_is_subsample(s)
            and not s["infer"].get("_deterministic", False)
        }
        if NEXT_OBS not in sites:
            raise ModelError(
                f"the Pyro model has no sample site named '{NEXT_OBS}' (its sites: "
                f"{sorted(sites)}); end it with pyro.sample('{NEXT_OBS}', "
                f"dist.Normal(loc, scale).to_event(1), obs=next_obs) inside "
                f"pyro.plate('{TRANSITIONS_PLATE}', N, dim=-1)"
            )
        site = sites[NEXT_OBS]
        if not site["is_observed"]:
            raise ModelError(
                f"site '{NEXT_OBS}' is not observed; pass obs=next_obs to its pyro.sample"
            )
        others = [k for k, s in sites.items() if s["is_observed"] and k != NEXT_OBS]
        if others:
            raise ModelError(
                f"the Pyro model has observed sites {others} besides '{NEXT_OBS}'; "
                f"exactly one observed site, '{NEXT_OBS}', is supported"
            )
        fn = site["fn"]
        if tuple(fn.event_shape) != (self.obs_dim,):
            raise ModelError(
                f"site '{NEXT_OBS}' has event shape {tuple(fn.event_shape)}, expected "
                f"({self.obs_dim},) (obs_dim); declare the per-dimension law as one event, "
                "e.g. dist.Normal(loc, scale).to_event(1)"
            )
        if tuple(fn.batch_shape) != (n_rows,):
            raise ModelError(
                f"site '{NEXT_OBS}' has batch shape {tuple(fn.batch_shape)} for {n_rows} "
                f"transitions, expected ({n_rows},); compute loc of shape (..., N, obs_dim) from "
                f"obs and action and sample it inside pyro.plate('{TRANSITIONS_PLATE}', N, dim=-1)"
            )
        frames = [f.name for f in site["cond_indep_stack"]]
        if frames != [TRANSITIONS_PLATE]:
            raise ModelError(
                f"site '{NEXT_OBS}' is inside plates {frames}, expected exactly "
                f"['{TRANSITIONS_PLATE}']; use pyro.plate('{TRANSITIONS_PLATE}', N, dim=-1)"
            )
        latents: dict[str, Tensor] = {}
        for name, s in sites.items():
            if s["is_observed"]:
                continue
            if s["cond_indep_stack"] or tuple(s["fn"].batch_shape) != ():
                raise ModelError(
                    f"latent site '{name}' has batch shape {tuple(s['fn'].batch_shape)} "
                    f"(plates {[f.name for f in s['cond_indep_stack']]}); global latents must "
                    "be sampled outside any plate with batch shape (), vectors as "
                    "dist.Normal(0, 1).expand([k]).to_event(1)"
                )
            latents[name] = s["value"].detach()
        if not latents:
            raise ModelError(
                "the Pyro model has no latent sample sites; a dynamics model needs at least one "
                "unknown global quantity with a prior (e.g. a noise scale)"
            )
        latent_values = {
            k: [round(x, 6) for x in v.reshape(-1).tolist()] for k, v in latents.items()
        }
        for name, s in nodes.items():
            if s["type"] == "sample" and "log_prob_sum" in s:
                lp = s["log_prob_sum"]
                if not bool(torch.isfinite(lp)):
                    raise ModelError(
                        f"log-density of site '{name}' is {float(lp)} at the prior median of the "
                        f"latents {latent_values}{_law_problem(s['fn'])}; check that the "
                        "distribution parameters are finite (no NaN loc, positive scale) and "
                        "that latents are used inside their support (e.g. a LogNormal prior "
                        "for a positive mass, not log() of a Normal one)"
                    )
        self._check_vectorized(latents, obs, action, site["fn"].mean.detach())
        return latents

    def _check_vectorized(
        self, latents: dict[str, Tensor], obs: Tensor, action: Tensor, mean: Tensor
    ) -> None:
        """Run the model over 2 functions with the same latents on different row orders."""
        values = {k: v.expand(2, *v.shape) for k, v in latents.items()}
        flip = torch.arange(obs.shape[0] - 1, -1, -1)
        o, a = torch.stack([obs, obs[flip]]), torch.stack([action, action[flip]])
        expected = torch.stack([mean, mean[flip]])
        hint = (
            "the model is not vectorizable: it must also run with extra batch dimensions on "
            "the left (latents (n, 1, *event_shape), obs (n, N, obs_dim)); index with `...` "
            "(obs[..., 0], not obs[:, 0]); a scalar latent is (n, 1) and broadcasts against "
            "(n, N) per-transition values, so write a.unsqueeze(-1) * obs for (n, N, obs_dim) "
            "tensors (or build loc with torch.stack([...], -1)); declare "
            f"pyro.plate('{TRANSITIONS_PLATE}', obs.shape[-2], dim=-1)"
        )
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(self.seed)
                fn = PyroFunctionSample(self.model_fn, values, self.obs_dim)(o, a)
                got = fn.mean
        except Exception as exc:
            raise ModelError(
                f"{hint} (vectorized call raised {type(exc).__name__}: {exc})"
            ) from exc
        if tuple(fn.batch_shape) != (2, obs.shape[0]) or tuple(fn.event_shape) != (self.obs_dim,):
            raise ModelError(
                f"{hint} (vectorized call gave batch {tuple(fn.batch_shape)} / event "
                f"{tuple(fn.event_shape)}, expected (2, {obs.shape[0]}) / ({self.obs_dim},))"
            )
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            err = float((got - expected).abs().max())
            raise ModelError(f"{hint} (vectorized means differ from unvectorized ones by {err:g})")

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit the posterior to all transitions in ``data``.

        SVI continues from the current guide (warm start across MPC episodes) with a
        fresh optimizer; NUTS reruns its chains on all data.

        Args:
            data: all transitions so far.
            generator: seeds Pyro's randomness for this fit (default: ``seed``).
            progress: called as ``progress(step, loss, nan)`` about 100 times per SVI fit
                (loss: negative ELBO per transition), and after every NUTS iteration
                (step counting warm-up and samples over the chains; loss: potential
                energy per transition of the chain's current state).

        Returns:
            The logged losses; ``epochs`` counts SVI steps or NUTS samples.

        Raises:
            DataError: no transitions.
            ModelError: the model breaks the contract (checked before anything changes), or
                SVI diverged (the previous guide parameters are restored).
        """
        start = time.perf_counter()
        if len(data) < 1:
            raise DataError("need at least 1 transition to fit; collect some first")
        if data.obs_dim != self.obs_dim or data.action_dim != self.action_dim:
            raise DataError(
                f"buffer has obs_dim={data.obs_dim}, action_dim={data.action_dim} but the model "
                f"was built for {self.obs_dim}, {self.action_dim}; pass the matching buffer"
            )
        batch = data.all()
        obs, action, next_obs = batch.obs, batch.action, batch.next_obs
        k = min(_CHECK_ROWS, len(data))
        latents = self.check_model_fn(obs[:k], action[:k], next_obs[:k])
        shapes = {name: tuple(v.shape) for name, v in latents.items()}
        if self.latent_shapes and shapes != self.latent_shapes:
            raise ModelError(
                f"the model's latents changed from {self.latent_shapes} to {shapes} since the "
                "last fit; build a new PyroDynamics for a different model"
            )
        seed = self._seed_from(generator)
        if self.inference == "svi":
            report = self._fit_svi(obs, action, next_obs, shapes, seed, progress)
        else:
            report = self._fit_nuts(obs, action, next_obs, shapes, seed, progress)
        self.latent_shapes = shapes
        self._proto = (obs[:k].clone(), action[:k].clone(), next_obs[:k].clone())
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int:
        """SVI: ``num_steps`` (``progress`` is called with the SVI step, about 100 times);
        NUTS: ``(warmup_steps + num_samples) * num_chains``."""
        if self.inference == "nuts":
            return (self.warmup_steps + self.num_samples) * self.num_chains
        return self.num_steps

    def _map_point(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> dict[str, Tensor]:
        """The posterior mode reached from a prior draw (seeded by the caller), by Adam
        on the log joint; its parameters are dropped from the param store after."""
        store = pyro.get_param_store()
        before = set(store.keys())
        guide = autoguide.AutoDelta(self.model_fn, init_loc_fn=init_to_sample)
        decay = (_MAP_FINAL_LR / _MAP_LR) ** (1.0 / self.map_steps)
        optim = ClippedAdam({"lr": _MAP_LR, "lrd": decay, "clip_norm": 10.0})
        svi = SVI(self.model_fn, guide, optim, Trace_ELBO())
        for _ in range(self.map_steps):
            svi.step(obs, action, next_obs)
        with torch.no_grad():
            point = {k: v.detach().clone() for k, v in guide.median().items()}
        for name in set(store.keys()) - before:
            del store[name]
        return point

    def _make_guide(self) -> autoguide.AutoGuide:
        return GUIDES[self.guide_name](self.model_fn)

    def _fit_svi(
        self,
        obs: Tensor,
        action: Tensor,
        next_obs: Tensor,
        shapes: dict[str, tuple[int, ...]],
        seed: int,
        progress: ProgressFn | None,
    ) -> FitReport:
        n_total = obs.shape[0]
        bs = n_total if self.batch_size is None else min(self.batch_size, n_total)
        report = FitReport()
        log_every = max(1, self.num_steps // _LOG_POINTS)
        # the contract was checked before: no per-step validation (it doubles the step time)
        with self._scope(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
            torch.manual_seed(seed)
            pyro.set_rng_seed(seed)
            guide = self.guide if self.guide is not None else self._make_guide()
            model: ModelFn = self.model_fn
            if bs < n_total:
                model = _ScaleSite(NEXT_OBS, n_total / bs)(self.model_fn)
            if self.guide is None:  # set up the guide's parameters on the data
                with torch.no_grad():
                    guide(obs[:bs], action[:bs], next_obs[:bs])
            backup = {k: v.detach().clone() for k, v in guide.state_dict().items()}
            optim_cls = ClippedAdam if self.optimizer_name == "clipped_adam" else Adam
            args: dict[str, Any] = {"lr": self.learning_rate}
            if self.optimizer_name == "clipped_adam":
                args["clip_norm"] = 10.0
                if self.final_learning_rate is not None:  # geometric decay over the steps
                    ratio = self.final_learning_rate / self.learning_rate
                    args["lrd"] = ratio ** (1.0 / self.num_steps)
            svi = SVI(model, guide, optim_cls(args), loss=Trace_ELBO())
            gen = torch.Generator().manual_seed(seed)
            running, count = 0.0, 0
            for step in range(self.num_steps):
                try:
                    if bs < n_total:
                        idx = torch.randint(n_total, (bs,), generator=gen)
                        loss = svi.step(obs[idx], action[idx], next_obs[idx])
                    else:
                        loss = svi.step(obs, action, next_obs)
                except Exception as exc:
                    guide.load_state_dict(backup)
                    raise ModelError(
                        f"SVI step {step} failed: the Pyro model or guide raised "
                        f"{type(exc).__name__}: {exc}; the guide parameters were restored to "
                        "those before this fit. Fix the model (see docs/pyro_models.md)"
                    ) from exc
                if not math.isfinite(loss):
                    guide.load_state_dict(backup)
                    raise ModelError(
                        f"SVI diverged (non-finite ELBO) at step {step}; the guide parameters "
                        "were restored to those before this fit. Lower model.learning_rate, "
                        "tighten the priors, or check the model for NaN-producing operations"
                    )
                running += loss / n_total
                count += 1
                if (step + 1) % log_every == 0 or step == self.num_steps - 1:
                    report.train_losses.append(running / count)
                    if progress is not None:
                        progress(step, running / count, math.nan)
                    running, count = 0.0, 0
            report.epochs = self.num_steps
        self.guide = guide
        return report

    def _fit_nuts(
        self,
        obs: Tensor,
        action: Tensor,
        next_obs: Tensor,
        shapes: dict[str, tuple[int, ...]],
        seed: int,
        progress: ProgressFn | None,
    ) -> FitReport:
        report = FitReport()
        n_total = obs.shape[0]
        latent_dim = sum(math.prod(shape) for shape in shapes.values())
        dense = self.full_mass if self.full_mass is not None else latent_dim <= DENSE_MASS_MAX_DIM

        def chain(c: int) -> NutsChain:
            """Chain ``c``, seeded apart, from its own MAP start (or the prior median)."""
            torch.manual_seed(seed + c)
            pyro.set_rng_seed(seed + c)
            init = init_to_median(num_samples=15)
            if self.nuts_init == "map" and self.map_steps > 0:
                init = init_to_value(values=self._map_point(obs, action, next_obs))
            kernel = NUTS(
                self.model_fn,
                init_strategy=init,
                max_tree_depth=self.max_tree_depth,
                full_mass=dense,
            )
            try:
                run = run_nuts_chain(
                    kernel,
                    num_samples=self.num_samples,
                    warmup_steps=self.warmup_steps,
                    args=(obs, action, next_obs),
                    progress=progress,
                    first_step=c * (self.warmup_steps + self.num_samples),
                    num_transitions=n_total,
                )
            except Exception as exc:
                raise ModelError(
                    f"NUTS chain {c} failed: the Pyro model raised {type(exc).__name__}: "
                    f"{exc}; the previous posterior samples were kept. Fix the model "
                    "(see docs/pyro_models.md)"
                ) from exc
            draws = {k: v for k, v in run.draws.items() if k in shapes}
            report.train_losses.append(self._mean_energy(draws, obs, action, next_obs) / n_total)
            return NutsChain(draws, run.stats)

        with self._scope(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
            self.draws.run_chains(
                self.num_chains,
                chain,
                names=list(shapes),
                fix="Tighten the priors or reparameterize the model",
            )
        report.epochs = self.num_samples * self.num_chains
        return report

    def _mean_energy(
        self, draws: dict[str, Tensor], obs: Tensor, action: Tensor, next_obs: Tensor
    ) -> float:
        """Mean negative log-likelihood of the data over ``draws`` (vectorized)."""
        fs = PyroFunctionSample(self.model_fn, draws, self.obs_dim)
        with torch.no_grad():
            lp = fs(obs.expand(fs.n, -1, -1), action.expand(fs.n, -1, -1)).log_prob(
                next_obs.expand(fs.n, -1, -1)
            )
        return float(-lp.sum(-1).mean())

    # ---------------------------------------------------------------- functions
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("the Pyro dynamics model has not been fitted; call fit(buffer) first")

    def _guide_draws(self, n: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        """``n`` draws of the global latents from the guide, one vectorized guide pass."""
        assert self.guide is not None and self._proto is not None  # set by fit / load
        seed = self._seed_from(generator)
        with (
            self._scope(),
            torch.random.fork_rng(devices=[]),
            torch.no_grad(),
            pyro.validation_enabled(False),
        ):
            torch.manual_seed(seed)
            with pyro.plate(FUNCTIONS_PLATE, n, dim=_FUNCTION_DIM):
                trace = poutine.trace(self.guide).get_trace(*self._proto)
        nodes: dict[str, Any] = dict(trace.nodes)
        return {
            name: nodes[name]["value"].detach().reshape(n, *shape)
            for name, shape in self.latent_shapes.items()
        }

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """Draw ``n`` functions: guide draws (SVI) or stored samples (NUTS, without
        replacement while ``n`` does not exceed the number stored).

        Args:
            n: number of functions.
            generator: source of randomness (the same generator state gives the same functions).
        """
        self._require_fitted()
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        if self.inference == "svi":
            return PyroFunctionSample(
                self.model_fn,
                self._guide_draws(n, generator),
                self.obs_dim,
                action_dim=self.action_dim,
            )
        return PyroFunctionSample(
            self.model_fn,
            self.draws.take(self.draws.draw_index(n, generator)),
            self.obs_dim,
            action_dim=self.action_dim,
        )

    def posterior_functions(
        self, num_draws: int | None = None, generator: torch.Generator | None = None
    ) -> FunctionSample:
        """NUTS: every stored sample, chain-major with ``num_chains`` set (``num_draws``
        evenly thinned per chain when it is a multiple of the chains); SVI: guide draws."""
        self._require_fitted()
        if self.inference == "svi":
            return self.sample_functions(num_draws or DEFAULT_ANALYSIS_DRAWS, generator)
        draws, chains = self.draws, self.draws.num_chains
        if num_draws is None or num_draws >= draws.total:
            index = torch.arange(draws.total)
        elif num_draws % chains == 0:
            index = draws.thinned_index(num_draws)
        else:
            return self.sample_functions(num_draws, generator)
        return PyroFunctionSample(
            self.model_fn,
            draws.take(index),
            self.obs_dim,
            chains,
            action_dim=self.action_dim,
            sample_stats=draws.take_stats(index),
        )

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Guide parameters (SVI) or samples (NUTS), latent shapes and a few transitions
        to rebuild the guide; tensors and plain containers only."""
        state: dict[str, Any] = {
            "inference": self.inference,
            "guide": self.guide_name,
            "fitted": self.fitted,
            "latent_shapes": {k: list(v) for k, v in self.latent_shapes.items()},
            "num_chains": self.num_chains,
        }
        if self._proto is not None:
            state["proto"] = [t.clone() for t in self._proto]
        if self.guide is not None:
            state["guide_params"] = {
                k: v.detach().clone() for k, v in self.guide.state_dict().items()
            }
        if self.draws:
            draws = self.draws.state_dict()
            state["samples"], state["sample_stats"] = draws["samples"], draws["stats"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a model built with the same arguments.

        Raises:
            ModelError: the state was saved with another inference, guide or model, or
                entries are missing (the model is left unchanged).
        """
        if not isinstance(state, dict):
            raise ModelError(
                "a Pyro dynamics state must be a dict from state_dict(), got "
                f"{type(state).__name__}"
            )
        for key in ("inference", "guide"):
            mine = self.inference if key == "inference" else self.guide_name
            if state.get(key) != mine:
                raise ModelError(
                    f"saved Pyro dynamics used {key}={state.get(key)!r}, this model {mine!r}; "
                    "load it into a model built with the same arguments"
                )
        if not state.get("fitted", False):
            self.fitted = False
            return
        needed = [
            "latent_shapes",
            "proto",
            "guide_params" if self.inference == "svi" else "samples",
        ]
        for key in needed:
            if key not in state:
                raise ModelError(
                    f"saved Pyro dynamics state is missing {key!r}; load a state_dict() of a "
                    "model built with the same arguments (the model was left unchanged)"
                )
        try:
            shapes = {k: tuple(int(d) for d in v) for k, v in state["latent_shapes"].items()}
            proto = tuple(state["proto"])
            if len(proto) != 3 or not all(isinstance(t, Tensor) for t in proto):
                raise ValueError("'proto' must hold the (obs, action, next_obs) tensors")
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelError(
                f"saved Pyro dynamics state is malformed ({exc}); load a state_dict() of a "
                "model built with the same arguments (the model was left unchanged)"
            ) from exc
        draws = PosteriorDraws(self.num_chains)
        if self.inference == "nuts":
            try:
                num_chains = int(state.get("num_chains", self.num_chains))
                draws.load_state_dict(
                    {
                        "samples": state["samples"],
                        "stats": state.get("sample_stats", {}),  # absent in older states
                        "num_chains": num_chains,
                    }
                )
            except (TypeError, ValueError) as exc:
                raise ModelError(
                    f"saved Pyro dynamics samples are malformed ({exc}); load a state_dict() of "
                    "a model built with the same arguments (the model was left unchanged)"
                ) from exc
        guide: autoguide.AutoGuide | None = None
        if self.inference == "svi":
            try:
                with self._scope(), torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(self.seed)
                    guide = self._make_guide()
                    guide(*proto)
                    guide.load_state_dict(state["guide_params"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise ModelError(
                    f"saved guide does not match this model ({exc}); load it into a model "
                    "built with the same model function and guide"
                ) from exc
        self.latent_shapes = shapes
        self._proto = (proto[0], proto[1], proto[2])
        self.guide = guide
        self.draws = draws
        self.num_chains = int(state.get("num_chains", self.num_chains))
        self.fitted = True
