"""Plans recorded once as a CUDA graph and replayed.

On a GPU an eager plan of PETS size (5 iterations x 15 steps x a few layers, each a
handful of small kernels) is bound by kernel launches and Python, not by arithmetic.
A capturable planner's search (:class:`~bayes_mbrl.planning.optimizers.CapturablePlanner`:
CEM, iCEM, MPPI, random shooting) is a function of tensors with fixed shapes that
copies nothing to the host, so the whole plan (the posterior functions drawn for it,
every iteration's candidates, every imagined step, the planner's updates) can be
recorded once and replayed as one graph launch. :class:`GraphPlans` does that for an
MPC agent (``planner.cuda_graphs = true``, the default, on a CUDA device):

* the graph reads the state planned from and the planner's inputs (warm start, iCEM's
  carried elites) from static buffers, copied in before each replay;
* it draws from the planning generator, registered with the graph: a replay after
  ``generator.manual_seed(s)`` draws what the eager plan draws after the same seed
  (CUDA's graph-safe Philox offsets), so seeded runs repeat bit for bit;
* each shape of inputs gets its own graph (iCEM's first plan of an episode carries no
  elites);
* the first ``warmup`` plans of each shape run eagerly with every check (finite
  states, finite rewards of the first step; :func:`~bayes_mbrl.planning.imagine.skip_host_checks`
  turns them off inside the recording, where nothing may be copied to the host), and
  CUDA libraries set up their workspaces and FFT plans then, before the recording;
* :meth:`GraphPlans.reset` drops every graph at the start of an episode: the model is
  refitted between episodes, and a graph reads the weights it was recorded with;
* if recording fails (a model or reward function that copies to the host inside its
  step), planning stays eager for the rest of the run, with a warning that says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.planning.imagine import skip_host_checks
from bayes_mbrl.planning.optimizers import CapturablePlanner, Planner, PlanResult, Searched
from bayes_mbrl.planning.rollout import RolloutEvaluator

__all__ = ["CudaGraphRecorder", "GraphPlans", "Recorder"]


class Recorder(Protocol):
    """How :class:`GraphPlans` runs eager plans and records and replays searches
    (:class:`CudaGraphRecorder` on a GPU; tests substitute a recorder that replays by
    calling the search again)."""

    def eager(self, plan: Callable[[], PlanResult]) -> PlanResult:
        """Run one eager plan (before a recording, or when recording failed)."""
        ...

    def record(self, search: Callable[[], Searched]) -> tuple[Callable[[], None], Searched]:
        """Record ``search``; returns the replay and the static outputs it refills."""
        ...


class CudaGraphRecorder:
    """Records searches as CUDA graphs on a side stream, with the generators they draw
    from registered (their seeds and offsets are read at each replay).

    Args:
        device: the CUDA device.
        generators: the generators the planner and the evaluator draw from.
    """

    def __init__(self, device: torch.device, generators: list[torch.Generator]) -> None:
        if device.type != "cuda":
            raise ConfigError(f"CUDA graphs need a CUDA device, got {device}")
        self.device = device
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.stream = torch.cuda.Stream(device)

    def eager(self, plan: Callable[[], PlanResult]) -> PlanResult:
        """The plan on the recording stream (warm-up: cuBLAS and cuFFT set up there)."""
        torch.cuda.synchronize(self.device)
        with torch.cuda.stream(self.stream):
            result = plan()
        torch.cuda.synchronize(self.device)
        return result

    def record(self, search: Callable[[], Searched]) -> tuple[Callable[[], None], Searched]:
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph, stream=self.stream):
            out = search()
        return graph.replay, out


@dataclass
class _Recorded:
    replay: Callable[[], None]
    obs: Tensor
    inputs: tuple[Tensor | None, ...]
    out: Searched


class GraphPlans:
    """An MPC agent's plans, recorded once per episode and input shape and replayed.

    Args:
        planner: a capturable planner.
        evaluator: the rollout evaluator it plans through.
        recorder: records and replays (None: :class:`CudaGraphRecorder` on the
            evaluator's model's device).
        warmup: eager plans of each input shape before its recording (at least 1).

    Attributes:
        recordings: graphs recorded so far (over the whole run).
        replays: plans made by replaying one.
        failure: why recording failed (then every plan is eager), or None.
    """

    def __init__(
        self,
        planner: Planner,
        evaluator: RolloutEvaluator,
        recorder: Recorder | None = None,
        warmup: int = 2,
    ) -> None:
        if not isinstance(planner, CapturablePlanner):
            raise ConfigError(
                f"{type(planner).__name__} cannot be recorded as a CUDA graph (its search "
                "copies values to the host); set planner.cuda_graphs = false, or use "
                "planner.kind = 'cem', 'icem', 'mppi' or 'random_shooting'"
            )
        if warmup < 1:
            raise ConfigError(
                f"warmup must be >= 1 (an eager plan checks the inputs), got {warmup}"
            )
        self.device = torch.device(getattr(evaluator.model, "device", "cpu"))
        if recorder is None:
            gens = [g for g in (planner.generator, evaluator.generator) if g is not None]
            recorder = CudaGraphRecorder(self.device, list({id(g): g for g in gens}.values()))
        self.planner: CapturablePlanner = planner
        self.evaluator, self.recorder = evaluator, recorder
        self.warmup = warmup
        self.recordings = 0
        self.replays = 0
        self.failure: str | None = None
        self._graphs: dict[tuple[tuple[int, ...] | None, ...], _Recorded] = {}
        self._eager: dict[tuple[tuple[int, ...] | None, ...], int] = {}

    def reset(self) -> None:
        """Drop every graph (the model may be refitted before the next plan)."""
        self._graphs.clear()
        self._eager.clear()

    def plan(self, start_obs: Tensor) -> PlanResult:
        """Plan from ``start_obs`` ``(obs_dim,)`` (on any device: it is checked where it
        is, then moved to the model's): eagerly for the first plans of an input shape, then
        by replaying its recording."""
        self._check(start_obs)
        start_obs = start_obs.to(self.device, torch.float32)
        inputs = self.planner.search_inputs()
        key = tuple(None if t is None else tuple(t.shape) for t in inputs)
        recorded = self._graphs.get(key)
        if recorded is None:
            if self.failure is None and self._eager.get(key, 0) >= self.warmup:
                recorded = self._record(start_obs, inputs)
            if recorded is None:
                self._eager[key] = self._eager.get(key, 0) + 1
                return self.recorder.eager(
                    lambda: self.planner.plan(self.evaluator.scorer(start_obs))
                )
            self._graphs[key] = recorded
        recorded.obs.copy_(start_obs)
        for buffer, value in zip(recorded.inputs, inputs, strict=True):
            if buffer is not None and value is not None:
                buffer.copy_(value)
        recorded.replay()
        self.replays += 1
        return self.planner.adopt(_cloned(recorded.out))

    def _check(self, start_obs: Tensor) -> None:
        """The state planned from: ``(obs_dim,)`` and finite (checked where it is: on the
        CPU, as an agent passes it, no GPU sync; a replay checks nothing itself)."""
        obs_dim = self.evaluator.model.obs_dim
        if not isinstance(start_obs, Tensor) or tuple(start_obs.shape) != (obs_dim,):
            got = type(start_obs).__name__
            if isinstance(start_obs, Tensor):
                got = str(tuple(start_obs.shape))
            raise DataError(
                f"GraphPlans.plan needs the state as a tensor of shape ({obs_dim},), got "
                f"{got}; pass torch.as_tensor(obs, dtype=torch.float32)"
            )
        if not bool(torch.isfinite(start_obs).all()):
            raise DataError(
                f"GraphPlans.plan: the state contains NaN or inf ({start_obs.tolist()}); plan "
                "from a finite observation (check the environment that produced it)"
            )

    def _record(self, start_obs: Tensor, inputs: tuple[Tensor | None, ...]) -> _Recorded | None:
        obs = start_obs.clone()
        buffers = tuple(None if t is None else t.clone() for t in inputs)

        def search() -> Searched:
            with skip_host_checks():
                return self.planner.search(self.evaluator.scorer(obs), *buffers)

        try:
            replay, out = self.recorder.record(search)
        except Exception as exc:  # any failure leaves planning eager
            self.failure = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"recording the plan as a CUDA graph failed ({self.failure}); planning "
                "stays eager for this run (set planner.cuda_graphs = false to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        self.recordings += 1
        return _Recorded(replay, obs, buffers, out)


def _cloned(out: Searched) -> Searched:
    """``out`` with its tensors copied out of the graph's static outputs (the next replay
    overwrites those)."""
    return replace(
        out,
        actions=out.actions.clone(),
        value=out.value.clone(),
        history=out.history.clone(),
        spread=None if out.spread is None else out.spread.clone(),
        state={k: v.clone() for k, v in out.state.items()},
        sizes=list(out.sizes),
    )
