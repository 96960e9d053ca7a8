"""Bayesian neural network dynamics model (Pyro; mean-field SVI, or NUTS for small nets).

The model is a Bayesian MLP ``(s, a) -> N(mu, diag(sigma^2))`` over the normalized
state delta ``s' - s`` (normalization as in the ensemble), written as a Pyro program
with one ``pyro.sample`` site per weight matrix and bias vector:

* priors: every weight and bias ``~ N(0, prior_scale^2)`` independently (as in Blundell
  et al.). A width-scaled prior ``N(0, prior_scale^2 / fan_in)`` was tried first and
  dropped: with a few hundred to a few thousand transitions its KL term on the means acts
  as a very strong weight decay on a 200-wide net and the fit underfits Pendulum-v1
  (one-step MSE 4e-3 against 2e-5 with the unit prior, 1000 transitions);
* noise, ``noise="heteroscedastic"``: the last layer also outputs a log-variance,
  soft-bounded into ``[min_logvar, max_logvar]`` as in the ensemble; the two bounds are
  point estimates (maximum-ELBO), as are the ensemble's;
* noise, ``noise="homoscedastic"``: one log-variance per output dimension, a latent with
  prior ``N(-2, 3^2)`` (normalized space) and its own Gaussian variational factor, so
  the noise level is inferred, not point-estimated.

Inference, ``inference="svi"`` (the default): Bayes by Backprop (Blundell, Cornebise,
Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks", ICML 2015): a fully
factorized Gaussian guide ``q(w) = prod_j N(m_j, softplus(rho_j)^2)`` over every weight,
fitted by maximizing the ELBO with Adam on minibatches. The likelihood of a minibatch
is scaled by ``N / batch`` (``pyro.plate("transitions", N, subsample=rows)``), so the
KL term counts once per data set; the KL is analytic (:class:`~pyro.infer.TraceMeanField_ELBO`,
a :class:`~pyro.infer.Trace_ELBO` with closed-form Gaussian KLs). Training steps compute
that same number without Pyro's tracing (:meth:`BayesianNeuralNet.negative_elbo`, tested
equal to ``TraceMeanField_ELBO().differentiable_loss`` on the Pyro program), which halves
the cost of a step. The guide starts at the usual deterministic initialization of the
means with scales ``1e-3 * prior_scale``, so training starts like a deterministic net.
Early stopping on the held-out predictive NLL (16 weight draws).

Known limitation (measured in ``experiments/synthetic_uncertainty.py``): like other
mean-field posteriors, it does not raise its epistemic variance in a gap *between* two
data clusters (Foong et al. 2019, "'In-Between' Uncertainty in Bayesian Neural
Networks"); it does raise it away from the data.

Inference, ``inference="nuts"``: ``pyro.infer.MCMC`` with NUTS on the full data (small
nets only); the samples are kept with their chain structure and
:meth:`BayesianNeuralNet.posterior_functions` returns them chain-major. The
heteroscedastic bounds are then fixed at the ensemble's initial values. What makes it
practical:

* the potential is plain torch (:meth:`BayesianNeuralNet.potential_energy`, tested equal
  to minus the log joint of the Pyro program) over one flat parameter vector, so a
  leapfrog step is one forward and backward pass, with no Pyro tracing (``jit_compile``
  does not apply to a ``potential_fn``);
* ``max_tree_depth`` (default 6: at most 63 leapfrog steps per iteration, against 1023
  with Pyro's default 10; the tree depth saturates on BNN posteriors);
* each chain starts at a MAP fit (``nuts_init="map"``, ``map_steps`` full-batch Adam
  steps from a fresh random initialization), not at a random point far in the tails.

Measured on ``experiments/synthetic_uncertainty.py`` (2000 transitions, one hidden layer
of 16 tanh units, 300 warm-up + 300 samples, one chain, 2 shared CPU cores): about
3 minutes, step size about 0.01, acceptance about 0.9, tree depth saturated (63 steps),
and epistemic variance in the gap several times that inside the data, which mean-field
SVI does not give. A step costs a few milliseconds of mostly fixed overhead, so the data
size matters less than the number of leapfrog steps.

No parameter lives in Pyro's global param store: the variational parameters are
module-local ``torch.nn.Parameter`` objects read by the guide, and the loss is
``TraceMeanField_ELBO().differentiable_loss`` optimized with a module-local Adam.

Planning: :meth:`BayesianNeuralNet.sample_functions` draws ``n`` weight sets in one
vectorized draw, ``(n, fan_in, fan_out)`` per layer, and evaluates them with the
ensemble's :class:`~bayes_mbrl.models.ensemble.EnsembleFunctionSample` (normalization
folded into the weights, one batched matmul per layer), so planning costs the same as
with an ensemble of ``n`` members.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as pdist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    ProgressFn,
    check_arguments,
)
from bayes_mbrl.models.ensemble import (
    ACTIVATIONS,
    LOG_2PI,
    EnsembleFunctionSample,
    _soft_bound_logvar,
    fit_delta_normalizers,
    fold_normalizers,
)
from bayes_mbrl.models.posterior_draws import NutsChain, PosteriorDraws, run_nuts_chain
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import (
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)

__all__ = ["BNNFunctionSample", "BNNOptions", "BayesianNeuralNet"]

NOISE_MODES = ("heteroscedastic", "homoscedastic")
INFERENCE_MODES = ("svi", "nuts")
NUTS_INITS = ("map", "prior")
#: Adam step size of the MAP fit that starts each NUTS chain (``nuts_init="map"``)
_MAP_LEARNING_RATE = 1e-2
#: prior of the homoscedastic log noise variance (normalized delta space)
NOISE_PRIOR_LOC, NOISE_PRIOR_SCALE = -2.0, 3.0
#: initial guide scale as a fraction of the layer's prior scale
INIT_SCALE_FRACTION = 1e-3
#: fixed log-variance bounds where they are not learned (NUTS; homoscedastic)
_FIXED_MIN_LOGVAR, _FIXED_MAX_LOGVAR = -10.0, 0.5
_HOMO_MIN_LOGVAR, _HOMO_MAX_LOGVAR = -20.0, 5.0
#: early stopping does not stop a fit before this many gradient steps
MIN_STEPS_BEFORE_STOPPING = 1000
#: weight draws for the held-out predictive NLL used for early stopping
_VAL_DRAWS = 16


def _inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def _draw_with_kl(
    loc: Tensor, rho: Tensor, prior_loc: float, prior_scale: float
) -> tuple[Tensor, Tensor]:
    """A reparameterized draw from ``N(loc, softplus(rho)^2)`` and its KL to the prior.

    The prior is ``N(prior_loc, prior_scale^2)`` elementwise.

    Draws exactly as ``torch.distributions.Normal(loc, scale).rsample()`` does.

    Returns:
        ``(value, kl)``: value shaped like ``loc``, scalar KL summed over elements.
    """
    scale = F.softplus(rho)
    eps = torch.empty(loc.shape, dtype=loc.dtype).normal_()
    var_ratio = (scale / prior_scale).pow(2)
    t1 = ((loc - prior_loc) / prior_scale).pow(2)
    kl = 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    return loc + eps * scale, kl.sum()


class MeanFieldGuideParams(nn.Module):
    """Locations and softplus-scales of the fully factorized Gaussian guide.

    Args:
        sizes: layer sizes ``[in_dim, *hidden, out_width]``.
        prior_scale: the weight prior's scale multiplier (sets the initial guide scales).
        noise_dim: size of the homoscedastic log-variance latent (0: none).
        generator: source of randomness for the initial means.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        prior_scale: float,
        noise_dim: int,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        self.w_loc, self.w_rho = nn.ParameterList(), nn.ParameterList()
        self.b_loc, self.b_rho = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            # nn.Linear's default initialization of the means
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
            w_rho = _inv_softplus(INIT_SCALE_FRACTION * prior_scale)
            b_rho = _inv_softplus(INIT_SCALE_FRACTION * prior_scale)
            self.w_loc.append(nn.Parameter(w))
            self.w_rho.append(nn.Parameter(torch.full((fan_in, fan_out), w_rho)))
            self.b_loc.append(nn.Parameter(b))
            self.b_rho.append(nn.Parameter(torch.full((fan_out,), b_rho)))
        self.noise_loc = nn.Parameter(torch.full((noise_dim,), NOISE_PRIOR_LOC))
        self.noise_rho = nn.Parameter(torch.full((noise_dim,), _inv_softplus(0.1)))


class BNNFunctionSample(EnsembleFunctionSample):
    """``n`` BNN weight draws, evaluated like ensemble members (folded, one matmul per layer).

    :meth:`latents` reports the noise: the per-dimension noise standard deviation of
    each draw (homoscedastic), or each draw's noise standard deviation at the centre
    of the training inputs (heteroscedastic), ``(n, obs_dim)`` in observation units.
    :meth:`sample_stats` reports the NUTS statistics of each stored sample.
    """

    def __init__(
        self,
        *args: Any,
        input_mean: Tensor,
        num_chains: int = 1,
        sample_stats: dict[str, Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.input_mean = input_mean
        self.num_chains = num_chains
        self._sample_stats = dict(sample_stats or {})

    def sample_stats(self) -> dict[str, Tensor]:
        """NUTS statistics of each draw, ``(n,)`` each (empty for guide draws)."""
        return dict(self._sample_stats)

    def latents(self) -> dict[str, Tensor]:
        """``{"noise_std": (n, obs_dim)}`` (see the class docstring)."""
        x = self.input_mean.expand(self.n, 1, -1)
        obs, action = x[..., : self.obs_dim], x[..., self.obs_dim :]
        with torch.no_grad():
            log_std = self._head(obs.contiguous(), action.contiguous())[1]
        return {"noise_std": log_std.exp().squeeze(1)}


_INT1 = at_least(1, "an integer")


@dataclass
class BNNOptions(Options):
    """Options of :class:`BayesianNeuralNet` (``model.kind = "bnn"``)."""

    hidden_sizes: list[int] = option([200, 200, 200], positive_list, "hidden layer widths")
    activation: str = option("silu", one_of(list(ACTIVATIONS)), "hidden-layer activation")
    prior_scale: float = option(1.0, greater_than(0), "prior std of every weight and bias")
    noise: str = option(
        "heteroscedastic", one_of(NOISE_MODES), "a log-variance head, or one noise latent"
    )
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size (SVI)")
    batch_size: int = option(64, _INT1, "minibatch size (SVI)")
    max_epochs: int = option(100, _INT1, "upper bound on epochs per fit (SVI)")
    patience: int = option(5, _INT1, "epochs without a held-out improvement before stopping (SVI)")
    val_fraction: float = option(
        0.1, interval(0.0, 0.5, hi_open=True), "fraction of the data held out (SVI)"
    )
    inference: str = option("svi", one_of(INFERENCE_MODES), "mean-field SVI or NUTS")
    num_samples: int = option(200, _INT1, "NUTS samples kept per chain")
    warmup_steps: int = option(200, at_least(0, "an integer"), "NUTS warm-up steps per chain")
    num_chains: int = option(1, _INT1, "NUTS chains, run one after the other")
    max_tree_depth: int = option(
        6, interval(1, 15), "NUTS: at most 2**depth - 1 leapfrog steps per iteration"
    )


@MODELS.register("bnn", options=BNNOptions)
class BayesianNeuralNet(DynamicsModel):
    """Bayesian MLP over normalized state deltas, mean-field SVI (or NUTS).

    See the module docstring for the priors, the noise models and the inference.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        hidden_sizes: hidden layer widths.
        activation: one of ``silu``, ``relu``, ``tanh``, ``elu``.
        prior_scale: prior std of every weight and bias.
        noise: ``"heteroscedastic"`` (log-variance head) or ``"homoscedastic"``
            (a per-dimension noise latent).
        learning_rate: Adam step size (SVI).
        batch_size: minibatch size (SVI).
        max_epochs: upper bound on epochs per :meth:`fit` (SVI).
        patience: epochs without a held-out NLL improvement of more than 1% of the
            progress so far before stopping (never before
            :data:`MIN_STEPS_BEFORE_STOPPING` gradient steps; the guide of the best
            held-out epoch is kept; see
            :func:`~bayes_mbrl.models.training.train_early_stopped`).
        val_fraction: fraction of the data held out for early stopping (SVI).
        inference: ``"svi"`` or ``"nuts"``.
        num_samples: NUTS samples kept per chain.
        warmup_steps: NUTS warm-up steps per chain.
        num_chains: NUTS chains (run one after the other).
        seed: seeds the initialization.
        max_tree_depth: NUTS's maximum tree depth: at most ``2**max_tree_depth - 1``
            leapfrog steps per iteration (Pyro's default, 10, allows 1023).
        target_accept_prob: NUTS's step-size adaptation target.
        dense_mass: adapt a dense (full) mass matrix instead of a diagonal one (NUTS).
        nuts_init: where each NUTS chain starts: ``"map"`` (the default: a maximum a
            posteriori fit by ``map_steps`` full-batch Adam steps from a fresh random
            initialization per chain) or ``"prior"`` (a draw from the weight prior).
        map_steps: full-batch Adam steps of the ``"map"`` initialization.

    Raises:
        OptionError: an argument is out of its bounds (see :class:`BNNOptions`).

    Examples:
        >>> model = BayesianNeuralNet(obs_dim=3, action_dim=1, hidden_sizes=[8])
        >>> model.num_functions_hint is None
        True
    """

    compute_dtypes = (torch.float32, torch.bfloat16)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (200, 200, 200),
        activation: str = "silu",
        prior_scale: float = 1.0,
        noise: str = "heteroscedastic",
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.1,
        inference: str = "svi",
        num_samples: int = 200,
        warmup_steps: int = 200,
        num_chains: int = 1,
        seed: int = 0,
        max_tree_depth: int = 6,
        target_accept_prob: float = 0.8,
        dense_mass: bool = False,
        nuts_init: str = "map",
        map_steps: int = 2000,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.options: BNNOptions = BNNOptions.of(
            "BayesianNeuralNet",
            hidden_sizes=hidden_sizes,
            activation=activation,
            prior_scale=prior_scale,
            noise=noise,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_epochs=max_epochs,
            patience=patience,
            val_fraction=val_fraction,
            inference=inference,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            max_tree_depth=max_tree_depth,
        )
        check_arguments(
            "BayesianNeuralNet",
            [
                (
                    "target_accept_prob",
                    target_accept_prob,
                    interval(0, 1, lo_open=True, hi_open=True),
                ),
                ("nuts_init", nuts_init, one_of(NUTS_INITS)),
                ("map_steps", map_steps, at_least(0, "an integer")),
            ],
        )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.num_functions_hint = None
        self.activation, self.noise, self.inference = activation, noise, inference
        self.prior_scale = float(prior_scale)
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction = val_fraction
        self.num_samples, self.warmup_steps, self.num_chains = num_samples, warmup_steps, num_chains
        self.seed = self.predict_seed = seed
        self.max_tree_depth, self.target_accept_prob = max_tree_depth, float(target_accept_prob)
        self.dense_mass, self.nuts_init, self.map_steps = bool(dense_mass), nuts_init, map_steps
        self.heteroscedastic = noise == "heteroscedastic"
        in_dim = obs_dim + action_dim
        out_width = 2 * obs_dim if self.heteroscedastic else obs_dim
        self.sizes = [in_dim, *hidden_sizes, out_width]
        self.num_layers = len(self.sizes) - 1
        self.guide_params = MeanFieldGuideParams(
            self.sizes,
            self.prior_scale,
            0 if self.heteroscedastic else obs_dim,
            torch.Generator().manual_seed(seed),
        )
        if self.heteroscedastic and inference == "svi":
            lo, hi = -10.0, 0.5
        elif self.heteroscedastic:
            lo, hi = _FIXED_MIN_LOGVAR, _FIXED_MAX_LOGVAR
        else:
            lo, hi = _HOMO_MIN_LOGVAR, _HOMO_MAX_LOGVAR
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), lo))
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), hi))
        self.learn_bounds = self.heteroscedastic and inference == "svi"
        self.input_normalizer = Normalizer(in_dim)
        self.delta_normalizer = Normalizer(obs_dim)
        params = list(self.guide_params.parameters())
        if self.learn_bounds:
            params += [self.min_logvar, self.max_logvar]
        self.optimizer = torch.optim.Adam(params, lr=learning_rate, foreach=True)
        #: NUTS samples, chain-major: site name -> (num_chains * num_samples, *shape),
        #: with each sample's sampler statistics (``draws.stats``)
        self.draws = PosteriorDraws(num_chains)
        self.fitted = False

    @property
    def mcmc_samples(self) -> dict[str, Tensor]:
        """NUTS samples, chain-major: site name -> ``(num_chains * num_samples, *shape)``."""
        return self.draws.samples

    @property
    def nuts_diagnostics(self) -> list[dict[str, float]]:
        """Per NUTS chain of the last fit (also one whose samples were refused):
        ``step_size``, ``accept_prob`` (mean acceptance probability), ``divergences``,
        ``leapfrog_per_sample``, ``tree_depth`` (mean), ``tree_depth_max`` and the
        chain's wall ``seconds``, its MAP start included (see
        :meth:`~bayes_mbrl.models.posterior_draws.PosteriorDraws.run_chains`); the
        per-sample statistics go to ArviZ's ``sample_stats``."""
        return self.draws.run_diagnostics

    # ------------------------------------------------------------- Pyro program
    def _prior_scales(self) -> list[tuple[float, float]]:
        return [(self.prior_scale, self.prior_scale)] * self.num_layers

    def model(self, x: Tensor, y: Tensor | None, rows: Tensor, num_total: int) -> Tensor:
        """The Pyro model: weight priors, noise and the likelihood of a minibatch.

        Args:
            x: ``(B, in_dim)`` normalized inputs.
            y: ``(B, obs_dim)`` normalized delta targets, or None to sample them.
            rows: ``(B,)`` indices of the minibatch in the data set (the plate's subsample).
            num_total: data set size ``N``; the likelihood is scaled by ``N / B``.

        Returns:
            ``(B, obs_dim)`` the observed (or sampled) targets.
        """
        h = x
        for i, ((fan_in, fan_out), (w_scale, b_scale)) in enumerate(
            zip(itertools.pairwise(self.sizes), self._prior_scales(), strict=True)
        ):
            w = pyro.sample(
                f"w{i}",
                pdist.Normal(x.new_zeros(()), w_scale).expand([fan_in, fan_out]).to_event(2),
            )
            b = pyro.sample(
                f"b{i}", pdist.Normal(x.new_zeros(()), b_scale).expand([fan_out]).to_event(1)
            )
            h = h @ w + b
            if i < self.num_layers - 1:
                h = ACTIVATIONS[self.activation](h)
        d = self.obs_dim
        if self.heteroscedastic:
            mean, raw_logvar = h[:, :d], h[:, d:]
        else:
            mean = h
            raw_logvar = pyro.sample(
                "log_noise_var",
                pdist.Normal(x.new_full((), NOISE_PRIOR_LOC), NOISE_PRIOR_SCALE)
                .expand([d])
                .to_event(1),
            ).expand_as(mean)
        logvar = _soft_bound_logvar(raw_logvar, self.min_logvar, self.max_logvar)
        with pyro.plate("transitions", num_total, subsample=rows):
            return pyro.sample("delta", pdist.Normal(mean, (0.5 * logvar).exp()).to_event(1), obs=y)

    def guide(self, x: Tensor, y: Tensor | None, rows: Tensor, num_total: int) -> None:
        """The mean-field Gaussian guide over every weight (and the homoscedastic noise)."""
        g = self.guide_params
        for i in range(self.num_layers):
            pyro.sample(f"w{i}", pdist.Normal(g.w_loc[i], F.softplus(g.w_rho[i])).to_event(2))
            pyro.sample(f"b{i}", pdist.Normal(g.b_loc[i], F.softplus(g.b_rho[i])).to_event(1))
        if not self.heteroscedastic:
            pyro.sample(
                "log_noise_var", pdist.Normal(g.noise_loc, F.softplus(g.noise_rho)).to_event(1)
            )

    def negative_elbo(self, x: Tensor, y: Tensor, num_total: int) -> Tensor:
        """``-ELBO`` of a minibatch, the same number as Pyro's ``TraceMeanField_ELBO``.

        Equal to ``TraceMeanField_ELBO().differentiable_loss(self.model, self.guide, ...)``
        (same draws from the global RNG, in the guide's order: ``w0, b0, w1, ...``), but
        computed without Pyro's tracing, which halves the cost of a training step.

        Args:
            x: ``(B, in_dim)`` normalized inputs.
            y: ``(B, obs_dim)`` normalized delta targets.
            num_total: data set size ``N``; the likelihood is scaled by ``N / B``.

        Returns:
            Scalar: ``(N / B) * sum_b -log p(y_b | x_b, w) + KL(q || prior)``, ``w ~ q``.
        """
        g = self.guide_params
        h, kl = x, x.new_zeros(())
        for i, (w_scale, b_scale) in enumerate(self._prior_scales()):
            w, kl_w = _draw_with_kl(g.w_loc[i], g.w_rho[i], 0.0, w_scale)
            b, kl_b = _draw_with_kl(g.b_loc[i], g.b_rho[i], 0.0, b_scale)
            kl = kl + kl_w + kl_b
            h = self._layer(i, h, w, b)
        z = None
        if not self.heteroscedastic:
            z, kl_z = _draw_with_kl(g.noise_loc, g.noise_rho, NOISE_PRIOR_LOC, NOISE_PRIOR_SCALE)
            kl = kl + kl_z
        return self._nll_sum(h, y, z) * (num_total / x.shape[0]) + kl

    def _layer(self, i: int, h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """Layer ``i`` of the net on ``(B, fan_in)`` inputs (activation except after the last)."""
        h = torch.addmm(b, h, w)
        return ACTIVATIONS[self.activation](h) if i < self.num_layers - 1 else h

    def _nll_sum(self, out: Tensor, y: Tensor, log_noise_var: Tensor | None) -> Tensor:
        """``sum -log N(y | mean, var)`` for the net's ``(B, out)`` output: the mean and, if
        heteroscedastic, the raw log-variance head; else the latent ``(obs_dim,)`` noise."""
        d = self.obs_dim
        if self.heteroscedastic:
            mean, raw_logvar = out[:, :d], out[:, d:]
        else:
            assert log_noise_var is not None
            mean, raw_logvar = out, log_noise_var.expand_as(out)
        logvar = _soft_bound_logvar(raw_logvar, self.min_logvar, self.max_logvar)
        return (0.5 * ((y - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)).sum()

    # ------------------------------------------------------------ weight draws
    def _draw_normalized(
        self, n: int, generator: torch.Generator | None
    ) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor | None]:
        """``n`` weight sets in normalized space, one vectorized draw.

        Returns:
            ``(weights, biases, index, log_noise_var)``: weights ``(n, in, out)`` and
            biases ``(n, 1, out)`` per layer, ``(n,)`` the draw index (NUTS sample index,
            or ``arange(n)``), and ``(n, obs_dim)`` homoscedastic log-variances or None.
        """
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        if self.inference == "nuts":
            return self._gather_samples(self.draws.draw_index(n, generator))
        g = self.guide_params
        ws, bs = [], []
        with torch.no_grad():
            for i in range(self.num_layers):
                loc, scale = g.w_loc[i], F.softplus(g.w_rho[i])
                eps = torch.randn((n, *loc.shape), generator=generator)
                ws.append(loc + scale * eps)
                loc, scale = g.b_loc[i], F.softplus(g.b_rho[i])
                eps = torch.randn((n, 1, *loc.shape), generator=generator)
                bs.append(loc + scale * eps)
            noise = None
            if not self.heteroscedastic:
                eps = torch.randn((n, self.obs_dim), generator=generator)
                noise = g.noise_loc + F.softplus(g.noise_rho) * eps
        return ws, bs, torch.arange(n), noise

    def _gather_samples(
        self, idx: Tensor
    ) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor | None]:
        s = self.draws.samples
        ws = [s[f"w{i}"][idx] for i in range(self.num_layers)]
        bs = [s[f"b{i}"][idx].unsqueeze(1) for i in range(self.num_layers)]
        noise = None if self.heteroscedastic else s["log_noise_var"][idx]
        return ws, bs, idx, noise

    def _full_head(
        self, ws: list[Tensor], bs: list[Tensor], noise: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Make the last layer output ``[mean, raw log-variance]`` (``2 * obs_dim`` wide)."""
        if noise is None:
            return ws, bs
        n, hidden, d = ws[-1].shape
        ws = [*ws[:-1], torch.cat([ws[-1], ws[-1].new_zeros(n, hidden, d)], -1)]
        bs = [*bs[:-1], torch.cat([bs[-1], noise.unsqueeze(1)], -1)]
        return ws, bs

    def _normalized_forward(
        self, ws: list[Tensor], bs: list[Tensor], x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(n, B, in_dim)`` normalized inputs -> ``(mean, logvar)``, each ``(n, B, D)``."""
        act = ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < self.num_layers - 1:
                x = act(x)
        mean, logvar = x.split(self.obs_dim, dim=-1)
        return mean, _soft_bound_logvar(logvar, self.min_logvar, self.max_logvar)

    def _function_sample(
        self,
        ws: list[Tensor],
        bs: list[Tensor],
        index: Tensor,
        noise: Tensor | None,
        num_chains: int = 1,
        sample_stats: dict[str, Tensor] | None = None,
    ) -> BNNFunctionSample:
        ws, bs = self._full_head(ws, bs, noise)
        ws, bs = fold_normalizers(ws, bs, self.input_normalizer, self.delta_normalizer)
        d = self.obs_dim
        return BNNFunctionSample(
            ws,
            bs,
            self.min_logvar.detach().view(1, 1, d).clone(),
            self.max_logvar.detach().view(1, 1, d).clone(),
            self.delta_normalizer.std.clone(),
            self.obs_dim,
            self.activation,
            index,
            input_mean=self.input_normalizer.mean.clone(),
            num_chains=num_chains,
            sample_stats=sample_stats,
        )

    # ------------------------------------------------------------------ fitting
    def _nuts_seed(self, generator: torch.Generator | None) -> int:
        return int(torch.randint(2**62, (1,), generator=generator))

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit the posterior to all transitions in ``data``.

        SVI continues from the current guide (warm start across MPC episodes) and keeps
        the guide of the best held-out epoch; NUTS reruns its chains from scratch.

        Args:
            data: all transitions so far.
            generator: source of all randomness (split, minibatches, ELBO draws, NUTS).
            progress: SVI: called as ``progress(epoch, train_loss, val_loss)`` after each
                epoch; NUTS: after each iteration as ``progress(step, energy, nan)`` (step
                counting warm-up and samples over the chains, energy the potential
                energy per transition of the chain's current state).

        Returns:
            SVI: train losses are the negative ELBO per transition, validation losses
            the held-out predictive NLL per transition (normalized deltas). NUTS: no losses.

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: the ELBO became non-finite (the last good guide is restored), or
                NUTS produced non-finite samples (the previous samples are kept).
        """
        start = time.perf_counter()
        if len(data) < 2:
            raise DataError(f"need at least 2 transitions to fit, got {len(data)}; collect more")
        x_all, y_all = fit_delta_normalizers(data, self.input_normalizer, self.delta_normalizer)
        # all randomness of Pyro's samplers comes from this seed, drawn from `generator`;
        # the global torch RNG is restored afterwards
        seed = self._nuts_seed(generator)
        with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
            torch.manual_seed(seed)
            if self.inference == "nuts":
                report = self._fit_nuts(x_all, y_all, progress)
            else:
                report = self._fit_svi(data, x_all, y_all, generator, progress)
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int:
        """SVI: ``max_epochs``; NUTS: ``(warmup_steps + num_samples) * num_chains``."""
        if self.inference == "nuts":
            return (self.warmup_steps + self.num_samples) * self.num_chains
        return self.max_epochs

    def _val_nll(self, x: Tensor, y: Tensor, seed: int) -> float:
        """Held-out predictive NLL per transition, ``-log mean_k p(y | x, w_k)``."""
        with torch.no_grad():
            ws, bs, _, noise = self._draw_normalized(
                _VAL_DRAWS, torch.Generator().manual_seed(seed)
            )
            ws, bs = self._full_head(ws, bs, noise)
            mean, logvar = self._normalized_forward(ws, bs, x.expand(_VAL_DRAWS, -1, -1))
            ll = -0.5 * ((y - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
            ll = ll.sum(-1)  # (K, B)
            pred = torch.logsumexp(ll, 0) - math.log(_VAL_DRAWS)
            return float(-pred.mean())

    def _fit_svi(
        self,
        data: ReplayBuffer,
        x_all: Tensor,
        y_all: Tensor,
        generator: torch.Generator | None,
        progress: ProgressFn | None,
    ) -> FitReport:
        train_idx, val_idx = data.split(self.val_fraction, generator)
        n_train = len(train_idx)
        bs = min(self.batch_size, n_train)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        val_seed = self._nuts_seed(generator)
        x_val, y_val = x_all[val_idx], y_all[val_idx]

        def batches(epoch: int) -> Iterator[Tensor]:
            order = train_idx[torch.randperm(n_train, generator=generator)]
            return (order[lo : lo + bs] for lo in range(0, n_train - bs + 1, bs))

        def step_loss(rows: Tensor) -> StepLoss:
            loss = self.negative_elbo(x_all[rows], y_all[rows], n_train) / n_train
            if self.learn_bounds:
                loss = loss + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
            return StepLoss(loss, loss.detach(), bs)

        def val_nll() -> Tensor:
            return torch.tensor([self._val_nll(x_val, y_val, val_seed)], dtype=torch.float64)

        return train_early_stopped(
            params,
            self.optimizer,
            batches,
            step_loss,
            max_epochs=self.max_epochs,
            validate=val_nll if len(val_idx) > 0 else None,
            patience=self.patience,
            min_steps=MIN_STEPS_BEFORE_STOPPING,
            progress=progress,
            what="BNN fit",
            loss_name="ELBO",
            fix="Lower model.learning_rate or model.prior_scale, or check the data for "
            "extreme values",
        )

    def potential_energy(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """``-log p(w, y | x)`` of the full data, the potential that NUTS samples.

        The same number as ``-poutine.trace(self.model).get_trace(x, y, arange(N), N)
        .log_prob_sum()`` (tested), written as plain torch so that a leapfrog step costs
        one forward and backward pass, without Pyro's tracing.

        Args:
            params: site name -> value: ``w{i}`` ``(fan_in, fan_out)``, ``b{i}``
                ``(fan_out,)``, and ``log_noise_var`` ``(obs_dim,)`` if homoscedastic.
            x: ``(N, in_dim)`` normalized inputs.
            y: ``(N, obs_dim)`` normalized delta targets.

        Returns:
            Scalar potential energy.
        """
        h, log_prior = x, x.new_zeros(())
        for i, (w_scale, b_scale) in enumerate(self._prior_scales()):
            w, b = params[f"w{i}"], params[f"b{i}"]
            log_prior = log_prior - 0.5 * ((w / w_scale).pow(2).sum() + (b / b_scale).pow(2).sum())
            log_prior = log_prior - (w.numel() * math.log(w_scale) + b.numel() * math.log(b_scale))
            log_prior = log_prior - 0.5 * LOG_2PI * (w.numel() + b.numel())
            h = self._layer(i, h, w, b)
        z = None
        if not self.heteroscedastic:
            z = params["log_noise_var"]
            log_prior = (
                log_prior
                - (
                    0.5 * ((z - NOISE_PRIOR_LOC) / NOISE_PRIOR_SCALE).pow(2)
                    + math.log(NOISE_PRIOR_SCALE)
                    + 0.5 * LOG_2PI
                ).sum()
            )
        return self._nll_sum(h, y, z) - log_prior

    def _nuts_init_shapes(self) -> dict[str, Tensor]:
        """Zero tensors shaped like the NUTS sites, in the order of the flat parameter."""
        shapes: dict[str, Tensor] = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(self.sizes)):
            shapes[f"w{i}"], shapes[f"b{i}"] = torch.zeros(fan_in, fan_out), torch.zeros(fan_out)
        if not self.heteroscedastic:
            shapes["log_noise_var"] = torch.zeros(self.obs_dim)
        return shapes

    def _nuts_init(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """A chain's starting point: a MAP fit (``nuts_init="map"``) or a prior draw."""
        params: dict[str, Tensor] = {}
        for i, ((fan_in, fan_out), (w_scale, b_scale)) in enumerate(
            zip(itertools.pairwise(self.sizes), self._prior_scales(), strict=True)
        ):
            if self.nuts_init == "prior":
                params[f"w{i}"] = torch.randn(fan_in, fan_out) * w_scale
                params[f"b{i}"] = torch.randn(fan_out) * b_scale
            else:  # nn.Linear's initialization, then MAP
                bound = 1.0 / math.sqrt(fan_in)
                params[f"w{i}"] = (torch.rand(fan_in, fan_out) * 2 - 1) * bound
                params[f"b{i}"] = (torch.rand(fan_out) * 2 - 1) * bound
        if not self.heteroscedastic:
            params["log_noise_var"] = torch.full((self.obs_dim,), NOISE_PRIOR_LOC)
        if self.nuts_init == "map" and self.map_steps > 0:
            leaves = [v.requires_grad_() for v in params.values()]
            opt = torch.optim.Adam(leaves, lr=_MAP_LEARNING_RATE)
            for _ in range(self.map_steps):
                opt.zero_grad(set_to_none=True)
                self.potential_energy(params, x, y).backward()
                opt.step()
        return {k: v.detach() for k, v in params.items()}

    def _fit_nuts(self, x_all: Tensor, y_all: Tensor, progress: ProgressFn | None) -> FitReport:
        from pyro.infer import NUTS

        # one flat site: Pyro's per-site bookkeeping in every leapfrog step is then paid once
        shapes = {k: v.shape for k, v in self._nuts_init_shapes().items()}
        sizes = [math.prod(v) for v in shapes.values()]

        def unflatten(theta: Tensor) -> dict[str, Tensor]:
            parts = theta.split(sizes, dim=-1)
            lead = theta.shape[:-1]
            return {
                k: p.reshape(*lead, *shp) for (k, shp), p in zip(shapes.items(), parts, strict=True)
            }

        def potential(params: dict[str, Tensor]) -> Tensor:
            return self.potential_energy(unflatten(params["theta"]), x_all, y_all)

        def chain(c: int) -> NutsChain:
            init = self._nuts_init(x_all, y_all)
            kernel = NUTS(
                potential_fn=potential,
                max_tree_depth=self.max_tree_depth,
                target_accept_prob=self.target_accept_prob,
                full_mass=self.dense_mass,
            )
            run = run_nuts_chain(
                kernel,
                num_samples=self.num_samples,
                warmup_steps=self.warmup_steps,
                initial_params={"theta": torch.cat([v.reshape(-1) for v in init.values()])},
                progress=progress,
                first_step=c * (self.warmup_steps + self.num_samples),
                num_transitions=x_all.shape[0],
            )
            return NutsChain(unflatten(run.draws["theta"]), run.stats)

        self.draws.run_chains(
            self.num_chains,
            chain,
            fix="Lower model.prior_scale, use a smaller net or inference='svi'",
        )
        return FitReport(epochs=1)

    # ---------------------------------------------------------------- functions
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("the BNN has not been fitted; call fit(buffer) first")

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """Draw ``n`` weight sets (guide draws, or NUTS samples) in one vectorized draw."""
        self._require_fitted()
        ws, bs, index, noise = self._draw_normalized(n, generator)
        return self._function_sample(ws, bs, index, noise)

    def posterior_functions(
        self, num_draws: int | None = None, generator: torch.Generator | None = None
    ) -> FunctionSample:
        """SVI: ``num_draws`` guide draws. NUTS: the stored samples, chain-major.

        With NUTS and ``num_draws=None`` every sample is returned; otherwise
        ``max(1, num_draws // num_chains)`` evenly spaced samples per chain.
        """
        self._require_fitted()
        if self.inference != "nuts":
            return super().posterior_functions(num_draws, generator)
        ws, bs, index, noise = self._gather_samples(self.draws.thinned_index(num_draws))
        return self._function_sample(
            ws,
            bs,
            index,
            noise,
            num_chains=self.draws.num_chains,
            sample_stats=self.draws.take_stats(index),
        )

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Guide, bounds, normalizers, optimizer state and NUTS samples with their sampler
        statistics (weights-only safe)."""
        draws = self.draws.state_dict()
        return {
            "guide": self.guide_params.state_dict(),
            "min_logvar": self.min_logvar.detach().clone(),
            "max_logvar": self.max_logvar.detach().clone(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "delta_normalizer": self.delta_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mcmc_samples": draws["samples"],
            "mcmc_stats": draws["stats"],
            "inference": self.inference,
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a model built with the same arguments."""
        try:
            if state["inference"] != self.inference:
                raise ValueError(
                    f"saved with inference={state['inference']!r}, this model uses "
                    f"{self.inference!r}"
                )
            self.guide_params.load_state_dict(state["guide"])
            with torch.no_grad():
                self.min_logvar.copy_(state["min_logvar"])
                self.max_logvar.copy_(state["max_logvar"])
            self.input_normalizer.load_state_dict(state["input_normalizer"])
            self.delta_normalizer.load_state_dict(state["delta_normalizer"])
            self.optimizer.load_state_dict(state["optimizer"])
            draws = PosteriorDraws()
            draws.load_state_dict(
                {
                    "samples": state["mcmc_samples"],
                    "stats": state.get("mcmc_stats", {}),  # absent before the statistics
                    "num_chains": self.num_chains,
                }
            )
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(
                f"saved BNN does not match this configuration ({exc}); "
                "load it with the config it was saved with"
            ) from exc
        self.draws = draws
        self.fitted = bool(state["fitted"])
