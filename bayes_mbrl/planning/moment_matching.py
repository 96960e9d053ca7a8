r"""Analytic moment matching: Gaussian beliefs through SE-ARD GPs, sines and policies.

PILCO (Deisenroth & Rasmussen, ICML 2011; Deisenroth's thesis, 2010) propagates a
Gaussian belief over the state through a Gaussian-process model by matching the
first two moments of the predictive distribution exactly. Everything here is plain
torch in float64 and differentiable end to end (the policy search backpropagates
through a whole propagated trajectory).

The one building block is :func:`augment`: a belief ``z ~ N(m, S)`` over a joint
vector is extended by ``g(z_I)`` for some sub-vector ``z_I`` with the moments
``E[g]``, ``Cov[g]`` and ``V = E[dg/dz_I]``. By Stein's lemma
``Cov[z, g(z_I)] = S[:, I] V`` for *every* component of a Gaussian ``z``, so the
cross-covariances of the new entries with everything already in the belief (the
state, the features, the action) come out exactly. Transforms supplying
``(mean, cov, V)``:

- :func:`se_gp_moments`: an SE-ARD GP (or an RBF network, i.e. a GP mean without
  model variance) at a Gaussian input; exact mean, full output covariance with
  the cross terms between output dimensions, and ``V``.
- :func:`sin_moments`: ``c + a * sin(z_I + phase)`` jointly (exact); with phases 0
  and ``pi/2`` it gives the sine and cosine of angles, with a scale it is PILCO's
  sine squashing of actions.
- :func:`linear_moments`: ``W z_I + b`` (exact).

Costs (:func:`saturating_cost_moments`, :func:`quadratic_cost_moments`) give the
exact expectation and variance of a cost under a Gaussian.

Shapes: every function accepts leading batch dimensions ``...`` on the belief;
``d`` inputs, ``E`` outputs, ``N`` support points (training inputs or RBF centres).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.gp.se_posterior import SEGP
from bayes_mbrl.models.gp.se_posterior import shift_scale as _shift_scale
from bayes_mbrl.models.gp.se_posterior import unscale as _unscale

if TYPE_CHECKING:
    from bayes_mbrl.models.base import DynamicsModel

__all__ = [
    "SEGP",
    "Moments",
    "augment",
    "check_finite_belief",
    "linear_moments",
    "quadratic_cost_moments",
    "saturating_cost_moments",
    "se_gp_moments",
    "segp_from_exact",
    "sin_moments",
]

Moments = tuple[Tensor, Tensor, Tensor]
"""``(mean (..., k), cov (..., k, k), V (..., j, k))`` of ``g(z_I)`` with ``V = E[dg/dz_I]``."""


def segp_from_exact(model: DynamicsModel) -> SEGP:
    """The fitted SE-ARD exact GP as an :class:`SEGP` (inputs and outputs in model units):
    ``model.se_gp_posterior()`` (see :class:`~bayes_mbrl.models.gp.ExactGPDynamics`).

    Raises:
        ConfigError: the kernel is not squared exponential (moment matching is exact
            only for it).
        ModelError: the model has not been fitted, or is not a GP.
    """
    return model.se_gp_posterior()


@functools.lru_cache(maxsize=16)
def _pairs(e: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output pairs ``a <= b``: ``(ia, ib)``, the ``(P, E, E)`` 0/1 matrix placing each
    pair (and its mirror) in an ``E x E`` matrix, and the pair index of each ``(a, a)``."""
    with torch.inference_mode(False):  # cached: must be usable under autograd later
        ia, ib = torch.triu_indices(e, e)
        place = torch.zeros(ia.shape[0], e, e, dtype=dtype)
        place[torch.arange(ia.shape[0]), ia, ib] = 1.0
        place[torch.arange(ia.shape[0]), ib, ia] = 1.0
        return ia, ib, place, (ia == ib).to(dtype)


def _check_belief(mean: Tensor, cov: Tensor, name: str) -> None:
    if mean.dim() < 1 or cov.shape != (*mean.shape, mean.shape[-1]):
        raise DataError(
            f"{name}: a belief needs mean (..., k) and cov (..., k, k), got "
            f"{tuple(mean.shape)} and {tuple(cov.shape)}"
        )


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


# ------------------------------------------------------------------ SE-ARD GP
def se_gp_moments(gp: SEGP, mean: Tensor, cov: Tensor, include_noise: bool = True) -> Moments:
    """Exact moments of ``f(x)`` for ``x ~ N(mean, cov)`` (PILCO's ``gp0`` / ``gp2``).

    With ``nu_i = x_i - m`` (in the GP's input units), ``B_a = S + Lambda_a``:

    - ``E[f_a] = c_a + sum_i beta_ai q_ai``, ``q_ai = s_a |S Lambda_a^-1 + I|^{-1/2}
      exp(-1/2 nu_i^T B_a^-1 nu_i)``;
    - ``V_a = E[df_a/dx] = B_a^-1 sum_i beta_ai q_ai nu_i``;
    - ``E[f_a f_b] = beta_a^T Q_ab beta_b (+ s_a - tr(iK_a Q_aa) if a = b, GP only)``,
      ``Q_ab,ij = k_a(x_i, m) k_b(x_j, m) |R_ab|^{-1/2}
      exp(1/2 z_ij^T R_ab^-1 S z_ij)``, ``R_ab = S (Lambda_a^-1 + Lambda_b^-1) + I``,
      ``z_ij = Lambda_a^-1 nu_i + Lambda_b^-1 nu_j``.

    Args:
        gp: the GP (or RBF network).
        mean: ``(..., d)`` input mean.
        cov: ``(..., d, d)`` input covariance (positive semi-definite).
        include_noise: add the observation noise ``gp.noise_var`` to the diagonal of the
            output covariance (the prediction of a noisy target rather than of ``f``);
            no effect when ``gp.noise_var`` is None.

    Returns:
        ``(E[f] (..., E), C (..., E, E), V (..., d, E))`` in the GP's outer units, with
        ``C = Cov_x[m(x)] + E_x[Var f(x) | x]`` (``m`` the posterior mean; the second
        term, the model variance, only for a GP, i.e. ``gp.inv_gram`` given, not for
        an RBF network) ``+ diag(output_scale**2 * gp.noise_var)`` **exactly when**
        ``include_noise`` is True **and** ``gp.noise_var`` is not None. So by default a
        GP from :func:`segp_from_exact` (``noise_var`` = its likelihood's noise) gives
        the covariance of a noisy next-state delta, which is what
        :func:`~bayes_mbrl.planning.belief.gp_belief_step` propagates (PILCO's noisy
        transitions); with ``include_noise=False`` (as the RBF policies call it) or an
        :class:`SEGP` without ``noise_var`` it is the covariance of the latent ``f``.
        ``E[f]`` and ``V`` never include noise (zero mean, independent of ``x``).
    """
    _check_belief(mean, cov, "se_gp_moments")
    if mean.shape[-1] != gp.in_dim:
        raise DataError(
            f"se_gp_moments: the GP takes {gp.in_dim} inputs, the belief has {mean.shape[-1]}"
        )
    m = _shift_scale(mean, gp.input_shift, gp.input_scale)
    s = cov
    if gp.input_scale is not None:
        s = cov / (gp.input_scale.unsqueeze(-1) * gp.input_scale)
    d, e = gp.in_dim, gp.out_dim
    eye = torch.eye(d, dtype=s.dtype)
    ls2 = gp.lengthscale.square()  # (E, d)
    inv_ls2 = ls2.reciprocal()
    nu = gp.inputs - m.unsqueeze(-2)  # (..., N, d)
    s_e = s.unsqueeze(-3)  # (..., 1, d, d)

    # ---- mean and input-output term
    b = s_e + torch.diag_embed(ls2)  # (..., E, d, d)
    chol_b = torch.linalg.cholesky(b)
    nu_e = nu.unsqueeze(-3).expand(*nu.shape[:-2], e, *nu.shape[-2:])  # (..., E, N, d)
    t = torch.cholesky_solve(nu_e.transpose(-1, -2), chol_b).transpose(-1, -2)  # B^-1 nu
    logdet_b = 2.0 * torch.log(torch.diagonal(chol_b, dim1=-2, dim2=-1)).sum(-1)  # (..., E)
    logdet_scale = logdet_b - torch.log(ls2).sum(-1)  # log |S Lambda^-1 + I|
    log_q = (torch.log(gp.signal_var) - 0.5 * logdet_scale).unsqueeze(-1) - 0.5 * (nu_e * t).sum(
        -1
    )  # (..., E, N)
    q = torch.exp(log_q)
    bq = gp.beta * q  # (..., E, N)
    f_mean = bq.sum(-1)  # (..., E), without the constant
    v = (bq.unsqueeze(-1) * t).sum(-2).transpose(-1, -2)  # (..., d, E)

    # ---- second moments, over the E (E + 1) / 2 pairs a <= b only
    ia, ib, place, is_diag = _pairs(e, s.dtype)
    zeta = nu_e * inv_ls2.unsqueeze(-2)  # (..., E, N, d)
    log_k = torch.log(gp.signal_var).unsqueeze(-1) - 0.5 * (nu_e * zeta).sum(-1)  # (..., E, N)
    lam_sum = inv_ls2[ia] + inv_ls2[ib]  # (P, d)
    s_p = s.unsqueeze(-3)  # (..., 1, d, d)
    r = s_p * lam_sum.unsqueeze(-2) + eye  # (..., P, d, d)
    rt = _sym(torch.linalg.solve(r, s_p.expand_as(r)))  # R^-1 S (symmetric)
    logdet_r = torch.linalg.slogdet(r)[1]  # (..., P)
    za, zb = zeta[..., ia, :, :], zeta[..., ib, :, :]  # (..., P, N, d)
    za_t, zb_t = za @ rt, zb @ rt
    # log Q_ij = [za_t_i, col_i, 1] . [zb_j, 1, row_j]: one batched matmul per pair
    col = log_k[..., ia, :] + 0.5 * (za_t * za).sum(-1) - 0.5 * logdet_r.unsqueeze(-1)
    row = log_k[..., ib, :] + 0.5 * (zb_t * zb).sum(-1)
    ones = torch.ones_like(col).unsqueeze(-1)
    left = torch.cat([za_t, col.unsqueeze(-1), ones], dim=-1)  # (..., P, N, d + 2)
    right = torch.cat([zb, ones, row.unsqueeze(-1)], dim=-1)
    log_q = left @ right.transpose(-1, -2)  # (..., P, N, N)
    q = log_q.exp_()
    # E[f_a f_b] - delta_ab E[var f_a] + delta_ab s_a = sum_ij Q_ab,ij W_ab,ij + delta_ab s_a
    w = gp.pair_weights()  # (P, N, N)
    second_p = torch.einsum("...pij,pij->...p", q, w)
    if gp.inv_gram is not None:
        second_p = second_p + is_diag * gp.signal_var[ia]
    # scatter the pairs into a symmetric (E, E) matrix
    second = (second_p.unsqueeze(-1).unsqueeze(-1) * place).sum(-3)  # (..., E, E)
    f_cov = second - f_mean.unsqueeze(-1) * f_mean.unsqueeze(-2)
    f_cov = _sym(f_cov)
    if include_noise and gp.noise_var is not None:
        f_cov = f_cov + torch.diag_embed(gp.noise_var.expand(f_mean.shape))
    f_mean = f_mean + gp.constant

    # ---- back to outer units
    if gp.input_scale is not None:
        v = v / gp.input_scale.unsqueeze(-1)
    if gp.output_scale is not None:
        f_cov = f_cov * (gp.output_scale.unsqueeze(-1) * gp.output_scale)
        v = v * gp.output_scale
    f_mean = _unscale(f_mean, gp.output_shift, gp.output_scale)
    return f_mean, f_cov, v


# ------------------------------------------------------------ sines, linear maps
def sin_moments(
    mean: Tensor,
    cov: Tensor,
    phase: Tensor,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
) -> Moments:
    r"""Exact moments of ``g_k = shift_k + scale_k * sin(x_k + phase_k)``, ``x ~ N(mean, cov)``.

    With ``e_k = exp(-cov_kk / 2)``: ``E[sin(x_k + p_k)] = e_k sin(m_k + p_k)``;
    ``E[sin u sin w] = (E cos(u - w) - E cos(u + w)) / 2`` with
    ``E cos(u -+ w) = exp(-Var(u -+ w)/2) cos(E[u] -+ E[w])``; ``V = diag(scale_k e_k
    cos(m_k + p_k))``. Phase ``pi/2`` gives a cosine, so the sine and cosine of an
    angle are two entries of one call (pass the angle's mean twice).

    Args:
        mean: ``(..., k)``.
        cov: ``(..., k, k)``.
        phase: ``(k,)``.
        scale: ``(k,)`` (default 1).
        shift: ``(k,)`` (default 0).

    Returns:
        ``(mean (..., k), cov (..., k, k), V (..., k, k))``.
    """
    _check_belief(mean, cov, "sin_moments")
    mu = mean + phase
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    e = torch.exp(-0.5 * var)
    g_mean = e * torch.sin(mu)
    var_i, var_j = var.unsqueeze(-1), var.unsqueeze(-2)
    mu_i, mu_j = mu.unsqueeze(-1), mu.unsqueeze(-2)
    cos_minus = torch.exp(-0.5 * (var_i + var_j - 2.0 * cov)) * torch.cos(mu_i - mu_j)
    cos_plus = torch.exp(-0.5 * (var_i + var_j + 2.0 * cov)) * torch.cos(mu_i + mu_j)
    g_cov = 0.5 * (cos_minus - cos_plus) - g_mean.unsqueeze(-1) * g_mean.unsqueeze(-2)
    g_cov = _sym(g_cov)
    v_diag = e * torch.cos(mu)
    if scale is not None:
        g_mean = g_mean * scale
        g_cov = g_cov * (scale.unsqueeze(-1) * scale)
        v_diag = v_diag * scale
    if shift is not None:
        g_mean = g_mean + shift
    return g_mean, g_cov, torch.diag_embed(v_diag)


def linear_moments(mean: Tensor, cov: Tensor, weight: Tensor, bias: Tensor) -> Moments:
    """Exact moments of ``W x + b`` for ``x ~ N(mean, cov)``.

    Args:
        mean: ``(..., j)``.
        cov: ``(..., j, j)``.
        weight: ``(k, j)``.
        bias: ``(k,)``.

    Returns:
        ``(W m + b, W S W^T, W^T)``.
    """
    _check_belief(mean, cov, "linear_moments")
    out_mean = mean @ weight.T + bias
    out_cov = _sym(weight @ cov @ weight.T)
    return out_mean, out_cov, weight.T.expand(*mean.shape[:-1], *weight.T.shape)


# ---------------------------------------------------------------- augmentation
def augment(
    mean: Tensor,
    cov: Tensor,
    index: Sequence[int] | Tensor,
    transform: Callable[[Tensor, Tensor], Moments],
) -> tuple[Tensor, Tensor]:
    """Append ``g(z_I)`` to a Gaussian belief over ``z``, keeping all cross-covariances.

    ``Cov[z, g] = S[:, I] V`` (Stein's lemma: exact for a Gaussian ``z`` whatever
    ``g`` is, given ``V = E[dg/dz_I]``).

    Args:
        mean: ``(..., n)``.
        cov: ``(..., n, n)``.
        index: the ``j`` entries of ``z`` that ``g`` reads.
        transform: ``(mean_I, cov_I) -> (mean_g, cov_g, V)`` (one of this module's
            moment functions, partially applied).

    Returns:
        ``(mean (..., n + k), cov (..., n + k, n + k))``.
    """
    _check_belief(mean, cov, "augment")
    idx = torch.as_tensor(index, dtype=torch.long)
    m_i = mean[..., idx]
    s_i = cov[..., idx, :][..., idx]
    g_mean, g_cov, v = transform(m_i, s_i)
    cross = cov[..., :, idx] @ v  # (..., n, k)
    top = torch.cat([cov, cross], dim=-1)
    bottom = torch.cat([cross.transpose(-1, -2), g_cov], dim=-1)
    return torch.cat([mean, g_mean], dim=-1), torch.cat([top, bottom], dim=-2)


# ---------------------------------------------------------------------- costs
def saturating_cost_moments(
    mean: Tensor, cov: Tensor, target: Tensor, weight: Tensor, width: float = 1.0
) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of ``c(x) = 1 - exp(-1/2 (x - t)^T W (x - t) / width^2)``.

    With ``W~ = W / width^2`` and ``x ~ N(m, S)``:
    ``E[1 - c] = |I + S W~|^{-1/2} exp(-1/2 (m - t)^T W~ (I + S W~)^{-1} (m - t))``
    and ``E[(1 - c)^2]`` is the same with ``2 W~``.

    Args:
        mean: ``(..., k)``.
        cov: ``(..., k, k)``.
        target: ``(k,)``.
        weight: ``(k, k)`` symmetric positive semi-definite.
        width: cost width ``sigma_c``.

    Returns:
        ``(E[c] (...,), Var[c] (...,))``.
    """
    _check_belief(mean, cov, "saturating_cost_moments")
    if width <= 0:
        raise DataError(f"saturating cost width must be > 0, got {width}")
    w = weight / width**2
    eye = torch.eye(mean.shape[-1], dtype=mean.dtype)
    diff = (mean - target).unsqueeze(-1)

    def expected_exp(wk: Tensor) -> Tensor:
        a = eye + cov @ wk  # I + S W
        # W (I + S W)^{-1} = (I + W S)^{-1} W, symmetric
        sol = torch.linalg.solve(a.transpose(-1, -2), wk.expand_as(a))  # (I + W S)^-1 W
        quad = (diff.transpose(-1, -2) @ _sym(sol) @ diff).squeeze(-1).squeeze(-1)
        return torch.exp(-0.5 * quad) / torch.sqrt(torch.linalg.det(a))

    e1 = expected_exp(w)
    e2 = expected_exp(2.0 * w)
    return 1.0 - e1, (e2 - e1.square()).clamp_min(0.0)


def quadratic_cost_moments(
    mean: Tensor, cov: Tensor, target: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``c(x) = (x - t)^T W (x - t)`` for ``x ~ N(m, S)``.

    ``E[c] = tr(W S) + d^T W d`` and ``Var[c] = 2 tr((W S)^2) + 4 d^T W S W d`` with
    ``d = m - t``.

    Returns:
        ``(E[c] (...,), Var[c] (...,))``.
    """
    _check_belief(mean, cov, "quadratic_cost_moments")
    diff = (mean - target).unsqueeze(-1)
    ws = weight @ cov
    quad = (diff.transpose(-1, -2) @ weight @ diff).squeeze(-1).squeeze(-1)
    expected = torch.diagonal(ws, dim1=-2, dim2=-1).sum(-1) + quad
    wsw = ws @ weight
    variance = 2.0 * (ws * ws.transpose(-1, -2)).sum((-1, -2)) + 4.0 * (
        diff.transpose(-1, -2) @ wsw @ diff
    ).squeeze(-1).squeeze(-1)
    return expected, variance


def check_finite_belief(mean: Tensor, cov: Tensor, where: str) -> None:
    """Raise a :class:`~bayes_mbrl.errors.ModelError` naming ``where`` if a belief is not finite."""
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ModelError(
            f"moment matching produced a non-finite belief at {where}; the GP's "
            "lengthscales or the input covariance are degenerate (refit the GP or raise "
            "its noise floor)"
        )
