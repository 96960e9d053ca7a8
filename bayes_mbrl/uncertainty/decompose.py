"""Epistemic / aleatoric decomposition of a posterior over dynamics functions.

Two decompositions of the predictive mixture ``p(s'|s,a) = (1/n) sum_i p(s'|s,a,f_i)``:

* **variance** (law of total variance, per state dimension):
  ``Var[s'] = Var_f E[s'|f] + E_f Var[s'|f] = epistemic + aleatoric``;
* **entropy** (per input, over the whole next state):
  ``H[p(s'|s,a)] = E_f H[p(s'|s,a,f)] + I(s'; f | s,a)``, total = aleatoric + epistemic,
  where the mutual information between the next state and the function is the
  epistemic part (it lies in ``[0, log n]``).

Each ``p(s'|s,a,f_i)`` is treated as a diagonal Gaussian with the function's mean and
variance (exact for every Gaussian model in the toolkit). Computations that are not
plain moments run in float64.

Shapes: ``n`` functions, ``B`` inputs, ``D = obs_dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample, Predictive

__all__ = [
    "EntropyDecomposition",
    "ModelDecomposition",
    "decompose",
    "decompose_model",
    "entropy_decomposition",
    "function_moments",
    "input_chunks",
    "resolve_generator",
]

LOG_2PI = math.log(2.0 * math.pi)
#: rows (functions x inputs) per call of a FunctionSample in the analysis functions
ROWS_PER_CALL = 1 << 16
#: elements of the largest intermediate tensor before inputs are processed in chunks
_CHUNK_ELEMENTS = 1 << 21


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator to draw from: ``generator``, or a fresh one seeded with 0.

    Analysis functions never touch torch's global RNG: without a generator they
    repeat exactly from call to call.
    """
    return generator if generator is not None else torch.Generator().manual_seed(0)


def check_moments(means: Tensor, variances: Tensor) -> None:
    """Raise :class:`DataError` unless ``means`` and ``variances`` are matching ``(n, B, D)``.

    Args:
        means: ``(n, B, D)``.
        variances: ``(n, B, D)``, positive.
    """
    for name, t in (("means", means), ("variances", variances)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise DataError(
                f"{name} must be a (functions, batch, state_dim) tensor, got {shape}; "
                "add a leading function dimension of size 1 for a single model"
            )
    if means.shape != variances.shape:
        raise DataError(
            f"means {tuple(means.shape)} and variances {tuple(variances.shape)} must have "
            "the same (functions, batch, state_dim) shape"
        )
    if means.shape[0] < 1:
        raise DataError("need at least one function (means.shape[0] >= 1)")
    if not bool(torch.isfinite(means).all()) or not bool(torch.isfinite(variances).all()):
        raise DataError("means or variances contain NaN or inf; check the model's outputs")
    if bool((variances <= 0).any()):
        raise DataError(
            "variances must be strictly positive; a deterministic function needs a "
            "small noise floor (e.g. 1e-8) to define densities and entropies"
        )


def decompose(means: Tensor, variances: Tensor) -> Predictive:
    """Law of total variance over ``n`` equally weighted functions.

    Args:
        means: ``(n, B, D)`` mean of ``p(s'|s,a,f_i)``.
        variances: ``(n, B, D)`` variance of ``p(s'|s,a,f_i)``.

    Returns:
        :class:`Predictive` with ``mean``, ``epistemic_var`` (variance of the means,
        population form) and ``aleatoric_var`` (mean of the variances), each ``(B, D)``.

    Raises:
        DataError: shapes do not match, or values are non-finite / non-positive.

    Examples:
        >>> m = torch.tensor([[[0.0]], [[2.0]]])
        >>> p = decompose(m, torch.ones(2, 1, 1))
        >>> p.epistemic_var.item(), p.aleatoric_var.item()
        (1.0, 1.0)
    """
    check_moments(means, variances)
    return Predictive.from_function_moments(means, variances)


@dataclass
class EntropyDecomposition:
    """Entropy split of the predictive mixture, in nats, per input.

    Attributes:
        total: ``(B,)`` predictive entropy ``H[p(s'|s,a)]`` of the equal-weight mixture.
        aleatoric: ``(B,)`` expected entropy ``E_f H[p(s'|s,a,f)]`` (closed form).
        epistemic: ``(B,)`` mutual information ``I(s'; f) = total - aleatoric``.
        num_samples: Monte Carlo draws per input used for ``total``/``epistemic``.
    """

    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    num_samples: int


def _gaussian_log_prob(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """Diagonal Gaussian log-density summed over the last dim (broadcasting)."""
    return -0.5 * (((x - means) ** 2 / variances) + variances.log() + LOG_2PI).sum(-1)


def entropy_decomposition(
    means: Tensor,
    variances: Tensor,
    generator: torch.Generator | None = None,
    num_samples: int = 256,
) -> EntropyDecomposition:
    """Total / aleatoric / epistemic entropy of an equal-weight diagonal Gaussian mixture.

    The aleatoric part is exact: ``(1/n) sum_i 0.5 sum_d log(2 pi e sigma_id^2)``. The
    epistemic part (the mutual information) is a Monte Carlo estimate over
    ``M = num_samples`` draws per input, stratified over functions (each function is the
    source of ``M // n`` draws, the remaining ``M % n`` sources are picked at random
    without replacement, so every function's expected share is ``M / n``):

        ``I = E_{i ~ U(n)} E_{x ~ p_i}[log p_i(x) - log p_mix(x)]``.

    The estimate is unbiased, exact (zero variance) for identical or perfectly
    separated components, and each term is at most ``log n``. The total is
    ``aleatoric + epistemic`` (so it is also unbiased). Cost is ``M * n`` density
    evaluations per input, done in input chunks to bound memory; no loop runs over
    functions or draws.

    Args:
        means: ``(n, B, D)`` component means.
        variances: ``(n, B, D)`` component variances (diagonal).
        generator: source of the Monte Carlo draws (None: a generator seeded with 0).
        num_samples: Monte Carlo draws ``M`` per input.

    Returns:
        :class:`EntropyDecomposition` with float64 ``(B,)`` tensors.

    Raises:
        DataError: bad shapes or values, or ``num_samples < 1``.

    Examples:
        >>> m = torch.tensor([[[-50.0]], [[50.0]]])
        >>> e = entropy_decomposition(m, torch.ones(2, 1, 1))
        >>> round(e.epistemic.item(), 4) == round(math.log(2), 4)
        True
    """
    check_moments(means, variances)
    if num_samples < 1:
        raise DataError(f"num_samples must be >= 1, got {num_samples}")
    gen = resolve_generator(generator)
    mu = means.detach().to(torch.float64)
    var = variances.detach().to(torch.float64)
    n, b, d = mu.shape
    aleatoric = 0.5 * (var.log() + LOG_2PI + 1.0).sum(-1).mean(0)
    sources = torch.arange(n).repeat(num_samples // n)
    extra = num_samples % n
    if extra:
        sources = torch.cat([sources, torch.randperm(n, generator=gen)[:extra]])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_samples * n * d))
    log_n = math.log(n)
    mi_parts = []
    for lo in range(0, b, chunk):
        m, v = mu[:, lo : lo + chunk], var[:, lo : lo + chunk]  # (n, c, D)
        ms, vs = m[sources], v[sources]  # (M, c, D)
        x = ms + vs.sqrt() * torch.randn(ms.shape, generator=gen, dtype=torch.float64)
        own = _gaussian_log_prob(x, ms, vs)  # (M, c)
        cross = _gaussian_log_prob(x.unsqueeze(1), m, v)  # every draw, every component: (M, n, c)
        log_mix = torch.logsumexp(cross, dim=1) - log_n
        mi_parts.append((own - log_mix).mean(0))
    epistemic = torch.cat(mi_parts)
    return EntropyDecomposition(
        total=aleatoric + epistemic,
        aleatoric=aleatoric,
        epistemic=epistemic,
        num_samples=num_samples,
    )


def input_chunks(n: int, b: int) -> list[slice]:
    """Slices of ``b`` inputs such that ``n`` functions see at most :data:`ROWS_PER_CALL`
    rows per call (bounds the memory of a network's hidden activations)."""
    step = max(1, ROWS_PER_CALL // max(1, n))
    return [slice(lo, min(lo + step, b)) for lo in range(0, b, step)]


def function_moments(fs: FunctionSample, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of every function at the same inputs.

    Inputs are evaluated in chunks of :func:`input_chunks` (every function at once).

    Args:
        fs: ``n`` functions.
        obs: ``(B, obs_dim)``.
        action: ``(B, action_dim)``.

    Returns:
        ``(means, variances)``, each ``(n, B, obs_dim)``.

    Raises:
        ModelError: the functions return a distribution of the wrong shape.
    """
    means_parts, var_parts = [], []
    for rows in input_chunks(fs.n, obs.shape[0]):
        o = obs[rows].float().expand(fs.n, -1, -1)
        a = action[rows].float().expand(fs.n, -1, -1)
        with torch.no_grad():
            dist = fs(o, a)
            means_parts.append(dist.mean)
            var_parts.append(dist.variance)
        expected = (fs.n, o.shape[1], obs.shape[1])
        if tuple(means_parts[-1].shape) != expected or tuple(var_parts[-1].shape) != expected:
            raise ModelError(
                f"{type(fs).__name__} returned means {tuple(means_parts[-1].shape)} and "
                f"variances {tuple(var_parts[-1].shape)}, expected {expected}; "
                "check the model with check_model"
            )
    return torch.cat(means_parts, dim=1), torch.cat(var_parts, dim=1)


@dataclass
class ModelDecomposition:
    """Both decompositions of a model's predictive at a batch of inputs.

    Attributes:
        predictive: variance split, each field ``(B, obs_dim)``.
        entropy: entropy split, each field ``(B,)``.
        num_functions: functions the decomposition averaged over.
    """

    predictive: Predictive
    entropy: EntropyDecomposition
    num_functions: int


def decompose_model(
    model: DynamicsModel,
    obs: Tensor,
    action: Tensor,
    num_functions: int | None = None,
    generator: torch.Generator | None = None,
    num_samples: int = 256,
) -> ModelDecomposition:
    """Variance and entropy decompositions of ``model``'s predictive at ``(obs, action)``.

    Functions come from :meth:`DynamicsModel.posterior_functions` (every member of an
    ensemble, every stored MCMC sample, or ``num_functions`` draws).

    Args:
        model: a fitted dynamics model.
        obs: ``(B, obs_dim)``.
        action: ``(B, action_dim)``.
        num_functions: functions to draw (None: the model's analysis default).
        generator: source of function draws and Monte Carlo samples (None: seeded with 0).
        num_samples: Monte Carlo draws per input for the entropy split.

    Returns:
        :class:`ModelDecomposition`.

    Raises:
        DataError: inputs do not fit the model.
    """
    model.check_inputs(obs, action)
    gen = resolve_generator(generator)
    fs = model.posterior_functions(num_functions, gen)
    means, variances = function_moments(fs, obs, action)
    return ModelDecomposition(
        predictive=decompose(means, variances),
        entropy=entropy_decomposition(means, variances, gen, num_samples),
        num_functions=fs.n,
    )
