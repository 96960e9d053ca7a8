"""Dynamics models: every family implements :class:`~bayes_mbrl.models.base.DynamicsModel`."""

from bayes_mbrl.models.base import DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.models.bnn import BayesianNeuralNet
from bayes_mbrl.models.checks import check_model
from bayes_mbrl.models.ensemble import ProbabilisticEnsemble
from bayes_mbrl.models.gp import ExactGPDynamics, SparseGPDynamics
from bayes_mbrl.models.pyro_dynamics import PyroDynamics

__all__ = [
    "BayesianNeuralNet",
    "DynamicsModel",
    "ExactGPDynamics",
    "FitReport",
    "FunctionSample",
    "Predictive",
    "ProbabilisticEnsemble",
    "PyroDynamics",
    "SparseGPDynamics",
    "check_model",
]
