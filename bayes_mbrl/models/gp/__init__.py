"""Gaussian-process dynamics: exact and sparse variational multi-output GPs (GPyTorch).

One independent GP per state dimension, held as one *batched* GPyTorch model with
``batch_shape = (obs_dim,)``, over normalized inputs ``(s, a)`` and normalized
deltas ``s' - s``. The Gaussian likelihood's noise is the aleatoric part; the
posterior variance of ``f`` is the epistemic part.

- :class:`ExactGPDynamics` (``model.kind = "gp"``, :mod:`.exact`): BoTorch
  ``SingleTaskGP``, exact marginal likelihood; cubic in the number of points.
- :class:`SparseGPDynamics` (``model.kind = "sparse_gp"``, :mod:`.sparse`): SVGP
  with ``M`` inducing points, minibatch ELBO; for 10^4 - 10^5 transitions.

The prior is a built-in kernel (``"se"``, ``"matern52"``, ``"matern32"``) or a
user's GPyTorch kernel and mean (:mod:`.kernels`). Function draws are pathwise
(:mod:`.paths`); hyperparameters are fitted by one loop (:mod:`.numerics`); an
SE-ARD exact GP exports itself as an :class:`SEGP` for moment matching
(:mod:`.se_posterior`).
"""

from bayes_mbrl.models.gp.common import PATH_DTYPES, PREDICT_BLOCK, GPPriorOptions
from bayes_mbrl.models.gp.exact import EXACT_GP_MAX_POINTS, ExactGPDynamics, GPOptions
from bayes_mbrl.models.gp.kernels import (
    FEATURE_MAP_KERNELS,
    KERNELS,
    ModuleFactory,
    check_feature_map,
)
from bayes_mbrl.models.gp.numerics import (
    fit_hyperparameters,
    kmeans_inducing_points,
    with_jitter_escalation,
)
from bayes_mbrl.models.gp.paths import GPFunctionSample, ModulePathSample
from bayes_mbrl.models.gp.se_posterior import SEGP
from bayes_mbrl.models.gp.sparse import SparseGPDynamics, SparseGPOptions

__all__ = [
    "EXACT_GP_MAX_POINTS",
    "FEATURE_MAP_KERNELS",
    "KERNELS",
    "PATH_DTYPES",
    "PREDICT_BLOCK",
    "SEGP",
    "ExactGPDynamics",
    "GPFunctionSample",
    "GPOptions",
    "GPPriorOptions",
    "ModuleFactory",
    "ModulePathSample",
    "SparseGPDynamics",
    "SparseGPOptions",
    "check_feature_map",
    "fit_hyperparameters",
    "kmeans_inducing_points",
    "with_jitter_escalation",
]
