"""Objectives: reduce returns ``(population, F, K)`` to one score per sequence.

The rollout evaluator imagines ``F`` posterior functions per sequence and ``K`` noise
draws on each (``planner.particles = F * K``; ``planner.functions = F``), so a
sequence's returns ``R[f, k]`` separate the two kinds of uncertainty by the law of
total variance (:func:`decompose_returns`):

- per-function expected return ``m_f = mean_k R[f, k]``;
- **epistemic** variance ``Var_f(m_f)``: the spread due to not knowing the model;
- **aleatoric** variance ``mean_f Var_k(R[f, k])``: the spread due to the noise;

and ``Var(R) = epistemic + aleatoric`` over all ``F * K`` returns (population
variances, equal group sizes). Each objective says which part it uses:

=====================  ================================================================
``mean``               ``mean_f m_f``: the expected-expected return (outer expectation over
                       functions, inner over the noise)
``mean_minus_std``     ``mean - beta * std`` of all ``F * K`` returns: averse to both kinds
``pessimistic``        ``mean - beta * sqrt(epistemic)``: pessimism over the model
``worst_function``     ``min_f m_f``: the worst function's expected return
``cvar``               ``mean_f CVaR_alpha(R[f, :])``: the mean of the worst ``alpha``
                       fraction of the noise draws of each function, averaged over the
                       functions (risk aversion over the noise; needs ``K >= 2``)
``optimistic``         ``mean + beta * sqrt(epistemic)``: optimism over the model
``info_gain``          ``mean`` of returns that collect ``beta * I_t`` at every step,
                       ``I_t`` the information gain about the function from the next
                       state (:func:`~bayes_mbrl.planning.propagation.information_gain`;
                       needs ``F >= 2``)
=====================  ================================================================

With ``K = 1`` (one noise draw per function, the default for a 5-member ensemble and 5
particles) the aleatoric part cannot be estimated: it is reported as 0 and the spread
across functions then holds both kinds (exact for deterministic models only).

Each registers in :data:`OBJECTIVES` by ``planner.objective`` next to its class and is
built by :func:`make_objective`, which passes ``beta`` (``planner.risk_beta``) and
``alpha`` (``planner.cvar_alpha``) to the dataclass fields of those names it has::

    @OBJECTIVES.register("median")
    class Median:
        \"\"\"The median over all particles.\"\"\"
        def __call__(self, returns: Tensor) -> Tensor:
            return returns.flatten(1).median(-1).values

An objective may declare ``min_noise_draws`` or ``min_functions`` (the evaluator refuses
a layout with fewer) and ``information_weight`` (the evaluator adds that multiple of
the information gain to every particle's return).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from torch import Tensor

from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.registry import Registry

__all__ = [
    "OBJECTIVES",
    "CVaR",
    "InformationGain",
    "Mean",
    "MeanMinusStd",
    "Objective",
    "Optimistic",
    "Pessimistic",
    "ReturnSplit",
    "WorstFunction",
    "decompose_returns",
    "make_objective",
]


class Objective(Protocol):
    """``(population, F, K) -> (population,)``, higher is better."""

    def __call__(self, returns: Tensor) -> Tensor: ...


class ReturnSplit(NamedTuple):
    """The law of total variance on a sequence's returns, each ``(population,)``."""

    mean: Tensor
    """The expected-expected return ``mean_f m_f``."""
    epistemic: Tensor
    """``Var_f(m_f)``: variance across functions of the per-function expected return."""
    aleatoric: Tensor
    """``mean_f Var_k(R[f, k])``: mean within-function variance (0 when ``K = 1``)."""

    @property
    def total(self) -> Tensor:
        """The variance of all ``F * K`` returns: ``epistemic + aleatoric``."""
        return self.epistemic + self.aleatoric


def _check_layout(returns: Tensor) -> None:
    if returns.dim() != 3:
        raise DataError(
            f"objectives take returns of shape (population, functions, noise draws), got "
            f"{tuple(returns.shape)}; reshape flat particle returns as (population, F, K)"
        )


def decompose_returns(returns: Tensor) -> ReturnSplit:
    """Split the spread of each sequence's returns into epistemic and aleatoric parts.

    Args:
        returns: ``(population, F, K)``, ``[b, f, k]`` the return of sequence ``b`` on
            function ``f`` with noise draw ``k``.

    Returns:
        :class:`ReturnSplit` of population (``1/n``) variances, so that
        ``epistemic + aleatoric`` equals the variance of all ``F * K`` returns.
    """
    _check_layout(returns)
    per_function = returns.mean(-1)
    return ReturnSplit(
        mean=per_function.mean(-1),
        epistemic=per_function.var(-1, unbiased=False),
        aleatoric=returns.var(-1, unbiased=False).mean(-1),
    )


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective", "planner.objective")
"""Objectives by ``planner.objective``: classes built by :func:`make_objective`."""


@OBJECTIVES.register("mean")
@dataclass(frozen=True)
class Mean:
    """Expected-expected return: the mean over functions and noise draws."""

    def __call__(self, returns: Tensor) -> Tensor:
        _check_layout(returns)
        return returns.mean((-2, -1))


@OBJECTIVES.register("mean_minus_std")
@dataclass(frozen=True)
class MeanMinusStd:
    """Averse to all spread: ``mean - beta * std`` over all particles."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        _check_layout(returns)
        flat = returns.flatten(1)
        return flat.mean(-1) - self.beta * flat.std(-1, unbiased=False)


@OBJECTIVES.register("pessimistic")
@dataclass(frozen=True)
class Pessimistic:
    """Pessimism over model uncertainty: ``mean - beta * epistemic std``."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        split = decompose_returns(returns)
        return split.mean - self.beta * split.epistemic.sqrt()


@OBJECTIVES.register("worst_function")
@dataclass(frozen=True)
class WorstFunction:
    """Pessimism over model uncertainty: the worst function's expected return."""

    def __call__(self, returns: Tensor) -> Tensor:
        _check_layout(returns)
        return returns.mean(-1).min(-1).values


@OBJECTIVES.register("cvar")
@dataclass(frozen=True)
class CVaR:
    """Risk aversion over noise: per function, the mean of the worst ``ceil(alpha * K)``
    noise draws, averaged over functions."""

    alpha: float = 0.1
    min_noise_draws = 2

    def __call__(self, returns: Tensor) -> Tensor:
        _check_layout(returns)
        k = max(1, math.ceil(self.alpha * returns.shape[-1]))
        return returns.topk(k, dim=-1, largest=False).values.mean((-2, -1))


@OBJECTIVES.register("optimistic")
@dataclass(frozen=True)
class Optimistic:
    """Optimism over model uncertainty: ``mean + beta * epistemic std``."""

    beta: float = 1.0

    def __call__(self, returns: Tensor) -> Tensor:
        split = decompose_returns(returns)
        return split.mean + self.beta * split.epistemic.sqrt()


@OBJECTIVES.register("info_gain")
@dataclass(frozen=True)
class InformationGain:
    """Exploration by information gain: the mean of returns that add ``beta * I_t`` per step."""

    beta: float = 1.0
    min_functions = 2

    @property
    def information_weight(self) -> float:
        """What the evaluator adds per nat of information gain to each step's reward."""
        return self.beta

    def __call__(self, returns: Tensor) -> Tensor:
        _check_layout(returns)
        return returns.mean((-2, -1))


def make_objective(name: str, beta: float = 1.0, alpha: float = 0.1) -> Objective:
    """Build a registered objective by name.

    The objective's dataclass fields named ``beta`` and ``alpha`` get these values.

    Args:
        name: a name in :data:`OBJECTIVES`.
        beta: weight of the (epistemic) std for ``mean_minus_std``, ``pessimistic`` and
            ``optimistic``, of the information gain for ``info_gain``; ``>= 0``.
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
