"""Colored noise: unit variance, and the power spectrum falls as 1 / f**beta."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_mbrl.planning.noise import colored_noise


@pytest.mark.parametrize("n", [256, 255])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_unit_variance_and_power_law_spectrum(beta: float, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = colored_noise(beta, (3000, n), g)
    assert x.shape == (3000, n)
    assert abs(float(x.var()) - 1.0) < 0.04
    # periodogram averaged over sequences; slope of log power against log frequency
    power = (torch.fft.rfft(x.double()).abs() ** 2).mean(0)[1:-1]
    f = torch.fft.rfftfreq(n, dtype=torch.float64)[1:-1]
    lf, lp = f.log(), power.log()
    slope = float(((lf - lf.mean()) * (lp - lp.mean())).sum() / ((lf - lf.mean()) ** 2).sum())
    assert abs(slope + beta) < 0.05, slope


def test_white_noise_is_independent_and_correlation_grows_with_beta() -> None:
    g = torch.Generator().manual_seed(1)
    lag1 = []
    for beta in (0.0, 1.0, 2.0):
        x = colored_noise(beta, (2000, 200), g)
        lag1.append(float((x[:, 1:] * x[:, :-1]).mean() / x.var()))
    assert abs(lag1[0]) < 0.02 and 0.5 < lag1[1] < lag1[2] < 1.0
    with pytest.raises(ValueError, match="beta"):
        colored_noise(-1.0, (3, 10))
    assert math.isfinite(float(colored_noise(1.0, (2, 1)).sum()))
