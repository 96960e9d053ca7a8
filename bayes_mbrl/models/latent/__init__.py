"""Latent state-space models: a Pyro state-space VAE over observation sequences
(vectors or frames) with four encoders (:mod:`.model`), its Gaussian belief algebra
(:mod:`.gaussian`), sequence distributions (:mod:`.sequences`), networks
(:mod:`.networks`) and the exact Kalman filter and RTS smoother of linear-Gaussian
systems that the encoders are tested against (:mod:`.kalman`).
"""

from bayes_mbrl.models.latent.model import (
    ENCODERS,
    Belief,
    LatentOptions,
    LatentStateSpaceModel,
    Sequences,
)

__all__ = ["ENCODERS", "Belief", "LatentOptions", "LatentStateSpaceModel", "Sequences"]
