"""A Gaussian mixture over ``(x, u, x')`` fitted by EM, as a global dynamics model and as
the prior of local linear-Gaussian models.

:class:`GaussianMixture` holds ``K`` full-covariance components over ``d``-dimensional
points, in float64. :meth:`GaussianMixture.fit` runs expectation-maximization from a
k-means++ or random start drawn from a ``torch.Generator``: log-sum-exp
responsibilities in the E-step, weighted means and covariances plus a diagonal
``regularization`` in the M-step, until the mean log-likelihood gains less than
``tolerance``. Everything is batched over points and components (the k-means++ seeding
picks its ``K`` centers one after another, as the method is defined).

**As a dynamics model** (``model.kind = "gmm"``, :class:`GMMDynamics`): the mixture is
fitted to the points ``z = [x; u; x']``. At an input ``w = [x; u]`` each component
gives the conditional Gaussian of ``x'``::

    p(x' | w, k) = N(mu_k' + S_k'w S_k^ww^-1 (w - mu_k^w),  S_k'' - S_k'w S_k^ww^-1 S_k^w')

and its responsibility ``r_k(w) ∝ pi_k N(w; mu_k^w, S_k^ww)``, so ``p(x' | w)`` is
the mixture of the conditionals (:meth:`GaussianMixture.condition`). A *function* is a
draw of the component means from their posterior given the covariances,
``mu_k ~ N(mu_hat_k, S_k / N_k)`` (``N_k`` the component's effective count): the spread
across draws is the epistemic part of the predictive variance, and each function's
mixture variance at ``w`` (the component conditionals' covariances and the spread of
their means) the aleatoric part (the law of total variance of
:meth:`~bayes_mbrl.models.base.DynamicsModel.predict`).

**As a prior** (Levine and Abbeel 2014; cbfinn/gps ``gmm.py``): :meth:`GaussianMixture.inference`
turns the mixture near a set of points into a normal-inverse-Wishart prior for
:func:`~bayes_mbrl.models.linear_gaussian.fit_linear_gaussian`: the cluster weights
averaged over the points' responsibilities, the mixture's mean and covariance
under those weights (:meth:`GaussianMixture.moments`), and the pseudo-counts
``m = 1``, ``n0 = (N - 2 - d) / N`` (``N`` the points the mixture was fitted to).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, MultivariateNormal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import MODELS, DynamicsModel, FitReport, FunctionSample, ProgressFn
from bayes_mbrl.options import Options, at_least, greater_than, one_of, option

__all__ = [
    "GMM_INITS",
    "GMMDynamics",
    "GMMFunctions",
    "GMMOptions",
    "GaussianMixture",
    "NIWPrior",
]

GMM_INITS = ("kmeans++", "random")
"""Starts of EM: k-means++ centers (then nearest-center assignment), or a uniformly
random assignment of the points to the components (cbfinn's)."""


@dataclass
class NIWPrior:
    """A normal-inverse-Wishart prior over the joint Gaussian of ``(x, u, x')`` points.

    Attributes:
        mu0: ``(..., d)`` prior mean.
        Phi: ``(..., d, d)`` prior scatter (``m`` times the prior covariance's scale).
        m: prior strength of the mean (pseudo-observations).
        n0: prior strength of the covariance (pseudo-observations).
    """

    mu0: Tensor
    Phi: Tensor
    m: float
    n0: float


def _sym(a: Tensor) -> Tensor:
    return (a + a.transpose(-1, -2)) / 2


class GaussianMixture:
    """``K`` full-covariance Gaussian components over ``d``-dimensional points (float64).

    Args:
        weights: ``(K,)`` mixing weights (sum to one).
        means: ``(K, d)``.
        covariances: ``(K, d, d)`` positive definite.
        counts: ``(K,)`` effective number of points of each component (``N * weights``).
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, counts: Tensor) -> None:
        self.weights = weights.to(torch.float64)
        self.means = means.to(torch.float64)
        self.covariances = _sym(covariances.to(torch.float64))
        self.counts = counts.to(torch.float64)
        self.log_likelihoods: list[float] = []

    @property
    def num_components(self) -> int:
        """``K``."""
        return int(self.weights.shape[0])

    @property
    def num_points(self) -> float:
        """``N``: the points the mixture was fitted to."""
        return float(self.counts.sum())

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        points: Tensor,
        num_components: int,
        generator: torch.Generator | None = None,
        max_iterations: int = 100,
        tolerance: float = 1e-6,
        regularization: float = 1e-6,
        init: str = "kmeans++",
    ) -> GaussianMixture:
        """EM on ``points (N, d)`` (see the module docstring).

        Args:
            points: ``(N, d)``, finite.
            num_components: ``K`` (at most ``N``).
            generator: source of the start.
            max_iterations: the most EM iterations.
            tolerance: stop when the mean log-likelihood per point gains less.
            regularization: added to every covariance's diagonal.
            init: one of :data:`GMM_INITS`.

        Returns:
            The fitted mixture; ``log_likelihoods`` holds the mean log-likelihood per
            point after each iteration (non-decreasing up to the regularization).

        Raises:
            DataError: bad points or fewer points than components.
        """
        if points.dim() != 2 or not bool(torch.isfinite(points).all()):
            raise DataError(
                f"GaussianMixture.fit needs finite points of shape (N, d), got "
                f"{tuple(points.shape)}{'' if points.dim() != 2 else ' with NaN or inf'}"
            )
        x = points.to(torch.float64)
        n, d = x.shape
        if not 1 <= num_components <= n:
            raise DataError(
                f"GaussianMixture.fit: {num_components} components for {n} points; "
                "use between 1 and the number of points"
            )
        if init not in GMM_INITS:
            raise ModelError(f"GaussianMixture.fit: init = {init!r}, expected one of {GMM_INITS}")
        resp = cls._initial_responsibilities(x, num_components, generator, init)
        eye = torch.eye(d, dtype=torch.float64)
        gmm = cls._m_step(x, resp, regularization * eye, None)
        previous = -math.inf
        for _ in range(max_iterations):
            log_resp, ll = gmm._e_step(x)
            gmm = cls._m_step(x, log_resp.exp(), regularization * eye, gmm)
            gmm.log_likelihoods.append(ll)
            if ll - previous < tolerance:
                break
            previous = ll
        return gmm

    @staticmethod
    def _initial_responsibilities(
        x: Tensor, k: int, generator: torch.Generator | None, init: str
    ) -> Tensor:
        n = x.shape[0]
        if init == "random":
            labels = torch.randint(k, (n,), generator=generator)
            return torch.nn.functional.one_hot(labels, k).to(torch.float64)
        # k-means++: each next center drawn with probability proportional to the
        # squared distance to the nearest center chosen so far
        scale = x.std(0).clamp_min(1e-12)
        xs = x / scale
        first = int(torch.randint(n, (1,), generator=generator))
        centers = [xs[first]]
        nearest = ((xs - centers[0]) ** 2).sum(-1)
        for _ in range(1, k):
            probs = nearest / nearest.sum() if float(nearest.sum()) > 0 else torch.ones(n) / n
            idx = int(torch.multinomial(probs.float(), 1, generator=generator))
            centers.append(xs[idx])
            nearest = torch.minimum(nearest, ((xs - xs[idx]) ** 2).sum(-1))
        dist = torch.cdist(xs, torch.stack(centers))
        return torch.nn.functional.one_hot(dist.argmin(-1), k).to(torch.float64)

    @classmethod
    def _m_step(
        cls, x: Tensor, resp: Tensor, reg: Tensor, previous: GaussianMixture | None
    ) -> GaussianMixture:
        """Weights, means and covariances from responsibilities ``(N, K)``; an empty
        component keeps its previous mean (or the data mean) and the data covariance."""
        counts = resp.sum(0)  # (K,)
        safe = counts.clamp_min(1e-10)
        means = resp.T @ x / safe.unsqueeze(-1)
        empty = counts < 1e-8
        if bool(empty.any()):
            fallback = x.mean(0).expand_as(means) if previous is None else previous.means
            means = torch.where(empty.unsqueeze(-1), fallback, means)
        diff = x.unsqueeze(1) - means.unsqueeze(0)  # (N, K, d)
        covs = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / safe.reshape(-1, 1, 1)
        if bool(empty.any()):
            data_cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
            covs = torch.where(empty.reshape(-1, 1, 1), data_cov, covs)
        weights = counts / counts.sum()
        gmm = cls(weights, means, covs + reg, counts)
        if previous is not None:
            gmm.log_likelihoods = previous.log_likelihoods
        return gmm

    def _component_log_probs(self, x: Tensor, idx: slice | None = None) -> Tensor:
        """``(..., K)`` log N(x; mu_k, S_k) over the dimensions ``idx`` (None: all)."""
        mu = self.means if idx is None else self.means[:, idx]
        cov = self.covariances if idx is None else self.covariances[:, idx, idx]
        chol = torch.linalg.cholesky(cov)  # (K, e, e)
        diff = x.to(torch.float64).unsqueeze(-2) - mu  # (..., K, e)
        z = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
        e = mu.shape[-1]
        half_logdet = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (z**2).sum(-1) - half_logdet - 0.5 * e * math.log(2 * math.pi)

    def _e_step(self, x: Tensor) -> tuple[Tensor, float]:
        joint = self._component_log_probs(x) + self.weights.clamp_min(1e-300).log()
        norm = torch.logsumexp(joint, -1, keepdim=True)
        return joint - norm, float(norm.mean())

    # ------------------------------------------------------------------ queries
    def log_prob(self, x: Tensor) -> Tensor:
        """``(...,)`` log-density of points ``(..., d)``."""
        joint = self._component_log_probs(x) + self.weights.clamp_min(1e-300).log()
        return torch.logsumexp(joint, -1)

    def log_responsibilities(self, x: Tensor) -> Tensor:
        """``(..., K)`` log posterior probability of each component for points ``(..., d)``."""
        return self._e_step(x.reshape(-1, x.shape[-1]))[0].reshape(*x.shape[:-1], -1)

    def moments(self, log_weights: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(..., d)`` and covariance ``(..., d, d)`` of the mixture under the
        component weights ``exp(log_weights) (..., K)`` (law of total covariance)."""
        w = log_weights.exp()
        w = w / w.sum(-1, keepdim=True)
        mu = w @ self.means  # (..., d)
        diff = self.means - mu.unsqueeze(-2)  # (..., K, d)
        spread = torch.einsum("...k,...ki,...kj->...ij", w, diff, diff)
        within = torch.einsum("...k,kij->...ij", w, self.covariances)
        return mu, _sym(within + spread)

    def inference(self, points: Tensor) -> NIWPrior:
        """A normal-inverse-Wishart prior from the mixture near ``points (..., N, d)``
        (cbfinn's ``GMM.inference``): cluster weights averaged over the points'
        responsibilities, the mixture's moments under them, ``m = 1`` and
        ``n0 = (N_gmm - 2 - d) / N_gmm`` (``N_gmm`` the points the mixture was fitted to;
        ``Phi`` is the covariance scaled by ``m``). Batched over leading dimensions
        (e.g. one prior per time step)."""
        log_resp = self.log_responsibilities(points)  # (..., N, K)
        log_w = torch.logsumexp(log_resp, -2) - math.log(points.shape[-2])
        mu0, cov = self.moments(log_w)
        total = self.num_points
        d = points.shape[-1]
        m = 1.0
        n0 = max((total - 2.0 - d) / total, 1e-3)
        return NIWPrior(mu0=mu0, Phi=cov * m, m=m, n0=n0)

    def condition(self, w: Tensor, input_dim: int) -> tuple[Tensor, Tensor, Tensor]:
        """The mixture of ``p(y | w)`` for points ``[w; y]`` (first ``input_dim`` dimensions in).

        Args:
            w: ``(..., input_dim)`` inputs.
            input_dim: size of ``w``.

        Returns:
            ``(log_resp (..., K), means (..., K, d - input_dim), covariances
            (K, d - input_dim, d - input_dim))``: each component's responsibility given
            ``w``, conditional mean and conditional covariance.
        """
        i = slice(0, input_dim)
        o = slice(input_dim, None)
        S_ww = self.covariances[:, i, i]
        S_yw = self.covariances[:, o, i]
        gain = torch.linalg.solve(S_ww, S_yw.transpose(-1, -2)).transpose(-1, -2)  # (K, e, in)
        diff = w.to(torch.float64).unsqueeze(-2) - self.means[:, i]  # (..., K, in)
        means = self.means[:, o] + (gain @ diff.unsqueeze(-1)).squeeze(-1)
        covs = _sym(self.covariances[:, o, o] - gain @ S_yw.transpose(-1, -2))
        joint = self._component_log_probs(w, i) + self.weights.clamp_min(1e-300).log()
        log_resp = joint - torch.logsumexp(joint, -1, keepdim=True)
        return log_resp, means, covs

    def state_dict(self) -> dict[str, Any]:
        """The parameters as tensors."""
        return {
            "weights": self.weights,
            "means": self.means,
            "covariances": self.covariances,
            "counts": self.counts,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> GaussianMixture:
        """Rebuild from :meth:`state_dict`."""
        return cls(state["weights"], state["means"], state["covariances"], state["counts"])


class GMMFunctions(FunctionSample):
    """``n`` drawn mixtures (component means ``(n, K, d)``, shared weights and
    covariances); each maps ``(x, u)`` to the mixture of its conditionals of ``x'``."""

    def __init__(self, gmm: GaussianMixture, means: Tensor, obs_dim: int) -> None:
        self.gmm, self.draws, self.obs_dim = gmm, means, obs_dim
        self.n = means.shape[0]

    def latents(self) -> dict[str, Tensor]:
        return {"component_means": self.draws.float()}

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        w = torch.cat([obs, action], -1).to(torch.float64)  # (n, B, in)
        din = w.shape[-1]
        g = self.gmm
        i, o = slice(0, din), slice(din, None)
        S_ww, S_yw = g.covariances[:, i, i], g.covariances[:, o, i]
        gain = torch.linalg.solve(S_ww, S_yw.transpose(-1, -2)).transpose(-1, -2)
        mu = self.draws.unsqueeze(1)  # (n, 1, K, d)
        diff = w.unsqueeze(-2) - mu[..., i]  # (n, B, K, in)
        means = mu[..., o] + (gain @ diff.unsqueeze(-1)).squeeze(-1)  # (n, B, K, D)
        covs = _sym(g.covariances[:, o, o] - gain @ S_yw.transpose(-1, -2))
        chol_w = torch.linalg.cholesky(S_ww)
        z = torch.linalg.solve_triangular(chol_w, diff.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = torch.diagonal(chol_w, dim1=-2, dim2=-1).log().sum(-1)
        joint = -0.5 * (z**2).sum(-1) - logdet + g.weights.clamp_min(1e-300).log()
        dtype = obs.dtype
        comps = MultivariateNormal(
            means.to(dtype),
            scale_tril=torch.linalg.cholesky(covs).to(dtype).expand(*means.shape, -1),
        )
        return MixtureSameFamily(Categorical(logits=joint.to(dtype)), comps)


@dataclass
class GMMOptions(Options):
    """Options of ``model.kind = "gmm"`` (see :mod:`bayes_mbrl.models.gmm`)."""

    num_components: int = option(8, at_least(1, "an integer"), "mixture components K")
    max_iterations: int = option(100, at_least(1, "an integer"), "the most EM iterations")
    tolerance: float = option(
        1e-6, greater_than(0), "stop EM when the mean log-likelihood per point gains less"
    )
    regularization: float = option(
        1e-6, greater_than(0), "added to the diagonal of every component covariance"
    )
    init: str = option("kmeans++", one_of(GMM_INITS), "start of EM")


@MODELS.register(
    "gmm",
    options=GMMOptions,
    summary="Gaussian mixture over (x, u, x') by EM; the mixture of its conditional "
    "Gaussians, functions drawn over the component means",
)
class GMMDynamics(DynamicsModel):
    """A Gaussian mixture over ``(x, u, x')`` as a dynamics model (module docstring).

    Args:
        obs_dim: observation size.
        action_dim: action size.
        seed: seed of EM's start when ``fit`` gets no generator.

    The arguments from ``num_components`` to ``init`` are the fields of
    :class:`GMMOptions`.
    """

    predict_seed: int | None = 0

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_components: int = 8,
        max_iterations: int = 100,
        tolerance: float = 1e-6,
        regularization: float = 1e-6,
        init: str = "kmeans++",
        seed: int = 0,
    ) -> None:
        self.options = GMMOptions.of(
            type(self).__name__,
            num_components=num_components,
            max_iterations=max_iterations,
            tolerance=tolerance,
            regularization=regularization,
            init=init,
        )
        self.obs_dim, self.action_dim, self.seed = obs_dim, action_dim, seed
        self.gmm: GaussianMixture | None = None

    def _fitted(self) -> GaussianMixture:
        if self.gmm is None:
            raise ModelError("GMMDynamics is not fitted; call fit(buffer) first")
        return self.gmm

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """EM on the points ``[obs, action, next_obs]`` of every transition in ``data``."""
        start = time.perf_counter()
        batch = data.all()
        self.check_inputs(batch.obs, batch.action, batch.next_obs)
        points = torch.cat([batch.obs, batch.action, batch.next_obs], -1)
        o = self.options
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        self.gmm = GaussianMixture.fit(
            points,
            min(o.num_components, points.shape[0]),
            gen,
            max_iterations=o.max_iterations,
            tolerance=o.tolerance,
            regularization=o.regularization,
            init=o.init,
        )
        lls = self.gmm.log_likelihoods
        if progress is not None:
            for step, ll in enumerate(lls):
                progress(step, -ll, float("nan"))
        return FitReport(
            train_losses=[-ll for ll in lls],
            epochs=len(lls),
            wall_seconds=time.perf_counter() - start,
        )

    def progress_total(self) -> int | None:
        return self.options.max_iterations

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """``n`` mixtures whose component means are drawn from ``N(mu_k, S_k / N_k)``."""
        if n < 1:
            raise DataError(f"sample_functions needs n >= 1, got {n}")
        g = self._fitted()
        chol = torch.linalg.cholesky(g.covariances / g.counts.clamp_min(1.0).reshape(-1, 1, 1))
        eps = torch.randn(n, *g.means.shape, generator=generator, dtype=torch.float64)
        means = g.means + (chol @ eps.unsqueeze(-1)).squeeze(-1)
        return GMMFunctions(g, means, self.obs_dim)

    def mean_functions(self) -> GMMFunctions:
        """The fitted mixture itself as one function."""
        g = self._fitted()
        return GMMFunctions(g, g.means.unsqueeze(0), self.obs_dim)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.gmm is None else self.gmm.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gmm = GaussianMixture.from_state_dict(state) if state else None
