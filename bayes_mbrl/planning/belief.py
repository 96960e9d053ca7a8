r"""Gaussian state beliefs: one moment-matched step through an SE GP, expected rewards.

The step shared by the ``moment_matching`` propagation of the rollout evaluator and
PILCO's policy evaluation (Deisenroth & Rasmussen, 2011). A GP on state deltas
``delta = f(x)`` reads an input ``x`` built from the state ``s`` and the action;
given the belief ``s ~ N(m, S)``, the Gaussian moments of ``x`` and ``Cov[s, x]``:

1. :func:`~bayes_mbrl.planning.moment_matching.se_gp_moments` gives the exact
   ``E[delta]``, ``Cov[delta]`` (with the noise) and ``V = E[d delta / d x]``;
2. Stein's lemma gives ``C = Cov[s, delta] = Cov[s, x] V``;
3. ``m' = m + E[delta]``, ``S' = S + Cov[delta] + C + C^T`` and
   ``Cov[s, s'] = S + C``.

The moments of one step from a Gaussian belief are exact for the GP's marginal
predictive; only the projection onto a Gaussian (for the next step) approximates.
The evaluator's input is ``[s, a]`` with a deterministic action (:func:`belief_step`);
PILCO's is ``[o(s), u]`` with the observation features and the policy's action
jointly Gaussian with the state (:func:`gp_belief_step` on its joint belief).

Rewards of a belief without a closed form are integrated by the unscented
transform (:func:`unscented_expected_reward`).

Shapes: leading batch dimensions ``...``; ``D`` state size, ``j`` GP inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayes_mbrl.envs import RewardFn
from bayes_mbrl.errors import DataError
from bayes_mbrl.planning.imagine import REWARD_SIGNATURE, call_user, check_output
from bayes_mbrl.planning.moment_matching import SEGP, se_gp_moments

__all__ = ["belief_step", "gp_belief_step", "sigma_points", "unscented_expected_reward"]


def gp_belief_step(
    gp: SEGP,
    mean: Tensor,
    cov: Tensor,
    input_mean: Tensor,
    input_cov: Tensor,
    state_input_cov: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One moment-matched step of a state belief through a GP on state deltas.

    Args:
        gp: the GP on ``x`` predicting the state change (an :class:`SEGP`).
        mean: ``(..., D)`` state mean ``m``.
        cov: ``(..., D, D)`` state covariance ``S``.
        input_mean: ``(..., j)`` mean of the GP input ``x``.
        input_cov: ``(..., j, j)`` its covariance.
        state_input_cov: ``(..., D, i)`` ``Cov[s, x_{:i}]`` for the leading ``i <= j``
            entries of ``x``; the others are uncorrelated with the state (a
            deterministic action).

    Returns:
        ``(next_mean (..., D), next_cov (..., D, D), Cov[s, s'] (..., D, D))``.
    """
    d_mean, d_cov, v = se_gp_moments(gp, input_mean, input_cov)
    c = state_input_cov @ v[..., : state_input_cov.shape[-1], :]  # Cov[s, delta] (Stein)
    next_mean = mean + d_mean
    next_cov = cov + d_cov + c + c.transpose(-1, -2)
    next_cov = 0.5 * (next_cov + next_cov.transpose(-1, -2))
    return next_mean, next_cov, cov + c


def belief_step(
    gp: SEGP, mean: Tensor, cov: Tensor, action: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gp_belief_step` for a GP on ``[s, a]`` with a deterministic action: the input
    has mean ``[m, a]`` and covariance ``blockdiag(S, 0)``, and ``Cov[s, x_{:D}] = S``.

    Args:
        gp: the GP on ``[obs, action]`` predicting ``next_obs - obs``.
        mean: ``(..., D)``.
        cov: ``(..., D, D)``.
        action: ``(..., A)``.

    Returns:
        ``(next_mean (..., D), next_cov (..., D, D), Cov[obs, next_obs] (..., D, D))``.
    """
    a = action.shape[-1]
    x_mean = torch.cat([mean, action], dim=-1)
    x_cov = torch.nn.functional.pad(cov, (0, a, 0, a))  # blockdiag(S, 0)
    return gp_belief_step(gp, mean, cov, x_mean, x_cov, cov)


def sigma_points(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Sigma points of the unscented transform with ``alpha = 1, kappa = 0`` (the cubature rule).

    The ``2n`` points ``mean +- sqrt(n) L[:, i]`` with ``L L^T = cov`` and weights
    ``1 / (2n)`` each (the centre point of the ``2n + 1``-point scheme has weight 0 and
    is left out). They reproduce the mean and covariance exactly, so the weighted sum
    of any quadratic function of the points is its exact expectation under
    ``N(mean, cov)``. ``L`` is the symmetric square root from an eigendecomposition
    (negative round-off eigenvalues clamped to 0), so singular covariances (a point
    mass, a deterministic coordinate) are fine.

    Args:
        mean: ``(..., n)``.
        cov: ``(..., n, n)`` symmetric positive semi-definite.

    Returns:
        ``(points (..., 2n, n), weights (2n,))``.
    """
    n = mean.shape[-1]
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)  # (..., n, n), columns L[:, i]
    offsets = math.sqrt(n) * root.transpose(-1, -2)  # (..., n, n): row i is sqrt(n) L[:, i]
    points = mean.unsqueeze(-2) + torch.cat([offsets, -offsets], dim=-2)
    weights = torch.full((2 * n,), 1.0 / (2 * n), dtype=mean.dtype)
    return points, weights


def unscented_expected_reward(
    reward_fn: RewardFn, mean: Tensor, cov: Tensor, action: Tensor
) -> Tensor:
    """``E[reward_fn(obs, action, next_obs)]`` under a joint Gaussian over ``(obs, next_obs)``,
    approximated by the unscented transform (:func:`sigma_points`).

    Exact for rewards that are polynomials of degree <= 3 in ``(obs, next_obs)`` (odd
    moments vanish by symmetry); an approximation otherwise (e.g. ``Pendulum-v1``'s
    ``atan2`` angle cost).

    Args:
        reward_fn: batched ``(obs, action, next_obs) -> reward``.
        mean: ``(..., 2 D)`` mean of ``[obs, next_obs]``.
        cov: ``(..., 2 D, 2 D)`` their joint covariance.
        action: ``(..., A)`` (deterministic).

    Returns:
        ``(...)`` expected reward.
    """
    if mean.shape[-1] % 2:
        raise DataError(
            f"unscented_expected_reward: mean must stack [obs, next_obs], got size {mean.shape[-1]}"
        )
    d = mean.shape[-1] // 2
    points, weights = sigma_points(mean, cov)  # (..., 2n, 2D)
    act = action.unsqueeze(-2).expand(*points.shape[:-1], action.shape[-1])
    reward = call_user(
        "reward_fn", REWARD_SIGNATURE, reward_fn, points[..., :d], act, points[..., d:]
    )
    check_output("reward_fn", reward, tuple(points.shape[:-1]), REWARD_SIGNATURE)
    return (reward.to(weights.dtype) * weights).sum(-1)
