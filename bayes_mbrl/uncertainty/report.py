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
from bayes_mbrl.uncertainty.calibration import CalibrationResult, calibration_metrics
from bayes_mbrl.uncertainty.decompose import resolve_generator
from bayes_mbrl.uncertainty.inference_data import as_batch, to_inference_data
from bayes_mbrl.uncertainty.plots import plot_calibration, plot_posterior, plot_predictive_bands

__all__ = ["MAX_BAND_STEPS", "SUMMARY_COLUMNS", "summary_table", "uncertainty_report"]

#: held-out transitions shown in the predictive-band figure (the first ones, in order)
MAX_BAND_STEPS = 200
#: columns of ``summary.csv``: one value per row (tidy/long layout)
SUMMARY_COLUMNS = ("section", "variable", "state_dim", "statistic", "value")


def summary_table(
    idata: az.InferenceData, calibration: CalibrationResult, loo: az.ELPDData | None = None
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
      ``joint_nll`` (whole transitions) and ``num_transitions``.

    Args:
        idata: from :func:`to_inference_data`.
        calibration: from :func:`calibration_metrics` on held-out transitions.
        loo: ``az.loo(idata)`` (None: no LOO rows).
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
    per_dim: dict[str, torch.Tensor] = {
        "nll": calibration.nll,
        "crps": calibration.crps,
        "calibration_error": calibration.calibration_error,
    }
    for level, cov in zip(calibration.levels.tolist(), calibration.coverage, strict=True):
        per_dim[f"coverage_{level:g}"] = cov
    for stat, values in per_dim.items():
        for d, value in enumerate(values.tolist()):
            rows.append(
                {
                    "section": "held_out",
                    "variable": "next_obs",
                    "state_dim": str(d),
                    "statistic": stat,
                    "value": value,
                }
            )
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
      a single posterior function);
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
    calibration = calibration_metrics(
        model, held_out.obs, held_out.action, held_out.next_obs, num_draws, gen
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
    summary_table(idata, calibration, loo).to_csv(paths["summary"], index=False)
    tmp = paths["inference_data"].with_suffix(".nc.tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(paths["inference_data"])
    return paths
