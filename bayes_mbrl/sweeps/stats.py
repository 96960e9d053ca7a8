"""Statistics for comparing runs across seeds (Agarwal et al. 2021, "Deep RL at the
edge of the statistical precipice", as in the ``rliable`` library).

Scores come as a matrix ``(runs, tasks)``: one score per run (seed) of each task.

- :func:`iqm`: the interquartile mean, the mean of the scores left after cutting
  ``floor(n / 4)`` of the ``n`` at each end (``scipy.stats.trim_mean(x, 0.25)``, as
  ``rliable`` computes it), robust to an outlier seed;
- :func:`stratified_bootstrap`: resamples runs with replacement within each task
  (stratum), so every replicate keeps each task's share of the scores;
- :func:`probability_of_improvement`: ``P(X > Y)`` of a run of X against a run of Y,
  ties counted half (the Mann-Whitney U statistic over ``n * m``), averaged over tasks;
- :func:`curve_band`: the mean over runs at each point of a learning curve, with a
  percentile bootstrap interval over runs.

Intervals are percentile intervals of bootstrap replicates drawn from a seeded
``numpy.random.Generator``, so the same inputs give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bayes_mbrl.errors import DataError

__all__ = [
    "Estimate",
    "curve_band",
    "interval_estimate",
    "iqm",
    "percentile_interval",
    "probability_of_improvement",
    "probability_of_improvement_estimate",
    "stratified_bootstrap",
]

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps replicates ``(reps, runs, tasks)`` to one value per replicate ``(reps,)``."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval.

    Attributes:
        value: the statistic of the data.
        low: lower end of the interval.
        high: upper end of the interval.
    """

    value: float
    low: float
    high: float


def _matrix(scores: np.ndarray | list[float], what: str) -> np.ndarray:
    """Scores as a float matrix ``(runs, tasks)`` (a vector is one task)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise DataError(f"{what}: expected scores of shape (runs, tasks), got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: scores contain NaN or inf; drop those runs first")
    return x


def iqm(scores: np.ndarray | list[float]) -> float:
    """Interquartile mean of all scores (runs x tasks pooled): the mean after cutting
    ``floor(n / 4)`` of the ``n`` scores at each end."""
    x = _matrix(scores, "iqm")
    return float(iqm_of_replicates(x[None])[0])


def iqm_of_replicates(samples: np.ndarray) -> np.ndarray:
    """The IQM of each replicate ``(reps, runs, tasks) -> (reps,)``."""
    flat = np.sort(samples.reshape(len(samples), -1), axis=1)
    cut = flat.shape[1] // 4
    return np.asarray(flat[:, cut : flat.shape[1] - cut].mean(axis=1))


def mean_of_replicates(samples: np.ndarray) -> np.ndarray:
    """The mean of each replicate ``(reps, runs, tasks) -> (reps,)``."""
    return np.asarray(samples.reshape(len(samples), -1).mean(axis=1))


def stratified_bootstrap(
    scores: np.ndarray | list[float], reps: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of ``scores`` ``(runs, tasks)``, resampling runs with
    replacement independently within each task: shape ``(reps, runs, tasks)``."""
    x = _matrix(scores, "stratified_bootstrap")
    runs, tasks = x.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(x, (reps, runs, tasks)), idx, axis=1)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``confidence`` percentile interval of bootstrap replicates."""
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def interval_estimate(
    scores: np.ndarray | list[float],
    statistic: Statistic = iqm_of_replicates,
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Estimate:
    """A statistic of ``scores`` ``(runs, tasks)`` with its stratified bootstrap
    percentile interval (default: the IQM with its 95% interval)."""
    x = _matrix(scores, "interval_estimate")
    rng = rng if rng is not None else np.random.default_rng(0)
    value = float(statistic(x[None])[0])
    low, high = percentile_interval(statistic(stratified_bootstrap(x, reps, rng)), confidence)
    return Estimate(value, low, high)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``P(X > Y) + P(X = Y) / 2`` averaged over tasks, for batches ``(..., runs, tasks)``."""
    greater = x[..., :, None, :] > y[..., None, :, :]
    equal = x[..., :, None, :] == y[..., None, :, :]
    per_task = (greater + 0.5 * equal).mean(axis=(-3, -2))
    return np.asarray(per_task.mean(axis=-1))


def probability_of_improvement(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Probability that a run of X scores higher than a run of Y (ties count half),
    averaged over tasks: ``x`` is ``(runs_x, tasks)``, ``y`` is ``(runs_y, tasks)``."""
    a, b = _matrix(x, "probability_of_improvement"), _matrix(y, "probability_of_improvement")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"x has {a.shape[1]} tasks and y {b.shape[1]}; they must match")
    return float(_improvement(a, b))


def probability_of_improvement_estimate(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Estimate:
    """:func:`probability_of_improvement` with a percentile interval from resampling the
    runs of X and of Y independently, within each task."""
    rng = rng if rng is not None else np.random.default_rng(0)
    value = probability_of_improvement(x, y)
    bx, by = stratified_bootstrap(x, reps, rng), stratified_bootstrap(y, reps, rng)
    low, high = percentile_interval(_improvement(bx, by), confidence)
    return Estimate(value, low, high)


def curve_band(
    values: np.ndarray,
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs at each point of learning curves, with a bootstrap interval.

    Args:
        values: ``(runs, points)``; NaN where a run has no value (a shorter run).
        reps: bootstrap replicates.
        confidence: coverage of the interval.
        rng: the generator (default: seeded with 0).

    Returns:
        ``mean``, ``low``, ``high`` and ``count`` (runs with a value), each ``(points,)``;
        NaN where no run has a value.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise DataError(f"curve_band: expected values of shape (runs, points), got {v.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    points = v.shape[1]
    mean, low, high = (np.full(points, np.nan) for _ in range(3))
    count = np.isfinite(v).sum(axis=0)
    for j in range(points):
        column = v[np.isfinite(v[:, j]), j]
        if len(column) == 0:
            continue
        mean[j] = column.mean()
        boot = column[rng.integers(0, len(column), size=(reps, len(column)))].mean(axis=1)
        low[j], high[j] = percentile_interval(boot, confidence)
    return mean, low, high, count
