"""Uncertainty analysis of dynamics models: decomposition, calibration, ArviZ export,
model comparison, figures and a one-call report.

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
from bayes_mbrl.uncertainty.compare import compare_models, mean_mixture_nll
from bayes_mbrl.uncertainty.decompose import (
    EntropyDecomposition,
    ModelDecomposition,
    decompose,
    decompose_model,
    entropy_decomposition,
    function_moments,
)
from bayes_mbrl.uncertainty.inference_data import to_inference_data
from bayes_mbrl.uncertainty.plots import (
    PredictiveBands,
    plot_calibration,
    plot_posterior,
    plot_predictive_bands,
    predictive_bands,
)
from bayes_mbrl.uncertainty.recalibration import (
    VarianceRecalibration,
    cross_fitted_recalibration,
    fit_variance_recalibration,
)
from bayes_mbrl.uncertainty.report import summary_table, uncertainty_report

__all__ = [
    "DEFAULT_LEVELS",
    "GRID_LEVELS",
    "CalibrationResult",
    "EntropyDecomposition",
    "ModelDecomposition",
    "PredictiveBands",
    "VarianceRecalibration",
    "calibration_error",
    "calibration_metrics",
    "calibration_metrics_from_moments",
    "central_coverage",
    "compare_models",
    "cross_fitted_recalibration",
    "decompose",
    "decompose_model",
    "entropy_decomposition",
    "fit_variance_recalibration",
    "function_moments",
    "gaussian_crps",
    "joint_mixture_nll",
    "mean_mixture_nll",
    "mixture_crps",
    "mixture_nll",
    "mixture_pit",
    "plot_calibration",
    "plot_posterior",
    "plot_predictive_bands",
    "predictive_bands",
    "summary_table",
    "to_inference_data",
    "uncertainty_report",
]
