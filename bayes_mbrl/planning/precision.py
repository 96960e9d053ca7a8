"""The compute precision of planning: ``planner.precision = "auto"`` picks the fastest
sound one for this machine and model.

bf16 matmuls are several times faster than float32 on CPUs with native bf16
instructions (AVX512-BF16, AMX) and tens of times *slower* on the others (AVX2 only,
where torch emulates them): measured in ``experiments/README.md``. ``"auto"`` therefore
plans in bfloat16 only when (a) the rollouts run on the CPU, (b) the CPU has native bf16
and (c) the model's function draws compute in bf16 (:attr:`DynamicsModel.compute_dtypes
<bayes_mbrl.models.base.DynamicsModel.compute_dtypes>`: the ensemble and the BNN), and in
float32 otherwise. Only the model's matmuls and activations are bf16; states, rewards and
returns stay float32 (see :meth:`FunctionSample.with_compute_dtype
<bayes_mbrl.models.base.FunctionSample.with_compute_dtype>`). The Pendulum learning curve
with bf16 planning matches float32's (``experiments/README.md``, issues 2 and 18).
"""

from __future__ import annotations

import torch

from bayes_mbrl.errors import ConfigError
from bayes_mbrl.models.base import DynamicsModel

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "native_bf16", "resolve_precision"]

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Compute precisions of the model's matmuls during planning and imagination."""

PRECISION_CHOICES = ("auto", *PRECISIONS)
"""What ``planner.precision`` may name: a :data:`PRECISIONS` key, or ``"auto"``."""


def native_bf16() -> str | None:
    """The CPU's native bf16 feature (``"amx_bf16"`` or ``"avx512_bf16"``), or None."""
    cpu = getattr(torch, "cpu", None)
    for name, probe in (
        ("amx_bf16", "_is_amx_tile_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
    ):
        check = getattr(cpu, probe, None)
        if check is not None and bool(check()):
            return name
    return None


def resolve_precision(
    precision: str, model: DynamicsModel, device: str | torch.device = "cpu"
) -> tuple[str, str]:
    """The concrete precision (a :data:`PRECISIONS` key) that ``precision`` names, and why.

    Args:
        precision: a :data:`PRECISION_CHOICES` entry.
        model: the dynamics model planned through.
        device: where the rollouts run.

    Returns:
        ``(precision, reason)``: ``reason`` is one line for the run's log, e.g.
        ``"bfloat16 (auto: native bf16 on this CPU, amx_bf16)"``.

    Raises:
        ConfigError: ``precision`` is not a :data:`PRECISION_CHOICES` entry.
    """
    if precision not in PRECISION_CHOICES:
        raise ConfigError(
            f"unknown precision {precision!r}; choose one of {list(PRECISION_CHOICES)}"
        )
    if precision != "auto":
        return precision, f"{precision} (planner.precision = {precision!r})"
    if torch.device(device).type != "cpu":
        return "float32", f"float32 (auto: rollouts on {device})"
    feature = native_bf16()
    if feature is None:
        return "float32", "float32 (auto: this CPU has no native bf16, where bf16 is slower)"
    if torch.bfloat16 not in type(model).compute_dtypes:
        return "float32", f"float32 (auto: {type(model).__name__} plans in float32 only)"
    return "bfloat16", f"bfloat16 (auto: native bf16 on this CPU, {feature})"
