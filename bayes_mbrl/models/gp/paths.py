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
from bayes_mbrl.models.gp.kernels import KERNELS, stationary_

__all__ = ["GPFunctionSample", "ModulePathSample"]

#: bytes of kernel and feature values evaluated per block in :meth:`GPFunctionSample.path_values`
#: (well inside a core's L2 cache)
_BLOCK_BYTES = 384 * 1024


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

    def _check(self, obs: Tensor, action: Tensor) -> None:
        if obs.shape[0] != self.n or action.shape[:2] != obs.shape[:2]:
            raise DataError(
                f"{type(self).__name__} holds {self.n} functions; pass obs (n={self.n}, B, D) "
                f"and action (n, B, A) with matching leading dims, got {tuple(obs.shape)} and "
                f"{tuple(action.shape)}"
            )

    def _loc(self, obs: Tensor, action: Tensor) -> Tensor:
        """Mean next state of each path, ``(n, B, obs_dim)`` in ``obs``'s dtype."""
        self._check(obs, action)
        inputs = torch.cat([obs, action], dim=-1).to(self.dtype)
        x = (inputs - self.input_mean) / self.input_std
        f = self.path_values(x).transpose(1, 2)  # (n, B, D)
        loc = obs.to(self.dtype) + f * self.delta_std + self.delta_mean
        return loc.to(obs.dtype)

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        """Next-state distribution of each path.

        Args:
            obs: ``(n, B, obs_dim)``.
            action: ``(n, B, action_dim)``.

        Returns:
            ``Independent(Normal)`` with batch ``(n, B)``, event ``(obs_dim,)``, in
            ``obs``'s dtype.
        """
        loc = self._loc(obs, action)
        scale = self.noise_std.to(loc.dtype).expand_as(loc)
        return Independent(Normal(loc, scale), 1)

    def sample(self, obs: Tensor, action: Tensor, generator: torch.Generator | None) -> Tensor:
        """One next state per row, ``(n, B, obs_dim)``: the mean plus Gaussian noise drawn
        from ``generator`` (the same numbers as the default :meth:`FunctionSample.sample`,
        without building a distribution)."""
        loc = self._loc(obs, action)
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
        return loc + self.noise_std.to(loc.dtype) * eps

    def mean(self, obs: Tensor, action: Tensor) -> Tensor:
        """Mean next state of each path, ``(n, B, obs_dim)``."""
        return self._loc(obs, action)


class GPFunctionSample(_NormalizedPaths):
    """``n`` GP posterior paths of a built-in kernel as plain tensors, evaluated in one
    batched computation.

    Path ``i`` of output ``j`` at a normalized input ``x``:
    ``f_ij(x) = c_j + [sin(x W_j^T), cos(x W_j^T)] w_ij + k_j(x, Z_j) v_ij``
    (random-Fourier-feature prior path plus Matheron update; lengthscales and
    outputscales are folded into ``W``, ``Z``, ``w`` and ``v``). The next state is
    ``Normal(obs + denormalize(f(x)), noise_std)``.

    Evaluation is two batched matmuls over the ``n * D`` (path, output) pairs: the
    first gives, for every input, each feature's phase ``x W_jk - phi_ijk`` (the sine
    and cosine weights as one amplitude and phase) and each scaled squared distance
    ``||x - z_jm||^2 / l_j^2`` to the update points, computed as
    ``[x, 1, ||x / l_j||^2] @ [-2 z / l_j^2; ||z / l_j||^2; 1]`` (the squared
    exponential's ``-r^2 / 2`` directly); the cosines and the kernel are taken in place,
    and the second matmul weighs features and kernel values by ``[a_ij, v_ij]``.

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
        D, half, d = freqs.shape
        m = points.shape[1]
        self.num_outputs, self.num_half = D, half
        self.kernel = kernel
        self.constant = constant
        self.inv_ls2 = inv_lengthscale_sq  # (D, d)
        sin_w, cos_w = prior_weights[..., :half], prior_weights[..., half:]
        # a sin(p) + b cos(p) = r cos(p - phi): one cosine per feature instead of two
        amplitudes = torch.hypot(sin_w, cos_w)  # (n, D, F/2)
        phases = torch.atan2(sin_w, cos_w)  # (n, D, F/2)
        # the squared exponential gets -r^2/2 from the matmul (exp in place), Matern r^2
        scale = -0.5 if KERNELS[kernel] is None else 1.0
        points_over_ls = points * inv_lengthscale_sq.sqrt().unsqueeze(1)  # (D, M, d)
        kern_cols = torch.cat(
            [
                points_over_ls.mT * (-2.0 * scale),  # x . (-2 z / l^2)
                points.square().sum(-1).unsqueeze(1) * scale,  # ||z / l||^2
                torch.full((D, 1, m), scale, dtype=freqs.dtype, device=freqs.device),  # ||x / l||^2
            ],
            dim=1,
        )  # (D, d + 2, M)
        feat_cols = torch.cat(
            [
                freqs.mT.expand(n, D, d, half),
                -phases.unsqueeze(2),
                torch.zeros(n, D, 1, half, dtype=freqs.dtype, device=freqs.device),
            ],
            dim=2,
        )  # (n, D, d + 2, F/2)
        self.coef = torch.cat([feat_cols, kern_cols.expand(n, D, d + 2, m)], dim=3).reshape(
            n * D, d + 2, half + m
        )
        self.out_weights = (
            torch.cat([amplitudes, update_weights], dim=2).reshape(n * D, 1, half + m).contiguous()
        )
        self._one = torch.ones((), dtype=freqs.dtype, device=freqs.device)

    def path_values(self, x: Tensor) -> Tensor:
        """Values of the normalized-delta paths at normalized inputs.

        Args:
            x: ``(n, B, d)`` normalized inputs; row ``i`` goes through path ``i``.

        Returns:
            ``(n, D, B)``.
        """
        n, b, d = x.shape
        D, half = self.num_outputs, self.num_half
        x_sq = torch.matmul(x.square(), self.inv_ls2.T)  # (n, B, D): ||x / l_j||^2
        rows = torch.cat(
            [
                x.unsqueeze(1).expand(n, D, b, d),
                self._one.expand(n, D, b, 1),
                x_sq.mT.unsqueeze(-1),
            ],
            dim=-1,
        ).view(n * D, b, d + 2)
        out = torch.empty(n * D, 1, b, dtype=self.dtype, device=x.device)
        # (path, output) pairs in blocks whose (block, B, F/2 + M) terms stay in a core's
        # cache between the matmul, the in-place cosines and kernel, and the weighing
        width = self.coef.shape[-1] * b * self.coef.element_size()
        block = max(1, _BLOCK_BYTES // width)
        for lo in range(0, n * D, block):
            hi = min(lo + block, n * D)
            terms = torch.bmm(rows[lo:hi], self.coef[lo:hi])  # (block, B, F/2 + M)
            terms[..., :half].cos_()
            stationary_(self.kernel, terms[..., half:])
            torch.matmul(self.out_weights[lo:hi], terms.mT, out=out[lo:hi])
        return out.view(n, D, b) + self.constant.unsqueeze(-1)


class ModulePathSample(_NormalizedPaths):
    """``n`` GP posterior paths of any kernel BoTorch has a feature map for: a frozen
    copy of BoTorch's Matheron path (prior features, weights, the kernel and mean
    modules), evaluated by BoTorch in float64.

    Args:
        paths: the ``MatheronPath`` of ``n`` draws from ``draw_matheron_paths``
            (copied; later changes to the model do not reach it).
        n: number of paths.
        input_mean: as for :class:`GPFunctionSample`.
        input_std: as for :class:`GPFunctionSample`.
        delta_mean: as for :class:`GPFunctionSample`.
        delta_std: as for :class:`GPFunctionSample`.
        noise_std: as for :class:`GPFunctionSample`.
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
