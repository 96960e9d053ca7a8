"""The shared early-stopped trainer on toy problems whose every step is known by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.base import FitReport
from bayes_mbrl.models.training import StepLoss, train_early_stopped


def _trajectory(steps: int) -> list[float]:
    """w after 0, 1, ... steps of the map above from 0, in float32 as the trainer computes."""
    w, out = torch.zeros(()), [0.0]
    for _ in range(steps):
        w = w - 0.1 * (2 * (w - 3))
        out.append(float(w.detach()))
    return out


def test_keeps_the_best_validation_parameters_and_stops_after_patience() -> None:
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    calls: list[tuple[int, float, float]] = []
    report = train_early_stopped(
        [w],
        opt,
        lambda epoch: [None],
        lambda _: StepLoss((w - 3).pow(2), (w - 3).pow(2).detach(), 4),
        max_epochs=50,
        validate=lambda: (w - 1).pow(2).reshape(1),  # best where w is nearest 1
        patience=2,
        progress=lambda *a: calls.append(a),
    )
    traj = _trajectory(4)  # 0, 0.6, 1.08, 1.464, 1.7712: val best after epoch 1 (w=1.08)
    assert report.best_epoch == 1
    assert report.epochs == 4  # epochs 2 and 3 did not improve: patience 2 stops after epoch 3
    assert float(w.detach()) == pytest.approx(traj[2], abs=0)
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    # train loss of epoch k is the step's loss at the start of epoch k (weight cancels)
    assert [c[1] for c in calls] == pytest.approx([(t - 3) ** 2 for t in traj[:4]], rel=1e-6)
    assert [c[2] for c in calls] == pytest.approx([(t - 1) ** 2 for t in traj[1:5]], rel=1e-5)
    assert report.val_losses == [c[2] for c in calls]


def test_groups_are_kept_each_at_its_own_best_epoch() -> None:
    w = torch.zeros(2, requires_grad=True)  # grouped: one entry per group
    shared = torch.zeros((), requires_grad=True)  # not grouped: copied when any group improves
    opt = torch.optim.SGD([w, shared], lr=0.1)
    targets = torch.tensor([1.0, 3.0])
    report = train_early_stopped(
        [w, shared],
        opt,
        lambda epoch: [None],
        lambda _: StepLoss((w - 3).pow(2).sum() + (shared - 3).pow(2), 0.0),
        max_epochs=6,
        validate=lambda: (w - targets).pow(2),
        patience=2,
        grouped=[True, False],
    )
    traj = _trajectory(6)
    # group 0 was best at w = 1.08 (epoch 1); group 1 improves every epoch to the end
    assert report.epochs == 6 and report.best_epoch == 5
    assert w.detach().tolist() == pytest.approx([traj[2], traj[6]], abs=1e-7)
    assert float(shared.detach()) == pytest.approx(traj[6], abs=1e-7)


def test_non_finite_loss_restores_the_last_good_parameters_and_names_the_fix() -> None:
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)

    def loss(epoch: int) -> StepLoss:
        value = (w - 3).pow(2) * (math.nan if epoch == 3 else 1.0)
        return StepLoss(value, value.detach())

    with pytest.raises(ModelError, match=r"toy fit diverged \(non-finite ELBO\) at epoch 3.*lr"):
        train_early_stopped(
            [w],
            opt,
            lambda epoch: [epoch],
            loss,
            max_epochs=10,
            validate=lambda: (w - 1).pow(2).reshape(1),
            patience=5,
            what="toy fit",
            loss_name="ELBO",
            fix="lower lr",
        )
    assert float(w.detach()) == pytest.approx(_trajectory(2)[2], abs=0)  # best validation, not last

    # without validation: the last completed epoch is the last good one
    w2 = torch.zeros((), requires_grad=True)
    opt2 = torch.optim.SGD([w2], lr=0.1)

    def loss2(epoch: int) -> StepLoss:
        value = (w2 - 3).pow(2) * (math.inf if epoch == 3 else 1.0)
        return StepLoss(value, value.detach())

    with pytest.raises(ModelError, match="at epoch 3"):
        train_early_stopped([w2], opt2, lambda epoch: [epoch], loss2, max_epochs=10)
    assert float(w2.detach()) == pytest.approx(_trajectory(3)[3], abs=0)


def test_without_validation_every_epoch_runs_and_the_epoch_mean_is_weighted() -> None:
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)  # parameters fixed: only the bookkeeping moves
    reported = iter([1.0, 4.0, 2.0, 2.0, 3.0, 3.0])
    seen: list[float] = []
    report = train_early_stopped(
        [w],
        opt,
        lambda epoch: [(1,), (3,)],  # two batches per epoch, weights 1 and 3
        lambda b: StepLoss((w - 3).pow(2), next(reported), b[0]),
        max_epochs=3,
        patience=0,
        progress=lambda e, t, v: seen.append(v),
    )
    assert report.train_losses == [(1 + 12) / 4, (2 + 6) / 4, (3 + 9) / 4]
    assert report.epochs == 3 and report.best_epoch == -1 and report.val_losses == []
    assert all(math.isnan(v) for v in seen)


def test_min_steps_delays_stopping() -> None:
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)  # validation never improves

    def epochs(min_steps: int) -> int:
        report = train_early_stopped(
            [w],
            opt,
            lambda e: [0, 1],
            lambda _: StepLoss(w * 0, 0.0),
            max_epochs=20,
            validate=lambda: torch.ones(1),
            patience=1,
            min_steps=min_steps,
        )
        return report.epochs

    assert epochs(0) == 1
    assert epochs(7) == 4  # 2 steps per epoch: 8 >= 7 after the 4th epoch


def _scripted_fit(
    losses: list[float], transform: Callable[[float], float] = lambda v: v, **kwargs: Any
) -> tuple[FitReport, float]:
    """Fit where w counts the epochs (w = k after epoch k) and the held-out loss is
    ``transform(losses[k])`` after epoch k (``losses[0]`` before training, at w = 0).

    Returns the report and the kept w, i.e. the number of the epoch whose parameters
    were kept (0: those before training)."""
    w = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    values = iter(transform(v) for v in losses)
    report = train_early_stopped(
        [w],
        opt,
        lambda epoch: [None],
        lambda _: StepLoss(-w, 0.0),  # one step of size 1 per epoch
        max_epochs=len(losses) - 1,
        validate=lambda: torch.tensor([next(values)], dtype=torch.float64),
        **kwargs,
    )
    return report, float(w.detach())


# before training, then epochs 1, 2, ...: improvements of 5, 0.4, 0.6, 0.4, 0.5, ...
_LOSSES = [10.0, 5.0, 4.6, 4.4, 4.0, 3.9, 3.0, 2.0]


def test_an_improvement_must_beat_the_last_by_a_fraction_of_the_progress() -> None:
    report, kept = _scripted_fit(_LOSSES, min_improvement=0.1, patience=2)
    # (the report numbers epochs from 0: loss _LOSSES[k] is the report's epoch k - 1)
    # 5 < 10: the first progress counts (threshold 0.1 * 0 = 0)
    # 4.6 beats 5 by 0.4 < 0.1 * (10 - 5) = 0.5: a new lowest (kept), not counted
    # 4.4 beats 5 by 0.6 > 0.5: counted; the threshold is now 0.1 * (10 - 4.4) = 0.56
    # 4.0 and 3.9 beat 4.4 by 0.4 and 0.5 < 0.56: patience 2 stops after them
    assert report.epochs == 5
    assert report.best_epoch == 4 and kept == 5.0  # 3.9 is the lowest: its w is kept
    assert report.val_losses == _LOSSES[1:6]
    # the rule it replaced (an improvement of more than 10% of |best|) counted 3.9
    # (0.5 > 0.44) and ran all 7 epochs


@pytest.mark.parametrize(
    "transform",
    [
        lambda v: v + 1000.0,
        lambda v: v - 1000.0,
        lambda v: 1e-3 * v,
        lambda v: 1e3 * v - 7.0,
    ],
    ids=["plus_1000", "minus_1000", "times_1e-3", "times_1e3_minus_7"],
)
def test_stopping_and_kept_parameters_do_not_depend_on_the_loss_offset_or_scale(
    transform: Callable[[float], float],
) -> None:
    """A held-out NLL has no natural zero: early stopping must not see a constant added
    to it (nor a change of its units). The old relative rule (1% of ``|best|``) stopped the
    ``plus_1000`` fit after ``patience`` epochs (no epoch gains 10) and ran the
    ``minus_1000`` one to the end."""
    # exponential convergence to -2 with a little noise
    noise = [0.0, 0.01, -0.02, 0.015, 0.0, -0.01, 0.02, 0.0, -0.005, 0.01] * 4
    losses = [-2.0 + 6.0 * 0.7**k + noise[k] for k in range(40)]
    ref, ref_kept = _scripted_fit(losses, patience=3)
    assert 5 < ref.epochs < 39  # stops early, neither at once nor at the end
    report, kept = _scripted_fit(losses, transform, patience=3)
    assert (report.epochs, report.best_epoch, kept) == (ref.epochs, ref.best_epoch, ref_kept)
    assert kept == ref.best_epoch + 1  # the parameters of the lowest held-out loss


def test_groups_count_progress_each_from_its_own_start() -> None:
    """Two groups whose held-out losses differ by a constant and a scale stop together;
    a group that is already at its optimum does not hold the others back."""
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    base = [-2.0 + 6.0 * 0.7**k for k in range(30)]
    values = iter(torch.tensor([[v, 50.0 * v + 1e4, 3.0] for v in base], dtype=torch.float64))
    report = train_early_stopped(
        [w],
        opt,
        lambda epoch: [None],
        lambda _: StepLoss(-w.sum(), 0.0),
        max_epochs=len(base) - 1,
        validate=lambda: next(values),
        patience=3,
        grouped=[True],
    )
    alone, kept_alone = _scripted_fit(base, patience=3)
    assert report.epochs == alone.epochs and report.best_epoch == alone.best_epoch
    # groups 0 and 1 kept their lowest epoch; group 2 never improved on its start
    assert w.detach().tolist() == [kept_alone, kept_alone, 0.0]
