"""Bootstrap ensemble of probabilistic MLPs (PETS; Chua et al., NeurIPS 2018).

Each member is a Gaussian MLP ``(s, a) -> N(mu, diag(sigma^2))`` over the
normalized state delta ``s' - s``, with learned soft bounds on the log-variance.
All members live in batched weight tensors ``(E, in, out)``, so one batched matmul
per layer evaluates every member: there is no Python loop over members anywhere
(float32 planning adds the biases as an extra weight row, :class:`_BiasRowMLP`).

The posterior over functions is uniform over the ``E`` members; a "function" is
a member, and :meth:`ProbabilisticEnsemble.sample_functions` stratifies draws
over members (as PETS assigns particles to members).

Randomized prior functions (Osband, Aslanides & Cassirer, "Randomized Prior Functions
for Deep Reinforcement Learning", NeurIPS 2018), ``prior_scale = beta > 0``: member
``m``'s mean of the normalized delta is ``net_m(x) + beta * p_m(x)``, where ``p_m`` is
a fixed MLP drawn at construction and never trained (:class:`RandomPriorFunctions`).
Each member fits the data *through* its own prior, so the members agree where there
are data and keep their priors' disagreement where there are none, in gaps between
data as well as outside them. ``prior_scale = 0`` (the default) builds no prior: the
numerics, speed and checkpoints are those of the plain ensemble.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.devices import randn_like_on
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    ProgressFn,
    check_function_inputs,
    state_mismatch,
)
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import (
    Options,
    at_least,
    described,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)

__all__ = [
    "ACTIVATIONS",
    "EnsembleFunctionSample",
    "EnsembleOptions",
    "GaussianMLPEnsemble",
    "ProbabilisticEnsemble",
    "RandomPriorFunctions",
    "fold_prior",
    "stratified_members",
]

#: activations for training (out of place, differentiable)
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "elu": F.elu,
}
#: the same activations in place, for planning under inference mode
_INPLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": lambda x: F.silu(x, inplace=True),
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "elu": lambda x: F.elu(x, inplace=True),
}

LOG_2PI = math.log(2.0 * math.pi)


def _soft_bound_logvar(logvar: Tensor, min_logvar: Tensor, max_logvar: Tensor) -> Tensor:
    """PETS' differentiable clamp of the log-variance into ``[min_logvar, max_logvar]``."""
    logvar = max_logvar - F.softplus(max_logvar - logvar)
    return min_logvar + F.softplus(logvar - min_logvar)


def fit_delta_normalizers(
    data: ReplayBuffer, input_normalizer: Normalizer, delta_normalizer: Normalizer
) -> tuple[Tensor, Tensor]:
    """Fit the normalizers of ``(s, a)`` inputs and ``s' - s`` deltas to all of ``data``.

    Returns:
        ``(x, y)``: ``(N, obs_dim + action_dim)`` normalized inputs and ``(N, obs_dim)``
        normalized deltas.
    """
    batch = data.all()
    # on the normalizers' device (the model's), where the fit runs
    inputs = torch.cat([batch.obs, batch.action], dim=-1).to(input_normalizer.mean.device)
    deltas = (batch.next_obs - batch.obs).to(delta_normalizer.mean.device)
    input_normalizer.fit(inputs)
    delta_normalizer.fit(deltas)
    return input_normalizer.normalize(inputs), delta_normalizer.normalize(deltas)


def fold_normalizers(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    input_normalizer: Normalizer,
    delta_normalizer: Normalizer,
) -> tuple[list[Tensor], list[Tensor]]:
    """Fold input normalization into the first layer and the delta scale into the mean
    half of the ``[mean, log-variance]`` output layer.

    Args:
        weights: per layer ``(n, in, out)`` in normalized space.
        biases: per layer ``(n, 1, out)``.
        input_normalizer: of the ``(s, a)`` inputs.
        delta_normalizer: of the ``s' - s`` deltas (``D`` wide; the last layer is ``2 D``).

    Returns:
        New weight and bias lists acting on raw inputs, with denormalized delta means.
    """
    ws, bs = list(weights), list(biases)
    mu_in, sd_in = input_normalizer.mean, input_normalizer.std
    w0 = ws[0]
    ws[0] = w0 / sd_in[None, :, None]
    bs[0] = bs[0] - ((mu_in / sd_in) @ w0).unsqueeze(1)
    mu_out, sd_out = delta_normalizer.mean, delta_normalizer.std
    d = int(sd_out.shape[0])
    scale = torch.cat([sd_out, torch.ones(d)])
    shift = torch.cat([mu_out, torch.zeros(d)])
    ws[-1] = ws[-1] * scale
    bs[-1] = bs[-1] * scale + shift
    return ws, bs


def fold_prior(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    input_normalizer: Normalizer,
    delta_normalizer: Normalizer,
    prior_scale: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """Fold input normalization into a prior network's first layer and ``prior_scale``
    times the delta scale into its output layer (the delta's mean is the member's).

    Args:
        weights: per layer ``(n, in, out)``; the last layer is ``D`` wide (a mean only).
        biases: per layer ``(n, 1, out)``.
        input_normalizer: of the ``(s, a)`` inputs.
        delta_normalizer: of the ``s' - s`` deltas.
        prior_scale: ``beta``.

    Returns:
        Weights and biases whose network maps raw inputs to ``beta * p(x)`` in delta units.
    """
    ws, bs = list(weights), list(biases)
    mu_in, sd_in = input_normalizer.mean, input_normalizer.std
    w0 = ws[0]
    ws[0] = w0 / sd_in[None, :, None]
    bs[0] = bs[0] - ((mu_in / sd_in) @ w0).unsqueeze(1)
    scale = prior_scale * delta_normalizer.std
    ws[-1] = ws[-1] * scale
    bs[-1] = bs[-1] * scale
    return ws, bs


def stratified_members(n: int, num_members: int, generator: torch.Generator | None) -> Tensor:
    """``n`` member indices out of ``num_members``: each member ``n // E`` times in
    order, the rest at random (all members in order when ``n == E``).

    Raises:
        DataError: ``n < 1``.
    """
    if n < 1:
        raise DataError(f"number of functions must be >= 1, got {n}")
    base = torch.arange(n) % num_members
    extra = n % num_members
    if extra and n > num_members:
        base[-extra:] = torch.randperm(num_members, generator=generator)[:extra]
    elif n < num_members:
        base = torch.randperm(num_members, generator=generator)[:n]
    return base


class GaussianMLPEnsemble(nn.Module):
    """``E`` Gaussian MLPs as batched weights.

    Args:
        in_dim: input size.
        out_dim: output size ``D`` (the head returns a mean and a log-variance of size ``D``).
        hidden_sizes: width of each hidden layer.
        num_members: ensemble size ``E``.
        activation: one of :data:`ACTIVATIONS`.
        generator: source of randomness for the initialization.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_sizes: Sequence[int],
        num_members: int,
        activation: str = "silu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        if num_members < 1 or not hidden_sizes or min(hidden_sizes) < 1:
            raise ConfigError(
                f"ensemble needs num_members >= 1 and positive hidden sizes, "
                f"got {num_members} and {list(hidden_sizes)}"
            )
        self.in_dim, self.out_dim, self.num_members = in_dim, out_dim, num_members
        self.activation = activation
        sizes = [in_dim, *hidden_sizes, 2 * out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            # nn.Linear's default initialization, drawn per member from the generator
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(num_members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(num_members, 1, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        self.max_logvar = nn.Parameter(torch.full((1, 1, out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out_dim), -10.0))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(E, B, in_dim) -> (mean, logvar)``, each ``(E, B, out_dim)``, log-variance bounded."""
        act = ACTIVATIONS[self.activation]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = act(x)
        mean, logvar = x.split(self.out_dim, dim=-1)
        return mean, _soft_bound_logvar(logvar, self.min_logvar, self.max_logvar)


#: standard deviation of the hidden-layer biases of a randomized prior network
PRIOR_BIAS_STD = 0.5


class RandomPriorFunctions(nn.Module):
    """``E`` fixed random MLPs ``p_m: (E, B, in_dim) -> (E, B, out_dim)``, the randomized
    prior functions of Osband et al. (2018); buffers, never trained.

    Drawn so that each ``p_m`` varies by about one unit over normalized inputs, whatever
    the depth and width: hidden layers have He-normal weights ``N(0, 2 / fan_in)`` and
    biases ``N(0, 0.5^2)`` (so that the kinks of the activation fall inside the data),
    the output layer ``N(0, 1 / fan_in)`` weights and no bias (a member's own output
    bias absorbs any constant). ``prior_scale`` multiplies the output in normalized
    delta units.

    Args:
        in_dim: input size.
        out_dim: output size ``D`` (a mean only).
        hidden_sizes: widths of the hidden layers.
        num_members: ``E``.
        activation: one of :data:`ACTIVATIONS`.
        prior_scale: ``beta``, kept as a buffer so that a checkpoint names it.
        generator: source of the random weights.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_sizes: Sequence[int],
        num_members: int,
        activation: str,
        prior_scale: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.num_layers = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            last = i == self.num_layers - 1
            w = torch.randn(num_members, fan_in, fan_out, generator=generator)
            if last:
                b = torch.zeros(num_members, 1, fan_out)
            else:
                b = torch.randn(num_members, 1, fan_out, generator=generator) * PRIOR_BIAS_STD
            self.register_buffer(f"weight{i}", w * math.sqrt((1.0 if last else 2.0) / fan_in))
            self.register_buffer(f"bias{i}", b)
        self.register_buffer("scale", torch.tensor(float(prior_scale)))

    @property
    def weights(self) -> list[Tensor]:
        """Per layer ``(E, in, out)``."""
        return [getattr(self, f"weight{i}") for i in range(self.num_layers)]

    @property
    def biases(self) -> list[Tensor]:
        """Per layer ``(E, 1, out)``."""
        return [getattr(self, f"bias{i}") for i in range(self.num_layers)]

    def forward(self, x: Tensor) -> Tensor:
        """``(E, B, in_dim) -> (E, B, out_dim)``: ``p_m(x)``, without ``prior_scale``."""
        act = ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < self.num_layers - 1:
                x = act(x)
        return x


#: constants tried, in order, for the bias column: one the activation maps to itself
#: exactly is set once per buffer and survives every in-place activation (SiLU: 32, as
#: ``32 * sigmoid(32)`` rounds to 32 in float32; ReLU and ELU: 1); tanh has none
_BIAS_COLUMN_CANDIDATES = (1.0, 32.0)


@functools.cache
def _fixed_point(activation: str, dtype: torch.dtype, device: torch.device) -> float | None:
    """The first of :data:`_BIAS_COLUMN_CANDIDATES` that the in-place ``activation`` maps
    to itself exactly, or None. Checked with the kernel itself on vectors whose lengths
    take its vectorized loop, its scalar tail and its multithreaded split (a buffer's
    column lands in any of them)."""
    act = _INPLACE_ACTIVATIONS[activation]
    for k in _BIAS_COLUMN_CANDIDATES:
        if all(
            bool((act(torch.full((length,), k, dtype=dtype, device=device)) == k).all())
            for length in (1, 67, 100_003)
        ):
            return k
    return None


class _BiasRowMLP:
    """The planning path of a folded MLP: each bias is one more row of its weight matrix.

    ``baddbmm`` adds a bias by first copying it into every row of its output (a pass over
    memory as long as the matmul's own output), and ``torch.bmm`` into a contiguous
    tensor takes MKL's batched GEMM, which splits the members unevenly over 2 threads.
    Here every layer's input carries a constant column and each weight matrix the bias
    as an extra row, and the matmul writes into the first ``width`` columns of a reused
    buffer whose last column is the constant: with that strided output torch runs one
    BLAS GEMM per member. On the CPU this made the float32 plan of
    ``experiments/benchmarks/planning_throughput.py`` about 25% faster (751 to 566 ms);
    in bfloat16 it gained nothing until the column was written once per buffer (below),
    then the default run's bf16 planning took 8% less time (72.2 to 66.5 s) and that
    benchmark's bf16 plan 22% less. Function samples on the CPU use it, in either dtype;
    on a GPU the ``baddbmm`` path runs.
    The activation then runs in place over the whole contiguous buffer (a strided one
    that skipped the column measured 27% slower for SiLU), constant column included.
    Where the activation has an exact fixed point ``k`` (:func:`_fixed_point`: 32 for
    SiLU, 1 for ReLU and ELU) the column holds ``k``, is written once per buffer and
    layout, and the next layer's bias row is divided by ``k`` (a power of two: exact);
    otherwise (tanh) the column holds ``act(1)`` after the activation, the bias row is
    divided by that and the column is set back to 1 before each reuse (a pass over one
    cache line per row: the fixed point made the SiLU plan about 3% faster). A
    one-hot weight column that carried the constant would make the GEMM's width odd,
    slower still. The same function as the ``baddbmm`` path to float rounding (tested).

    Not differentiable (``out=`` matmuls): the function sample uses it only when autograd
    is off or nothing requires a gradient. Two buffers, grown to the largest batch seen,
    alternate between layers; the outputs never alias them. Not re-entrant.

    Args:
        weights: per layer ``(n, in, out)`` float32, folded; the last is the output layer.
        biases: per layer ``(n, 1, out)``.
        activation: a key of :data:`_INPLACE_ACTIVATIONS`.
        dtype: the matmuls' dtype.
    """

    def __init__(
        self,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor],
        activation: str,
        dtype: torch.dtype,
    ) -> None:
        self.act = _INPLACE_ACTIVATIONS[activation]
        device = weights[0].device
        self.fixed = _fixed_point(activation, dtype, device)
        if self.fixed is None:
            # what the refilled column holds after the activation: the kernel on a vector
            c = float(self.act(torch.ones(64, dtype=dtype, device=device))[0])
            if c == 0.0:
                raise ModelError(f"the {activation} activation maps 1 to 0: no bias row possible")
        else:
            c = self.fixed
        self.hidden = [
            torch.cat([w, b / (1.0 if i == 0 else c)], 1).to(dtype)
            for i, (w, b) in enumerate(zip(weights[:-1], biases[:-1], strict=True))
        ]
        # the narrow output layer runs feature-major, (n, out, H + 1) @ (n, H + 1, B)
        out = torch.cat([weights[-1], biases[-1] / c], 1)
        self.out_t = out.transpose(1, 2).contiguous().to(dtype)
        self.dtype = dtype
        self._flat: list[Tensor] = []
        # per buffer, the (width, rows) whose constant column holds the fixed point
        self._column: list[tuple[int, int]] = []

    def _layer_buffer(self, i: int, n: int, rows: int, width: int) -> Tensor:
        """Buffer ``i % 2`` viewed as ``(n, rows, width + 1)``, its last column the constant
        (the fixed point, or 1 where the column is refilled)."""
        j, need = i % 2, n * rows * (width + 1)
        if len(self._flat) <= j or self._flat[j].numel() < need:
            # a normal tensor even under inference mode: usable in place under no_grad too
            with torch.inference_mode(False):
                flat = torch.empty(need, dtype=self.dtype, device=self.out_t.device)
            self._flat[j:] = [flat]
            self._column[j:] = [(0, 0)]
        h = self._flat[j][:need].view(n, rows, width + 1)
        if self.fixed is None:
            h[..., -1] = 1.0
        else:
            # the column sits every width + 1 elements, whatever the rows: it stays set
            # until a layer of another width writes over it or more rows are needed
            done_width, done_rows = self._column[j]
            if done_width != width or done_rows < n * rows:
                h[..., -1] = self.fixed
                self._column[j] = (width, n * rows)
        return h

    def __call__(self, obs: Tensor, action: Tensor) -> Tensor:
        """``(n, B, obs_dim), (n, B, action_dim) -> (n, out, B)`` in the compute dtype
        (feature-major, as the output layer computes it)."""
        n, rows = int(obs.shape[0]), int(obs.shape[1])
        x = torch.cat([obs, action, obs.new_ones(n, rows, 1)], dim=-1).to(self.dtype)
        for i, w in enumerate(self.hidden):
            h = self._layer_buffer(i, n, rows, int(w.shape[2]))
            torch.bmm(x, w, out=h[..., :-1])
            x = self.act(h)
        return torch.bmm(self.out_t, x.transpose(1, 2))


class EnsembleFunctionSample(FunctionSample):
    """``n`` ensemble members with the input/target normalization folded into the weights.

    Folding makes a planning step exactly one batched matmul plus one activation per
    hidden layer (``baddbmm``; on the CPU without autograd a ``bmm`` whose weights carry
    the bias as an extra row, :class:`_BiasRowMLP`): ``W1' = W1 / sigma_in``,
    ``b1' = b1 - (mu_in / sigma_in) W1`` and the mean head is scaled by the delta scale.

    Args:
        weights: per layer ``(n, in, out)`` (already folded).
        biases: per layer ``(n, 1, out)``.
        min_logvar: ``(1, 1, D)``; max_logvar: ``(1, 1, D)`` (normalized-space bounds).
        delta_std: ``(D,)`` scale of the delta normalizer (for the noise).
        obs_dim: ``D``.
        activation: activation name.
        member_index: ``(n,)`` which member each function is.
        compute_dtype: dtype of the matmuls; states and outputs stay float32.
        prior: randomized prior functions of the members, ``(weights, biases)`` per
            layer ``(n, in, out)`` / ``(n, 1, out)`` with the normalization and
            ``prior_scale`` folded in (:func:`fold_prior`), added to the mean; None:
            no prior (the plain ensemble's computation).
    """

    def __init__(
        self,
        weights: list[Tensor],
        biases: list[Tensor],
        min_logvar: Tensor,
        max_logvar: Tensor,
        delta_std: Tensor,
        obs_dim: int,
        activation: str,
        member_index: Tensor,
        compute_dtype: torch.dtype = torch.float32,
        prior: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    ) -> None:
        self._fp32 = (list(weights), list(biases))
        self._prior_fp32 = None if prior is None else (list(prior[0]), list(prior[1]))
        self.activation = activation
        self._cast(compute_dtype)
        self.min_logvar, self.max_logvar = min_logvar, max_logvar
        self.log_delta_std = delta_std.log()
        self.obs_dim = obs_dim
        self.action_dim = int(weights[0].shape[1]) - obs_dim
        self.member_index = member_index
        self.n = int(member_index.shape[0])

    def _head(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Denormalized delta mean and log-std, each ``(n, B, obs_dim)`` float32."""
        check_function_inputs(self.n, self.obs_dim, self.action_dim, obs, action)
        if self._fast is None or self._autograd(obs, action):
            out = self._differentiable_out(obs, action)
        else:
            out = self._fast(obs, action)
        out = out.transpose(1, 2).float()
        mean, logvar = out[..., : self.obs_dim], out[..., self.obs_dim :]
        if self.prior_weights is not None:
            mean = mean + self._prior_mean(obs, action)
        logvar = _soft_bound_logvar(logvar, self.min_logvar, self.max_logvar)
        return mean, 0.5 * logvar + self.log_delta_std

    def _autograd(self, obs: Tensor, action: Tensor) -> bool:
        """Whether autograd must see this evaluation (then the ``baddbmm`` path runs)."""
        if not torch.is_grad_enabled():
            return False
        weights = [*self._fp32[0], *(self._prior_fp32[0] if self._prior_fp32 else [])]
        return any(t.requires_grad for t in (obs, action, *weights))

    def _differentiable_out(self, obs: Tensor, action: Tensor) -> Tensor:
        """The member's output ``(n, 2 * obs_dim, B)`` (feature-major), one ``baddbmm``
        per layer: the path autograd differentiates."""
        x = torch.cat([obs, action], dim=-1).to(self.compute_dtype)
        act = _INPLACE_ACTIVATIONS[self.activation]
        for w, b in zip(self.weights, self.biases, strict=True):
            x = act(torch.baddbmm(b, x, w))
        return torch.baddbmm(self.out_bias_t, self.out_weight_t, x.transpose(1, 2))

    def _prior_mean(self, obs: Tensor, action: Tensor) -> Tensor:
        """``beta * p_m(s, a)`` in delta units, ``(n, B, obs_dim)`` float32 (same layout
        as the member: one matmul per layer, the output layer feature-major)."""
        if self._prior_fast is not None and not self._autograd(obs, action):
            return self._prior_fast(obs, action).transpose(1, 2).float()
        assert self.prior_weights is not None
        h = torch.cat([obs, action], dim=-1).to(self.compute_dtype)
        act = _INPLACE_ACTIVATIONS[self.activation]
        for w, b in zip(self.prior_weights, self.prior_biases, strict=True):
            h = act(torch.baddbmm(b, h, w))
        out = torch.baddbmm(self.prior_out_bias_t, self.prior_out_weight_t, h.transpose(1, 2))
        return out.transpose(1, 2).float()

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        mean, log_std = self._head(obs, action)
        return Independent(Normal(obs + mean, log_std.exp(), validate_args=False), 1)

    def sample(self, obs: Tensor, action: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, log_std = self._head(obs, action)
        return (obs + mean).addcmul_(log_std.exp_(), randn_like_on(mean, generator))

    def mean(self, obs: Tensor, action: Tensor) -> Tensor:
        return obs + self._head(obs, action)[0]

    def latents(self) -> dict[str, Tensor]:
        """The member each function is, ``(n,)``."""
        return {"member": self.member_index}

    def _cast(self, dtype: torch.dtype) -> None:
        """Set the matmul weights from the float32 ones, in ``dtype``."""
        weights, biases = self._fp32
        self.weights = [w.to(dtype) for w in weights[:-1]]
        self.biases = [b.to(dtype) for b in biases[:-1]]
        # the narrow output layer runs feature-major, (n, 2D, H) @ (n, H, B): with only
        # 2 * obs_dim outputs, BLAS is several times faster this way round
        self.out_weight_t = weights[-1].transpose(1, 2).contiguous().to(dtype)
        self.out_bias_t = biases[-1].transpose(1, 2).contiguous().to(dtype)
        self.compute_dtype = dtype
        # the bias-row path on the CPU only (float32 and bfloat16): on a GPU, where
        # launches dominate, its column writes are launches more (not measured)
        fast = weights[0].device.type == "cpu"
        self._fast = _BiasRowMLP(weights, biases, self.activation, dtype) if fast else None
        self._prior_fast: _BiasRowMLP | None = None
        self.prior_weights: list[Tensor] | None = None
        if self._prior_fp32 is not None:
            pw, pb = self._prior_fp32
            if fast:
                self._prior_fast = _BiasRowMLP(pw, pb, self.activation, dtype)
            self.prior_weights = [w.to(dtype) for w in pw[:-1]]
            self.prior_biases = [b.to(dtype) for b in pb[:-1]]
            self.prior_out_weight_t = pw[-1].transpose(1, 2).contiguous().to(dtype)
            self.prior_out_bias_t = pb[-1].transpose(1, 2).contiguous().to(dtype)

    def with_compute_dtype(self, dtype: torch.dtype) -> FunctionSample:
        """A copy (of the same class, subclasses included) computing in ``dtype``."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ModelError(
                f"{type(self).__name__} planning supports float32 and bfloat16, not {dtype}"
            )
        twin = copy.copy(self)
        twin._cast(dtype)
        return twin


@described("an empty list (the members' hidden sizes) or a list of integers >= 1")
def _prior_sizes(v: list[int]) -> str | None:
    ok = all(x >= 1 for x in v)
    return None if ok else "an empty list (the members' hidden sizes) or a list of integers >= 1"


@dataclass
class EnsembleOptions(Options):
    """Options of :class:`ProbabilisticEnsemble` (``model.kind = "ensemble"``)."""

    num_members: int = option(5, at_least(1, "an integer"), "ensemble size E")
    hidden_sizes: list[int] = option([200, 200, 200], positive_list, "hidden layer widths")
    activation: str = option("silu", one_of(list(ACTIVATIONS)), "hidden-layer activation")
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    weight_decay: float = option(5e-5, at_least(0), "L2 penalty on the weights")
    batch_size: int = option(64, at_least(1, "an integer"), "minibatch size per member")
    max_epochs: int = option(100, at_least(1, "an integer"), "upper bound on epochs per fit")
    patience: int = option(
        5, at_least(1, "an integer"), "epochs without a held-out improvement before stopping"
    )
    val_fraction: float = option(
        0.1, interval(0.0, 0.5, hi_open=True), "fraction of the data held out for early stopping"
    )
    probabilistic: bool = option(
        True,
        None,
        "members predict a Gaussian (PE; NLL loss); false: deterministic members (DE; "
        "squared error, no noise)",
    )
    prior_scale: float = option(
        0.0,
        at_least(0),
        "randomized prior functions (Osband et al. 2018): each member's mean adds "
        "prior_scale times a fixed random net, in normalized-delta units (0: none)",
    )
    prior_hidden_sizes: list[int] = option(
        [], _prior_sizes, "hidden widths of the prior nets ([]: the members' hidden_sizes)"
    )


DETERMINISTIC_LOGVAR = -30.0
"""Normalized-space log-variance of a deterministic member's output (a noise std of
``3e-7`` delta scales): sampling is the mean, to float32 precision."""


@MODELS.register("ensemble", options=EnsembleOptions)
class ProbabilisticEnsemble(DynamicsModel):
    """Bootstrap ensemble of probabilistic MLPs predicting normalized state deltas.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        num_members: ensemble size ``E``.
        hidden_sizes: hidden layer widths.
        activation: one of ``silu``, ``relu``, ``tanh``, ``elu``.
        learning_rate: Adam step size.
        weight_decay: L2 penalty on the weights.
        batch_size: minibatch size per member.
        max_epochs: upper bound on epochs per :meth:`fit`.
        patience: epochs in which no member's held-out NLL improves by more than 1% of
            its progress so far before stopping (each member keeps the parameters of
            its lowest held-out NLL; see
            :func:`~bayes_mbrl.models.training.train_early_stopped`).
        val_fraction: fraction of the data held out (not bootstrapped) for early stopping.
        probabilistic: Gaussian members trained by NLL (PETS' PE; with
            ``num_members = 1`` its P); False: deterministic members trained by squared
            error, whose functions have no noise (DE, or D with one member).
        prior_scale: ``beta`` of the randomized prior functions: member ``m``'s mean of
            the normalized delta is ``net_m(x) + beta * p_m(x)`` with ``p_m`` a fixed
            random net (:class:`RandomPriorFunctions`) that the member is trained
            through and that is never trained; 0 (the default): no prior, the plain
            ensemble bit for bit.
        prior_hidden_sizes: hidden widths of the prior nets (empty: ``hidden_sizes``).
        seed: seeds the weight initialization (and the prior nets, drawn after it).

    Raises:
        OptionError: an argument is out of its bounds (see :class:`EnsembleOptions`).

    Examples:
        >>> model = ProbabilisticEnsemble(obs_dim=3, action_dim=1, num_members=2, hidden_sizes=[8])
        >>> f = model.sample_functions(2)
        >>> f(torch.zeros(2, 4, 3), torch.zeros(2, 4, 1)).batch_shape
        torch.Size([2, 4])
    """

    compute_dtypes = (torch.float32, torch.bfloat16)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_members: int = 5,
        hidden_sizes: Sequence[int] = (200, 200, 200),
        activation: str = "silu",
        learning_rate: float = 1e-3,
        weight_decay: float = 5e-5,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.1,
        probabilistic: bool = True,
        prior_scale: float = 0.0,
        prior_hidden_sizes: Sequence[int] = (),
        seed: int = 0,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.options: EnsembleOptions = EnsembleOptions.of(
            "ProbabilisticEnsemble",
            num_members=num_members,
            hidden_sizes=hidden_sizes,
            activation=activation,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=max_epochs,
            patience=patience,
            val_fraction=val_fraction,
            probabilistic=probabilistic,
            prior_scale=prior_scale,
            prior_hidden_sizes=list(prior_hidden_sizes),
        )
        self.probabilistic = probabilistic
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.num_members = num_members
        self.num_functions_hint = num_members
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction = val_fraction
        init_gen = torch.Generator().manual_seed(seed)
        self.net = GaussianMLPEnsemble(
            obs_dim + action_dim, obs_dim, hidden_sizes, num_members, activation, init_gen
        )
        self.prior_scale = float(prior_scale)
        #: the randomized prior functions (None when ``prior_scale = 0``)
        self.prior: RandomPriorFunctions | None = None
        if self.prior_scale > 0:
            self.prior = RandomPriorFunctions(
                obs_dim + action_dim,
                obs_dim,
                list(prior_hidden_sizes) or list(hidden_sizes),
                num_members,
                activation,
                self.prior_scale,
                init_gen,
            )
        self.input_normalizer = Normalizer(obs_dim + action_dim)
        self.delta_normalizer = Normalizer(obs_dim)
        decay, no_decay = (
            list(self.net.weights),
            [
                *self.net.biases,
                self.net.max_logvar,
                self.net.min_logvar,
            ],
        )
        self.optimizer = torch.optim.Adam(
            [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=learning_rate,
        )
        self.fitted = False

    # ------------------------------------------------------------------ training
    def _nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-member mean Gaussian NLL in normalized space (squared error for
        deterministic members).

        Args:
            x: ``(E, B, in_dim)`` normalized inputs.
            y: ``(E, B, obs_dim)`` normalized delta targets.

        Returns:
            ``(E,)`` mean NLL (or squared error) per transition, summed over output
            dimensions.
        """
        mean, logvar = self.normalized_forward(x)
        if not self.probabilistic:
            return (y - mean).square().sum(-1).mean(-1)
        nll = 0.5 * ((y - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
        return nll.sum(-1).mean(-1)

    def normalized_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every member on normalized inputs, its randomized prior included.

        Args:
            x: ``(E, B, in_dim)`` normalized inputs.

        Returns:
            ``(mean, logvar)`` of the normalized delta, each ``(E, B, obs_dim)``.
        """
        mean, logvar = self.net(x)
        if self.prior is not None:
            mean = mean + self.prior_scale * self.prior(x)
        return mean, logvar

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Train every member on its bootstrap resample, early-stopped on held-out NLL.

        Training continues from the current weights (warm start across MPC episodes).
        Per member, the parameters of its best validation epoch are kept (see
        :func:`~bayes_mbrl.models.training.train_early_stopped`).

        Args:
            data: all transitions so far.
            generator: source of randomness for the split, bootstraps and minibatches.
            progress: called as ``progress(epoch, train_loss, val_loss)`` after each epoch.

        Returns:
            Losses are mean Gaussian NLL per transition of normalized deltas.

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: the loss became non-finite (the last good parameters are restored).
        """
        start = time.perf_counter()
        if len(data) < 2:
            raise DataError(f"need at least 2 transitions to fit, got {len(data)}; collect more")
        x_all, y_all = fit_delta_normalizers(data, self.input_normalizer, self.delta_normalizer)
        train_idx, val_idx = data.split(self.val_fraction, generator)
        boot = ReplayBuffer.bootstrap_indices(self.num_members, train_idx, generator)
        n_train = boot.shape[1]
        bs = min(self.batch_size, n_train)
        e = self.num_members

        def batches(epoch: int) -> Iterator[Tensor]:
            """``(E, bs)`` rows of each member's bootstrap, reshuffled per epoch."""
            order = boot.gather(1, torch.argsort(torch.rand(e, n_train, generator=generator), 1))
            return (order[:, lo : lo + bs] for lo in range(0, n_train - bs + 1, bs))

        def step_loss(rows: Tensor) -> StepLoss:
            loss_members = self._nll(x_all[rows], y_all[rows])
            bound_penalty = (
                0.01 * (self.net.max_logvar.sum() - self.net.min_logvar.sum())
                if self.probabilistic
                else 0.0
            )
            return StepLoss(loss_members.sum() + bound_penalty, loss_members.detach().mean(), bs)

        def val_losses() -> Tensor:
            """``(E,)`` held-out NLL per member."""
            xv = x_all[val_idx].expand(e, -1, -1)
            return self._nll(xv, y_all[val_idx].expand(e, -1, -1))

        per_member = {id(p) for p in [*self.net.weights, *self.net.biases]}
        params = list(self.net.parameters())
        report = train_early_stopped(
            params,
            self.optimizer,
            batches,
            step_loss,
            max_epochs=self.max_epochs,
            validate=val_losses if len(val_idx) > 0 else None,
            patience=self.patience,
            grouped=[id(p) in per_member for p in params],
            progress=progress,
            what="ensemble fit",
            fix="Lower model.learning_rate or check the data for extreme values",
        )
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int:
        """``max_epochs``: :meth:`fit` reports each epoch."""
        return self.max_epochs

    @property
    def device(self) -> torch.device:
        """Where the members' weights are."""
        return self.net.weights[0].device

    def to(self, device: torch.device | str) -> ProbabilisticEnsemble:
        """Move the members, their priors, the normalizers and the optimizer's state to
        ``device``; fitting and planning then run there (the data is moved per fit)."""
        for module in (self.net, self.prior, self.input_normalizer, self.delta_normalizer):
            if module is not None:
                module.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(device)
        return self

    # ----------------------------------------------------------------- functions
    def _member_index(self, n: int, generator: torch.Generator | None) -> Tensor:
        return stratified_members(n, self.num_members, generator)

    def _folded(self) -> tuple[list[Tensor], list[Tensor]]:
        return fold_normalizers(
            [w.detach() for w in self.net.weights],
            [b.detach() for b in self.net.biases],
            self.input_normalizer,
            self.delta_normalizer,
        )

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """Draw ``n`` members (stratified; all members in order when ``n == E``)."""
        self._require_fitted()
        idx = self._member_index(n, generator)
        ws, bs = self._folded()
        if n != self.num_members:  # n == E draws every member in order
            ws, bs = [w[idx] for w in ws], [b[idx] for b in bs]
        min_logvar, max_logvar = self.net.min_logvar.detach(), self.net.max_logvar.detach()
        if not self.probabilistic:
            min_logvar = max_logvar = torch.full_like(min_logvar, DETERMINISTIC_LOGVAR)
        prior = None
        if self.prior is not None:
            pws, pbs = fold_prior(
                self.prior.weights,
                self.prior.biases,
                self.input_normalizer,
                self.delta_normalizer,
                self.prior_scale,
            )
            prior = ([w[idx] for w in pws], [b[idx] for b in pbs])
        return EnsembleFunctionSample(
            ws,
            bs,
            min_logvar,
            max_logvar,
            self.delta_normalizer.std.clone(),
            self.obs_dim,
            self.net.activation,
            idx,
            prior=prior,
        )

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("the ensemble has not been fitted; call fit(buffer) first")

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Weights, normalizers, optimizer state and, with ``prior_scale > 0``, the
        randomized prior nets and their scale (``torch.load(weights_only=True)``-safe)."""
        state = {
            "net": self.net.state_dict(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "delta_normalizer": self.delta_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "fitted": self.fitted,
        }
        if self.prior is not None:
            state["prior"] = self.prior.state_dict()
        return state

    def _load_prior(self, state: dict[str, Any]) -> None:
        """Check that ``state`` has the prior this model has (none, or one of the same
        scale and shapes) and load it."""
        saved = state.get("prior")
        if self.prior is None:
            if saved is not None:
                raise ValueError(
                    f"saved with randomized prior functions (prior_scale = "
                    f"{float(saved['scale']):g}), this model has prior_scale = 0"
                )
            return
        if saved is None:
            raise ValueError(
                f"saved without randomized prior functions, this model has "
                f"prior_scale = {self.prior_scale:g}"
            )
        # the saved scale is a float32 buffer: 0.1 comes back as 0.10000000149
        if not math.isclose(float(saved["scale"]), self.prior_scale, rel_tol=1e-6):
            raise ValueError(
                f"saved with prior_scale = {float(saved['scale']):g}, this model has "
                f"prior_scale = {self.prior_scale:g}"
            )
        self.prior.load_state_dict(saved)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: the state does not fit this model (other sizes, missing entries);
                the model keeps its current parameters.
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            if not isinstance(state, dict):
                raise TypeError(f"expected a dict, got {type(state).__name__}")
            fitted = bool(state["fitted"])
            self._load_prior(state)
            self.net.load_state_dict(state["net"])
            self.input_normalizer.load_state_dict(state["input_normalizer"])
            self.delta_normalizer.load_state_dict(state["delta_normalizer"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            if self.prior is not None:
                self.prior.load_state_dict(backup["prior"])
            self.net.load_state_dict(backup["net"])
            self.input_normalizer.load_state_dict(backup["input_normalizer"])
            self.delta_normalizer.load_state_dict(backup["delta_normalizer"])
            self.optimizer.load_state_dict(backup["optimizer"])
            raise state_mismatch("ensemble", exc) from exc
        self.fitted = fitted
