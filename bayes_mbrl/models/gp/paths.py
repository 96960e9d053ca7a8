"""GP posterior function draws as plain tensors: one consistent function per path.

Pathwise conditioning (Matheron's rule; Wilson et al., ICML 2020) draws a
random-feature prior path and adds a kernel-weighted data update,
``(f | D)(x) = f0(x) + k(x, Z) K^{-1} (u - f0(Z) - eps)``, so one draw is one
function along a whole trajectory (``ts_inf`` = one function per particle). The
draws come from :func:`botorch.sampling.pathwise.draw_matheron_paths`; BoTorch's
path objects reference the live kernel modules, so each sample here is a snapshot
that a later refit cannot change:

- :class:`GPFunctionSample` (the built-in kernels): the drawn random features and
  update weights are copied into plain tensors and evaluated with explicit batched
  matmuls in ``path_dtype`` (float32 by default): planning calls a sample hundreds
  of times per plan.
- :class:`ModulePathSample` (a user's kernel or mean): a frozen copy of BoTorch's
  path itself (feature map, weights, kernel and mean modules), evaluated by BoTorch.

Shapes: ``n`` functions, ``B`` inputs per function, ``d`` inputs, ``D`` outputs,
``F`` random features, ``M`` update points.
"""

from __future__ import annotations

import abc
import copy
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.errors import DataError
from bayes_mbrl.models.base import FunctionSample
from bayes_mbrl.models.gp.kernels import stationary

__all__ = ["GPFunctionSample", "ModulePathSample"]


class _NormalizedPaths(FunctionSample):
    """Paths of the normalized deltas turned into next-state distributions.

    Args:
        n: number of paths.
        input_mean, input_std: ``(d,)`` input normalizer.
        delta_mean, delta_std: ``(D,)`` target normalizer.
        noise_std: ``(D,)`` aleatoric standard deviation of the next state.
        dtype: the precision paths are evaluated in.
    """

    def __init__(
        self,
        n: int,
        input_mean: Tensor,
        input_std: Tensor,
        delta_mean: Tensor,
        delta_std: Tensor,
        noise_std: Tensor,
        dtype: torch.dtype,
    ) -> None:
        self.n = n
        self.input_mean, self.input_std = input_mean, input_std
        self.delta_mean, self.delta_std = delta_mean, delta_std
        self.noise_std = noise_std
        self.dtype = dtype

    @abc.abstractmethod
    def path_values(self, x: Tensor) -> Tensor:
        """Values of the normalized-delta paths at ``(n, B, d)`` normalized inputs (row
        ``i`` through path ``i``), ``(n, D, B)``."""

    def latents(self) -> dict[str, Tensor]:
        """The aleatoric noise scale per output, ``(n, obs_dim)`` (shared by all paths)."""
        return {"noise_std": self.noise_std.float().expand(self.n, -1)}

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        """Next-state distribution of each path.

        Args:
            obs: ``(n, B, obs_dim)``.
            action: ``(n, B, action_dim)``.

        Returns:
            ``Independent(Normal)`` with batch ``(n, B)``, event ``(obs_dim,)``, in
            ``obs``'s dtype.
        """
        if obs.shape[0] != self.n or action.shape[:2] != obs.shape[:2]:
            raise DataError(
                f"{type(self).__name__} holds {self.n} functions; pass obs (n={self.n}, B, D) "
                f"and action (n, B, A) with matching leading dims, got {tuple(obs.shape)} and "
                f"{tuple(action.shape)}"
            )
        out_dtype = obs.dtype
        inputs = torch.cat([obs, action], dim=-1).to(self.dtype)
        x = (inputs - self.input_mean) / self.input_std
        f = self.path_values(x).transpose(1, 2)  # (n, B, D)
        loc = obs.to(self.dtype) + f * self.delta_std + self.delta_mean
        scale = self.noise_std.expand_as(loc)
        return Independent(Normal(loc.to(out_dtype), scale.to(out_dtype)), 1)


class GPFunctionSample(_NormalizedPaths):
    """``n`` GP posterior paths of a built-in kernel as plain tensors, evaluated in one
    batched computation.

    Path ``i`` of output ``j`` at a normalized input ``x``:
    ``f_ij(x) = c_j + [sin(x W_j^T), cos(x W_j^T)] w_ij + k_j(x, Z_j) v_ij``
    (random-Fourier-feature prior path plus Matheron update; lengthscales and
    outputscales are folded into ``W``, ``Z``, ``w`` and ``v``). The next state is
    ``Normal(obs + denormalize(f(x)), noise_std)``.

    Args:
        freqs: ``(D, F/2, d)`` spectral frequencies divided by the lengthscales.
        prior_weights: ``(n, D, F)`` prior path weights (feature scale folded in).
        constant: ``(D,)`` prior mean.
        points: ``(D, M, d)`` update points (training inputs or inducing points)
            divided by the lengthscales.
        update_weights: ``(n, D, M)`` update weights (outputscale folded in).
        inv_lengthscale_sq: ``(D, d)`` inverse squared lengthscales.
        kernel: a key of :data:`~bayes_mbrl.models.gp.kernels.KERNELS`.
        input_mean: ``(d,)`` input normalizer mean.
        input_std: ``(d,)``.
        delta_mean: ``(D,)`` target normalizer mean.
        delta_std: ``(D,)``.
        noise_std: ``(D,)`` aleatoric standard deviation of the next state.
    """

    def __init__(
        self,
        freqs: Tensor,
        prior_weights: Tensor,
        constant: Tensor,
        points: Tensor,
        update_weights: Tensor,
        inv_lengthscale_sq: Tensor,
        kernel: str,
        input_mean: Tensor,
        input_std: Tensor,
        delta_mean: Tensor,
        delta_std: Tensor,
        noise_std: Tensor,
    ) -> None:
        n = int(prior_weights.shape[0])
        super().__init__(n, input_mean, input_std, delta_mean, delta_std, noise_std, freqs.dtype)
        self.freqs = freqs
        self.prior_weights = prior_weights
        half = freqs.shape[1]
        sin_w, cos_w = prior_weights[..., :half], prior_weights[..., half:]
        self.amplitudes = torch.hypot(sin_w, cos_w)  # (n, D, F/2)
        self.phases = torch.atan2(sin_w, cos_w)  # (n, D, F/2)
        self.constant = constant
        self.points = points
        self.points_sq = points.square().sum(-1)  # (D, M)
        self.inv_ls2 = inv_lengthscale_sq  # (D, d)
        self.points_over_ls = points * inv_lengthscale_sq.sqrt().unsqueeze(1)  # (D, M, d)
        self.update_weights = update_weights
        self.kernel = kernel

    def path_values(self, x: Tensor) -> Tensor:
        """Values of the normalized-delta paths at normalized inputs.

        Args:
            x: ``(n, B, d)`` normalized inputs; row ``i`` goes through path ``i``.

        Returns:
            ``(n, D, B)``.
        """
        xb = x.unsqueeze(1)  # (n, 1, B, d)
        # a sin(p) + b cos(p) = r cos(p - phi): one cosine per feature instead of two
        feats = torch.matmul(xb, self.freqs.transpose(-1, -2))  # (n, D, B, F/2)
        feats = feats.sub_(self.phases.unsqueeze(-2)).cos_()
        prior = torch.matmul(feats, self.amplitudes.unsqueeze(-1))  # (n, D, B, 1)
        cross = torch.matmul(xb, self.points_over_ls.transpose(-1, -2))  # (n, D, B, M)
        x_sq = torch.matmul(x.square(), self.inv_ls2.T).transpose(1, 2)  # (n, D, B)
        r2 = cross.mul_(-2.0).add_(self.points_sq.unsqueeze(-2)).add_(x_sq.unsqueeze(-1))
        k = stationary(self.kernel, r2.clamp_min_(0.0))
        update = torch.matmul(k, self.update_weights.unsqueeze(-1))
        return (prior + update).squeeze(-1) + self.constant[:, None]


class ModulePathSample(_NormalizedPaths):
    """``n`` GP posterior paths of any kernel BoTorch has a feature map for: a frozen
    copy of BoTorch's Matheron path (prior features, weights, the kernel and mean
    modules), evaluated by BoTorch in float64.

    Args:
        paths: the ``MatheronPath`` of ``n`` draws from ``draw_matheron_paths``
            (copied; later changes to the model do not reach it).
        n: number of paths.
        input_mean, input_std, delta_mean, delta_std, noise_std: as for
            :class:`GPFunctionSample`.
    """

    def __init__(
        self,
        paths: Any,
        n: int,
        input_mean: Tensor,
        input_std: Tensor,
        delta_mean: Tensor,
        delta_std: Tensor,
        noise_std: Tensor,
    ) -> None:
        dtype = torch.float64
        super().__init__(n, input_mean, input_std, delta_mean, delta_std, noise_std, dtype)
        self.paths = copy.deepcopy(paths)
        self.paths.requires_grad_(False)

    def path_values(self, x: Tensor) -> Tensor:
        """Values of the normalized-delta paths at ``(n, B, d)`` normalized inputs,
        ``(n, D, B)``."""
        return self.paths(x.unsqueeze(1))
