"""GP numerics: Cholesky jitter escalation, k-means inducing points, and the one
hyperparameter-fitting loop both GP flavours use.

Shapes: ``N`` points, ``d`` inputs, ``m`` centres.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import linear_operator
import torch
from linear_operator.utils.errors import NotPSDError
from torch import Tensor

from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import FitReport, ProgressFn

__all__ = [
    "MAX_CHOLESKY",
    "fit_hyperparameters",
    "kmeans_inducing_points",
    "logged_steps",
    "with_jitter_escalation",
]

#: largest Cholesky size solved exactly (GPyTorch otherwise switches to CG above 800)
MAX_CHOLESKY = 10**6

T = TypeVar("T")


def with_jitter_escalation(
    fn: Callable[[], T], what: str, start: float = 1e-8, max_jitter: float = 1e-3
) -> T:
    """Run ``fn`` (which factorizes kernel matrices), escalating Cholesky jitter on failure.

    The first attempt uses ``start`` as GPyTorch's diagonal jitter; each failure
    (``NotPSDError``, ``torch.linalg.LinAlgError``) retries with 10x the jitter
    until ``max_jitter``.

    Args:
        fn: the computation; re-run from scratch on every attempt.
        what: name of the computation for the error message.
        start: first jitter (in normalized target units).
        max_jitter: largest jitter tried.

    Returns:
        ``fn()``.

    Raises:
        ModelError: still not positive definite with ``max_jitter``, naming the
            jitter tried and the fix.
    """
    jitter = start
    while True:
        try:
            with (
                linear_operator.settings.cholesky_jitter(float_value=jitter, double_value=jitter),
                linear_operator.settings.cholesky_max_tries(1),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore", linear_operator.utils.warnings.NumericalWarning)
                return fn()
        except (NotPSDError, torch.linalg.LinAlgError) as exc:
            if jitter * 10 > max_jitter * (1 + 1e-9):
                raise ModelError(
                    f"{what}: the kernel matrix is not positive definite even with a diagonal "
                    f"jitter of {jitter:.0e} (tried {start:.0e} up to {jitter:.0e}; {exc}). "
                    "The hyperparameters are degenerate or the data contain non-finite or "
                    "extreme values: check the data, raise the noise lower bound "
                    "(min_noise) or refit from a fresh model"
                ) from exc
            jitter *= 10


def kmeans_inducing_points(
    x: Tensor,
    m: int,
    generator: torch.Generator | None = None,
    iterations: int = 25,
    max_points: int = 20000,
) -> Tensor:
    """``m`` k-means centres of ``x`` (k-means++ seeding, then Lloyd's algorithm).

    Args:
        x: ``(N, d)`` inputs.
        m: number of centres, ``<= N``.
        generator: source of randomness (initial centres, subsample of large ``x``).
        iterations: Lloyd iterations.
        max_points: run on a random subset of this many points when ``N`` is larger.

    Returns:
        ``(m, d)`` centres; a centre whose cluster empties keeps its last position.
    """
    n = x.shape[0]
    if not 1 <= m <= n:
        raise ConfigError(f"k-means needs 1 <= num_inducing <= {n} points, got {m}")
    if n > max_points:
        x = x[torch.randperm(n, generator=generator)[:max_points]]
    # k-means++ seeding (one sequential pick per centre), then Lloyd iterations
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centres = x[first].expand(m, -1).clone()
    d2 = (x - centres[0]).square().sum(-1)
    for i in range(1, m):
        pick = int(torch.multinomial(d2.clamp_min(0) + 1e-30, 1, generator=generator))
        centres[i] = x[pick]
        d2 = torch.minimum(d2, (x - x[pick]).square().sum(-1))
    ones = torch.ones(x.shape[0], dtype=x.dtype)
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.zeros(m, dtype=x.dtype).index_add_(0, assign, ones)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return centres


def fit_hyperparameters(
    loss_at: Callable[[int], Callable[[], Tensor]],
    optimizers: Sequence[torch.optim.Optimizer],
    steps: int,
    restore: Sequence[Tensor],
    report: FitReport,
    *,
    what: str,
    objective: str,
    max_jitter: float,
    progress: ProgressFn | None = None,
    log_every: int = 1,
) -> None:
    """Minimize a GP objective by ``steps`` optimizer steps, each under jitter escalation.

    Step ``i`` zeroes the gradients, evaluates ``loss_at(i)()`` (re-evaluated with more
    jitter when a Cholesky fails), backpropagates and steps every optimizer. A
    non-finite loss or a Cholesky that fails at the largest jitter restores the
    ``restore`` tensors to their values before the loop and raises.

    Args:
        loss_at: ``loss_at(i)`` is called once per step (draw minibatch rows there) and
            returns the closure computing step ``i``'s scalar loss.
        optimizers: stepped in order after each backward pass.
        steps: number of steps.
        restore: parameters restored when the fit fails (hyperparameters).
        report: gets the loss of every ``log_every``-th step and of the last one, and
            ``epochs = steps run``.
        what: the computation, for jitter messages (``"ExactGPDynamics.fit"``).
        objective: the objective, for the failure message (``"exact GP marginal-likelihood"``).
        max_jitter: largest Cholesky jitter tried.
        progress: called as ``progress(i, loss, nan)`` at each logged step.
        log_every: logging period in steps.

    Raises:
        ModelError: a non-finite loss or a failed Cholesky (``restore`` restored).
    """
    backup = [p.detach().clone() for p in restore]

    def step(loss_fn: Callable[[], Tensor]) -> Tensor:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        if not torch.isfinite(loss):
            raise ModelError("non-finite")
        loss.backward()
        return loss.detach()

    for i in range(steps):
        try:
            loss = with_jitter_escalation(
                functools.partial(step, loss_at(i)), what, max_jitter=max_jitter
            )
        except ModelError as exc:
            with torch.no_grad():
                for p, b in zip(restore, backup, strict=True):
                    p.copy_(b)
            raise ModelError(
                f"{objective} fit failed at step {i} ({exc}); hyperparameters restored. "
                "Lower model.learning_rate or raise min_noise"
            ) from exc
        for opt in optimizers:
            opt.step()
        report.epochs = i + 1
        if i % log_every == 0 or i == steps - 1:
            report.train_losses.append(float(loss))
            if progress is not None:
                progress(i, float(loss), math.nan)


def logged_steps(steps: int, log_every: int) -> int:
    """How many steps :func:`fit_hyperparameters` logs out of ``steps``."""
    if steps <= 0:
        return 0
    return (steps - 1) // log_every + 1 + (1 if (steps - 1) % log_every else 0)
