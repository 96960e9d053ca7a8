"""Post-hoc recalibration of a model's predictive variance, its aleatoric and its
epistemic part apart.

A model of a deterministic system learns a noise level above the true zero and an
ensemble's members spread more than its errors, so its intervals cover far more than
their nominal level (issue 20: the default Pendulum run's 5% central interval covered
20-62% of held-out transitions). Two scales per state dimension recalibrate the
mixture ``(1/n) sum_i N(mu_i, sigma_i^2)``:

* ``aleatoric_scale`` ``a``: every function's variance ``sigma_i^2 -> a sigma_i^2``;
* ``epistemic_scale`` ``e``: the spread of the function means around their average,
  ``mu_i -> mu_bar + sqrt(e) (mu_i - mu_bar)`` (the epistemic variance is multiplied by
  ``e``).

They are fitted on transitions the model was not trained on by a grid search over
both log-scales: among the scales whose calibration error (mean ``|coverage - level|``
over :data:`~bayes_mbrl.uncertainty.calibration.GRID_LEVELS`) is within 0.01 of the
lowest, the one of lowest mixture NLL (the calibration error alone cannot tell the two
parts apart: many pairs give the same coverage; the NLL, a proper score, can):
temperature scaling (Guo et al. 2017; Kuleshov et al. 2018 for regression) with the
two parts kept apart, so the report says which part was mis-sized.
:func:`cross_fitted_recalibration` fits on one half of the held-out transitions and
scores on the other (both ways), so the recalibrated error it reports is itself
held out.

Shapes: ``n`` functions, ``N`` transitions, ``D`` state dimensions, ``G`` grid points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError
from bayes_mbrl.uncertainty.calibration import (
    DEFAULT_LEVELS,
    GRID_LEVELS,
    CalibrationResult,
    calibration_metrics_from_moments,
)
from bayes_mbrl.uncertainty.decompose import LOG_2PI, check_moments

__all__ = [
    "LOG_SCALE_GRID",
    "VarianceRecalibration",
    "cross_fitted_recalibration",
    "fit_variance_recalibration",
]

#: natural-log scales searched for each part: e^-14 (about 1e-6) to e^4, step 0.25
LOG_SCALE_GRID = torch.arange(-14.0, 4.0 + 1e-9, 0.25, dtype=torch.float64)


@dataclass
class VarianceRecalibration:
    """Per-dimension scales of the aleatoric variance and of the epistemic spread.

    Attributes:
        aleatoric_scale: ``(D,)`` multiplies each function's variance.
        epistemic_scale: ``(D,)`` multiplies the variance of the function means.
        calibration_error: ``(D,)`` the calibration error on the data it was fitted on.
    """

    aleatoric_scale: Tensor
    epistemic_scale: Tensor
    calibration_error: Tensor

    def apply(self, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
        """The recalibrated ``(means, variances)``, each ``(n, N, D)``."""
        return _scaled(means, variances, self.aleatoric_scale, self.epistemic_scale)


def _scaled(means: Tensor, variances: Tensor, a: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., n, N, D)`` moments with aleatoric scales ``a`` and epistemic ``e`` (each
    broadcasting against ``(..., 1, 1, D)``)."""
    center = means.mean(-3, keepdim=True)
    a = a.to(variances.dtype).unsqueeze(-2).unsqueeze(-2)
    e = e.to(means.dtype).unsqueeze(-2).unsqueeze(-2)
    return center + e.sqrt() * (means - center), variances * a


def _nll(means: Tensor, variances: Tensor, targets: Tensor) -> Tensor:
    """Mean NLL ``(..., D)`` of batched equal-weight mixtures ``(..., n, N, D)``."""
    n = means.shape[-3]
    logp = -0.5 * ((targets - means).pow(2) / variances + variances.log() + LOG_2PI)
    return -(torch.logsumexp(logp, dim=-3) - torch.log(torch.tensor(float(n)))).mean(-2)


def _calibration_errors(
    means: Tensor, variances: Tensor, targets: Tensor, levels: Tensor
) -> Tensor:
    """Calibration error ``(..., D)`` of batched mixtures ``(..., n, N, D)``."""
    z = (targets - means) / variances.sqrt()
    pit = torch.special.ndtr(z).mean(-3)  # (..., N, D)
    lo, hi = (1 - levels) / 2, (1 + levels) / 2  # (L,)
    inside = (pit.unsqueeze(-1) >= lo) & (pit.unsqueeze(-1) <= hi)  # (..., N, D, L)
    coverage = inside.double().mean(-3)  # (..., D, L)
    return (coverage - levels).abs().mean(-1)


def fit_variance_recalibration(
    means: Tensor,
    variances: Tensor,
    targets: Tensor,
    grid: Tensor = LOG_SCALE_GRID,
    grid_levels: Sequence[float] = GRID_LEVELS,
    tolerance: float = 0.01,
) -> VarianceRecalibration:
    """Fit the two scales per dimension on held-out moments and targets.

    Args:
        means: ``(n, N, D)`` per-function means at the held-out inputs.
        variances: ``(n, N, D)`` per-function (aleatoric) variances.
        targets: ``(N, D)`` observed next states.
        grid: natural-log scales searched for each part.
        grid_levels: levels the calibration error averages over.
        tolerance: calibration errors within this of the lowest count as equal.

    Returns:
        Per dimension, the scales of the lowest NLL among those whose calibration error
        is within ``tolerance`` of the lowest.
        With a single function the epistemic scale stays 1 (there is no spread).

    Raises:
        DataError: shapes disagree, fewer than 2 targets, or non-finite values.
    """
    check_moments(means, variances)
    if tuple(targets.shape) != tuple(means.shape[1:]):
        raise DataError(
            f"targets {tuple(targets.shape)} must be (N, D) = {tuple(means.shape[1:])}, the "
            "transitions the moments were computed at"
        )
    if targets.shape[0] < 2:
        raise DataError(
            f"recalibration needs at least 2 held-out transitions, got {targets.shape[0]}"
        )
    m, v, y = means.double(), variances.double(), targets.double()
    levels = torch.tensor(list(grid_levels), dtype=torch.float64)
    scales = grid.double().exp()
    eps_grid = scales if m.shape[0] > 1 else torch.ones(1, dtype=torch.float64)
    a = scales.unsqueeze(-1).expand(len(scales), y.shape[1])  # (G, D)
    errs, nlls = [], []
    for e in eps_grid:
        sm, sv = _scaled(m.unsqueeze(0), v.unsqueeze(0), a, e.expand_as(a))
        errs.append(_calibration_errors(sm, sv, y, levels))
        nlls.append(_nll(sm, sv, y))
    err, nll = torch.stack(errs), torch.stack(nlls)  # (E, G, D)
    # per dimension: the lowest NLL among the scales within `tolerance` of the lowest
    # calibration error (the error alone cannot tell the two parts apart)
    near = err <= err.flatten(0, 1).min(0).values + tolerance
    flat = torch.where(near, nll, torch.full_like(nll, float("inf"))).flatten(0, 1).argmin(0)
    cols = torch.arange(y.shape[1])
    ie, ia = flat // len(scales), flat % len(scales)
    return VarianceRecalibration(scales[ia], eps_grid[ie], err.flatten(0, 1)[flat, cols])


def cross_fitted_recalibration(
    means: Tensor,
    variances: Tensor,
    targets: Tensor,
    levels: Sequence[float] = DEFAULT_LEVELS,
    grid_levels: Sequence[float] = GRID_LEVELS,
) -> tuple[CalibrationResult, list[VarianceRecalibration]]:
    """Recalibrate on each half of the held-out transitions (first and second half, in
    time order), score on the other half, and pool the scored halves.

    Args:
        means: ``(n, N, D)`` per-function means at the held-out inputs.
        variances: ``(n, N, D)`` per-function variances at the held-out inputs.
        targets: ``(N, D)``, in time order (the halves are contiguous, so the scored
            half is not interleaved with the fitted one).
        levels: as for
            :func:`~bayes_mbrl.uncertainty.calibration.calibration_metrics_from_moments`.
        grid_levels: as for
            :func:`~bayes_mbrl.uncertainty.calibration.calibration_metrics_from_moments`.

    Returns:
        The calibration metrics of the recalibrated mixture on the halves it was not
        fitted on, and the two fitted recalibrations (fitted on the first half, then on
        the second).

    Raises:
        DataError: fewer than 4 held-out transitions, or as
            :func:`fit_variance_recalibration`.
    """
    N = targets.shape[0]
    if N < 4:
        raise DataError(f"cross-fitted recalibration needs at least 4 transitions, got {N}")
    half = N // 2
    first, second = slice(0, half), slice(half, N)
    fits, scored_m, scored_v = [], [], []
    for fit_rows, score_rows in ((first, second), (second, first)):
        fit = fit_variance_recalibration(
            means[:, fit_rows], variances[:, fit_rows], targets[fit_rows], grid_levels=grid_levels
        )
        fits.append(fit)
        sm, sv = fit.apply(means[:, score_rows].double(), variances[:, score_rows].double())
        scored_m.append(sm)
        scored_v.append(sv)
    y = torch.cat([targets[second], targets[first]]).double()
    result = calibration_metrics_from_moments(
        torch.cat(scored_m, 1), torch.cat(scored_v, 1), y, levels, grid_levels
    )
    return result, fits
