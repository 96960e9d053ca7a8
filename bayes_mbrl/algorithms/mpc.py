"""Acting with a planner: the three modes of the lecture notes, and the random agent.

- ``v0.5``: fit once on random data, then plan and execute whole plans open loop;
- ``v1.0``: refit after every episode, execute whole plans (replan when a plan is used up);
- ``mpc`` (v1.5): refit after every episode, execute only the first action and replan every step;
  with ``mpc.replan_every = k`` execute the first ``k`` planned actions, then replan (the
  action chunk of the notes: ``k = 1`` is ``mpc``, ``k = H`` acts as ``v1.0``).

The agent hands the planner a score function bound to the current observation;
the planner never sees the model. :class:`MPCAlgorithm` builds the model, planner,
rollout evaluator and agent from a config; it is registered as the modes
``v0.5``, ``v1.0`` and ``mpc``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    build_model,
    state_model_check,
)
from bayes_mbrl.devices import PlanRandomness, device_scope, resolve_device
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models.reward import planning_reward
from bayes_mbrl.options import Options, at_least, option
from bayes_mbrl.planning import PLANNERS, Planner, PlanResult, RolloutEvaluator, make_objective
from bayes_mbrl.planning.graphs import GraphPlans

if TYPE_CHECKING:
    from bayes_mbrl.envs import RewardFn, TaskSpec

__all__ = ["MODES", "MPCAgent", "MPCAlgorithm", "MPCOptions", "RandomAgent", "build_evaluator"]

MODES = ("v0.5", "v1.0", "mpc")


@dataclass
class MPCOptions(Options):
    """Options of ``experiment.mode = "mpc"`` (the ``[mpc]`` section)."""

    replan_every: int = option(
        1,
        at_least(1, "an integer"),
        "execute this many actions of each plan, then replan (1: every step; "
        "planner.horizon: whole plans, as v1.0)",
    )


def _obs_tensor(obs: np.ndarray | Tensor, obs_dim: int) -> Tensor:
    o = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, Tensor) else obs)
    if o.shape != (obs_dim,):
        raise DataError(f"observation must have shape ({obs_dim},), got {tuple(o.shape)}")
    if not bool(torch.isfinite(o).all()):
        raise DataError(f"observation contains NaN or inf: {o.tolist()}")
    return o.float()


class MPCAgent:
    """Plans through a rollout evaluator and acts.

    Args:
        planner: any :class:`~bayes_mbrl.planning.Planner`.
        evaluator: the rollout evaluator whose score the planner maximizes.
        mode: one of :data:`MODES`.
        replan_every: actions of each plan executed before the next planning call
            (None: 1 for ``mpc``, the horizon for ``v0.5`` and ``v1.0``).
        randomness: the generator the planner and evaluator draw from and the device
            they plan on (:class:`~bayes_mbrl.devices.PlanRandomness`; None: the CPU,
            with whatever generators they were given).
        graphs: plans recorded as CUDA graphs and replayed
            (:class:`~bayes_mbrl.planning.graphs.GraphPlans`, for ``planner`` and
            ``evaluator``; None: every plan eager).

    Attributes:
        plan_seconds: wall time spent planning since the last :meth:`reset`.
        last_plan: the most recent :class:`PlanResult`.
    """

    def __init__(
        self,
        planner: Planner,
        evaluator: RolloutEvaluator,
        mode: str = "mpc",
        replan_every: int | None = None,
        randomness: PlanRandomness | None = None,
        graphs: GraphPlans | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if planner.horizon != evaluator.horizon:
            raise ConfigError(
                f"planner horizon {planner.horizon} != evaluator horizon {evaluator.horizon}"
            )
        if replan_every is None:
            replan_every = 1 if mode == "mpc" else planner.horizon
        if not 1 <= replan_every <= planner.horizon:
            raise ConfigError(
                f"mpc.replan_every = {replan_every} must be between 1 and planner.horizon = "
                f"{planner.horizon} (a plan has only that many actions to execute)"
            )
        self.replan_every = replan_every
        self.planner, self.evaluator, self.mode = planner, evaluator, mode
        self.randomness = randomness
        self.graphs = graphs
        self.device = randomness.device if randomness is not None else torch.device("cpu")
        self.plan_seconds = 0.0
        self.last_plan: PlanResult | None = None
        self._cursor = 0

    @property
    def refits_each_episode(self) -> bool:
        """Whether the model is refitted after every episode (all modes but ``v0.5``)."""
        return self.mode != "v0.5"

    def reset(self) -> None:
        """Start of an episode: forget the warm start and any unfinished plan."""
        self.planner.reset()
        if self.graphs is not None:
            self.graphs.reset()  # recorded with the weights of the last fit
        self.last_plan = None
        self._cursor = 0
        self.plan_seconds = 0.0

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """Action ``(action_dim,)`` for the observation ``(obs_dim,)``."""
        o = _obs_tensor(obs, self.evaluator.model.obs_dim)
        if self.last_plan is None or self._cursor >= self.replan_every:
            start = time.perf_counter()
            with device_scope(self.device):
                if self.randomness is not None:
                    self.randomness.reseed()
                if self.graphs is not None:
                    self.last_plan = self.graphs.plan(o)  # checked on the CPU, then moved
                else:
                    # one draw of posterior functions per planning call, shared by its iterations
                    self.last_plan = self.planner.plan(self.evaluator.scorer(o.to(self.device)))
            self.plan_seconds += time.perf_counter() - start
            self._cursor = 0
        plan = self.last_plan
        assert plan is not None  # set by the replan branch above
        # actions leave on the CPU, where the environment and the replay buffer are
        action = plan.actions[self._cursor].cpu().clone()
        self._cursor += 1
        if self._cursor >= self.replan_every:
            # the next plan's warm start drops the executed actions
            self.planner.advance(self._cursor)
        return action


class RandomAgent:
    """Uniform random actions within the bounds, drawn from an explicit generator.

    Args:
        action_low: ``(action_dim,)``.
        action_high: ``(action_dim,)``.
        generator: source of randomness.
        discrete: the actions are one-hot vectors of ``Discrete(action_dim)``: each
            index equally likely.
    """

    def __init__(
        self,
        action_low: Tensor,
        action_high: Tensor,
        generator: torch.Generator | None = None,
        discrete: bool = False,
    ) -> None:
        self.low, self.high = action_low.float(), action_high.float()
        self.generator = generator
        self.discrete = discrete
        self.plan_seconds = 0.0

    def reset(self) -> None:
        """Nothing to forget."""
        self.plan_seconds = 0.0

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """A uniform action ``(action_dim,)``; the observation is ignored."""
        if self.discrete:
            index = torch.randint(self.low.shape[0], (), generator=self.generator)
            return torch.nn.functional.one_hot(index, self.low.shape[0]).float()
        u = torch.rand(self.low.shape, generator=self.generator)
        return self.low + u * (self.high - self.low)


# ------------------------------------------------------------------ the runner's view
def build_evaluator(
    config: Any,
    model: Any,
    task: TaskSpec,
    generator: torch.Generator,
    reward_fn: RewardFn | None = None,
) -> RolloutEvaluator:
    """The rollout evaluator of ``config.planner`` for ``model`` on ``task``, scoring with
    ``reward_fn`` (None: the task's)."""
    p = config.planner
    return RolloutEvaluator(
        model,
        task.reward_fn if reward_fn is None else reward_fn,
        p.horizon,
        particles=p.particles,
        functions=p.functions,
        propagation=p.propagation,
        objective=make_objective(p.objective, p.risk_beta, p.cvar_alpha),
        termination_fn=task.termination_fn,
        precision=p.precision,
        generator=generator,
        expected_reward_fn=task.expected_reward_fn,
    )


class MPCAlgorithm(Algorithm):
    """Model-predictive control through the ``[model]`` dynamics and the ``[planner]``
    section: the learner is the dynamics model, the agent an :class:`MPCAgent`."""

    on_devices = True

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(
            config,
            "a latent state-space model acts through its belief: "
            "set experiment.mode = 'latent_mpc'",
        )

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        device = resolve_device(config.experiment.device)
        model = build_model(config, task.obs_dim, task.action_dim)
        p = config.planner
        randomness = PlanRandomness(generator, device)
        if device.type != "cpu":
            model.to(device)  # models that cannot move were refused by check_device_support
        planner = PLANNERS[p.kind].from_config(
            p, task.action_low.to(device), task.action_high.to(device), randomness.generator
        )
        learner, reward_fn, reward_note = planning_reward(
            model, task, config.env.reward_fn, config.experiment.seed, device
        )
        evaluator = build_evaluator(config, model, task, randomness.generator, reward_fn)
        graphs, graphs_note = plan_graphs(config, planner, evaluator, device)
        chunk = config.mpc.replan_every if self.mode == "mpc" else None
        if chunk is not None and chunk > p.horizon:
            raise ConfigError(
                f"mpc.replan_every = {chunk} is longer than planner.horizon = {p.horizon}: a "
                f"plan has {p.horizon} actions; set replan_every <= {p.horizon} (or "
                "experiment.mode = 'v1.0' to run whole plans)"
            )
        return AlgorithmParts(
            agent=MPCAgent(planner, evaluator, self.mode, chunk, randomness, graphs),
            learner=learner,
            model=model,
            refits_each_episode=self.mode != "v0.5",
            title=f"{config.model.kind} + {p.kind}",
            notes=[
                n
                for n in (
                    f"planning precision: {evaluator.precision_note}",
                    reward_note,
                    graphs_note,
                )
                if n
            ],
        )


def plan_graphs(
    config: Any, planner: Planner, evaluator: RolloutEvaluator, device: torch.device
) -> tuple[GraphPlans | None, str]:
    """The CUDA-graph recorder of a run's plans (``planner.cuda_graphs`` on a CUDA device
    with a capturable planner), or None, and the run log's line about it (empty on
    other devices)."""
    if device.type != "cuda":
        return None, ""
    if not config.planner.cuda_graphs:
        return None, f"planning on {device}: eager (planner.cuda_graphs = false)"
    if not planner.capturable:
        return None, (
            f"planning on {device}: eager (planner.kind = {config.planner.kind!r} copies "
            "values to the host inside its search, so it is not recorded as a CUDA graph)"
        )
    return GraphPlans(planner, evaluator), (
        f"planning on {device}: each plan recorded once per episode as a CUDA graph and "
        "replayed (planner.cuda_graphs)"
    )


for _mode, _summary in (
    ("v0.5", "fit once on the random episodes, then run whole plans open loop"),
    ("v1.0", "refit after every episode, run whole plans open loop"),
):
    ALGORITHMS.add(_mode, MPCAlgorithm, summary=_summary)
ALGORITHMS.add(
    "mpc",
    MPCAlgorithm,
    options=MPCOptions,
    summary="refit after every episode, replan at every step or every mpc.replan_every "
    "steps (PETS-style MPC)",
)
