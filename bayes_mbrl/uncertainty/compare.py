"""Compare dynamics models by PSIS-LOO (``az.compare``) and held-out NLL.

Every model goes through :func:`~bayes_mbrl.uncertainty.inference_data.to_inference_data`
on the same transitions, so any mix of families (ensemble, BNN, user Pyro model, GP)
can be ranked together.
"""

from __future__ import annotations

import math

import arviz as az
import pandas as pd
import torch

from bayes_mbrl.data import ReplayBuffer, TransitionBatch
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.uncertainty.decompose import resolve_generator
from bayes_mbrl.uncertainty.inference_data import (
    as_batch,
    function_log_likelihood,
    to_inference_data,
)

__all__ = ["ICS", "compare_models", "mean_mixture_nll"]

#: information criteria ``az.compare`` accepts
ICS = ("loo", "waic")


def mean_mixture_nll(
    model: DynamicsModel,
    data: ReplayBuffer | TransitionBatch,
    num_draws: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Mean NLL per transition of the predictive mixture over posterior functions.

    ``-(1/N) sum_j log (1/n) sum_i p(s'_j | s_j, a_j, f_i)``, whole transitions (all
    state dims jointly), in nats.

    Args:
        model: a fitted dynamics model.
        data: ``N`` transitions the model was not fitted on.
        num_draws: functions in the mixture (None: the model's analysis default).
        generator: source of the function draws (None: a generator seeded with 0).
    """
    batch = as_batch(data, model)
    fs = model.posterior_functions(num_draws, resolve_generator(generator))
    ll = function_log_likelihood(fs, batch).to(torch.float64)  # (n, N)
    return float(-(torch.logsumexp(ll, dim=0) - math.log(fs.n)).mean())


def _idata_mixture_nll(idata: az.InferenceData) -> float:
    """Mean mixture NLL per transition from an InferenceData's log-likelihood group."""
    ll = torch.as_tensor(idata["log_likelihood"]["next_obs"].values, dtype=torch.float64)
    ll = ll.reshape(-1, ll.shape[-1])  # (chain * draw, N)
    return float(-(torch.logsumexp(ll, dim=0) - math.log(ll.shape[0])).mean())


def compare_models(
    models: dict[str, DynamicsModel],
    data: ReplayBuffer | TransitionBatch,
    num_draws: int | None = None,
    generator: torch.Generator | None = None,
    ic: str = "loo",
    held_out: ReplayBuffer | TransitionBatch | None = None,
) -> pd.DataFrame:
    """Rank models with ``az.compare`` and add their held-out NLL.

    Args:
        models: name -> fitted dynamics model (at least one).
        data: ``N`` transitions for the information criterion, normally the ones the
            models were fitted on: PSIS-LOO estimates from them how well each model
            predicts a transition it has not seen.
        num_draws: posterior functions per model (None: each model's analysis default).
        generator: source of all function draws (None: a generator seeded with 0).
        ic: ``"loo"`` (PSIS-LOO) or ``"waic"``.
        held_out: transitions none of the models saw; the ``held_out_nll`` column is the
            mean mixture NLL per transition on them (None: on ``data``, with the same
            function draws as the criterion; then ``data`` should itself be held out).

    Returns:
        ``az.compare``'s DataFrame, one row per model, best first (columns ``rank``,
        ``elpd_<ic>``, ``p_<ic>``, ``elpd_diff``, ``weight``, ``se``, ``dse``,
        ``warning``, ``scale``) plus ``held_out_nll`` (lower is better) and
        ``held_out_rank`` (0 = lowest held-out NLL). PSIS-LOO needs many posterior
        draws: with a 5-member ensemble its estimate is rough (``p_loo`` far above
        the model's effective size); the held-out NLL is the direct measure when
        unseen transitions exist.

    Raises:
        ConfigError: no models, or an unknown ``ic``.
        ModelError: a model gave fewer than 2 posterior functions.
        DataError: the data does not fit a model.

    Examples:
        >>> # compare_models({"ensemble": ens, "bnn": bnn}, train, held_out=test)
    """
    if ic not in ICS:
        raise ConfigError(f"unknown information criterion ic={ic!r}; choose one of {ICS}")
    if not models:
        raise ConfigError("compare_models needs at least one model in the dict")
    gen = resolve_generator(generator)
    idatas = {name: to_inference_data(m, data, num_draws, gen) for name, m in models.items()}
    for name, idata in idatas.items():
        draws = int(idata["posterior"].sizes["chain"] * idata["posterior"].sizes["draw"])
        if draws < 2:
            raise ModelError(
                f"model {name!r} gave {draws} posterior function; PSIS-LOO needs at least 2. "
                "Pass num_draws >= 2 (a model with a single fixed function has no posterior "
                "for LOO: compare it by held_out_nll instead)"
            )
    if held_out is not None:
        nlls = {name: mean_mixture_nll(m, held_out, num_draws, gen) for name, m in models.items()}
    else:  # the same draws as the information criterion
        nlls = {name: _idata_mixture_nll(idata) for name, idata in idatas.items()}
    if len(models) == 1:
        # az.compare needs two models; build the same table from a single az.loo/az.waic
        (name,) = models
        elpd = az.loo(idatas[name]) if ic == "loo" else az.waic(idatas[name])
        table = pd.DataFrame(
            {
                "rank": [0],
                f"elpd_{ic}": [float(elpd[f"elpd_{ic}"])],
                f"p_{ic}": [float(elpd[f"p_{ic}"])],
                "elpd_diff": [0.0],
                "weight": [1.0],
                "se": [float(elpd["se"])],
                "dse": [0.0],
                "warning": [bool(elpd["warning"])],
                "scale": [elpd["scale"]],
            },
            index=[name],
        )
    else:
        table = az.compare(idatas, ic="loo" if ic == "loo" else "waic")
    table["held_out_nll"] = [nlls[name] for name in table.index]
    table["held_out_rank"] = table["held_out_nll"].rank(method="min").astype(int) - 1
    return table
