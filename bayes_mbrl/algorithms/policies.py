"""Policies whose action distribution under a Gaussian observation is moment matched.

PILCO needs ``E[u]``, ``Cov[u]`` and ``E[du/dx]`` of the policy's action for a
Gaussian input ``x`` in closed form. Both policies here compute a raw output
``u~ = pi(x)`` (:meth:`MomentPolicy.raw`, :meth:`MomentPolicy.raw_moments`) that is
squashed into the action bounds by PILCO's sine squashing
``u = c + h sin(u~)`` (``c`` the centre and ``h`` the half-width of the bounds;
:meth:`MomentPolicy.squash_moments`). The propagation applies the two stages one
after the other, so the cross-covariances with the state stay exact (see
:func:`bayes_mbrl.planning.moment_matching.augment`).

- :class:`LinearPolicy`: ``u~ = W x + b``.
- :class:`RBFPolicy`: ``u~_a = sum_i beta_ai exp(-1/2 |(x - c_i) / l_a|^2)`` with
  learnable centres ``c_i``, widths ``l_a`` and weights, the weights given, as in
  PILCO, by pseudo-targets ``t``: ``beta_a = (K_a + sigma_pi^2 I)^{-1} t_a`` (a GP
  posterior mean through ``(c_i, t_i)``; better conditioned for L-BFGS than raw
  weights).

Everything is float64.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.planning.moment_matching import (
    SEGP,
    Moments,
    linear_moments,
    se_gp_moments,
    sin_moments,
)

__all__ = ["LinearPolicy", "MomentPolicy", "RBFPolicy"]


class MomentPolicy(nn.Module, abc.ABC):
    """A deterministic policy with moment-matched, sine-squashed actions.

    Args:
        obs_dim: input size.
        action_low: ``(action_dim,)`` lower bounds.
        action_high: ``(action_dim,)`` upper bounds.
    """

    def __init__(self, obs_dim: int, action_low: Tensor, action_high: Tensor) -> None:
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float64).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float64).reshape(-1)
        if obs_dim < 1 or low.shape != high.shape or not bool((high > low).all()):
            raise ConfigError(
                f"a policy needs obs_dim >= 1 and action bounds with high > low, got "
                f"obs_dim={obs_dim}, low={low.tolist()}, high={high.tolist()}"
            )
        self.obs_dim = obs_dim
        self.action_dim = int(low.shape[0])
        self.center: Tensor
        self.half_width: Tensor
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_width", (high - low) / 2)

    @abc.abstractmethod
    def raw(self, obs: Tensor) -> Tensor:
        """Unsquashed output ``(..., action_dim)`` at ``(..., obs_dim)`` observations."""

    @abc.abstractmethod
    def raw_moments(self, mean: Tensor, cov: Tensor) -> Moments:
        """Moments of the unsquashed output for ``obs ~ N(mean, cov)``."""

    def moment_fn(self) -> Callable[[Tensor, Tensor], Moments]:
        """:meth:`raw_moments` with whatever depends only on the parameters computed once
        (use it for a whole propagated trajectory)."""
        return self.raw_moments

    def squash_moments(self, mean: Tensor, cov: Tensor) -> Moments:
        """Moments of ``c + h sin(u~)`` for ``u~ ~ N(mean, cov)``."""
        phase = torch.zeros(self.action_dim, dtype=mean.dtype)
        return sin_moments(mean, cov, phase, self.half_width, self.center)

    def forward(self, obs: Tensor) -> Tensor:
        """The squashed action ``(..., action_dim)`` (float64)."""
        self._check_obs(obs)
        return self.center + self.half_width * torch.sin(self.raw(obs.double()))

    def _check_obs(self, obs: Tensor) -> None:
        if obs.shape[-1] != self.obs_dim:
            raise DataError(
                f"{type(self).__name__} takes observations of size {self.obs_dim}, got shape "
                f"{tuple(obs.shape)}"
            )


class LinearPolicy(MomentPolicy):
    """``u = c + h sin(W x + b)``; starts near zero (small random ``W``).

    Args:
        obs_dim: input size.
        action_low: lower bounds.
        action_high: upper bounds.
        generator: initialization randomness.
        init_scale: standard deviation of the initial weights.
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        generator: torch.Generator | None = None,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high)
        w = init_scale * torch.randn(
            self.action_dim, obs_dim, generator=generator, dtype=torch.float64
        )
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(self.action_dim, dtype=torch.float64))

    def raw(self, obs: Tensor) -> Tensor:
        return obs @ self.weight.T + self.bias

    def raw_moments(self, mean: Tensor, cov: Tensor) -> Moments:
        return linear_moments(mean, cov, self.weight, self.bias)


class RBFPolicy(MomentPolicy):
    """Radial-basis-function network policy (PILCO's nonlinear controller).

    Args:
        obs_dim: input size.
        action_low: lower bounds.
        action_high: upper bounds.
        centres: ``(num_basis, obs_dim)`` initial centres (PILCO draws them from the
            initial state distribution).
        lengthscales: ``(obs_dim,)`` or ``(action_dim, obs_dim)`` initial widths.
        generator: randomness of the initial pseudo-targets ``0.1 * N(0, 1)``.
        noise_std: ``sigma_pi``, the pseudo-targets' regularizing noise (fixed).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        centres: Tensor,
        lengthscales: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
        noise_std: float = 0.01,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high)
        centres = torch.as_tensor(centres, dtype=torch.float64)
        if centres.dim() != 2 or centres.shape[1] != obs_dim or centres.shape[0] < 1:
            raise ConfigError(
                f"RBFPolicy centres must be (num_basis, {obs_dim}), got {tuple(centres.shape)}"
            )
        ls = torch.as_tensor(lengthscales, dtype=torch.float64).expand(self.action_dim, obs_dim)
        if not bool((ls > 0).all()) or noise_std <= 0:
            raise ConfigError("RBFPolicy lengthscales and noise_std must be > 0")
        self.num_basis = int(centres.shape[0])
        self.centres = nn.Parameter(centres.clone())
        self.targets = nn.Parameter(
            0.1
            * torch.randn(self.num_basis, self.action_dim, generator=generator, dtype=torch.float64)
        )
        self.log_lengthscale = nn.Parameter(ls.log().clone())
        self.noise_var = noise_std**2

    def network(self) -> SEGP:
        """The current network as an :class:`SEGP` (unit amplitude, no model variance)."""
        ls = self.log_lengthscale.exp()  # (A, d)
        r = (self.centres.unsqueeze(-2) - self.centres.unsqueeze(-3)) / ls[:, None, None, :]
        gram = torch.exp(-0.5 * r.square().sum(-1))  # (A, nb, nb)
        gram = gram + self.noise_var * torch.eye(self.num_basis, dtype=torch.float64)
        chol = torch.linalg.cholesky(gram)
        beta = torch.cholesky_solve(self.targets.T.unsqueeze(-1), chol).squeeze(-1)  # (A, nb)
        ones = torch.ones(self.action_dim, dtype=torch.float64)
        return SEGP(self.centres, beta, ls, ones, torch.zeros_like(ones))

    def raw(self, obs: Tensor) -> Tensor:
        return self.network()(obs)

    def raw_moments(self, mean: Tensor, cov: Tensor) -> Moments:
        return se_gp_moments(self.network(), mean, cov, include_noise=False)

    def moment_fn(self) -> Callable[[Tensor, Tensor], Moments]:
        net = self.network()
        return lambda mean, cov: se_gp_moments(net, mean, cov, include_noise=False)
