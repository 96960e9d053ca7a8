"""DQN (stable-baselines3's) in the runner, and Dyna-DQN: DQN fed with real data and
with short imagined rollouts of a learned model, for discrete actions.

``experiment.mode = "dqn"`` drives stable-baselines3's :class:`~stable_baselines3.DQN`
(Mnih et al. 2015: its Q-network, Huber loss, gradient clipping) episode by episode:

* the agent acts epsilon-greedily on the Q-network, epsilon falling linearly from
  ``eps_start`` to ``eps_final`` over the first ``eps_decay_steps`` environment steps
  (SB3's schedule, counted in the run's steps), with the run's own generator;
* before every episode the learner takes ``updates_per_step`` gradient steps per new
  transition on minibatches of the run's transitions, copying the Q-network into its
  target network every ``target_update_every`` gradient steps.

``experiment.mode = "dyna_dqn"`` is the "Dyna-style" learner of the lecture notes:
four processes at their own rates, all settings of the ``[dyna_dqn]`` section,

1. **real data collection**: the episodes themselves (``env.episode_length`` steps at most);
2. **model training**: the ``[model]`` dynamics model (the ensemble by default, with
   one-hot actions) is refitted on every real transition once ``refit_every``
   environment steps have passed since its last fit;
3. **model data collection**: ``rollouts_per_step`` imagined rollouts of
   ``rollout_length`` steps per new environment step, branched from real states
   through the model's posterior functions (TS-inf) under the epsilon-greedy policy,
   scored by the task's reward and termination functions, kept in a first-in-first-out
   model buffer of the last ``retain_steps`` steps' rollouts;
4. **Q regression** with target updates: ``updates_per_step`` DQN gradient steps per
   new environment step, each on a minibatch with a fraction ``real_ratio`` of real
   transitions and the rest imagined.
"""

from __future__ import annotations

import math
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
    refit_when_due,
    state_model_check,
)
from bayes_mbrl.algorithms.mbpo import (
    MixedSampler,
    TransitionRing,
    branched_rollouts,
    real_transitions,
)
from bayes_mbrl.algorithms.mpc import _obs_tensor
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models.base import DynamicsModel, FitReport, ProgressFn
from bayes_mbrl.options import Options, at_least, greater_than, interval, option, positive_list
from bayes_mbrl.planning.imagine import functions_per_start

if TYPE_CHECKING:
    from stable_baselines3 import DQN

    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "DQNAgent",
    "DQNAlgorithm",
    "DQNLearner",
    "DQNOptions",
    "DynaDQNAlgorithm",
    "DynaDQNLearner",
    "DynaDQNOptions",
    "make_dqn",
]


@dataclass
class DQNOptions(Options):
    """Options of ``experiment.mode = "dqn"`` (the ``[dqn]`` section); the defaults are
    rl-baselines3-zoo's tuned CartPole-v1 settings, with updates in episode-sized
    batches."""

    hidden_sizes: list[int] = option([256, 256], positive_list, "Q-network hidden widths")
    learning_rate: float = option(2.3e-3, greater_than(0), "Adam step size")
    batch_size: int = option(64, at_least(1, "an integer"), "minibatch size")
    gamma: float = option(0.99, interval(0.0, 1.0), "discount")
    updates_per_step: float = option(
        0.5, greater_than(0), "gradient steps per new environment step"
    )
    target_update_every: int = option(
        128, at_least(1, "an integer"), "gradient steps between copies into the target network"
    )
    eps_start: float = option(1.0, interval(0.0, 1.0), "epsilon at the first step")
    eps_final: float = option(0.04, interval(0.0, 1.0), "epsilon after eps_decay_steps")
    eps_decay_steps: int = option(
        8000, at_least(1, "an integer"), "environment steps over which epsilon falls"
    )
    max_grad_norm: float = option(10.0, greater_than(0), "gradient-norm clip")


@dataclass
class DynaDQNOptions(DQNOptions):
    """Options of ``experiment.mode = "dyna_dqn"`` (the ``[dyna_dqn]`` section): DQN's
    and the rates of the model processes (see the module)."""

    refit_every: int = option(
        500, at_least(1, "an integer"), "env steps between refits of the model"
    )
    rollouts_per_step: int = option(
        4, at_least(0, "an integer"), "imagined rollouts per new environment step"
    )
    rollout_length: int = option(1, at_least(1, "an integer"), "steps of each imagined rollout")
    retain_steps: int = option(
        5000,
        at_least(1, "an integer"),
        "the model buffer keeps the rollouts of this many env steps",
    )
    real_ratio: float = option(
        0.5, interval(0.0, 1.0), "fraction of real transitions in each minibatch"
    )
    functions: int = option(
        0,
        at_least(0, "an integer"),
        "posterior functions each imagined start is rolled through (0: the model's "
        "finite support, e.g. the ensemble's members, else 5)",
    )


def make_dqn(task: TaskSpec, options: DQNOptions, seed: int) -> DQN:
    """stable-baselines3's DQN for ``task``'s spaces, with no logging output."""
    import gymnasium
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import Logger

    dqn = DQN(
        "MlpPolicy",
        None,  # type: ignore[arg-type]
        learning_rate=options.learning_rate,
        buffer_size=1,
        learning_starts=0,
        batch_size=options.batch_size,
        gamma=options.gamma,
        max_grad_norm=options.max_grad_norm,
        policy_kwargs={"net_arch": list(options.hidden_sizes)},
        seed=seed,
        device="cpu",
        verbose=0,
        _init_setup_model=False,
    )
    # the runner steps the env; DQN only needs the spaces
    dqn.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (task.obs_dim,), np.float32)
    dqn.action_space = gymnasium.spaces.Discrete(task.action_dim)
    dqn.n_envs = 1
    dqn._setup_model()
    dqn.set_logger(Logger(folder=None, output_formats=[]))
    return dqn


def _one_hot_index(action: Tensor) -> Tensor:
    """One-hot actions ``(B, A)`` as DQN's ``(B, 1)`` indices."""
    return action.argmax(-1, keepdim=True)


class DQNLearner:
    """Trains SB3's DQN between episodes on the run's transitions (see the module).

    Args:
        dqn: the SB3 model.
        options: :class:`DQNOptions`.
        seed: seeds the minibatches and the agent's exploration.

    Attributes:
        updates: gradient steps taken.
        trained_upto: transitions of the run's buffer the updates have counted.
    """

    def __init__(self, dqn: DQN, options: DQNOptions, seed: int = 0) -> None:
        self.dqn, self.options = dqn, options
        self.generator = torch.Generator().manual_seed(seed + 83)
        self.updates = 0
        self.trained_upto = 0
        self.since_target = 0

    def epsilon(self, env_steps: int) -> float:
        """Exploration rate after ``env_steps`` environment steps."""
        o = self.options
        frac = min(1.0, env_steps / o.eps_decay_steps)
        return o.eps_start + frac * (o.eps_final - o.eps_start)

    def q_values(self, obs: Tensor) -> Tensor:
        """``(N, A)`` Q-values at ``(N, obs_dim)`` states."""
        return self.dqn.q_net(obs)

    def sampler(self, data: ReplayBuffer, new: int) -> Any:
        """What DQN samples minibatches from: the run's transitions."""
        real = real_transitions(data)
        empty = {k: v[:0] for k, v in real.items()}
        return MixedSampler(real, empty, 1.0, _one_hot_index, self.generator)

    def train(self, steps: int) -> None:
        """``steps`` DQN gradient steps, copying into the target network every
        ``target_update_every`` of them."""
        from stable_baselines3.common.utils import polyak_update

        every = self.options.target_update_every
        while steps > 0:
            chunk = min(steps, every - self.since_target)
            self.dqn.train(gradient_steps=chunk, batch_size=self.options.batch_size)
            steps -= chunk
            self.updates += chunk
            self.since_target += chunk
            if self.since_target >= every:
                polyak_update(self.dqn.q_net.parameters(), self.dqn.q_net_target.parameters(), 1.0)
                self.since_target = 0

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        start = time.perf_counter()
        new = len(data) - self.trained_upto
        self.dqn.replay_buffer = self.sampler(data, new)
        steps = round(new * self.options.updates_per_step)
        self.train(steps)
        self.trained_upto = len(data)
        if progress is not None:
            progress(1, math.nan, math.nan)
        return FitReport(epochs=max(steps, 0), wall_seconds=time.perf_counter() - start)

    def progress_total(self) -> int | None:
        return 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.dqn.policy.state_dict(),
            "optimizer": self.dqn.policy.optimizer.state_dict(),
            "n_updates": self.dqn._n_updates,
            "updates": self.updates,
            "trained_upto": self.trained_upto,
            "since_target": self.since_target,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dqn.policy.load_state_dict(state["policy"])
        self.dqn.policy.optimizer.load_state_dict(state["optimizer"])
        self.dqn._n_updates = int(state["n_updates"])
        self.updates = int(state["updates"])
        self.trained_upto = int(state["trained_upto"])
        self.since_target = int(state["since_target"])
        self.generator.set_state(state["generator"])


class DynaDQNLearner(DQNLearner):
    """DQN on real and imagined transitions, with the model refitted at its own rate
    (see the module).

    Args:
        model: the dynamics model (one-hot actions).
        dqn: as for :class:`DQNLearner`.
        options: as for :class:`DQNLearner`.
        seed: as for :class:`DQNLearner`.
        task: the task (reward and termination functions of imagined steps).
    """

    options: DynaDQNOptions

    def __init__(
        self,
        model: DynamicsModel,
        dqn: DQN,
        task: TaskSpec,
        options: DynaDQNOptions,
        seed: int = 0,
    ) -> None:
        super().__init__(dqn, options, seed)
        self.model, self.task = model, task
        self.refit_at = -1
        self.model_data = TransitionRing(task.obs_dim, task.action_dim, 1)
        self.functions = functions_per_start(model, options.functions)
        self.model_seconds = 0.0

    def policy(self, obs: Tensor) -> Tensor:
        """The epsilon-greedy policy of the current Q-network at the current rate, as
        one-hot actions ``(N, A)`` (drawn with the learner's generator)."""
        n, a = obs.shape[0], self.task.action_dim
        with torch.no_grad():
            greedy = self.q_values(obs).argmax(-1)
        explore = torch.rand(n, generator=self.generator) < self.epsilon(self.trained_upto)
        random = torch.randint(a, (n,), generator=self.generator)
        return torch.nn.functional.one_hot(torch.where(explore, random, greedy), a).float()

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Refit the model when due, then imagine and train (:meth:`DQNLearner.fit`)."""
        start = time.perf_counter()
        report, self.refit_at = refit_when_due(
            self.model, data, self.refit_at, self.options.refit_every, generator, progress
        )
        self.model_seconds = time.perf_counter() - start
        super().fit(data, generator)
        report.wall_seconds = time.perf_counter() - start
        return report

    def sampler(self, data: ReplayBuffer, new: int) -> Any:
        opts = self.options
        size = opts.rollouts_per_step * opts.rollout_length * opts.retain_steps
        self.model_data.resize(max(1, size))
        if new > 0 and opts.rollouts_per_step > 0:
            imagined = branched_rollouts(
                self.model,
                self.task,
                data,
                self.policy,
                new * opts.rollouts_per_step,
                opts.rollout_length,
                self.functions,
                self.generator,
            )
            self.model_data.add(**imagined)
        return MixedSampler(
            real_transitions(data),
            self.model_data.ordered(),
            opts.real_ratio,
            _one_hot_index,
            self.generator,
        )

    def progress_total(self) -> int | None:
        return self.model.progress_total()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "model": self.model.state_dict(),
            "refit_at": self.refit_at,
            "model_data": self.model_data.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.refit_at = int(state["refit_at"])
        self.model_data.load_state_dict(state["model_data"])


class DQNAgent:
    """Epsilon-greedy (``greedy``: arg-max) actions of the learner's Q-network, one-hot.

    The exploration rate follows the run's environment steps: those the learner was
    last fitted on plus the steps of this episode.
    """

    def __init__(self, learner: DQNLearner, obs_dim: int, greedy: bool = False) -> None:
        self.learner, self.obs_dim, self.greedy = learner, obs_dim, greedy
        self.plan_seconds = 0.0
        self._step = 0

    def reset(self) -> None:
        self.plan_seconds = 0.0
        self._step = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        start = time.perf_counter()
        learner = self.learner
        q = learner.q_values(_obs_tensor(obs, self.obs_dim)[None])[0]
        a = q.shape[0]
        index = int(q.argmax())
        if not self.greedy:
            eps = learner.epsilon(learner.trained_upto + self._step)
            self._step += 1
            explore = float(torch.rand((), generator=learner.generator)) < eps
            random = int(torch.randint(a, (), generator=learner.generator))
            index = random if explore else index
        self.plan_seconds += time.perf_counter() - start
        return torch.nn.functional.one_hot(torch.tensor(index), a).float()


class DQNAlgorithm(Algorithm):
    """DQN (stable-baselines3) on discrete actions (see the module)."""

    action_spaces = ("discrete",)

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: DQNOptions = config.dqn
        learner = DQNLearner(
            make_dqn(task, opts, config.experiment.seed), opts, config.experiment.seed
        )
        return AlgorithmParts(
            agent=DQNAgent(learner, task.obs_dim),
            learner=learner,
            model=None,
            eval_agent=DQNAgent(learner, task.obs_dim, greedy=True),
            title="DQN",
            fit_description="DQN updates",
            no_model_reason="DQN is model-free",
        )


class DynaDQNAlgorithm(Algorithm):
    """Dyna-DQN: DQN on real and imagined transitions (see the module)."""

    action_spaces = ("discrete",)

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(config, "Dyna-DQN imagines from real states")

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: DynaDQNOptions = config.dyna_dqn
        seed = config.experiment.seed
        model = build_model(config, task.obs_dim, task.action_dim)
        learner = DynaDQNLearner(model, make_dqn(task, opts, seed), task, opts, seed)
        return AlgorithmParts(
            agent=DQNAgent(learner, task.obs_dim),
            learner=learner,
            model=model,
            eval_agent=DQNAgent(learner, task.obs_dim, greedy=True),
            title=f"Dyna-DQN ({config.model.kind} + DQN)",
            fit_description=f"fit {config.model.kind}, imagine, DQN updates",
        )


ALGORITHMS.add(
    "dqn",
    DQNAlgorithm,
    options=DQNOptions,
    summary="stable-baselines3's DQN (discrete actions)",
)
ALGORITHMS.add(
    "dyna_dqn",
    DynaDQNAlgorithm,
    options=DynaDQNOptions,
    summary="Dyna-DQN: stable-baselines3's DQN on real data and short model rollouts "
    "(discrete actions)",
)
