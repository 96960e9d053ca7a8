"""Uncertainty analysis of dynamics models: decomposition, calibration, ArviZ export.

Everything works on the :class:`~bayes_mbrl.models.base.DynamicsModel` protocol, so
every model family (ensembles, BNNs, user Pyro models, GPs) is analyzed the same way.
"""

from bayes_mbrl.uncertainty.calibration import (
    DEFAULT_LEVELS,
    GRID_LEVELS,
    CalibrationResult,
    calibration_error,
    calibration_metrics,
    calibration_metrics_from_moments,
    central_coverage,
    gaussian_crps,
    joint_mixture_nll,
    mixture_crps,
    mixture_nll,
    mixture_pit,
)
from bayes_mbrl.uncertainty.decompose import (
    EntropyDecomposition,
    ModelDecomposition,
    decompose,
    decompose_model,
    entropy_decomposition,
    function_moments,
)
from bayes_mbrl.uncertainty.inference_data import to_inference_data

__all__ = [
    "DEFAULT_LEVELS",
    "GRID_LEVELS",
    "CalibrationResult",
    "EntropyDecomposition",
    "ModelDecomposition",
    "calibration_error",
    "calibration_metrics",
    "calibration_metrics_from_moments",
    "central_coverage",
    "decompose",
    "decompose_model",
    "entropy_decomposition",
    "function_moments",
    "gaussian_crps",
    "joint_mixture_nll",
    "mixture_crps",
    "mixture_nll",
    "mixture_pit",
    "to_inference_data",
]
