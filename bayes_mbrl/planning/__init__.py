"""Planning with uncertainty: the rollout evaluator, objectives and planners."""

from bayes_mbrl.planning.objectives import (
    OBJECTIVES,
    CVaR,
    Mean,
    MeanMinusStd,
    Objective,
    Optimistic,
    make_objective,
)
from bayes_mbrl.planning.optimizers import (
    PLANNERS,
    CEMPlanner,
    MPPIPlanner,
    Planner,
    PlanResult,
    RandomShootingPlanner,
)
from bayes_mbrl.planning.rollout import PRECISIONS, PROPAGATIONS, RolloutEvaluator

__all__ = [
    "OBJECTIVES",
    "PLANNERS",
    "PRECISIONS",
    "PROPAGATIONS",
    "CEMPlanner",
    "CVaR",
    "MPPIPlanner",
    "Mean",
    "MeanMinusStd",
    "Objective",
    "Optimistic",
    "PlanResult",
    "Planner",
    "RandomShootingPlanner",
    "RolloutEvaluator",
    "make_objective",
]
