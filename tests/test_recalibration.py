"""Post-hoc variance recalibration: the aleatoric and the epistemic scale are recovered
when known, the cross-fitted error is held out, and the report carries both."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bayes_mbrl.errors import DataError
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.uncertainty import (
    calibration_metrics_from_moments,
    cross_fitted_recalibration,
    fit_variance_recalibration,
    uncertainty_report,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_uncertainty import as_buffer, make_batch


def mixture_with_known_miscalibration(
    n: int = 5, N: int = 2000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets drawn from a mixture, presented with each function's variance 4x too
    large and the means' spread 3x too wide (9x its variance): the scales that undo it
    are 1/4 (aleatoric) and 1/9 (epistemic), shrinking the means toward their average."""
    g = torch.Generator().manual_seed(seed)
    center = torch.randn(1, N, 2, generator=g)
    offsets = 0.7 * torch.randn(n, N, 2, generator=g)
    offsets = offsets - offsets.mean(0)  # the mixture's center is `center`: no bias
    sd = 0.2 + 0.3 * torch.rand(n, N, 2, generator=g)
    pick = torch.randint(0, n, (N,), generator=g)
    rows = torch.arange(N)
    means = center + offsets
    targets = means[pick, rows] + sd[pick, rows] * torch.randn(N, 2, generator=g)
    return center + 3.0 * offsets, 4.0 * sd**2, targets


def test_known_scales_are_recovered_and_the_error_drops() -> None:
    means, variances, targets = mixture_with_known_miscalibration()
    before = calibration_metrics_from_moments(means, variances, targets).calibration_error
    fit = fit_variance_recalibration(means, variances, targets)
    # the grid steps by 0.25 in log-scale; the search may trade one part against the
    # other within the sampling error of 2000 targets
    assert (fit.aleatoric_scale.log() - math.log(1 / 4)).abs().max() < 0.6
    assert (fit.epistemic_scale.log() - math.log(1 / 9)).abs().max() < 0.6
    m, v = fit.apply(means, variances)
    after = calibration_metrics_from_moments(m, v, targets).calibration_error
    assert bool((before > 0.1).all()) and bool((after < 0.03).all())
    torch.testing.assert_close(after, fit.calibration_error.to(after.dtype))


def test_a_calibrated_mixture_keeps_scales_near_one() -> None:
    means, variances, targets = mixture_with_known_miscalibration(seed=1)
    spread = means.mean(0, keepdim=True)
    calibrated_means = spread + (means - spread) / 3.0
    fit = fit_variance_recalibration(calibrated_means, variances / 4.0, targets)
    assert fit.aleatoric_scale.log().abs().max() < 0.6
    assert fit.epistemic_scale.log().abs().max() < 0.6


def test_cross_fitting_scores_each_half_with_the_other_halfs_scales() -> None:
    means, variances, targets = mixture_with_known_miscalibration(seed=2)
    result, fits = cross_fitted_recalibration(means, variances, targets)
    assert len(fits) == 2
    assert bool((result.calibration_error < 0.05).all())
    # the second half scored with the scales fitted on the first half, and so on
    half = targets.shape[0] // 2
    m, v = fits[0].apply(means[:, half:].double(), variances[:, half:].double())
    second = calibration_metrics_from_moments(m, v, targets[half:].double())
    torch.testing.assert_close(result.pit[: targets.shape[0] - half], second.pit)


def test_bad_input_is_named() -> None:
    means, variances, targets = mixture_with_known_miscalibration(N=10)
    with pytest.raises(DataError, match="targets"):
        fit_variance_recalibration(means, variances, targets[:, :1])
    with pytest.raises(DataError, match="at least 4"):
        cross_fitted_recalibration(means[:, :3], variances[:, :3], targets[:3])
    bad = variances.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit_variance_recalibration(means, bad, targets)


def test_the_report_has_the_recalibrated_rows_and_the_scales(tmp_path: Path) -> None:
    train, held_out = make_batch(120, seed=0), make_batch(60, seed=1)
    model = ProbabilisticEnsemble(2, 1, num_members=4, hidden_sizes=[16], max_epochs=3)
    model.fit(as_buffer(train), torch.Generator().manual_seed(0))
    paths = uncertainty_report(
        model, train, held_out, tmp_path / "analysis", generator=torch.Generator().manual_seed(1)
    )
    table = pd.read_csv(paths["summary"], dtype={"state_dim": str})
    recal = table[table.section == "held_out_recalibrated"]
    assert set(recal.statistic) >= {"calibration_error", "coverage_0.9", "nll"}
    assert sorted(recal[recal.statistic == "calibration_error"].state_dim) == ["0", "1"]
    scales = table[table.section == "recalibration"]
    assert set(scales.variable) == {"first_half", "second_half"}
    assert set(scales.statistic) == {"aleatoric_scale", "epistemic_scale"}
    assert bool((scales.value > 0).all())
