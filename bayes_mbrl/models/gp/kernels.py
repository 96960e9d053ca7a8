"""Kernels and mean functions of the GP dynamics: built-in shortcuts and user modules.

A GP's prior is a GPyTorch ``covar_module`` and ``mean_module`` with
``batch_shape = (obs_dim,)`` (one GP per state dimension). The names in
:data:`KERNELS` are shortcuts for built-in ARD kernels with an outputscale; a user
gives a GPyTorch module, or a factory ``(input_dim, batch_shape) -> module`` that
builds one per model (what ``model.kernel = "file.py:function"`` names in a config).

Function draws need a finite feature map of the kernel (random Fourier features,
BoTorch's ``gen_kernel_features``). The installed BoTorch has one for
:data:`FEATURE_MAP_KERNELS` and for ``ScaleKernel`` around one of them (with or
without ``active_dims``); :func:`check_feature_map` refuses any other kernel when
the model is built, not when it first plans.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.sampling.pathwise.features import gen_kernel_features
from gpytorch.kernels import Kernel, MaternKernel, RBFKernel, ScaleKernel
from gpytorch.means import ConstantMean, Mean
from torch import Tensor

from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.options import Check, described

__all__ = [
    "FEATURE_MAP_KERNELS",
    "KERNELS",
    "MEANS",
    "ModuleFactory",
    "check_feature_map",
    "describe_module",
    "is_se_ard",
    "kernel_or_spec",
    "make_kernel",
    "mean_or_spec",
    "resolve_kernel",
    "resolve_mean",
    "stationary_",
]

#: kernels by name -> Matérn smoothness (None: squared exponential)
KERNELS: dict[str, float | None] = {"se": None, "matern32": 1.5, "matern52": 2.5}
#: built-in mean functions by name
MEANS: tuple[str, ...] = ("constant",)
#: base kernels BoTorch 0.18 draws random features for (also inside a ``ScaleKernel``)
FEATURE_MAP_KERNELS: tuple[type[Kernel], ...] = (RBFKernel, MaternKernel)

ModuleFactory = Callable[[int, torch.Size], Any]
"""``factory(input_dim, batch_shape) -> module``: builds a user's kernel or mean."""


def _spec_or(names: tuple[str, ...] | list[str], what: str) -> Check:
    """Check: a name of ``names`` or a ``'file.py:function'`` / ``'module:function'`` spec."""

    expected = (
        f"one of {', '.join(repr(n) for n in names)}, or a {what} factory "
        "'path/to/file.py:function' or 'package.module:function'"
    )

    @described(expected)
    def check(v: str) -> str | None:
        target, _, fn = v.rpartition(":")
        if v in names or (target.strip() and fn.strip().isidentifier()):
            return None
        return expected

    return check


kernel_or_spec: Check = _spec_or(sorted(KERNELS), "kernel")
"""Option check of ``kernel``: a shortcut name or where a kernel factory is."""
mean_or_spec: Check = _spec_or(list(MEANS), "mean")
"""Option check of ``mean``: ``"constant"`` or where a mean factory is."""


def make_kernel(kernel: str, d: int, batch: torch.Size) -> ScaleKernel:
    """The built-in kernel ``kernel`` (a key of :data:`KERNELS`): ARD over ``d`` inputs,
    lengthscales and outputscale 1, batch ``batch``."""
    if kernel not in KERNELS:
        raise ConfigError(f"unknown GP kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    nu = KERNELS[kernel]
    base: Kernel = (
        RBFKernel(ard_num_dims=d, batch_shape=batch)
        if nu is None
        else MaternKernel(nu=nu, ard_num_dims=d, batch_shape=batch)
    )
    base.lengthscale = torch.ones(*batch, 1, d)
    cov = ScaleKernel(base, batch_shape=batch)
    cov.outputscale = torch.ones(batch)
    return cov


def stationary_(kernel: str, r2: Tensor) -> Tensor:
    """Unit-variance built-in kernel, in place: ``r2`` holds ``-r^2 / 2`` for the
    squared exponential and the squared scaled distance ``r^2`` for a Matérn kernel
    (any strides; returns ``r2`` overwritten with the kernel values)."""
    nu = KERNELS[kernel]
    if nu is None:
        return r2.exp_()
    s = r2.clamp_min_(1e-30).sqrt_().mul_(math.sqrt(2.0 * nu))
    decay = torch.exp(-s)
    if nu == 1.5:
        return s.add_(1.0).mul_(decay)
    quadratic = s.square().div_(3.0)
    return s.add_(1.0).add_(quadratic).mul_(decay)


def describe_module(module: torch.nn.Module) -> str:
    """A kernel's structure by class names: ``"ScaleKernel(RBFKernel)"``,
    ``"AdditiveKernel(PeriodicKernel, LinearKernel)"``."""
    children: list[torch.nn.Module] = []
    for child in module.children():  # sums and products hold their kernels in a ModuleList
        children.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    subs = [describe_module(c) for c in children if isinstance(c, Kernel | Mean)]
    name = type(module).__name__
    return f"{name}({', '.join(subs)})" if subs else name


def _build(module: Any, d: int, batch: torch.Size, what: str, cls: type[Any], seed: int) -> Any:
    built = module if isinstance(module, cls) else None
    if built is None and callable(module) and not isinstance(module, torch.nn.Module):
        # a factory's random initial values come from the model's seed, not the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = module(d, batch)
    if not isinstance(built, cls):
        got = type(built if built is not None else module).__name__
        raise ConfigError(
            f"the GP's {what} must be a gpytorch {cls.__name__} or a factory "
            f"(input_dim, batch_shape) -> {cls.__name__}, got {got}"
        )
    return built.double()


def resolve_kernel(
    kernel: str | Kernel | ModuleFactory, d: int, batch: torch.Size, seed: int = 0
) -> Kernel:
    """The covariance module of a GP over ``d`` inputs with batch ``batch``, float64.

    Args:
        kernel: a key of :data:`KERNELS`, a GPyTorch kernel, or a factory
            ``(d, batch) -> kernel``.
        d: input size.
        batch: batch shape, ``(obs_dim,)``.
        seed: seeds the global RNG while a factory runs (restored after).

    Raises:
        ConfigError: an unknown name, or not a kernel; a kernel of another batch shape
            or input size.
        ModelError: BoTorch has no feature map for the kernel (see :func:`check_feature_map`).
    """
    if isinstance(kernel, str):
        if ":" in kernel:
            raise ConfigError(
                f"kernel {kernel!r} names a factory: pass the function itself (load it with "
                "bayes_mbrl.user_code.load_user_function) or build the model with from_options"
            )
        return make_kernel(kernel, d, batch).double()
    module: Kernel = _build(kernel, d, batch, "kernel", Kernel, seed)
    if module.batch_shape != batch:
        raise ConfigError(
            f"the GP's kernel {describe_module(module)} has batch_shape "
            f"{tuple(module.batch_shape)}; build it with batch_shape={tuple(batch)} (one GP "
            "per state dimension: a factory receives it as its second argument)"
        )
    try:
        with torch.no_grad():
            k = module(torch.zeros(*batch, 2, d, dtype=torch.float64)).to_dense()
    except Exception as exc:
        raise ConfigError(
            f"the GP's kernel {describe_module(module)} fails on ({', '.join(map(str, batch))}, "
            f"N, {d}) inputs ({type(exc).__name__}: {exc}); it must take the {d} normalized "
            "inputs (obs, action)"
        ) from exc
    if k.shape != (*batch, 2, 2):
        raise ConfigError(
            f"the GP's kernel {describe_module(module)} maps ({tuple(batch)}, 2, {d}) inputs "
            f"to shape {tuple(k.shape)}, expected {(*batch, 2, 2)}"
        )
    check_feature_map(module, d)
    return module


def resolve_mean(
    mean: str | Mean | ModuleFactory, d: int, batch: torch.Size, seed: int = 0
) -> Mean:
    """The mean module (``"constant"``: a learned constant per output), float64; the
    arguments as for :func:`resolve_kernel`.

    Raises:
        ConfigError: an unknown name, not a mean, or outputs of the wrong shape.
    """
    if isinstance(mean, str):
        if mean not in MEANS:
            raise ConfigError(
                f"unknown GP mean {mean!r}; choose one of {list(MEANS)} or pass a gpytorch "
                "Mean or a factory (input_dim, batch_shape) -> Mean"
            )
        return ConstantMean(batch_shape=batch).double()
    module: Mean = _build(mean, d, batch, "mean", Mean, seed)
    try:
        with torch.no_grad():
            shape = tuple(module(torch.zeros(*batch, 2, d, dtype=torch.float64)).shape)
    except Exception as exc:
        raise ConfigError(
            f"the GP's mean {describe_module(module)} fails on ({tuple(batch)}, N, {d}) "
            f"inputs ({type(exc).__name__}: {exc})"
        ) from exc
    if shape != (*batch, 2):
        raise ConfigError(
            f"the GP's mean {describe_module(module)} maps ({tuple(batch)}, 2, {d}) inputs to "
            f"shape {shape}, expected {(*batch, 2)}; build it with batch_shape={tuple(batch)}"
        )
    return module


def check_feature_map(kernel: Kernel, d: int) -> None:
    """Raise unless BoTorch can draw random features of ``kernel`` (needed for
    pathwise function draws).

    Raises:
        ModelError: naming the kernel's structure and the kernels that are supported.
    """
    try:
        # feature weights come from the global RNG: draw them without disturbing it
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            gen_kernel_features(kernel, num_inputs=d, num_outputs=2)
    except (NotImplementedError, UnsupportedError) as exc:
        supported = ", ".join(k.__name__ for k in FEATURE_MAP_KERNELS)
        raise ModelError(
            f"the GP's kernel {describe_module(kernel)} has no random-feature map in "
            f"BoTorch's pathwise sampling, so its posterior functions cannot be drawn "
            f"consistently along a trajectory ({type(exc).__name__}: {str(exc)[:120]}). "
            f"Supported: {supported}, each optionally inside a ScaleKernel and with "
            "active_dims (sums, products, periodic and linear kernels are not); express the "
            "structure through the inputs (e.g. an RBF over (cos, sin) of an angle is a "
            "periodic kernel) or through the mean module"
        ) from exc


def is_se_ard(kernel: Kernel) -> bool:
    """Whether ``kernel`` is ``ScaleKernel(RBFKernel)`` over all inputs (ARD or one
    shared lengthscale): the kernel moment matching has closed forms for."""
    if type(kernel) is not ScaleKernel or kernel.active_dims is not None:
        return False
    base = kernel.base_kernel
    return type(base) is RBFKernel and base.active_dims is None
