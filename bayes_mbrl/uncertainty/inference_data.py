"""Export a dynamics model's posterior over functions to an ``arviz.InferenceData``.

One function is one posterior draw. The ``n`` functions of
:meth:`DynamicsModel.posterior_functions` are laid out chain-major as
``(chain, draw) = (num_chains, n // num_chains)``, so NUTS chains stay apart for
``r_hat``. Groups:

* ``posterior``: the functions' named latents (:meth:`FunctionSample.latents`), each
  ``(chain, draw, *shape)``; a model without latents gets a ``function`` index;
* ``posterior_predictive``: ``next_obs`` drawn from each function,
  ``(chain, draw, transition, state_dim)``;
* ``log_likelihood``: ``next_obs``, ``log p(s'_j | s_j, a_j, f)`` summed over state
  dims, ``(chain, draw, transition)``: a transition is the unit LOO leaves out;
* ``observed_data``: ``next_obs (transition, state_dim)``;
* ``constant_data``: ``obs (transition, state_dim)``, ``action (transition, action_dim)``;
* ``sample_stats`` (MCMC draws only: :meth:`FunctionSample.sample_stats`): the sampler's
  statistics of each draw, ``(chain, draw)``, under ArviZ's names (``diverging``,
  ``acceptance_rate``, ``step_size``, ``tree_depth``, ``n_steps``, ``lp``), which
  ``az.summary``'s companions read: ``az.plot_trace(idata, divergences="bottom")``
  marks the divergent draws, ``idata.sample_stats.diverging.sum()`` counts them.

torch stays inside; numpy/xarray appear only here, at the ArviZ boundary.
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer, TransitionBatch
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample
from bayes_mbrl.uncertainty.decompose import input_chunks, resolve_generator

__all__ = ["as_batch", "function_log_likelihood", "to_inference_data"]


def as_batch(data: ReplayBuffer | TransitionBatch, model: DynamicsModel) -> TransitionBatch:
    """The transitions of ``data`` as a batch, checked against ``model``'s sizes.

    Raises:
        DataError: ``data`` is not a ReplayBuffer/TransitionBatch, is empty, or its
            shapes do not fit the model.
    """
    if isinstance(data, ReplayBuffer):
        batch = data.all()
    elif isinstance(data, TransitionBatch):
        batch = data
    else:
        raise DataError(
            f"data must be a ReplayBuffer or TransitionBatch, got {type(data).__name__}; "
            "wrap arrays with bayes_mbrl.data.validate_transitions"
        )
    if len(batch) == 0:
        raise DataError("data holds no transitions; collect some before analyzing a model")
    model.check_inputs(batch.obs, batch.action, batch.next_obs)
    return batch


def _evaluate(
    fs: FunctionSample, batch: TransitionBatch, generator: torch.Generator | None
) -> tuple[Tensor, list[Tensor]]:
    """``(n, N)`` log-likelihood and, with a generator, ``(n, chunk, obs_dim)`` draws per chunk."""
    n = fs.n
    ll_parts, draws = [], []
    for rows in input_chunks(n, len(batch)):
        o = batch.obs[rows].float().expand(n, -1, -1)
        a = batch.action[rows].float().expand(n, -1, -1)
        with torch.no_grad():
            ll = fs(o, a).log_prob(batch.next_obs[rows].float().expand(n, -1, -1))
            if generator is not None:
                draws.append(fs.sample(o, a, generator))
        if tuple(ll.shape) != (n, o.shape[1]):
            raise ModelError(
                f"{type(fs).__name__} log_prob returned shape {tuple(ll.shape)}, expected "
                f"({n}, {o.shape[1]}); its distribution needs event shape (obs_dim,) "
                "(wrap Normal in Independent(..., 1))"
            )
        ll_parts.append(ll)
    return torch.cat(ll_parts, dim=1), draws


def function_log_likelihood(fs: FunctionSample, batch: TransitionBatch) -> Tensor:
    """``(n, N)`` log-density of each transition under each function (summed over dims).

    Transitions are evaluated in chunks (:func:`input_chunks`), every function at once.

    Raises:
        ModelError: the functions return log-densities of the wrong shape.
    """
    return _evaluate(fs, batch, None)[0]


def _chain_draw(t: Tensor, chains: int) -> np.ndarray:
    """``(n, ...)`` torch -> ``(chains, n // chains, ...)`` numpy (chain-major)."""
    arr = t.detach().cpu()
    if arr.is_floating_point():
        arr = arr.to(torch.float64)
    return arr.numpy().reshape(chains, t.shape[0] // chains, *t.shape[1:])


def to_inference_data(
    model: DynamicsModel,
    data: ReplayBuffer | TransitionBatch,
    num_draws: int | None = None,
    generator: torch.Generator | None = None,
) -> az.InferenceData:
    """The model's posterior, posterior predictive and pointwise log-likelihood on ``data``.

    Pass the transitions the model was fitted on to estimate out-of-sample fit with
    ``az.loo`` (PSIS-LOO leaves out one transition at a time).

    Args:
        model: a fitted dynamics model.
        data: ``N`` transitions.
        num_draws: functions to draw (None: every ensemble member / stored MCMC
            sample, else the model's analysis default).
        generator: source of function draws and posterior predictive samples
            (None: a generator seeded with 0).

    Returns:
        InferenceData with groups ``posterior``, ``posterior_predictive``,
        ``log_likelihood``, ``observed_data`` and ``constant_data``, and
        ``sample_stats`` when the functions carry sampler statistics (NUTS); dims
        ``chain, draw, transition, state_dim, action_dim``.

    Raises:
        DataError: ``data`` does not fit the model.
        ModelError: the model's functions break the protocol (``n`` not divisible by
            ``num_chains``, latents, sampler statistics or log-densities of the wrong
            shape).

    Examples:
        >>> # idata = to_inference_data(model, buffer)
        >>> # az.summary(idata); az.loo(idata)
    """
    batch = as_batch(data, model)
    gen = resolve_generator(generator)
    fs = model.posterior_functions(num_draws, gen)
    n, chains = fs.n, int(getattr(fs, "num_chains", 1))
    if chains < 1 or n % chains:
        raise ModelError(
            f"{type(fs).__name__} has {n} functions in {chains} chains; n must be a "
            "multiple of num_chains (chain-major layout)"
        )
    big_n = len(batch)
    ll, draws = _evaluate(fs, batch, gen)
    pp = torch.cat(draws, dim=1)  # (n, N, obs_dim)

    coords: dict[str, Any] = {
        "transition": np.arange(big_n),
        "state_dim": np.arange(model.obs_dim),
        "action_dim": np.arange(model.action_dim),
    }
    latents = fs.latents()
    posterior: dict[str, np.ndarray] = {}
    for name, value in latents.items():
        if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != n:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(
                f"{type(fs).__name__}.latents()[{name!r}] has shape {shape}; every latent "
                f"must be a tensor with a leading function dimension of size {n}"
            )
        posterior[name] = _chain_draw(value, chains)
    if not posterior:
        posterior["function"] = _chain_draw(torch.arange(n), chains)
    sample_stats: dict[str, np.ndarray] = {}
    for name, value in fs.sample_stats().items():
        if not isinstance(value, Tensor) or tuple(value.shape) != (n,):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(
                f"{type(fs).__name__}.sample_stats()[{name!r}] has shape {shape}; every "
                f"sampler statistic must be a tensor of shape ({n},), one value per function"
            )
        sample_stats[name] = _chain_draw(value, chains)

    def dataset(values: dict[str, np.ndarray], dims: dict[str, list[str]], sampled: bool) -> Any:
        return az.dict_to_dataset(
            values,
            coords=coords,
            dims=dims,
            default_dims=None if sampled else [],
            attrs={"bayes_mbrl_model": type(model).__name__},
        )

    groups: dict[str, Any] = {}
    if sample_stats:
        groups["sample_stats"] = dataset(sample_stats, {}, True)
    return az.InferenceData(
        posterior=dataset(posterior, {}, True),
        posterior_predictive=dataset(
            {"next_obs": _chain_draw(pp, chains)}, {"next_obs": ["transition", "state_dim"]}, True
        ),
        log_likelihood=dataset(
            {"next_obs": _chain_draw(ll, chains)}, {"next_obs": ["transition"]}, True
        ),
        observed_data=dataset(
            {"next_obs": batch.next_obs.double().numpy()},
            {"next_obs": ["transition", "state_dim"]},
            False,
        ),
        constant_data=dataset(
            {"obs": batch.obs.double().numpy(), "action": batch.action.double().numpy()},
            {"obs": ["transition", "state_dim"], "action": ["transition", "action_dim"]},
            False,
        ),
        **groups,
    )
