"""A fitted squared-exponential GP as plain tensors (:class:`SEGP`), for moment matching.

Moment matching (PILCO; ``propagation = "moment_matching"``) needs the GP's
training inputs, weights ``beta = (K + sigma^2 I)^{-1} (y - c)``, the inverse Gram
matrices and the SE-ARD hyperparameters; :func:`se_gp_from_data` forms them from
an exact GP's normalized data and hyperparameters, and the analytic moments live
in :mod:`bayes_mbrl.planning.moment_matching`.

Shapes: ``N`` support points, ``d`` inputs, ``E`` outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError

__all__ = ["SEGP", "se_gp_from_data", "shift_scale", "unscale"]


@dataclass
class SEGP:
    """An SE-ARD GP (or an RBF network) as plain tensors, in the units it sees.

    The function of output ``a`` is
    ``f_a(x) = c_a + sum_i beta_ai * s_a * exp(-1/2 sum_k (x_k - X_ik)^2 / l_ak^2)``
    (the posterior mean), with posterior variance
    ``s_a - k_a(x)^T iK_a k_a(x)`` when ``inv_gram`` is given (a GP) and none
    otherwise (an RBF network: a deterministic function).

    Attributes:
        inputs: ``(N, d)`` support points (training inputs, inducing points, centres).
        beta: ``(E, N)`` weights (``(K + sigma^2 I)^{-1} (y - c)`` for a GP).
        lengthscale: ``(E, d)``.
        signal_var: ``(E,)`` kernel amplitude ``s_a``.
        constant: ``(E,)`` prior mean.
        inv_gram: ``(E, N, N)`` ``(K_a + sigma_a^2 I)^{-1}``, or None (no model variance).
        noise_var: ``(E,)`` observation noise variance, in the units ``f`` is computed in
            (like ``signal_var``; ``output_scale**2`` times it in outer units), or None.
            :func:`~bayes_mbrl.planning.moment_matching.se_gp_moments` adds it to the
            diagonal of the output covariance only when called with ``include_noise=True``
            (its default) and it is not None; :meth:`variance` never does.
        input_shift, input_scale: ``(d,)``: the function sees ``(x - shift) / scale``.
        output_shift, output_scale: ``(E,)``: the output is ``shift + scale * f``.
    """

    inputs: Tensor
    beta: Tensor
    lengthscale: Tensor
    signal_var: Tensor
    constant: Tensor
    inv_gram: Tensor | None = None
    noise_var: Tensor | None = None
    input_shift: Tensor | None = None
    input_scale: Tensor | None = None
    output_shift: Tensor | None = None
    output_scale: Tensor | None = None
    _pair_weights: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, d = self.inputs.shape
        e = self.beta.shape[0]
        expected = {
            "beta": (self.beta, (e, n)),
            "lengthscale": (self.lengthscale, (e, d)),
            "signal_var": (self.signal_var, (e,)),
            "constant": (self.constant, (e,)),
            "inv_gram": (self.inv_gram, (e, n, n)),
            "noise_var": (self.noise_var, (e,)),
            "input_shift": (self.input_shift, (d,)),
            "input_scale": (self.input_scale, (d,)),
            "output_shift": (self.output_shift, (e,)),
            "output_scale": (self.output_scale, (e,)),
        }
        for name, (value, shape) in expected.items():
            if value is not None and tuple(value.shape) != shape:
                raise DataError(
                    f"SEGP.{name} must have shape {shape} for N={n} inputs of size d={d} "
                    f"and E={e} outputs, got {tuple(value.shape)}"
                )

    def pair_weights(self) -> Tensor:
        """``(P, N, N)`` weights ``W_ab = beta_a beta_b^T - [a = b] iK_a`` of the output pairs
        ``a <= b`` (row-major upper triangle); computed once per GP and cached."""
        if self._pair_weights is not None:
            return self._pair_weights
        ia, ib = torch.triu_indices(self.out_dim, self.out_dim)
        w = self.beta[ia].unsqueeze(-1) * self.beta[ib].unsqueeze(-2)
        if self.inv_gram is not None:
            w = w - (ia == ib).to(w.dtype)[:, None, None] * self.inv_gram[ia]
        self._pair_weights = w
        return w

    @property
    def in_dim(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.beta.shape[0])

    def __call__(self, x: Tensor) -> Tensor:
        """The mean function at points ``(..., d)`` -> ``(..., E)`` (for checks and Monte Carlo)."""
        z = shift_scale(x, self.input_shift, self.input_scale)
        r = (z.unsqueeze(-2).unsqueeze(-2) - self.inputs) / self.lengthscale.unsqueeze(-2)
        k = self.signal_var.unsqueeze(-1) * torch.exp(-0.5 * r.square().sum(-1))  # (..., E, N)
        f = (k * self.beta).sum(-1) + self.constant
        return unscale(f, self.output_shift, self.output_scale)

    def variance(self, x: Tensor) -> Tensor:
        """Posterior variance of ``f`` (without noise) at ``(..., d)`` -> ``(..., E)``."""
        if self.inv_gram is None:
            return torch.zeros(*x.shape[:-1], self.out_dim, dtype=x.dtype)
        z = shift_scale(x, self.input_shift, self.input_scale)
        r = (z.unsqueeze(-2).unsqueeze(-2) - self.inputs) / self.lengthscale.unsqueeze(-2)
        k = self.signal_var.unsqueeze(-1) * torch.exp(-0.5 * r.square().sum(-1))
        var = self.signal_var - torch.einsum("...ei,eij,...ej->...e", k, self.inv_gram, k)
        scale = 1.0 if self.output_scale is None else self.output_scale.square()
        return var.clamp_min(0.0) * scale


def shift_scale(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    """``(x - shift) / scale`` (either may be None: skipped)."""
    if shift is not None:
        x = x - shift
    if scale is not None:
        x = x / scale
    return x


def unscale(f: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    """``shift + scale * f`` (either may be None: skipped)."""
    if scale is not None:
        f = f * scale
    if shift is not None:
        f = f + shift
    return f


def se_gp_from_data(
    x: Tensor,
    y: Tensor,
    hyperparameters: dict[str, Tensor],
    input_shift: Tensor,
    input_scale: Tensor,
    output_shift: Tensor,
    output_scale: Tensor,
    max_jitter: float,
) -> SEGP:
    """The exact SE-ARD GP posterior on normalized data as an :class:`SEGP`.

    ``(K + sigma^2 I)^{-1}`` is formed by a Cholesky in float64, retried with a
    diagonal jitter from 1e-8 up to ``max_jitter`` when it fails.

    Args:
        x: ``(N, d)`` normalized training inputs.
        y: ``(N, E)`` normalized targets.
        hyperparameters: ``lengthscale (E, d)``, ``outputscale (E,)``, ``noise (E,)``,
            ``constant (E,)`` in normalized units.
        input_shift: ``(d,)`` input normalizer's shift (the SEGP sees raw inputs).
        input_scale: ``(d,)`` input normalizer's scale.
        output_shift: ``(E,)`` target normalizer's shift (it predicts raw targets).
        output_scale: ``(E,)`` target normalizer's scale.
        max_jitter: largest jitter tried.

    Raises:
        ModelError: the kernel matrix is not positive definite with ``max_jitter``.
    """
    hp = hyperparameters
    n = x.shape[0]
    ls = hp["lengthscale"]
    r = (x.unsqueeze(0).unsqueeze(-2) - x.unsqueeze(0).unsqueeze(-3)) / ls[:, None, None, :]
    gram = hp["outputscale"][:, None, None] * torch.exp(-0.5 * r.square().sum(-1))
    gram = gram + torch.diag_embed(hp["noise"].unsqueeze(-1).expand(-1, n))

    eye = torch.eye(n, dtype=gram.dtype)
    jitter = 0.0
    while True:
        chol, info = torch.linalg.cholesky_ex(gram + jitter * eye)
        if not bool(info.any()):
            break
        jitter = 1e-8 if jitter == 0.0 else 10.0 * jitter
        if jitter > max_jitter * (1 + 1e-9):
            raise ModelError(
                "se_gp_posterior: the GP's kernel matrix is not positive definite even with "
                f"a jitter of {max_jitter:.0e}; raise the GP's min_noise or refit"
            )
    inv_gram = torch.cholesky_inverse(chol)
    beta = (inv_gram @ (y.T - hp["constant"][:, None]).unsqueeze(-1)).squeeze(-1)
    return SEGP(
        inputs=x.clone(),
        beta=beta,
        lengthscale=ls,
        signal_var=hp["outputscale"],
        constant=hp["constant"],
        inv_gram=inv_gram,
        noise_var=hp["noise"],
        input_shift=input_shift.clone(),
        input_scale=input_scale.clone(),
        output_shift=output_shift.clone(),
        output_scale=output_scale.clone(),
    )
