"""Dynamics models: every family implements :class:`~bayes_mbrl.models.base.DynamicsModel`
and registers itself in :data:`~bayes_mbrl.models.base.MODELS` under its ``model.kind``.

Every module of this package is imported with it, so a new family's module
registers itself without any other file being edited.
"""

from bayes_mbrl.models.base import MODELS, DynamicsModel, FitReport, FunctionSample, Predictive
from bayes_mbrl.models.bnn import BayesianNeuralNet, BNNOptions
from bayes_mbrl.models.checks import check_model
from bayes_mbrl.models.ensemble import EnsembleOptions, ProbabilisticEnsemble
from bayes_mbrl.models.gp import ExactGPDynamics, SparseGPDynamics
from bayes_mbrl.models.posterior_draws import PosteriorDraws
from bayes_mbrl.models.pyro_dynamics import PyroDynamics, PyroOptions
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.registry import import_package_modules

import_package_modules(__name__)

# registered by the line above, in module order (after the families imported first)
from bayes_mbrl.models.gmm import GaussianMixture, GMMDynamics, GMMOptions, NIWPrior  # noqa: E402
from bayes_mbrl.models.linear_gaussian import (  # noqa: E402
    LinearGaussianDynamics,
    fit_linear_gaussian,
)

__all__ = [
    "MODELS",
    "BNNOptions",
    "BayesianNeuralNet",
    "DynamicsModel",
    "EnsembleOptions",
    "ExactGPDynamics",
    "FitReport",
    "FunctionSample",
    "GMMDynamics",
    "GMMOptions",
    "GaussianMixture",
    "LinearGaussianDynamics",
    "NIWPrior",
    "PosteriorDraws",
    "Predictive",
    "ProbabilisticEnsemble",
    "PyroDynamics",
    "PyroOptions",
    "SparseGPDynamics",
    "StepLoss",
    "check_model",
    "fit_linear_gaussian",
    "train_early_stopped",
]
