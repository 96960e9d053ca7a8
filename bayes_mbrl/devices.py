"""Where a run computes: ``experiment.device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``).

The run's master :class:`torch.Generator` always lives on the CPU: it drives the random
agent, the train/validation splits, bootstraps and minibatches, and its state is what a
checkpoint keeps, so a checkpoint written on a GPU resumes on a CPU and the reverse. On
an accelerator, planning draws its random numbers on the device from a second
generator that is **reseeded from the master before every planning call**
(:class:`PlanRandomness`): no host-to-device copies inside the horizon loop, and the
seeded run repeats bit for bit on the same device. On the CPU the planner uses the
master itself, exactly as before devices existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError

__all__ = [
    "PlanRandomness",
    "device_scope",
    "randn_like_on",
    "resolve_device",
    "state_to_cpu",
]


def resolve_device(name: str) -> torch.device:
    """The torch device ``name``, checked to exist on this machine.

    Raises:
        ConfigError: the device is not available (a CPU-only torch build, no GPU, an
            index past the last GPU), naming what this machine has and the fix.
    """
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"experiment.device = {name!r} is not a torch device; use 'cpu', 'cuda', "
            "'cuda:N' or 'mps'"
        ) from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"experiment.device = {name!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"experiment.device = {name!r} but torch {torch.__version__} sees no CUDA "
                "device (a CPU-only build, or no GPU on this machine); set "
                "experiment.device = 'cpu', or install a CUDA build of torch on a GPU machine"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"experiment.device = {name!r} but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1}); choose one of those"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"experiment.device = {name!r} but MPS is not available here; set "
            "experiment.device = 'cpu'"
        )
    return device


def device_capable() -> tuple[list[str], list[str]]:
    """The modes whose whole loop runs on ``experiment.device`` (``Algorithm.on_devices``)
    and the model kinds that move there (their class overrides ``DynamicsModel.to``),
    from the registries."""
    from bayes_mbrl.algorithms import ALGORITHMS
    from bayes_mbrl.models.base import MODELS, DynamicsModel

    modes = [m for m in ALGORITHMS.names() if getattr(ALGORITHMS[m], "on_devices", False)]
    kinds = [k for k in MODELS.names() if MODELS[k].to is not DynamicsModel.to]
    return modes, kinds


def check_device_support(device: torch.device, mode: str, model_kind: str) -> None:
    """Refuse a run that cannot run on ``device``, naming what can.

    Raises:
        ConfigError: a non-CPU device with a mode or model kind that computes on the CPU.
    """
    if device.type == "cpu":
        return
    modes, kinds = device_capable()
    if mode not in modes or model_kind not in kinds:
        raise ConfigError(
            f"experiment.device = {str(device)!r} runs experiment.mode in {modes} "
            f"with model.kind in {kinds}; this run has mode {mode!r} and model "
            f"{model_kind!r}: set experiment.device = 'cpu' for it"
        )


@contextmanager
def device_scope(device: torch.device) -> Iterator[None]:
    """Tensors created without an explicit device go to ``device`` inside the block (a
    no-op on the CPU, so CPU runs carry no extra dispatch)."""
    with nullcontext() if device.type == "cpu" else device:
        yield


def randn_like_on(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device, drawn from
    ``generator`` (on the generator's own device, moved when the two differ)."""
    where = generator.device if generator is not None else like.device
    eps = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=where)
    return eps if eps.device == like.device else eps.to(like.device)


class PlanRandomness:
    """The generator planning draws from on ``device``.

    On the CPU it is the run's master generator. On an accelerator it is a generator on
    the device, reseeded by :meth:`reseed` from one draw of the master before every
    planning call.

    Args:
        master: the run's CPU generator (checkpointed).
        device: where planning runs.
    """

    def __init__(self, master: torch.Generator, device: torch.device) -> None:
        self.master, self.device = master, device
        self.generator = (
            master if device.type == "cpu" else torch.Generator(device=device).manual_seed(0)
        )

    def reseed(self) -> None:
        """Before a planning call: derive the device generator's seed from the master
        (nothing on the CPU, where the master is used directly)."""
        if self.generator is not self.master:
            seed = int(torch.randint(2**62, (1,), generator=self.master))
            self.generator.manual_seed(seed)


def state_to_cpu(state: Any) -> Any:
    """``state`` with every tensor copied to the CPU (dicts, lists and tuples walked), so
    a checkpoint written on any device loads on any other."""
    if isinstance(state, Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: state_to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [state_to_cpu(v) for v in state]
    if isinstance(state, tuple):
        return tuple(state_to_cpu(v) for v in state)
    return state
