"""Planning with uncertainty: the rollout evaluator, propagations, imagination,
objectives and planners.

Planners, propagations and objectives are chosen by name from the registries
:data:`PLANNERS`, :data:`PROPAGATIONS` and :data:`OBJECTIVES`; a new one registers
next to its class (see :mod:`bayes_mbrl.registry`).
"""

from bayes_mbrl.planning.belief import belief_step, gp_belief_step
from bayes_mbrl.planning.graphs import GraphPlans
from bayes_mbrl.planning.imagine import (
    PRECISIONS,
    ImaginedTransitions,
    Policy,
    imagine,
    skip_host_checks,
)
from bayes_mbrl.planning.lqr import (
    ILQRPlanner,
    ILQRResult,
    LQRSolution,
    TrajectoryProblem,
    box_qp,
    ilqr,
    lqr,
)
from bayes_mbrl.planning.mcts import MCTSOptions, MCTSPlanner, MCTSResult
from bayes_mbrl.planning.objectives import (
    OBJECTIVES,
    CVaR,
    InformationGain,
    Mean,
    MeanMinusStd,
    Objective,
    Optimistic,
    Pessimistic,
    ReturnSplit,
    WorstFunction,
    decompose_returns,
    make_objective,
)
from bayes_mbrl.planning.optimizers import (
    PLANNERS,
    CapturablePlanner,
    CEMPlanner,
    ICEMPlanner,
    MPPIPlanner,
    Planner,
    PlannerSettings,
    PlanResult,
    RandomShootingPlanner,
    Searched,
)
from bayes_mbrl.planning.precision import PRECISION_CHOICES, native_bf16, resolve_precision
from bayes_mbrl.planning.propagation import (
    PROPAGATIONS,
    TS1,
    Expectation,
    MomentMatching,
    ParticlePropagation,
    Propagation,
    TSInf,
    information_gain,
)
from bayes_mbrl.planning.rollout import RolloutEvaluator, Scorer

__all__ = [
    "OBJECTIVES",
    "PLANNERS",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "PROPAGATIONS",
    "TS1",
    "CEMPlanner",
    "CVaR",
    "CapturablePlanner",
    "Expectation",
    "GraphPlans",
    "ICEMPlanner",
    "ILQRPlanner",
    "ILQRResult",
    "ImaginedTransitions",
    "InformationGain",
    "LQRSolution",
    "MCTSOptions",
    "MCTSPlanner",
    "MCTSResult",
    "MPPIPlanner",
    "Mean",
    "MeanMinusStd",
    "MomentMatching",
    "Objective",
    "Optimistic",
    "ParticlePropagation",
    "Pessimistic",
    "PlanResult",
    "Planner",
    "PlannerSettings",
    "Policy",
    "Propagation",
    "RandomShootingPlanner",
    "ReturnSplit",
    "RolloutEvaluator",
    "Scorer",
    "Searched",
    "TSInf",
    "TrajectoryProblem",
    "WorstFunction",
    "belief_step",
    "box_qp",
    "decompose_returns",
    "gp_belief_step",
    "ilqr",
    "imagine",
    "information_gain",
    "lqr",
    "make_objective",
    "native_bf16",
    "resolve_precision",
    "skip_host_checks",
]
