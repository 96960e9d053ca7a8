"""Time-varying linear-Gaussian dynamics fitted by regression on a few sample trajectories.

The local model of guided policy search (Levine and Abbeel 2014):

    x_{t+1} ~ N(F_t [x_t; u_t] + f_t, Sigma_t),    t = 0 .. T-1,

fitted separately at each time step from the ``N`` samples ``y = [x_t; u_t; x_{t+1}]``
of that step, all steps at once (batched over ``t``). The joint Gaussian of ``y`` is
estimated and conditioned on ``[x_t; u_t]``: with ``mu``, ``S`` its mean and covariance,
``F_t = S_yx S_xx^-1``, ``f_t = mu_y - F_t mu_x`` and ``Sigma_t = S_yy - F_t S_xx F_t'``.

``N`` may be smaller than ``D + A + 1``, where the sample covariance is singular:

* **with a prior** (a :class:`~bayes_mbrl.models.gmm.NIWPrior` per step, usually from a
  :class:`~bayes_mbrl.models.gmm.GaussianMixture` fitted to all samples so far, through
  :meth:`~bayes_mbrl.models.gmm.GaussianMixture.inference`), the covariance is the
  posterior mode of the normal-inverse-Wishart conjugate update::

      S = (N S_emp + Phi + N m / (N + m) (mu_emp - mu0)(mu_emp - mu0)') / (N + n0)

  and the mean the sample mean (cbfinn/gps ``gauss_fit_joint_prior``);
* **without**, the sample covariance plus ``ridge`` on the ``[x; u]`` block (ridge
  regression of ``x'`` on ``[x; u]``).

The same ``ridge`` is added to the ``[x; u]`` block in both cases, as cbfinn does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError
from bayes_mbrl.models.gmm import GaussianMixture, NIWPrior

__all__ = ["LinearGaussianDynamics", "fit_linear_gaussian", "joint_to_conditional"]


@dataclass
class LinearGaussianDynamics:
    """``x_{t+1} ~ N(F_t [x_t; u_t] + f_t, cov_t)`` for ``t < T``.

    Attributes:
        F: ``(T, D, D + A)``.
        f: ``(T, D)``.
        cov: ``(T, D, D)``.
    """

    F: Tensor
    f: Tensor
    cov: Tensor

    @property
    def horizon(self) -> int:
        """``T``."""
        return int(self.F.shape[0])

    def mean(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Mean next state ``(..., D)`` at step ``t`` from ``x (..., D)``, ``u (..., A)``."""
        z = torch.cat([x, u], -1).to(self.F.dtype)
        return z @ self.F[t].T + self.f[t]


def _sym(a: Tensor) -> Tensor:
    return (a + a.transpose(-1, -2)) / 2


def joint_to_conditional(mu: Tensor, sigma: Tensor, input_dim: int) -> LinearGaussianDynamics:
    """Condition joint Gaussians of ``[w; y]`` (``mu (T, d)``, ``sigma (T, d, d)``) on ``w``
    (the first ``input_dim`` dimensions): ``y | w ~ N(F w + f, cov)``."""
    i, o = slice(0, input_dim), slice(input_dim, None)
    S_ww, S_wy = sigma[:, i, i], sigma[:, i, o]
    F = torch.linalg.solve(S_ww, S_wy).transpose(-1, -2)  # (T, D, in)
    f = mu[:, o] - (F @ mu[:, i].unsqueeze(-1)).squeeze(-1)
    cov = _sym(sigma[:, o, o] - F @ S_ww @ F.transpose(-1, -2))
    return LinearGaussianDynamics(F=F, f=f, cov=cov)


def fit_linear_gaussian(
    states: Tensor,
    actions: Tensor,
    prior: GaussianMixture | NIWPrior | None = None,
    ridge: float = 1e-6,
    prior_strength: float = 1.0,
) -> LinearGaussianDynamics:
    """Fit time-varying linear-Gaussian dynamics to ``N`` sample trajectories.

    Args:
        states: ``(N, T + 1, D)``.
        actions: ``(N, T, A)``.
        prior: a mixture over ``[x, u, x']`` points (its :meth:`GaussianMixture.inference`
            near each step's samples gives that step's prior), a fixed
            :class:`NIWPrior` (``mu0 (T, d)`` or ``(d,)``, ``Phi (T, d, d)`` or
            ``(d, d)``), or None for the ridge-regularized sample covariance.
        ridge: added to the diagonal of the ``[x; u]`` block of each covariance.
        prior_strength: multiplies the prior's ``m`` and ``n0`` (and so ``Phi``).

    Returns:
        The fitted :class:`LinearGaussianDynamics` (float64).

    Raises:
        DataError: inconsistent shapes or too few samples without a prior.
    """
    if states.dim() != 3 or actions.dim() != 3 or states.shape[0] != actions.shape[0]:
        raise DataError(
            "fit_linear_gaussian needs states (N, T + 1, D) and actions (N, T, A), got "
            f"{tuple(states.shape)} and {tuple(actions.shape)}"
        )
    if states.shape[1] != actions.shape[1] + 1:
        raise DataError(
            f"states have {states.shape[1]} steps and actions {actions.shape[1]}; states "
            "must have one more (the state after the last action)"
        )
    n = states.shape[0]
    if n < 2 and prior is None:
        raise DataError("fit_linear_gaussian needs at least 2 trajectories without a prior")
    x = states.to(torch.float64)
    u = actions.to(torch.float64)
    D, A = x.shape[-1], u.shape[-1]
    y = torch.cat([x[:, :-1], u, x[:, 1:]], -1).transpose(0, 1)  # (T, N, d)
    mu = y.mean(1)  # (T, d)
    diff = y - mu.unsqueeze(1)
    emp = diff.transpose(-1, -2) @ diff / n  # (T, d, d), maximum likelihood
    if prior is None:
        sigma = emp
    else:
        niw = prior.inference(y) if isinstance(prior, GaussianMixture) else prior
        m = niw.m * prior_strength
        n0 = niw.n0 * prior_strength
        Phi = niw.Phi * prior_strength
        dm = (mu - niw.mu0).unsqueeze(-1)
        sigma = (n * emp + Phi + (n * m / (n + m)) * dm @ dm.transpose(-1, -2)) / (n + n0)
    sigma = _sym(sigma)
    reg = torch.zeros(y.shape[-1], dtype=torch.float64)
    reg[: D + A] = ridge
    sigma = sigma + torch.diag(reg)
    return joint_to_conditional(mu, sigma, D + A)
