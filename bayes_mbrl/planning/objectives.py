"""Objectives: reduce per-particle returns ``(population, particles)`` to one score per sequence.

``mean`` is the expected-expected reward (outer expectation over posterior
functions, inner over the noise); the others trade it against the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from bayes_mbrl.errors import ConfigError

__all__ = [
    "OBJECTIVES",
    "CVaR",
    "Mean",
    "MeanMinusStd",
    "Objective",
    "Optimistic",
    "make_objective",
]


class Objective(Protocol):
    """``(population, particles) -> (population,)``, higher is better."""

    def __call__(self, returns: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Mean:
    """Expected-expected return: the mean over particles."""

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1)


@dataclass(frozen=True)
class MeanMinusStd:
    """Risk-averse ``mean - beta * std`` over particles."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1) - self.beta * returns.std(-1, unbiased=False)


@dataclass(frozen=True)
class Optimistic:
    """Optimism in the face of uncertainty: ``mean + beta * std``."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1) + self.beta * returns.std(-1, unbiased=False)


@dataclass(frozen=True)
class CVaR:
    """Conditional value at risk: the mean of the worst ``ceil(alpha * particles)`` returns."""

    alpha: float = 0.1

    def __call__(self, returns: Tensor) -> Tensor:
        k = max(1, math.ceil(self.alpha * returns.shape[-1]))
        return returns.topk(k, dim=-1, largest=False).values.mean(-1)


OBJECTIVES = ("mean", "mean_minus_std", "cvar", "optimistic")


def make_objective(name: str, beta: float = 1.0, alpha: float = 0.1) -> Objective:
    """Build an objective by name.

    Args:
        name: one of :data:`OBJECTIVES`.
        beta: weight of the standard deviation (``mean_minus_std``, ``optimistic``), ``>= 0``.
        alpha: tail fraction for ``cvar`` in ``(0, 1]``.

    Raises:
        ConfigError: unknown name or out-of-range parameter.
    """
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {list(OBJECTIVES)}")
    if beta < 0:
        raise ConfigError(f"objective beta must be >= 0, got {beta}")
    if not 0 < alpha <= 1:
        raise ConfigError(f"cvar alpha must be in (0, 1], got {alpha}")
    if name == "mean":
        return Mean()
    if name == "mean_minus_std":
        return MeanMinusStd(beta)
    if name == "optimistic":
        return Optimistic(beta)
    return CVaR(alpha)
