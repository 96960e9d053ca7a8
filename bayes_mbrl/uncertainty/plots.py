"""Figures of a model's uncertainty: predictive bands, calibration curve, posterior forest.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas and
written as PNG: no pyplot, so nothing touches the user's global backend or figure
state, and it works headless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from bayes_mbrl.errors import DataError
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.uncertainty.calibration import CalibrationResult
from bayes_mbrl.uncertainty.decompose import decompose, function_moments, resolve_generator

__all__ = [
    "PredictiveBands",
    "plot_calibration",
    "plot_posterior",
    "plot_predictive_bands",
    "predictive_bands",
]


@dataclass
class PredictiveBands:
    """One-step predictive bands along a sequence of transitions.

    Attributes:
        mean: ``(T, D)`` predictive mean.
        epistemic_sd: ``(T, D)`` ``sqrt(Var_f E[s'|f])``.
        aleatoric_sd: ``(T, D)`` ``sqrt(E_f Var[s'|f])``.
        total_sd: ``(T, D)`` ``sqrt(epistemic_var + aleatoric_var)``.
        observed: ``(T, D)`` observed next states.
        num_functions: functions the moments were taken over.
    """

    mean: Tensor
    epistemic_sd: Tensor
    aleatoric_sd: Tensor
    total_sd: Tensor
    observed: Tensor
    num_functions: int

    def inner(self, width: float = 2.0) -> tuple[Tensor, Tensor]:
        """Epistemic band ``mean -/+ width * epistemic_sd``, each ``(T, D)``."""
        return self.mean - width * self.epistemic_sd, self.mean + width * self.epistemic_sd

    def outer(self, width: float = 2.0) -> tuple[Tensor, Tensor]:
        """Total band ``mean -/+ width * total_sd``, each ``(T, D)``."""
        return self.mean - width * self.total_sd, self.mean + width * self.total_sd


def predictive_bands(
    model: DynamicsModel,
    obs: Tensor,
    action: Tensor,
    next_obs: Tensor,
    num_functions: int | None = None,
    generator: torch.Generator | None = None,
) -> PredictiveBands:
    """One-step predictive moments at each transition of a trajectory.

    Args:
        model: a fitted dynamics model.
        obs: ``(T, obs_dim)`` states along a held-out trajectory.
        action: ``(T, action_dim)``.
        next_obs: ``(T, obs_dim)`` observed next states.
        num_functions: functions to draw (None: the model's analysis default).
        generator: source of the function draws (None: a generator seeded with 0).

    Returns:
        :class:`PredictiveBands` (float32 tensors on the CPU).
    """
    model.check_inputs(obs, action, next_obs)
    fs = model.posterior_functions(num_functions, resolve_generator(generator))
    p = decompose(*function_moments(fs, obs, action))
    return PredictiveBands(
        mean=p.mean.detach().float(),
        epistemic_sd=p.epistemic_var.detach().float().sqrt(),
        aleatoric_sd=p.aleatoric_var.detach().float().sqrt(),
        total_sd=p.total_var.detach().float().sqrt(),
        observed=next_obs.detach().float(),
        num_functions=fs.n,
    )


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=100)
    return out


def plot_predictive_bands(
    model: DynamicsModel,
    obs: Tensor,
    action: Tensor,
    next_obs: Tensor,
    path: str | Path,
    num_functions: int | None = None,
    generator: torch.Generator | None = None,
    state_names: Sequence[str] | None = None,
) -> PredictiveBands:
    """Plot one-step predictive bands along a held-out trajectory, one panel per state dim.

    Each panel shows the predictive mean, an inner band ``+/- 2 sd`` of the EPISTEMIC
    part (spread of the functions' means), an outer band ``+/- 2 sd`` of the TOTAL
    variance (epistemic + aleatoric, so its excess over the inner band is the noise),
    and the observed next states; a thin lower panel shows the two standard deviations
    themselves.

    Args:
        model: a fitted dynamics model.
        obs: ``(T, obs_dim)``.
        action: ``(T, action_dim)``.
        next_obs: ``(T, obs_dim)``.
        path: PNG file to write.
        num_functions: functions to draw (None: the model's analysis default).
        generator: source of the function draws (None: seeded with 0).
        state_names: labels of the state dims (default ``s[0]``, ``s[1]``, ...).

    Returns:
        The plotted :class:`PredictiveBands`.
    """
    bands = predictive_bands(model, obs, action, next_obs, num_functions, generator)
    t_len, d = bands.mean.shape
    names = list(state_names) if state_names is not None else [f"s[{i}]" for i in range(d)]
    if len(names) != d:
        raise DataError(f"state_names has {len(names)} entries but the state has {d} dims")
    t = np.arange(t_len)
    mean = bands.mean.numpy()
    lo_in, hi_in = (x.numpy() for x in bands.inner())
    lo_out, hi_out = (x.numpy() for x in bands.outer())
    fig = Figure(figsize=(9, 2.6 * d + 0.6))
    axes = fig.subplots(2 * d, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1] * d})
    for i in range(d):
        ax, ax_sd = axes[2 * i], axes[2 * i + 1]
        ax.fill_between(t, lo_out[:, i], hi_out[:, i], color="tab:blue", alpha=0.18,
                        label="±2 sd total (epistemic + aleatoric)")  # fmt: skip
        ax.fill_between(t, lo_in[:, i], hi_in[:, i], color="tab:orange", alpha=0.55,
                        label="±2 sd epistemic")  # fmt: skip
        ax.plot(t, mean[:, i], color="tab:blue", lw=1.2, label="predictive mean")
        ax.plot(t, bands.observed[:, i].numpy(), "k.", ms=3, label="observed")
        ax.set_ylabel(f"next {names[i]}")
        ax_sd.plot(t, bands.epistemic_sd[:, i].numpy(), color="tab:orange", label="epistemic sd")
        ax_sd.plot(t, bands.aleatoric_sd[:, i].numpy(), color="tab:green", label="aleatoric sd")
        ax_sd.set_ylabel("sd")
        if i == 0:
            ax.legend(loc="upper right", fontsize=7, ncol=2)
            ax_sd.legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1].set_xlabel("step along the held-out trajectory")
    fig.suptitle(f"one-step predictive over {bands.num_functions} posterior functions")
    fig.tight_layout()
    _save(fig, path)
    return bands


def plot_calibration(result: CalibrationResult, path: str | Path) -> Path:
    """Plot empirical vs nominal coverage of central intervals, per state dim.

    Args:
        result: from :func:`~bayes_mbrl.uncertainty.calibration.calibration_metrics`.
        path: PNG file to write.

    Returns:
        The path written.
    """
    grid = result.grid_levels.numpy()
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for i in range(result.obs_dim):
        err = float(result.calibration_error[i])
        ax.plot(grid, result.grid_coverage[:, i].numpy(), "o-", ms=3,
                label=f"s[{i}] (cal. error {err:.3f})")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal central-interval level")
    ax.set_ylabel("empirical coverage (held out)")
    ax.set_title("calibration: below the diagonal = over-confident", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_posterior(
    idata: az.InferenceData, path: str | Path, var_names: Sequence[str] | None = None
) -> Path:
    """Forest plots (mean, 50% and 94% HDI per chain) of the posterior latents.

    One panel per variable, each on its own scale.

    Args:
        idata: from :func:`~bayes_mbrl.uncertainty.inference_data.to_inference_data`.
        path: PNG file to write.
        var_names: posterior variables to show (None: all).

    Returns:
        The path written.

    Raises:
        DataError: ``idata`` has no posterior group or a name is not in it.
    """
    if "posterior" not in idata.groups():
        raise DataError("idata has no posterior group; build it with to_inference_data")
    posterior = idata["posterior"]
    available = [str(v) for v in posterior.data_vars]
    names = list(var_names) if var_names is not None else available
    missing = [n for n in names if n not in available]
    if missing or not names:
        raise DataError(
            f"posterior variables {missing or names} not found; choose from {available}"
        )
    chains = int(posterior.sizes["chain"])
    heights = [1.0 + 0.35 * chains * math.prod(posterior[n].shape[2:]) for n in names]
    fig = Figure(figsize=(6, 0.6 + sum(heights)))
    axes = fig.subplots(len(names), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for name, ax in zip(names, axes[:, 0], strict=True):  # one x-scale per latent
        az.plot_forest(idata, var_names=[name], ax=ax, combined=False, show=False)
        ax.set_title("")
    fig.suptitle(
        f"posterior latents: mean, 50% and 94% HDI of each of {chains} chain(s)", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)
