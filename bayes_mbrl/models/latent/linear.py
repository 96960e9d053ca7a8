"""The latent model with its generative part fixed to a known linear-Gaussian system.

Only the recognition network (embedding, potential, single-step base) is trained, so
the encoders' posteriors can be compared with exact inference
(:func:`~bayes_mbrl.models.latent.kalman.kalman_filter`,
:func:`~bayes_mbrl.models.latent.kalman.rts_smoother`): the check that the filtering
encoder becomes the Kalman filter and the smoothing encoder the RTS smoother.

Only the methods the encoders and the ELBO use are replaced (``_transition``,
``_transition_all``, ``_init``, ``_decode``, ``_obs_scale``): ``sample_functions`` still
draws the (untrained) ensemble, so do not plan through this model.
"""

from __future__ import annotations

from torch import Tensor

from bayes_mbrl.models.latent.kalman import LinearGaussianSSM
from bayes_mbrl.models.latent.model import LatentStateSpaceModel

__all__ = ["KnownLinearModel"]


class KnownLinearModel(LatentStateSpaceModel):
    """A :class:`LatentStateSpaceModel` whose transition, decoder and prior are those
    of ``ssm`` (one transition member, no reward site); :meth:`encoder_parameters` are
    what is left to train.

    Args:
        ssm: the system (its latent size is the model's).
        encoder: one of :data:`~bayes_mbrl.models.latent.model.ENCODERS`.
        seed: seeds the recognition network.
    """

    def __init__(self, ssm: LinearGaussianSSM, encoder: str, seed: int = 0) -> None:
        super().__init__(
            ssm.obs_dim,
            ssm.action_dim,
            latent_dim=ssm.state_dim,
            encoder=encoder,
            num_members=1,
            hidden_sizes=[64, 64],
            embed_dim=32,
            seed=seed,
        )
        self.ssm = ssm
        f = {k: getattr(ssm, k).float() for k in ("A", "B", "C", "d", "Q", "R", "mu0", "P0")}
        self.f = f
        self.fitted = True

    def _transition(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        mean = z @ self.f["A"].T + action @ self.f["B"].T
        return mean, self.f["Q"].diagonal().expand_as(mean)

    def _transition_all(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return self._transition(z, action)

    def _init(self) -> tuple[Tensor, Tensor]:
        return self.f["mu0"], self.f["P0"]

    def _decode(self, z: Tensor) -> Tensor:
        return z @ self.f["C"].T + self.f["d"]

    def _obs_scale(self) -> Tensor:
        return self.f["R"].diagonal().sqrt()

    def encoder_parameters(self) -> list[Tensor]:
        n = self.nets
        return [*n.embed.parameters(), *n.potential.parameters(), n.base_raw]
