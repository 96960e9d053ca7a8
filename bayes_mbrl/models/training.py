"""One early-stopped minibatch trainer for every family fitted by gradient steps.

The ensemble (maximum likelihood per member), the BNN (SVI on the ELBO) and any
other family with an optimizer loop (a GP's Adam on the marginal likelihood) share
the same loop: epochs of minibatch steps, a held-out loss after each epoch, the
parameters of the best held-out epoch kept, patience measured against the progress
made so far (invariant to shifting or scaling the loss), and a non-finite loss that
restores the last good parameters and raises :class:`~bayes_mbrl.errors.ModelError`
before the bad step is taken. The family supplies what differs: how an epoch is cut
into minibatches (its own generator, so seeded fits repeat bit for bit), the loss of
one step, and the held-out loss.

Stable API (other families import it; keep the signature)::

    report = train_early_stopped(
        params, optimizer, batches, step_loss,
        max_epochs=100, validate=val_loss, patience=5, progress=progress,
    )

* ``batches(epoch)`` returns the epoch's minibatches (anything ``step_loss`` takes:
  row indices, ``None`` for one full-batch step);
* ``step_loss(batch)`` returns a :class:`StepLoss`: the scalar objective to minimize,
  the loss to report and how much the step weighs in the epoch's mean;
* ``validate()`` returns the held-out loss, ``(G,)``: one value (``G = 1``) or one per
  independently trained group (ensemble members, ``G = E``), each early-stopped on
  its own (``grouped`` says which parameters have the group as leading dimension).

A GP's full-batch Adam loop is ``batches=lambda epoch: [None]``,
``step_loss=lambda _: StepLoss(-mll(), ...)`` and ``validate=None``: ``max_epochs``
steps with restore-on-divergence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.base import FitReport, ProgressFn

__all__ = ["StepLoss", "train_early_stopped"]


class StepLoss(NamedTuple):
    """The loss of one optimizer step.

    Attributes:
        objective: scalar to minimize (backpropagated); checked finite before the step.
        reported: the training loss to log for this step (a number or 0-d tensor).
        weight: how much the step counts in the epoch's mean training loss (its batch size).
    """

    objective: Tensor
    reported: Tensor | float
    weight: int = 1


def train_early_stopped(
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[Any]],
    step_loss: Callable[[Any], StepLoss],
    *,
    max_epochs: int,
    validate: Callable[[], Tensor] | None = None,
    patience: int = 5,
    min_improvement: float = 0.01,
    min_steps: int = 0,
    grouped: Sequence[bool] | None = None,
    progress: ProgressFn | None = None,
    what: str = "fit",
    loss_name: str = "loss",
    fix: str = "Lower model.learning_rate or check the data for extreme values",
) -> FitReport:
    """Train ``params`` by minibatch steps, early-stopped on a held-out loss.

    Each epoch runs ``optimizer`` on every batch of ``batches(epoch)``, then (with
    ``validate``) evaluates the held-out loss ``(G,)``. Per group:

    * **kept parameters**: a finite loss below the group's lowest so far (or any finite
      loss while it has none) copies the group's parameters to the kept snapshot
      (parameters that are not grouped follow any group's new lowest);
    * **patience**: an epoch counts as an improvement when its loss is finite and
      ``mark - current > min_improvement * (start - mark)``, where ``start`` is the
      group's held-out loss before training (or its first finite one) and ``mark`` the
      loss of its last counted improvement (initially ``start``): the epoch must beat
      the last improvement by more than ``min_improvement`` of all the progress made
      up to it. The first improvement on the start counts however small (there is no
      progress yet to compare it with).

    After ``patience`` epochs in a row in which no group counts an improvement (and at
    least ``min_steps`` optimizer steps) training stops; at the end the kept
    parameters, those of each group's lowest held-out loss, are restored. Without
    ``validate`` every epoch runs and the snapshot follows the last completed epoch.

    Why progress, not the size of the loss: a held-out NLL has no natural zero or unit
    (a constant the loss leaves out, or a change of units of the targets, adds to it
    without changing the fit), so a threshold relative to ``|best|`` (this rule's
    predecessor) is coarse for a loss far from 0 and vanishes for one near 0. Only
    differences of the loss carry information, and the scale this fit has given them
    is how much it has improved so far; the rule uses nothing else, so it gives the
    same epochs and parameters for ``a * loss + b`` (any ``b``, any ``a > 0``; up to
    floating-point rounding), and it applies alike to an NLL in nats, a squared error
    and a KL. Training stops once
    ``patience`` epochs gain less, together, than ``min_improvement`` of what came
    before them; a warm start already at its optimum stops after ``patience`` epochs
    that do not lower the loss.

    Args:
        params: the trained tensors (restored in place).
        optimizer: steps ``params`` (``zero_grad``, ``backward``, ``step`` per batch).
        batches: ``epoch -> iterable of batches``; draw any randomness from the
            caller's generator.
        step_loss: ``batch -> StepLoss``.
        max_epochs: upper bound on epochs.
        validate: held-out loss ``() -> (G,)`` (no gradient needed), or None.
        patience: epochs without improvement before stopping.
        min_improvement: the fraction of the progress so far (``start - mark``) by
            which an epoch must beat the last counted improvement to reset patience.
        min_steps: never stop before this many optimizer steps.
        grouped: per parameter, whether its leading dimension is the group (its rows
            are kept per group); default: no parameter is grouped (``G = 1``).
        progress: called as ``progress(epoch, train_loss, val_loss)`` after each epoch
            (``val_loss`` NaN without ``validate``).
        what: the fit, for the error message ("ensemble fit").
        loss_name: the loss, for the error message ("ELBO").
        fix: what the user can do about a divergence, for the error message.

    Returns:
        Per-epoch mean training losses (weighted by :attr:`StepLoss.weight`), mean
        held-out losses over groups, epochs run and the last epoch any group reached a
        new lowest held-out loss (``best_epoch``; -1 if none did).
        ``wall_seconds`` is left to the caller.

    Raises:
        ModelError: a step's objective is not finite; the kept parameters are restored first.
    """
    params = list(params)
    flags = [False] * len(params) if grouped is None else list(grouped)
    if len(flags) != len(params):
        raise ValueError(f"grouped has {len(flags)} entries for {len(params)} parameters")
    kept = [p.detach().clone() for p in params]
    report = FitReport()
    has_val = validate is not None
    best = _held_out(validate) if validate is not None else None
    # per group: where progress is measured from (the first finite held-out loss), and
    # the loss of the last epoch that counted as an improvement
    start = mark = best if best is not None else torch.zeros(0)
    stale, steps = 0, 0

    def restore() -> None:
        with torch.no_grad():
            for p, k in zip(params, kept, strict=True):
                p.copy_(k)

    for epoch in range(max_epochs):
        total, count = 0.0, 0
        for batch in batches(epoch):
            step = step_loss(batch)
            if not torch.isfinite(step.objective):
                restore()
                raise ModelError(
                    f"{what} diverged (non-finite {loss_name}) at epoch {epoch}; the last good "
                    f"parameters are restored. {fix}"
                )
            optimizer.zero_grad(set_to_none=True)
            step.objective.backward()
            optimizer.step()
            total += float(step.reported) * step.weight
            count += step.weight
            steps += 1
        report.train_losses.append(total / max(count, 1))
        report.epochs = epoch + 1
        if validate is not None and best is not None:
            current = _held_out(validate)
            report.val_losses.append(float(current.mean()))
            finite = torch.isfinite(current)
            lowest = finite & ~(current >= best)  # a new best (any finite loss if best is not)
            if bool(lowest.any()):
                with torch.no_grad():
                    for p, k, by_group in zip(params, kept, flags, strict=True):
                        if by_group:
                            k[lowest] = p[lowest]
                        else:
                            k.copy_(p)
                best = torch.where(lowest, current, best)
                report.best_epoch = epoch
            counted = finite & (
                ~torch.isfinite(mark) | (mark - current > min_improvement * (start - mark))
            )
            if bool(counted.any()):
                mark = torch.where(counted, current, mark)
                start = torch.where(torch.isfinite(start), start, mark)
                stale = 0
            else:
                stale += 1
        else:
            with torch.no_grad():
                for p, k in zip(params, kept, strict=True):
                    k.copy_(p)
        if progress is not None:
            val = report.val_losses[-1] if has_val else math.nan
            progress(epoch, report.train_losses[-1], val)
        if has_val and stale >= patience and steps >= min_steps:
            break
    if has_val:
        restore()
    return report


def _held_out(validate: Callable[[], Tensor]) -> Tensor:
    """The held-out loss as a detached 1-D tensor."""
    with torch.no_grad():
        return validate().detach().reshape(-1)
