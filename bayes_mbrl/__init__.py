"""bayes_mbrl: Bayesian model-based reinforcement learning.

Dynamics models are posteriors over functions (bootstrap ensembles, Pyro and
GPyTorch models); planners score action sequences by imagined returns under
those posteriors, keeping epistemic and aleatoric uncertainty apart.
"""

from bayes_mbrl.errors import (
    BayesMBRLError,
    CheckpointError,
    ConfigError,
    DataError,
    EnvError,
    ModelError,
)

__version__ = "0.1.0"

__all__ = [
    "BayesMBRLError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EnvError",
    "ModelError",
    "__version__",
]
