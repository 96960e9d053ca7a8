"""GP numerics: Cholesky jitter escalation, k-means inducing points, and the one
hyperparameter-fitting loop both GP flavours use.

Shapes: ``N`` points, ``d`` inputs, ``m`` centres.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import linear_operator
import torch
from linear_operator.utils.errors import NanError, NotPSDError
from torch import Tensor

from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import FitReport, ProgressFn

__all__ = [
    "MAX_CHOLESKY",
    "fit_hyperparameters",
    "gaussian_nll",
    "kmeans_inducing_points",
    "logged_steps",
    "psd_cholesky",
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


#: blocks of at most this size are factorized by LAPACK directly in :func:`psd_cholesky`
CHOLESKY_BLOCK = 128


def _blocked_cholesky_ex(a: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.cholesky_ex`` by recursive halving: ``L11 = chol(A11)``,
    ``L21 = A21 L11^{-T}``, ``L22 = chol(A22 - L21 L21^T)``.

    The same factor up to rounding; on a CPU several times faster for ``N`` in the
    hundreds, where torch's batched factorization spends most of its time clearing
    the upper triangle of a column-major result.

    Returns:
        ``(*batch, N, N)`` lower factor and ``(*batch,)`` int32 info (0: success).
    """
    n = a.shape[-1]
    if n <= CHOLESKY_BLOCK:
        return torch.linalg.cholesky_ex(a)
    h = n // 2
    l11, info11 = _blocked_cholesky_ex(a[..., :h, :h])
    l21 = torch.linalg.solve_triangular(l11.mT, a[..., h:, :h], upper=True, left=False)
    l22, info22 = _blocked_cholesky_ex(a[..., h:, h:] - l21 @ l21.mT)
    out = torch.zeros_like(a)
    out[..., :h, :h] = l11
    out[..., h:, :h] = l21
    out[..., h:, h:] = l22
    info = torch.where(info11 > 0, info11, torch.where(info22 > 0, info22 + h, info22))
    return out, info


def psd_cholesky(a: Tensor) -> Tensor:
    """Lower Cholesky factor of ``(*batch, N, N)`` positive-definite matrices, with
    linear_operator's ``psd_safe_cholesky`` semantics (a failed matrix is retried with
    ``cholesky_jitter`` on its diagonal, times 10 per try, up to ``cholesky_max_tries``
    tries, as :func:`with_jitter_escalation` sets them), by :func:`_blocked_cholesky_ex`.

    Raises:
        NanError: ``a`` contains NaN.
        NotPSDError: still not positive definite after the last try.
    """
    chol, info = _blocked_cholesky_ex(a)
    if not torch.any(info):
        return chol
    if torch.isnan(a).any():
        raise NanError(f"psd_cholesky: {int(torch.isnan(a).sum())} elements are NaN")
    jitter = linear_operator.settings.cholesky_jitter.value(a.dtype)
    tries = linear_operator.settings.cholesky_max_tries.value()
    shifted, previous = a.clone(), 0.0
    for i in range(tries):
        current = jitter * 10**i
        add = ((info > 0) * (current - previous)).unsqueeze(-1).expand(*a.shape[:-1])
        shifted.diagonal(dim1=-2, dim2=-1).add_(add)
        previous = current
        chol, info = _blocked_cholesky_ex(shifted)
        if not torch.any(info):
            return chol
    raise NotPSDError(f"matrix not positive definite with a diagonal jitter of {previous:.1e}")


class _GaussianNLL(torch.autograd.Function):
    """Batched ``0.5 (r^T A^{-1} r + log|A| + N log 2 pi)``, ``A = K + diag(noise)``, with
    the closed-form gradient ``dA = 0.5 (A^{-1} - alpha alpha^T)``, ``alpha = A^{-1} r``.

    The forward pass is GPyTorch's exact route (a Cholesky with ``psd_safe_cholesky``'s
    jitter retries, :func:`psd_cholesky`, then Cholesky solves); the backward pass
    forms ``A^{-1}`` from the Cholesky factor (``cholesky_inverse``) instead of
    differentiating through the factorization, several times cheaper on a CPU.
    """

    @staticmethod
    def forward(ctx: Any, covar: Tensor, noise: Tensor, residual: Tensor) -> Tensor:
        a = covar.clone()
        a.diagonal(dim1=-2, dim2=-1).add_(noise)
        chol = psd_cholesky(a)
        alpha = torch.cholesky_solve(residual.unsqueeze(-1), chol).squeeze(-1)
        quad = (residual * alpha).sum(-1)
        logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ctx.save_for_backward(chol, alpha)
        return 0.5 * (quad + logdet + residual.shape[-1] * math.log(2.0 * math.pi))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        chol, alpha = ctx.saved_tensors
        g_a = torch.cholesky_inverse(chol)
        g_a.sub_(alpha.unsqueeze(-1) * alpha.unsqueeze(-2))
        g_a.mul_(0.5 * grad[..., None, None])
        g_noise = g_a.diagonal(dim1=-2, dim2=-1).clone()
        return g_a, g_noise, grad.unsqueeze(-1) * alpha


def gaussian_nll(covar: Tensor, noise: Tensor, residual: Tensor) -> Tensor:
    """Negative log density of ``residual`` under ``N(0, covar + diag(noise))``, per batch.

    The exact marginal likelihood of a GP with a Gaussian likelihood, with a gradient
    that costs one Cholesky inverse (Rasmussen & Williams 2006, eq. 5.9) rather than
    backpropagation through the Cholesky factorization.

    Args:
        covar: ``(*batch, N, N)`` prior covariance of the latent function.
        noise: ``(*batch, N)`` noise variances (broadcast; its gradient is the diagonal's).
        residual: ``(*batch, N)`` targets minus the prior mean.

    Returns:
        ``(*batch,)`` nats (the full density: quadratic form, log-determinant and
        ``N log 2 pi``).

    Raises:
        NotPSDError: the matrix is not positive definite with the current jitter
            settings (run it under :func:`with_jitter_escalation`).
    """
    out: Tensor = _GaussianNLL.apply(covar, noise.expand_as(residual), residual)
    return out


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
