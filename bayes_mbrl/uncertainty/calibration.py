"""Calibration of the predictive mixture over functions on held-out transitions.

The predictive distribution of a model at ``(s, a)`` is the equal-weight mixture
``(1/n) sum_i N(mu_i, diag(sigma_i^2))`` over its posterior functions. Per state
dimension its marginal is a one-dimensional Gaussian mixture, scored here by

* **NLL**: ``-log (1/n) sum_i N(y; mu_i, sigma_i^2)`` (logsumexp over functions);
* **CRPS**: the closed form for a Gaussian mixture (Grimit et al., 2006),
  ``sum_i w_i A(y - mu_i, s_i^2) - 1/2 sum_ij w_i w_j A(mu_i - mu_j, s_i^2 + s_j^2)``
  with ``A(m, s^2) = 2 s phi(m/s) + m (2 Phi(m/s) - 1)``;
* **coverage** of central intervals at nominal levels ``alpha``: the fraction of
  targets whose PIT value ``F(y)`` (the mixture CDF) lies in ``[(1-alpha)/2, (1+alpha)/2]``;
* **calibration error**: mean ``|coverage - alpha|`` over a grid of levels.

The joint NLL of whole transitions (all dimensions together) is reported as well.
Everything is computed in float64 with no loop over functions.

Shapes: ``n`` functions, ``N`` targets, ``D = obs_dim``, ``L`` levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.uncertainty.decompose import (
    LOG_2PI,
    check_moments,
    function_moments,
    resolve_generator,
)

__all__ = [
    "DEFAULT_LEVELS",
    "GRID_LEVELS",
    "CalibrationResult",
    "calibration_error",
    "calibration_metrics",
    "calibration_metrics_from_moments",
    "central_coverage",
    "gaussian_crps",
    "joint_mixture_nll",
    "mixture_crps",
    "mixture_nll",
    "mixture_pit",
]

#: central-interval levels reported by default
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
#: the grid the calibration error averages over: 0.05, 0.10, ..., 0.95
GRID_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_CHUNK_ELEMENTS = 1 << 21
#: the pairwise CRPS term runs in cache-sized chunks of targets
_PAIR_CHUNK_ELEMENTS = 1 << 17


def _check_targets(means: Tensor, variances: Tensor, targets: Tensor) -> None:
    check_moments(means, variances)
    if not isinstance(targets, Tensor) or tuple(targets.shape) != tuple(means.shape[1:]):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise DataError(
            f"targets must have shape (N, D) = {tuple(means.shape[1:])} to match the means, "
            f"got {shape}"
        )
    if not bool(torch.isfinite(targets).all()):
        raise DataError("targets contain NaN or inf; drop those transitions first")


def _f64(*ts: Tensor) -> list[Tensor]:
    return [t.detach().to(torch.float64) for t in ts]


def _std_normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / _SQRT2)


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def mixture_nll(means: Tensor, variances: Tensor, targets: Tensor) -> Tensor:
    """Per-dimension NLL of the equal-weight Gaussian mixture.

    Args:
        means: ``(n, N, D)``.
        variances: ``(n, N, D)``.
        targets: ``(N, D)``.

    Returns:
        ``(N, D)`` float64 ``-log (1/n) sum_i N(y_d; mu_id, sigma_id^2)``.
    """
    _check_targets(means, variances, targets)
    mu, var, y = _f64(means, variances, targets)
    log_p = -0.5 * ((y - mu) ** 2 / var + var.log() + LOG_2PI)
    return -(torch.logsumexp(log_p, dim=0) - math.log(mu.shape[0]))


def joint_mixture_nll(means: Tensor, variances: Tensor, targets: Tensor) -> Tensor:
    """NLL of whole transitions under the mixture of diagonal Gaussians, ``(N,)`` float64."""
    _check_targets(means, variances, targets)
    mu, var, y = _f64(means, variances, targets)
    log_p = -0.5 * ((y - mu) ** 2 / var + var.log() + LOG_2PI).sum(-1)
    return -(torch.logsumexp(log_p, dim=0) - math.log(mu.shape[0]))


def gaussian_crps(mean: Tensor, variance: Tensor, target: Tensor) -> Tensor:
    """CRPS of a single Gaussian (Gneiting et al., 2005), elementwise.

    ``sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]`` with ``z = (y - mu) / sigma``.

    Args:
        mean: predictive means (broadcastable with the others).
        variance: predictive variances (broadcastable).
        target: observed values (broadcastable).

    Returns:
        CRPS in the units of ``target`` (float64).
    """
    mu, var, y = _f64(mean, variance, target)
    sd = var.sqrt()
    z = (y - mu) / sd
    return sd * (z * (2.0 * _std_normal_cdf(z) - 1.0) + 2.0 * _std_normal_pdf(z) - _INV_SQRT_PI)


def _a(m: Tensor, var: Tensor) -> Tensor:
    """``A(m, s^2) = E|X| = 2 s phi(m/s) + m erf(m / (s sqrt 2))`` for ``X ~ N(m, s^2)``.

    Written with in-place ops on fresh temporaries: this is the inner loop of the
    ``n^2`` CRPS term.
    """
    s = var.sqrt()
    z = m / s
    out = z.square().mul_(-0.5).exp_().mul_(2.0 / math.sqrt(2.0 * math.pi)).mul_(s)
    return out.add_(torch.erf(z.mul_(1.0 / _SQRT2)).mul_(m))


def mixture_crps(means: Tensor, variances: Tensor, targets: Tensor) -> Tensor:
    """Closed-form CRPS of the equal-weight Gaussian mixture per dimension (Grimit et al., 2006).

    ``CRPS = E|X - y| - 1/2 E|X - X'|``; the pairwise term costs ``n^2`` per target, so
    targets are processed in chunks to bound memory.

    Args:
        means: ``(n, N, D)``.
        variances: ``(n, N, D)``.
        targets: ``(N, D)``.

    Returns:
        ``(N, D)`` float64 CRPS (lower is better; 0 for a point mass on the target).
    """
    _check_targets(means, variances, targets)
    mu, var, y = _f64(means, variances, targets)
    n, big_n, d = mu.shape
    first = _a(y - mu, var).mean(0)
    # E|X - X'| = (1/n^2) [sum_i A(0, 2 s_i^2) + 2 sum_{i<j} A(mu_i - mu_j, s_i^2 + s_j^2)]
    diag = (2.0 * var).sqrt().sum(0) * (2.0 / math.sqrt(2.0 * math.pi))
    iu, ju = torch.triu_indices(n, n, offset=1)
    chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, iu.numel() * d))
    off_parts = []
    for lo in range(0, big_n, chunk):
        m, v = mu[:, lo : lo + chunk], var[:, lo : lo + chunk]
        off_parts.append(_a(m[iu] - m[ju], v[iu] + v[ju]).sum(0))
    off = torch.cat(off_parts) if off_parts else torch.zeros_like(first)
    return first - 0.5 * (diag + 2.0 * off) / (n * n)


def mixture_pit(means: Tensor, variances: Tensor, targets: Tensor) -> Tensor:
    """Probability integral transform: the mixture CDF at each target, ``(N, D)`` float64.

    For a calibrated model the values are uniform on ``[0, 1]``.
    """
    _check_targets(means, variances, targets)
    mu, var, y = _f64(means, variances, targets)
    return _std_normal_cdf((y - mu) / var.sqrt()).mean(0)


def _check_levels(levels: Sequence[float]) -> Tensor:
    lv = torch.as_tensor(list(levels), dtype=torch.float64)
    if lv.dim() != 1 or lv.numel() == 0 or bool(((lv <= 0) | (lv >= 1)).any()):
        raise DataError(f"levels must be a non-empty list of numbers in (0, 1), got {levels}")
    return lv


def central_coverage(pit: Tensor, levels: Sequence[float] = DEFAULT_LEVELS) -> Tensor:
    """Empirical coverage of central predictive intervals.

    Args:
        pit: ``(N, D)`` PIT values from :func:`mixture_pit`.
        levels: ``L`` nominal levels in ``(0, 1)``.

    Returns:
        ``(L, D)`` fraction of targets inside the central ``alpha`` interval,
        i.e. with ``(1 - alpha)/2 <= PIT <= (1 + alpha)/2``.
    """
    lv = _check_levels(levels)[:, None, None]
    p = pit.to(torch.float64).unsqueeze(0)
    inside = (p >= (1.0 - lv) / 2.0) & (p <= (1.0 + lv) / 2.0)
    return inside.to(torch.float64).mean(1)


def calibration_error(pit: Tensor, levels: Sequence[float] = GRID_LEVELS) -> Tensor:
    """Mean ``|coverage - nominal|`` over ``levels``, per dimension, ``(D,)``."""
    lv = _check_levels(levels)
    return (central_coverage(pit, levels) - lv[:, None]).abs().mean(0)


@dataclass
class CalibrationResult:
    """Calibration of the predictive mixture on held-out transitions (float64 tensors).

    Attributes:
        nll: ``(D,)`` mean per-dimension mixture NLL.
        joint_nll: mean NLL of whole transitions (all dimensions jointly), a float.
        crps: ``(D,)`` mean CRPS.
        levels: ``(L,)`` nominal levels of :attr:`coverage`.
        coverage: ``(L, D)`` empirical coverage of the central intervals.
        grid_levels: ``(G,)`` levels the calibration error averages over.
        grid_coverage: ``(G, D)`` empirical coverage on the grid (for plots).
        calibration_error: ``(D,)`` mean ``|grid_coverage - grid_levels|``.
        pit: ``(N, D)`` PIT values.
        num_functions: functions in the mixture.
    """

    nll: Tensor
    joint_nll: float
    crps: Tensor
    levels: Tensor
    coverage: Tensor
    grid_levels: Tensor
    grid_coverage: Tensor
    calibration_error: Tensor
    pit: Tensor
    num_functions: int

    @property
    def obs_dim(self) -> int:
        """Number of state dimensions ``D``."""
        return int(self.nll.shape[0])


def calibration_metrics_from_moments(
    means: Tensor,
    variances: Tensor,
    targets: Tensor,
    levels: Sequence[float] = DEFAULT_LEVELS,
    grid_levels: Sequence[float] = GRID_LEVELS,
) -> CalibrationResult:
    """All calibration metrics of the mixture given per-function moments.

    Args:
        means: ``(n, N, D)``.
        variances: ``(n, N, D)``.
        targets: ``(N, D)`` observed next states.
        levels: nominal levels to report coverage at.
        grid_levels: levels the calibration error averages over.

    Returns:
        :class:`CalibrationResult`.
    """
    pit = mixture_pit(means, variances, targets)
    lv, gv = _check_levels(levels), _check_levels(grid_levels)
    grid_cov = central_coverage(pit, grid_levels)
    return CalibrationResult(
        nll=mixture_nll(means, variances, targets).mean(0),
        joint_nll=float(joint_mixture_nll(means, variances, targets).mean()),
        crps=mixture_crps(means, variances, targets).mean(0),
        levels=lv,
        coverage=central_coverage(pit, levels),
        grid_levels=gv,
        grid_coverage=grid_cov,
        calibration_error=(grid_cov - gv[:, None]).abs().mean(0),
        pit=pit,
        num_functions=int(means.shape[0]),
    )


def calibration_metrics(
    model: DynamicsModel,
    obs: Tensor,
    action: Tensor,
    next_obs: Tensor,
    num_functions: int | None = None,
    generator: torch.Generator | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    grid_levels: Sequence[float] = GRID_LEVELS,
) -> CalibrationResult:
    """Calibration of ``model``'s predictive mixture on held-out transitions.

    Functions come from :meth:`DynamicsModel.posterior_functions`; each is treated as a
    diagonal Gaussian with its mean and variance.

    Args:
        model: a fitted dynamics model.
        obs: ``(N, obs_dim)`` held-out states.
        action: ``(N, action_dim)``.
        next_obs: ``(N, obs_dim)`` observed next states.
        num_functions: functions in the mixture (None: the model's analysis default).
        generator: source of the function draws (None: a generator seeded with 0).
        levels: nominal central-interval levels to report.
        grid_levels: levels the calibration error averages over.

    Returns:
        :class:`CalibrationResult`.

    Raises:
        DataError: inputs do not fit the model, or levels are outside ``(0, 1)``.

    Examples:
        >>> # result = calibration_metrics(model, batch.obs, batch.action, batch.next_obs)
        >>> # result.coverage[levels.index(0.9)]  -> (obs_dim,) coverage of 90% intervals
    """
    model.check_inputs(obs, action, next_obs)
    _check_levels(levels)
    fs = model.posterior_functions(num_functions, resolve_generator(generator))
    means, variances = function_moments(fs, obs, action)
    return calibration_metrics_from_moments(means, variances, next_obs, levels, grid_levels)
