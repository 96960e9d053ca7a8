"""Model-based policy optimization (MBPO; Janner et al. 2019): SAC trained mostly on
short model rollouts branched from real states.

``experiment.mode = "mbpo"`` (the ``[mbpo]`` section) drives stable-baselines3's SAC
(the same as ``experiment.mode = "sac"``, :mod:`bayes_mbrl.algorithms.sac`) with the
``[model]`` dynamics model (any model kind of the protocol). Before each episode the
learner

1. refits the model on every real transition, when ``refit_every`` environment steps
   have passed since its last fit (the paper refits every 250 steps);
2. branches ``rollouts_per_step`` rollouts per new environment step: start states drawn
   uniformly from the real transitions, each rolled ``k`` steps through
   :func:`~bayes_mbrl.planning.imagine.imagine` under SAC's stochastic policy, with
   TS-inf functions (every start is rolled once through each of ``functions``
   posterior functions: an ensemble's members by default), the task's reward function
   and termination function; a rollout stops at a terminal transition (the
   transitions after it are dropped). ``k`` follows ``rollout_schedule`` =
   ``[from_step, to_step, k_min, k_max]``: ``k_min`` up to ``from_step`` environment
   steps, growing linearly to ``k_max`` at ``to_step`` (the paper's schedule, in
   environment steps instead of epochs);
3. keeps the imagined transitions in a first-in-first-out buffer of the last
   ``retain_steps`` environment steps' rollouts (``rollouts_per_step * k * retain_steps``
   transitions, the paper's size with ``retain_steps`` = one epoch);
4. takes ``updates_per_step`` SAC gradient steps per new environment step (the paper's
   G = 20), each on a minibatch with a fraction ``real_ratio`` of real transitions
   (0.05 in the paper) and the rest imagined.

The paper interleaves these with the environment steps (one rollout batch per 250
steps, G updates after every step); here they run between episodes, as every learner
of the runner does, so the policy is fixed within an episode. With 200-step episodes
the rollouts are made as often as in the paper and the updates are as many, only
batched per episode.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    build_model,
    refit_when_due,
    state_model_check,
)
from bayes_mbrl.algorithms.sac import (
    SACAgent,
    SACCoreOptions,
    SACLearner,
    make_sac,
    squashed_sample,
)
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models.base import DynamicsModel, FitReport, ProgressFn
from bayes_mbrl.options import at_least, greater_than, interval, option
from bayes_mbrl.planning.imagine import functions_per_start, imagine

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "MBPOAlgorithm",
    "MBPOLearner",
    "MBPOOptions",
    "MixedSampler",
    "ModelSACAlgorithm",
    "ModelSACLearner",
    "ModelSACOptions",
    "TransitionRing",
    "branched_rollouts",
    "real_transitions",
    "rollout_length",
]


def _schedule(v: list[float]) -> str | None:
    ok = (
        len(v) == 4
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        and 0 <= v[0] <= v[1]
        and 1 <= v[2] <= v[3]
        and all(float(x).is_integer() for x in v[2:])
    )
    return (
        None
        if ok
        else "[from_step, to_step, k_min, k_max] with 0 <= from <= to, 1 <= k_min <= k_max integers"
    )


@dataclass
class ModelSACOptions(SACCoreOptions):
    """SAC's settings and those of the dynamics model it learns from (``mbpo``, ``mve``)."""

    functions: int = option(
        0,
        at_least(0, "an integer"),
        "posterior functions each imagined start is rolled through, TS-inf (0: the model's "
        "finite support, e.g. an ensemble's members, else 5)",
    )
    refit_every: int = option(
        250,
        at_least(1, "an integer"),
        "refit the model before an episode once this many env steps have passed since its last fit",
    )


@dataclass
class MBPOOptions(ModelSACOptions):
    """Options of ``experiment.mode = "mbpo"`` (the ``[mbpo]`` section): SAC's settings
    and the model-data ones (see the module)."""

    updates_per_step: float = option(
        20.0, greater_than(0), "SAC gradient steps per new environment step (the paper's G)"
    )
    rollouts_per_step: int = option(
        400, at_least(1, "an integer"), "branched model rollouts per new environment step"
    )
    rollout_schedule: list[float] = option(
        [0.0, 0.0, 1.0, 1.0],
        _schedule,
        "[from_step, to_step, k_min, k_max]: rollout length k_min until from_step env steps, "
        "then linearly to k_max at to_step",
    )
    retain_steps: int = option(
        1000,
        at_least(1, "an integer"),
        "the model buffer keeps the rollouts of this many env steps "
        "(rollouts_per_step * k * retain_steps transitions)",
    )
    real_ratio: float = option(
        0.05, interval(0.0, 1.0), "fraction of real transitions in each SAC minibatch"
    )


def rollout_length(schedule: list[float], env_steps: int) -> int:
    """The rollout length ``k`` after ``env_steps`` environment steps: ``k_min`` until
    ``from_step``, linear to ``k_max`` at ``to_step``, ``k_max`` after (rounded down)."""
    lo, hi, k_min, k_max = schedule
    if env_steps <= lo or hi <= lo:
        return int(k_min if env_steps <= lo else k_max)
    frac = min(1.0, (env_steps - lo) / (hi - lo))
    return int(k_min + frac * (k_max - k_min))


class TransitionRing:
    """A first-in-first-out buffer of imagined transitions (the model buffer).

    Args:
        obs_dim: observation size.
        action_dim: action size.
        capacity: transitions kept (the oldest are overwritten); :meth:`resize` changes it.
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "done")

    def __init__(self, obs_dim: int, action_dim: int, capacity: int = 1) -> None:
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.capacity = 0
        self.data: dict[str, Tensor] = {}
        self.size = 0
        self.resize(capacity)

    def _empty(self, n: int) -> dict[str, Tensor]:
        d, a = self.obs_dim, self.action_dim
        return {
            "obs": torch.zeros(n, d),
            "action": torch.zeros(n, a),
            "reward": torch.zeros(n),
            "next_obs": torch.zeros(n, d),
            "done": torch.zeros(n, dtype=torch.bool),
        }

    def __len__(self) -> int:
        return self.size

    def ordered(self) -> dict[str, Tensor]:
        """The stored transitions, oldest first."""
        return {k: v[: self.size] for k, v in self.data.items()}

    def resize(self, capacity: int) -> None:
        """Keep the newest ``capacity`` transitions (the paper grows the model buffer with
        the rollout length)."""
        if capacity == self.capacity:
            return
        newest = max(0, self.size - capacity)
        kept = {k: v[newest:].clone() for k, v in self.ordered().items()}
        self.capacity, self.data, self.size = capacity, self._empty(capacity), 0
        if kept and len(kept["obs"]):
            self.add(**kept)

    def add(
        self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor
    ) -> None:
        """Append transitions (the oldest go when full). Stored oldest first, so the
        buffer is a plain prefix of its tensors (simple to checkpoint)."""
        n = obs.shape[0]
        new = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": done}
        if n >= self.capacity:
            for k, v in new.items():
                self.data[k].copy_(v[n - self.capacity :])
            self.size = self.capacity
            return
        drop = max(0, self.size + n - self.capacity)
        for k, v in self.data.items():
            if drop:
                v[: self.size - drop] = v[drop : self.size].clone()
            v[self.size - drop : self.size - drop + n] = new[k]
        self.size = self.size - drop + n

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, **{k: v.clone() for k, v in self.ordered().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = 0
        self.data = {}
        self.size = 0
        self.resize(int(state["capacity"]))
        if len(state["obs"]):
            self.add(*(state[k] for k in self.FIELDS))


def branched_rollouts(
    model: DynamicsModel,
    task: TaskSpec,
    data: ReplayBuffer,
    policy: Any,
    count: int,
    length: int,
    functions: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """``count`` rollouts of ``length`` steps branched from real states of ``data``.

    ``ceil(count / functions)`` start states are drawn uniformly from ``data``'s
    observations and each is rolled through every one of ``functions`` posterior
    functions (TS-inf). Transitions after a terminal one are dropped.

    Returns:
        ``obs, action, reward, next_obs, done`` of the kept transitions, batch-first.
    """
    real = data.all()
    starts = math.ceil(count / functions)
    rows = torch.randint(len(real), (starts,), generator=generator)
    with torch.no_grad():
        out = imagine(
            model,
            real.obs[rows],
            policy,
            length,
            task.reward_fn,
            task.termination_fn,
            particles=functions,
            propagation="ts_inf",
            generator=generator,
        )
    assert out.reward is not None
    alive = out.alive()
    return {
        "obs": out.obs[alive],
        "action": out.action[alive],
        "reward": out.reward[alive].float(),
        "next_obs": out.next_obs[alive],
        "done": out.done[alive],
    }


class MixedSampler:
    """Minibatches for SB3's SAC: a fraction ``real_ratio`` of each from the real
    transitions, the rest from the model buffer (SB3's ``replay_buffer.sample``).

    Actions are given to SAC in its ``[-1, 1]`` units; ``dones`` are terminations only
    (a time limit is not a terminal state)."""

    def __init__(
        self,
        real: dict[str, Tensor],
        imagined: dict[str, Tensor],
        real_ratio: float,
        scale: Any,
        generator: torch.Generator,
    ) -> None:
        if not len(imagined["obs"]):
            real_ratio = 1.0  # nothing imagined (every rollout terminated at once)
        self.real, self.imagined, self.real_ratio = real, imagined, real_ratio
        self.scale, self.generator = scale, generator

    def _rows(self, part: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(part["obs"]), (n,), generator=self.generator)
        return {k: v[idx] for k, v in part.items()}

    def sample(self, batch_size: int, env: Any = None) -> Any:
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        n_real = round(batch_size * self.real_ratio)
        counts = ((self.real, n_real), (self.imagined, batch_size - n_real))
        parts = [self._rows(part, n) for part, n in counts if n > 0]
        cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return ReplayBufferSamples(
            observations=cat["obs"],
            actions=self.scale(cat["action"]),
            next_observations=cat["next_obs"],
            dones=cat["done"].float()[:, None],
            rewards=cat["reward"][:, None],
        )


def real_transitions(data: ReplayBuffer) -> dict[str, Tensor]:
    """The real transitions as SAC's samplers read them (``done``: terminated only; a
    time limit is not a terminal state)."""
    real = data.all()
    return {
        "obs": real.obs,
        "action": real.action,
        "reward": real.reward,
        "next_obs": real.next_obs,
        "done": real.terminated,
    }


class ModelSACLearner(abc.ABC):
    """SAC with a dynamics model: before each episode the model is refitted (every
    ``refit_every`` environment steps) and SAC takes ``updates_per_step`` gradient steps
    per new environment step on the minibatches of :meth:`sampler`, which subclasses
    define (MBPO: real and imagined transitions; MVE: real ones with model-expanded
    targets).

    Args:
        model: the dynamics model.
        sac: the SAC learner (its SB3 model, random states and update loop).
        task: the task (reward and termination functions).
        options: :class:`ModelSACOptions`.
        seed: seeds the learner's own draws (start states, rollouts, minibatches).

    Attributes:
        model_seconds, data_seconds, sac_seconds: wall time of the last fit's model
            fit, of making the sampler's data, and of SAC's updates.
    """

    def __init__(
        self,
        model: DynamicsModel,
        sac: SACLearner,
        task: TaskSpec,
        options: ModelSACOptions,
        seed: int = 0,
    ) -> None:
        self.model, self.sac, self.task, self.options = model, sac, task, options
        self.generator = torch.Generator().manual_seed(seed + 71)
        self.trained_upto = 0
        self.refit_at = -1
        self.model_seconds = self.data_seconds = self.sac_seconds = 0.0
        self.functions = functions_per_start(model, options.functions)

    def policy(self, obs: Tensor) -> Tensor:
        """SAC's stochastic action (env units) for a batch of states, drawn with the
        learner's generator."""
        action, _ = squashed_sample(self.sac.sac.actor, obs, self.generator)
        return self.sac.unscale(action)

    @abc.abstractmethod
    def sampler(self, data: ReplayBuffer, new: int) -> Any:
        """What SAC samples its minibatches from (``sample(batch_size)``), given the
        run's transitions and how many are new since the last fit."""

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        start = time.perf_counter()
        report, self.refit_at = refit_when_due(
            self.model, data, self.refit_at, self.options.refit_every, generator, progress
        )
        t0 = time.perf_counter()
        new = len(data) - self.trained_upto
        self.sac.sac.replay_buffer = self.sampler(data, new)
        t1 = time.perf_counter()
        self.sac.train(round(new * self.options.updates_per_step))
        self.trained_upto = len(data)
        self.model_seconds, self.data_seconds = t0 - start, t1 - t0
        self.sac_seconds = time.perf_counter() - t1
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int | None:
        return self.model.progress_total()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "sac": self.sac.state_dict(),
            "generator": self.generator.get_state(),
            "trained_upto": self.trained_upto,
            "refit_at": self.refit_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.sac.load_state_dict(state["sac"])
        self.generator.set_state(state["generator"])
        self.trained_upto = int(state["trained_upto"])
        self.refit_at = int(state["refit_at"])


class MBPOLearner(ModelSACLearner):
    """Branches rollouts into the model buffer and trains SAC on real and imagined
    transitions (see the module)."""

    options: MBPOOptions

    def __init__(
        self,
        model: DynamicsModel,
        sac: SACLearner,
        task: TaskSpec,
        options: MBPOOptions,
        seed: int = 0,
    ) -> None:
        super().__init__(model, sac, task, options, seed)
        self.model_data = TransitionRing(task.obs_dim, task.action_dim, 1)

    def sampler(self, data: ReplayBuffer, new: int) -> MixedSampler:
        opts = self.options
        k = rollout_length(opts.rollout_schedule, len(data))
        self.model_data.resize(opts.rollouts_per_step * k * opts.retain_steps)
        if new > 0:
            imagined = branched_rollouts(
                self.model,
                self.task,
                data,
                self.policy,
                new * opts.rollouts_per_step,
                k,
                self.functions,
                self.generator,
            )
            self.model_data.add(**imagined)
        return MixedSampler(
            real_transitions(data),
            self.model_data.ordered(),
            opts.real_ratio,
            self.sac.scale,
            self.generator,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "model_data": self.model_data.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.model_data.load_state_dict(state["model_data"])


class ModelSACAlgorithm(Algorithm):
    """SAC with a dynamics model of ``[model]``: the learner of :attr:`learner_class`,
    its options the section named after the mode."""

    needs_reward_fn = True

    learner_class: type[ModelSACLearner]
    name = "SAC with a model"

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(config, f"{self.name} imagines from real states")

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: ModelSACOptions = getattr(config, self.mode)
        seed = config.experiment.seed
        model = build_model(config, task.obs_dim, task.action_dim)
        sac = SACLearner(make_sac(task, opts, seed), opts, task.action_low, task.action_high, seed)
        learner = self.learner_class(model, sac, task, opts, seed)
        agent = SACAgent(
            sac, task.obs_dim, noise_beta=opts.noise_beta, episode_length=config.env.episode_length
        )
        return AlgorithmParts(
            agent=agent,
            learner=learner,
            model=model,
            eval_agent=SACAgent(sac, task.obs_dim, deterministic=True),
            title=f"{self.name} ({config.model.kind} + SAC)",
            fit_description=f"fit {config.model.kind}, imagine, SAC updates",
        )


class MBPOAlgorithm(ModelSACAlgorithm):
    """MBPO: SAC on branched model rollouts (see the module)."""

    learner_class = MBPOLearner
    name = "MBPO"


ALGORITHMS.add(
    "mbpo",
    MBPOAlgorithm,
    options=MBPOOptions,
    summary="MBPO: stable-baselines3's SAC on short model rollouts branched from real states",
)
