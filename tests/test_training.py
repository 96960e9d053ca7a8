"""The shared early-stopped trainer on toy problems whose every step is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_mbrl.errors import ModelError
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
