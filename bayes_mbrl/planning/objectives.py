"""Objectives: reduce per-particle returns ``(population, particles)`` to one score per sequence.

``mean`` is the expected-expected reward (outer expectation over posterior
functions, inner over the noise); the others trade it against the spread.

Each registers in :data:`OBJECTIVES` by ``planner.objective`` next to its class and is
built by :func:`make_objective`, which passes ``beta`` (``planner.risk_beta``) and
``alpha`` (``planner.cvar_alpha``) to the dataclass fields of those names it has::

    @OBJECTIVES.register("median")
    class Median:
        \"\"\"The median over particles.\"\"\"
        def __call__(self, returns: Tensor) -> Tensor:
            return returns.median(-1).values
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from bayes_mbrl.errors import ConfigError
from bayes_mbrl.registry import Registry

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


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective", "planner.objective")
"""Objectives by ``planner.objective``: classes built by :func:`make_objective`."""


@OBJECTIVES.register("mean")
@dataclass(frozen=True)
class Mean:
    """Expected-expected return: the mean over particles."""

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1)


@OBJECTIVES.register("mean_minus_std")
@dataclass(frozen=True)
class MeanMinusStd:
    """Risk-averse ``mean - beta * std`` over particles."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1) - self.beta * returns.std(-1, unbiased=False)


@OBJECTIVES.register("cvar")
@dataclass(frozen=True)
class CVaR:
    """Conditional value at risk: the mean of the worst ``ceil(alpha * particles)`` returns."""

    alpha: float = 0.1

    def __call__(self, returns: Tensor) -> Tensor:
        k = max(1, math.ceil(self.alpha * returns.shape[-1]))
        return returns.topk(k, dim=-1, largest=False).values.mean(-1)


@OBJECTIVES.register("optimistic")
@dataclass(frozen=True)
class Optimistic:
    """Optimism in the face of uncertainty: ``mean + beta * std``."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        return returns.mean(-1) + self.beta * returns.std(-1, unbiased=False)


def make_objective(name: str, beta: float = 1.0, alpha: float = 0.1) -> Objective:
    """Build a registered objective by name.

    The objective's dataclass fields named ``beta`` and ``alpha`` get these values.

    Args:
        name: a name in :data:`OBJECTIVES`.
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
    cls = OBJECTIVES[name]
    given = {"beta": beta, "alpha": alpha}
    names: list[str] = (
        [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    )
    return cls(**{n: given[n] for n in names if n in given})
