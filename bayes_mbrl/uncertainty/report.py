"""``uncertainty_report``: every analysis of a fitted model in one directory.

Called by ``bayes-mbrl analyze RUN_DIR`` after it loads a run's model and data, and
usable directly on any fitted :class:`~bayes_mbrl.models.base.DynamicsModel`.
"""

from __future__ import annotations

import math
from pathlib import Path

import arviz as az
import pandas as pd
import torch

from bayes_mbrl.data import TransitionBatch
from bayes_mbrl.errors import CheckpointError
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.uncertainty.calibration import (
    CalibrationResult,
    calibration_metrics_from_moments,
)
from bayes_mbrl.uncertainty.decompose import function_moments, resolve_generator
from bayes_mbrl.uncertainty.inference_data import as_batch, to_inference_data
from bayes_mbrl.uncertainty.plots import plot_calibration, plot_posterior, plot_predictive_bands
from bayes_mbrl.uncertainty.recalibration import (
    VarianceRecalibration,
    cross_fitted_recalibration,
)

__all__ = ["MAX_BAND_STEPS", "SUMMARY_COLUMNS", "summary_table", "uncertainty_report"]

#: held-out transitions shown in the predictive-band figure (the first ones, in order)
MAX_BAND_STEPS = 200
#: columns of ``summary.csv``: one value per row (tidy/long layout)
SUMMARY_COLUMNS = ("section", "variable", "state_dim", "statistic", "value")


def summary_table(
    idata: az.InferenceData,
    calibration: CalibrationResult,
    loo: az.ELPDData | None = None,
    recalibrated: tuple[CalibrationResult, list[VarianceRecalibration]] | None = None,
) -> pd.DataFrame:
    """One tidy table: posterior summary, LOO on the training data, held-out metrics.

    Rows (columns :data:`SUMMARY_COLUMNS`):

    * ``section="posterior"``: ``az.summary`` of the posterior; ``variable`` is ArviZ's
      label (``mass``, ``offset[1]``), ``statistic`` its column (``mean``, ``sd``,
      ``hdi_3%``, ``hdi_97%``, ``ess_bulk``, ``r_hat``, ...), ``state_dim`` empty;
    * ``section="loo"``: ``elpd_loo``, ``se``, ``p_loo`` and ``max_pareto_k`` of the
      training transitions (``variable="next_obs"``);
    * ``section="held_out"``: per ``state_dim``: ``nll``, ``crps``,
      ``coverage_<level>`` and ``calibration_error``; with ``state_dim="all"``:
      ``joint_nll`` (whole transitions) and ``num_transitions``;
    * ``section="held_out_recalibrated"``: the same per ``state_dim`` after the
      cross-fitted variance recalibration
      (:func:`~bayes_mbrl.uncertainty.recalibration.cross_fitted_recalibration`: fitted
      on one half of the held-out transitions, scored on the other);
    * ``section="recalibration"``: its ``aleatoric_scale`` and ``epistemic_scale`` per
      ``state_dim``, ``variable`` naming the half it was fitted on (``first_half``,
      ``second_half``).

    Args:
        idata: from :func:`to_inference_data`.
        calibration: from :func:`calibration_metrics` on held-out transitions.
        loo: ``az.loo(idata)`` (None: no LOO rows).
        recalibrated: from :func:`cross_fitted_recalibration` (None: no such rows).
    """
    rows: list[dict[str, object]] = []
    summary = az.summary(idata, kind="all", round_to="none")
    for label, stats in summary.iterrows():
        for stat, value in stats.items():
            rows.append(
                {
                    "section": "posterior",
                    "variable": label,
                    "state_dim": "",
                    "statistic": stat,
                    "value": float(value),
                }
            )
    if loo is not None:
        pareto_k = loo.pareto_k.values if getattr(loo, "pareto_k", None) is not None else []
        loo_stats = {
            "elpd_loo": float(loo["elpd_loo"]),
            "se": float(loo["se"]),
            "p_loo": float(loo["p_loo"]),
            "max_pareto_k": float(max(pareto_k)) if len(pareto_k) else math.nan,
        }
        for stat, value in loo_stats.items():
            rows.append(
                {
                    "section": "loo",
                    "variable": "next_obs",
                    "state_dim": "all",
                    "statistic": stat,
                    "value": value,
                }
            )
    rows += _per_dim_rows("held_out", "next_obs", _held_out_stats(calibration))
    if recalibrated is not None:
        result, fits = recalibrated
        rows += _per_dim_rows("held_out_recalibrated", "next_obs", _held_out_stats(result))
        for half, fit in zip(("first_half", "second_half"), fits, strict=True):
            scales = {
                "aleatoric_scale": fit.aleatoric_scale,
                "epistemic_scale": fit.epistemic_scale,
            }
            rows += _per_dim_rows("recalibration", half, scales)
    for stat, value in (
        ("joint_nll", calibration.joint_nll),
        ("num_transitions", float(calibration.pit.shape[0])),
    ):
        rows.append(
            {
                "section": "held_out",
                "variable": "next_obs",
                "state_dim": "all",
                "statistic": stat,
                "value": value,
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _held_out_stats(calibration: CalibrationResult) -> dict[str, torch.Tensor]:
    """Per-dimension held-out statistics of ``calibration``, by their summary names."""
    stats: dict[str, torch.Tensor] = {
        "nll": calibration.nll,
        "crps": calibration.crps,
        "calibration_error": calibration.calibration_error,
    }
    for level, cov in zip(calibration.levels.tolist(), calibration.coverage, strict=True):
        stats[f"coverage_{level:g}"] = cov
    return stats


def _per_dim_rows(
    section: str, variable: str, stats: dict[str, torch.Tensor]
) -> list[dict[str, object]]:
    """One summary row per statistic and state dimension."""
    return [
        {
            "section": section,
            "variable": variable,
            "state_dim": str(d),
            "statistic": stat,
            "value": value,
        }
        for stat, values in stats.items()
        for d, value in enumerate(values.tolist())
    ]


def uncertainty_report(
    model: DynamicsModel,
    train: TransitionBatch,
    held_out: TransitionBatch,
    out_dir: str | Path,
    generator: torch.Generator | None = None,
    num_draws: int | None = None,
) -> dict[str, Path]:
    """Write the uncertainty report of a fitted model into ``out_dir``.

    Files:

    * ``predictive_bands.png``: one-step predictive along the first
      :data:`MAX_BAND_STEPS` held-out transitions, epistemic and total bands apart;
    * ``calibration.png``: empirical vs nominal coverage on the held-out data;
    * ``posterior.png``: forest plot of the posterior latents;
    * ``summary.csv``: see :func:`summary_table` (no ``loo`` rows when the model gives
      a single posterior function; no recalibration rows with fewer than 4 held-out
      transitions);
    * ``idata.nc``: the InferenceData of the training transitions (netCDF via
      h5netcdf; read it back with ``az.from_netcdf``).

    Args:
        model: a fitted dynamics model.
        train: the transitions it was fitted on (posterior, LOO).
        held_out: transitions it has not seen (calibration, bands), in time order.
        out_dir: directory to write into (created if missing).
        generator: source of all draws (None: a generator seeded with 0).
        num_draws: posterior functions (None: the model's analysis default).

    Returns:
        ``{"predictive_bands", "calibration", "posterior", "summary", "inference_data"}``
        -> path written.

    Raises:
        DataError: ``train`` or ``held_out`` is empty or does not fit the model.
        CheckpointError: ``out_dir`` cannot be written.
    """
    gen = resolve_generator(generator)
    train = as_batch(train, model)
    held_out = as_batch(held_out, model)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create report directory {out} ({exc})") from exc
    idata = to_inference_data(model, train, num_draws, gen)
    # calibration_metrics, with the moments kept for the recalibration
    model.check_inputs(held_out.obs, held_out.action, held_out.next_obs)
    fs = model.posterior_functions(num_draws, gen)
    means, variances = function_moments(fs, held_out.obs, held_out.action)
    calibration = calibration_metrics_from_moments(means, variances, held_out.next_obs)
    recalibrated = (
        cross_fitted_recalibration(means, variances, held_out.next_obs)
        if len(held_out) >= 4
        else None
    )
    steps = min(len(held_out), MAX_BAND_STEPS)
    paths = {
        "predictive_bands": out / "predictive_bands.png",
        "calibration": out / "calibration.png",
        "posterior": out / "posterior.png",
        "summary": out / "summary.csv",
        "inference_data": out / "idata.nc",
    }
    plot_predictive_bands(
        model,
        held_out.obs[:steps],
        held_out.action[:steps],
        held_out.next_obs[:steps],
        paths["predictive_bands"],
        num_draws,
        gen,
    )
    plot_calibration(calibration, paths["calibration"])
    plot_posterior(idata, paths["posterior"])
    posterior = idata["posterior"]
    # PSIS-LOO needs at least two posterior functions
    loo = (
        az.loo(idata, pointwise=True)
        if posterior.sizes["chain"] * posterior.sizes["draw"] > 1
        else None
    )
    summary_table(idata, calibration, loo, recalibrated).to_csv(paths["summary"], index=False)
    tmp = paths["inference_data"].with_suffix(".nc.tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(paths["inference_data"])
    return paths
