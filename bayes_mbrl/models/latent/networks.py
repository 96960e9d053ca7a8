"""The networks of the latent state-space model: observation embeddings (an MLP for
vectors, a convolutional net for frames), the recognition potential of an observation,
the decoders and the reward head.

Frames arrive flat (the replay buffer stores flat float32 rows) and are reshaped to
``(frame_stack, H, W)`` here; a stack of frames is the channels of the convolutions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvDecoder",
    "ConvEmbedding",
    "MLPDecoder",
    "Potential",
    "RewardHead",
    "VectorEmbedding",
    "mlp",
]


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``Linear -> SiLU`` for each hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise([in_dim, *hidden]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    layers.append(nn.Linear(([in_dim, *hidden])[-1], out_dim))
    return nn.Sequential(*layers)


def _conv_trunk_sizes(size: int) -> int:
    """Number of stride-2 convolutions that bring ``size`` down to 4 (or below)."""
    return max(1, int(math.log2(size // 4))) if size >= 8 else 1


def _width(channels: int, layer: int) -> int:
    """Channels of convolution ``layer``: ``channels`` doubling per layer, at most 8x."""
    return channels * 2 ** min(layer, 3)


class ConvEmbedding(nn.Module):
    """Frames ``(..., C*H*W)`` -> embeddings ``(..., out_dim)``: stride-2 convolutions
    (``channels``, doubling per layer up to 8x) down to 4x4, then a linear layer.

    Args:
        frame_shape: ``(C, H, W)`` (square frames, ``H = W``, a power of two >= 8).
        out_dim: embedding size.
        channels: width of the first convolution.
    """

    def __init__(self, frame_shape: tuple[int, int, int], out_dim: int, channels: int = 16) -> None:
        super().__init__()
        c, h, w = frame_shape
        self.frame_shape = frame_shape
        layers: list[nn.Module] = []
        ch, size = c, h
        for i in range(_conv_trunk_sizes(h)):
            nxt = _width(channels, i)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.SiLU()]
            ch, size = nxt, size // 2
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(ch * size * (w * size // h), out_dim)

    def forward(self, frames: Tensor) -> Tensor:
        lead = frames.shape[:-1]
        x = frames.reshape(-1, *self.frame_shape)
        x = self.trunk(x).flatten(1)
        return self.head(x).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Latents ``(..., latent_dim)`` -> frame means ``(..., C*H*W)``, mirroring
    :class:`ConvEmbedding` with transposed convolutions.

    The output is linear (the mean of a Gaussian likelihood), not squashed into
    ``[0, 1]``: a pendulum frame is ~1% bright pixels, and a sigmoid output settles on
    an all-black frame, where its slope is nearly zero and never recovers (an
    autoencoder of these frames stayed at the all-black MSE 0.0093 for 600 steps with
    a sigmoid, and reached 0.00015 without one: ``experiments/conv_decoder_output.py``)."""

    def __init__(
        self, latent_dim: int, frame_shape: tuple[int, int, int], hidden: int, channels: int = 16
    ) -> None:
        super().__init__()
        c, h, _ = frame_shape
        self.frame_shape = frame_shape
        n = _conv_trunk_sizes(h)
        self.start = h // 2**n
        self.channels = _width(channels, n - 1)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, self.channels * self.start * self.start),
        )
        layers: list[nn.Module] = []
        ch = self.channels
        for i in reversed(range(n)):
            nxt = c if i == 0 else _width(channels, i - 1)
            layers.append(nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.SiLU())
            ch = nxt
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        x = self.fc(z).reshape(-1, self.channels, self.start, self.start)
        return self.deconv(x).reshape(*lead, -1)


class MLPDecoder(nn.Module):
    """Latents -> observation means (vectors, in the model's normalized units)."""

    def __init__(self, latent_dim: int, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(latent_dim, hidden, obs_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class Potential(nn.Module):
    """The recognition potential of one observation: a Gaussian factor in latent
    space, ``exp(-(z - mu)^T J (z - mu) / 2)`` (a pseudo-observation ``mu`` of the
    latent state with precision ``J = F F^T``, positive semi-definite), returned in
    information form ``(h = J mu, J)``.

    A filter multiplies its predicted belief by it (an exact Bayes update when the
    potential is the observation likelihood; for a linear-Gaussian observation
    ``o = C z + v`` that likelihood is exactly such a factor, ``J = C^T R^-1 C`` and
    ``C mu = o``, so the filter can become the Kalman filter).

    ``F = diag(exp(s)) (F_0 + W e)``: a learned constant ``F_0`` (initially the
    identity), a per-dimension log-scale ``s`` (precisions span orders of magnitude)
    and an observation-dependent part ``W e`` that starts near zero.

    Args:
        embed_dim: input embedding size.
        latent_dim: ``dz``.
    """

    def __init__(self, embed_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.mu = nn.Linear(embed_dim, latent_dim)
        self.f = nn.Linear(embed_dim, latent_dim * latent_dim)
        self.f0 = nn.Parameter(torch.eye(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))
        with torch.no_grad():
            self.f.weight.mul_(0.01)
            self.f.bias.zero_()

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., embed_dim) -> (h (..., dz), J (..., dz, dz))``."""
        d = self.latent_dim
        f = self.f0 + self.f(e).reshape(*e.shape[:-1], d, d)
        f = self.log_scale.exp().unsqueeze(-1) * f
        j = f @ f.transpose(-1, -2)
        return (j @ self.mu(e).unsqueeze(-1)).squeeze(-1), j


class VectorEmbedding(nn.Module):
    """Vector observations -> embeddings: an MLP plus a linear path (so that linear
    observation models are learned quickly)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, out_dim)
        self.linear = nn.Linear(obs_dim, out_dim, bias=False)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs) + self.linear(obs)


class RewardHead(nn.Module):
    """``r(z, a)``: the mean reward of a latent state and action (a Gaussian with a
    learned scale around it)."""

    def __init__(self, latent_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(latent_dim + action_dim, hidden, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([z, action], dim=-1)).squeeze(-1)

    def scale(self) -> Tensor:
        return F.softplus(self.log_scale) + 1e-3
