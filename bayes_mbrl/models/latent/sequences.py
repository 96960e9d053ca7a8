"""Distributions over whole latent sequences ``z_{1:T}``, for the Pyro program.

Each is one Pyro sample site with event shape ``(T, dz)``: its ``log_prob`` is
evaluated for all time steps at once (the transitions of every step in one batched
call), and only sampling runs step by step.

* :class:`MarkovPrior`: the generative prior ``p(z_1) prod_t p(z_{t+1} | z_t, a_t)``;
* :class:`BackwardMarkovGaussian`: the smoothing posterior
  ``q(z_T | o_{1:T}) prod_t q(z_t | z_{t+1}, o_{1:t})`` in its backward factorization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = ["BackwardMarkovGaussian", "MarkovPrior"]

TransitionFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class MarkovPrior(dist.TorchDistribution):
    """``z_1 ~ N(init_mean, init_cov)``, ``z_{t+1} ~ N(mu(z_t, a_t), diag(var(z_t, a_t)))``.

    Args:
        init_mean: ``(dz,)`` (or ``(B, dz)``).
        init_scale_tril: Cholesky factor of the initial covariance.
        actions: ``(B, T, da)``; ``a_t`` drives the step ``t -> t + 1`` (the last is unused).
        transition: ``(z (B, T-1, dz), a (B, T-1, da)) -> (mean, variance)``.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        init_mean: Tensor,
        init_scale_tril: Tensor,
        actions: Tensor,
        transition: TransitionFn,
    ) -> None:
        self.init = dist.MultivariateNormal(init_mean, scale_tril=init_scale_tril)
        self.actions = actions
        self.transition = transition
        b, t = actions.shape[:2]
        self.latent_dim = int(init_mean.shape[-1])
        super().__init__(torch.Size([b]), torch.Size([t, self.latent_dim]), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        """``(B,)`` log-density of ``value (B, T, dz)``."""
        lp = self.init.log_prob(value[:, 0])
        if value.shape[1] > 1:
            mu, var = self.transition(value[:, :-1], self.actions[:, :-1])
            step = dist.Normal(mu, var.sqrt()).log_prob(value[:, 1:])
            lp = lp + step.sum((-1, -2))
        return lp

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # type: ignore[override]  # noqa: B008
        if sample_shape != torch.Size():
            raise NotImplementedError("MarkovPrior draws one sequence per batch element")
        b, t = self.actions.shape[:2]
        z = self.init.expand(torch.Size([b])).rsample()  # one z_1 per sequence
        out = [z]
        for k in range(t - 1):
            mu, var = self.transition(out[-1].unsqueeze(1), self.actions[:, k : k + 1])
            out.append((mu + var.sqrt() * torch.randn_like(mu)).squeeze(1))
        return torch.stack(out, 1)


class BackwardMarkovGaussian(dist.TorchDistribution):
    """``z_T ~ N(m_T, P_T)``, ``z_t | z_{t+1} ~ N(offset_t + G_t z_{t+1}, S_t)``.

    Args:
        last_mean: ``(B, dz)``; last_scale_tril: ``(B, dz, dz)``.
        gain: ``(B, T-1, dz, dz)``; offset: ``(B, T-1, dz)``;
        back_scale_tril: ``(B, T-1, dz, dz)`` Cholesky factors of ``S_t``.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        last_mean: Tensor,
        last_scale_tril: Tensor,
        gain: Tensor,
        offset: Tensor,
        back_scale_tril: Tensor,
    ) -> None:
        self.last = dist.MultivariateNormal(last_mean, scale_tril=last_scale_tril)
        self.gain, self.offset, self.back_scale_tril = gain, offset, back_scale_tril
        b, d = last_mean.shape
        t = gain.shape[1] + 1
        super().__init__(torch.Size([b]), torch.Size([t, d]), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        """``(B,)`` log-density of ``value (B, T, dz)``."""
        lp = self.last.log_prob(value[:, -1])
        if value.shape[1] > 1:
            loc = self.offset + (self.gain @ value[:, 1:].unsqueeze(-1)).squeeze(-1)
            back = dist.MultivariateNormal(loc, scale_tril=self.back_scale_tril)
            lp = lp + back.log_prob(value[:, :-1]).sum(-1)
        return lp

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # type: ignore[override]  # noqa: B008
        if sample_shape != torch.Size():
            raise NotImplementedError("BackwardMarkovGaussian draws one sequence per element")
        z = self.last.rsample()
        out = [z]
        eps = torch.randn_like(self.offset)
        for t in range(self.gain.shape[1] - 1, -1, -1):
            loc = self.offset[:, t] + (self.gain[:, t] @ out[-1].unsqueeze(-1)).squeeze(-1)
            noise = (self.back_scale_tril[:, t] @ eps[:, t].unsqueeze(-1)).squeeze(-1)
            out.append(loc + noise)
        return torch.stack(out[::-1], 1)
