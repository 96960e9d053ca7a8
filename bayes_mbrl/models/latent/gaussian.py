"""Gaussian belief algebra of the latent state-space model, batched in torch.

A belief is ``N(mean, cov)`` over the latent state, ``mean (..., dz)`` and full
``cov (..., dz, dz)``. The filter alternates

* :func:`condition`: multiply a predicted belief by an observation's recognition
  potential ``exp(h^T z - z^T J z / 2)`` (information form; exact Bayes when the
  potential is the likelihood);
* :func:`unscented_predict`: push a belief through a Gaussian transition
  ``z' ~ N(mu(z, a), diag(var(z, a)))`` with the cubature rule (``2 dz`` sigma points,
  exact for linear ``mu``), returning the predicted moments and the cross-covariance
  ``Cov[z, z']`` that a Rauch-Tung-Striebel backward pass needs;

and :func:`backward_kernels` turns a filtered sequence into the backward conditionals
``q(z_t | z_{t+1}, o_{1:t})`` of the smoothing posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "JITTER",
    "backward_kernels",
    "condition",
    "safe_cholesky",
    "smoothed_marginals",
    "symmetrize",
    "unscented_predict",
]

#: added to the diagonal of covariances before a Cholesky factorization
JITTER = 1e-5

TransitionFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(z (..., dz), action (..., da)) -> (mean (..., dz), variance (..., dz))``."""


def symmetrize(m: Tensor) -> Tensor:
    """``(M + M^T) / 2`` over the last two dimensions."""
    return 0.5 * (m + m.transpose(-1, -2))


def safe_cholesky(cov: Tensor, jitter: float = JITTER) -> Tensor:
    """Cholesky factor of a symmetric positive (semi-)definite matrix, with ``jitter``
    on the diagonal (raised tenfold, up to three times, if the factorization fails)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    cov = symmetrize(cov)
    for k in range(4):
        chol, info = torch.linalg.cholesky_ex(cov + (jitter * 10**k) * eye)
        if not bool(info.any()):
            return chol
    return torch.linalg.cholesky(cov + (jitter * 1e4) * eye)


def condition(mean: Tensor, cov: Tensor, h: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    """Multiply ``N(mean, cov)`` by the factor ``exp(h^T z - z^T J z / 2)``.

    Args:
        mean: ``(..., dz)``.
        cov: ``(..., dz, dz)``.
        h: ``(..., dz)`` linear coefficient of the factor.
        precision: ``(..., dz, dz)`` its precision ``J`` (positive semi-definite).

    Returns:
        The normalized product ``(mean, cov)``: precision ``cov^-1 + J``, mean
        ``(cov^-1 + J)^-1 (cov^-1 mean + h)``.
    """
    prior_chol = safe_cholesky(cov)
    prior_prec = torch.cholesky_inverse(prior_chol)
    post_chol = safe_cholesky(symmetrize(prior_prec + precision))
    info = (prior_prec @ mean.unsqueeze(-1)).squeeze(-1) + h
    post_mean = torch.cholesky_solve(info.unsqueeze(-1), post_chol).squeeze(-1)
    return post_mean, symmetrize(torch.cholesky_inverse(post_chol))


def unscented_predict(
    mean: Tensor, cov: Tensor, action: Tensor, transition: TransitionFn
) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of ``z'`` for ``z ~ N(mean, cov)`` and ``z' | z ~ N(mu(z, a), diag(var(z, a)))``.

    Cubature rule: the ``2 dz`` points ``mean +- sqrt(dz) L e_i`` (``L L^T = cov``) with
    equal weights; exact when ``mu`` is linear in ``z`` and ``var`` constant.

    Args:
        mean: ``(B, dz)``.
        cov: ``(B, dz, dz)``.
        action: ``(B, da)``.
        transition: ``(z (B, 2 dz, dz), a (B, 2 dz, da)) -> (mean, var)``, each
            ``(B, 2 dz, dz)``, or ``(B, k * 2 dz, dz)`` for a mixture of ``k`` transitions
            (``k`` blocks of the ``2 dz`` points, e.g. ensemble members): the moments
            are then the mixture's.

    Returns:
        ``(pred_mean (B, dz), pred_cov (B, dz, dz), cross (B, dz, dz))`` with
        ``cross = Cov[z, z']``.
    """
    d = mean.shape[-1]
    chol = safe_cholesky(cov)
    offsets = math.sqrt(d) * chol.transpose(-1, -2)  # row i: sqrt(d) L[:, i]
    points = mean.unsqueeze(-2) + torch.cat([offsets, -offsets], dim=-2)  # (B, 2d, d)
    acts = action.unsqueeze(-2).expand(*points.shape[:-1], action.shape[-1])
    mu, var = transition(points, acts)
    reps = mu.shape[-2] // points.shape[-2]  # a mixture over members: k means per point
    pred_mean = mu.mean(-2)
    dev = mu - pred_mean.unsqueeze(-2)
    n = mu.shape[-2]
    pred_cov = dev.transpose(-1, -2) @ dev / n + torch.diag_embed(var.mean(-2))
    centred = (points - mean.unsqueeze(-2)).repeat(*([1] * (points.dim() - 2)), reps, 1)
    cross = centred.transpose(-1, -2) @ dev / n
    return pred_mean, symmetrize(pred_cov), cross


def backward_kernels(
    mean: Tensor, cov: Tensor, pred_mean: Tensor, pred_cov: Tensor, cross: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward conditionals ``q(z_t | z_{t+1}) = N(m_t + G_t (z_{t+1} - m^_{t+1}), S_t)``
    of the smoothing posterior, from a filtered sequence (Rauch-Tung-Striebel).

    Args:
        mean: ``(B, T, dz)`` filtered means ``m_t``.
        cov: ``(B, T, dz, dz)`` filtered covariances ``P_t``.
        pred_mean: ``(B, T, dz)`` predicted means (index ``t`` is the prediction of
            ``z_t`` from the filter at ``t - 1``; index 0 is the prior).
        pred_cov: ``(B, T, dz, dz)`` predicted covariances ``P^_t``.
        cross: ``(B, T - 1, dz, dz)`` ``Cov[z_t, z_{t+1}]`` under the filter at ``t``.

    Returns:
        ``(gain G (B, T-1, dz, dz), offset (B, T-1, dz), backward_cov S (B, T-1, dz, dz))``
        with ``G_t = C_t P^_{t+1}^-1``, ``S_t = P_t - G_t C_t^T`` and the conditional mean
        ``offset_t + G_t z_{t+1}``, ``offset_t = m_t - G_t m^_{t+1}``.
    """
    nxt_chol = safe_cholesky(pred_cov[:, 1:])
    gain = torch.cholesky_solve(cross.transpose(-1, -2), nxt_chol).transpose(-1, -2)
    offset = mean[:, :-1] - (gain @ pred_mean[:, 1:].unsqueeze(-1)).squeeze(-1)
    back_cov = symmetrize(cov[:, :-1] - gain @ cross.transpose(-1, -2))
    return gain, offset, back_cov


def smoothed_marginals(
    mean: Tensor, cov: Tensor, gain: Tensor, offset: Tensor, back_cov: Tensor
) -> tuple[Tensor, Tensor]:
    """Marginals of the smoothing posterior built from :func:`backward_kernels`.

    ``m^s_T = m_T``, ``m^s_t = offset_t + G_t m^s_{t+1}``,
    ``P^s_t = S_t + G_t P^s_{t+1} G_t^T``.

    Returns:
        ``(means (B, T, dz), covs (B, T, dz, dz))``.
    """
    t_len = mean.shape[1]
    means, covs = [mean[:, -1]], [cov[:, -1]]
    for t in range(t_len - 2, -1, -1):
        g = gain[:, t]
        means.append(offset[:, t] + (g @ means[-1].unsqueeze(-1)).squeeze(-1))
        covs.append(symmetrize(back_cov[:, t] + g @ covs[-1] @ g.transpose(-1, -2)))
    return torch.stack(means[::-1], 1), torch.stack(covs[::-1], 1)
