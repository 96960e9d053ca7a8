"""Algorithms built on models and planners: each an agent/learner pair registered
in :data:`~bayes_mbrl.algorithms.base.ALGORITHMS` under its ``experiment.mode``.

Every module of this package is imported with it, so a new algorithm module
registers itself without any other file being edited.
"""

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Agent,
    Algorithm,
    AlgorithmParts,
    Learner,
    build_algorithm,
    build_model,
    check_mode_fits_task,
)
from bayes_mbrl.algorithms.gps import (
    EnvSampler,
    FunctionSampler,
    GPSOptions,
    GuidedPolicySearch,
    LinearGaussianController,
    kl_constrained_step,
)
from bayes_mbrl.algorithms.mpc import MODES, MPCAgent, MPCAlgorithm, RandomAgent
from bayes_mbrl.registry import import_package_modules

import_package_modules(__name__)

__all__ = [
    "ALGORITHMS",
    "MODES",
    "Agent",
    "Algorithm",
    "AlgorithmParts",
    "EnvSampler",
    "FunctionSampler",
    "GPSOptions",
    "GuidedPolicySearch",
    "Learner",
    "LinearGaussianController",
    "MPCAgent",
    "MPCAlgorithm",
    "RandomAgent",
    "build_algorithm",
    "build_model",
    "check_mode_fits_task",
    "kl_constrained_step",
]
