"""Temporally correlated ("colored") Gaussian noise for exploration.

Power-law noise with spectral density ``S(f) ~ 1 / f**beta`` along the time axis:
``beta = 0`` is white noise (independent steps), ``beta = 1`` pink, ``beta = 2`` red
(Brownian-like). Correlated action noise explores farther than white noise of the same
variance: it pushes in one direction for many steps (Pinneri et al. 2020, iCEM;
Eberhard et al. 2023, "Pink noise is all you need", where SAC with pink action noise
solves MountainCarContinuous). The construction follows Timmer & Koenig (1995): random
Fourier coefficients with standard deviations ``f**(-beta/2)``, transformed back,
scaled to unit variance.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["colored_noise"]


def colored_noise(
    beta: float, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> Tensor:
    """Gaussian noise of ``shape`` whose last axis (time, length ``T``) has spectrum
    ``1 / f**beta``, scaled so that every sequence has expected unit variance.

    Args:
        beta: the exponent (0 white, 1 pink, 2 red); >= 0.
        shape: ``(..., T)``.
        generator: seeds the draw.
    """
    if beta < 0:
        raise ValueError(f"colored_noise: beta = {beta}, expected >= 0")
    n = shape[-1]
    if beta == 0 or n < 2:
        return torch.randn(shape, generator=generator)
    lead = (*shape[:-1], n // 2 + 1)
    real = torch.randn(lead, generator=generator, dtype=torch.float64)
    scale, sigma = _spectrum(float(beta), n, real.device)
    real = real * scale
    imag = torch.randn(lead, generator=generator, dtype=torch.float64) * scale
    imag[..., 0] = 0.0
    real[..., 0] *= math.sqrt(2.0)
    if n % 2 == 0:
        imag[..., -1] = 0.0
        real[..., -1] *= math.sqrt(2.0)
    y = torch.fft.irfft(torch.complex(real, imag), n=n) / sigma
    return y.float()


@functools.cache
def _spectrum(beta: float, n: int, device: torch.device) -> tuple[Tensor, float]:
    """The coefficients' standard deviations ``f**(-beta/2)`` on ``device`` and the
    standard deviation ``sigma`` of the transformed sequence (computed once on the CPU:
    drawing noise copies nothing to or from the host)."""
    f = torch.fft.rfftfreq(n, dtype=torch.float64, device="cpu")
    f[0] = 1.0 / n  # the lowest frequency stands in for f = 0 (no infinite power)
    scale = f ** (-beta / 2.0)
    # irfft(c)[t] = (1/n) sum over the full (Hermitian) spectrum: each coefficient
    # strictly between the mean and the Nyquist one appears twice, with E|c|^2 = 2 s^2;
    # the mean (and, for even n, the Nyquist) coefficient is real with variance 2 s^2
    inner = scale[1:-1] if n % 2 == 0 else scale[1:]
    var = 2.0 * float(scale[0] ** 2) + 4.0 * float((inner**2).sum())
    if n % 2 == 0:
        var += 2.0 * float(scale[-1] ** 2)
    return scale.to(device), math.sqrt(var) / n
