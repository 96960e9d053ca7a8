"""Dynamics models: every family implements :class:`~bayes_mbrl.models.base.DynamicsModel`."""

from bayes_mbrl.models.base import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.models.checks import check_model
from bayes_mbrl.models.ensemble import ProbabilisticEnsemble

__all__ = [
    "DynamicsModel",
    "FitReport",
    "FunctionSample",
    "Predictive",
    "ProbabilisticEnsemble",
    "check_model",
]
