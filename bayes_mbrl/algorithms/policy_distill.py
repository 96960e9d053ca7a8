"""Planner -> policy distillation: a Gaussian policy trained on a planner's soft labels.

MPC plans at every step (hundreds of model rollouts per action); a policy network
acts in one forward pass. ``experiment.mode = "policy_distill"`` runs MPC's teacher
(the ``[model]`` dynamics and the ``[planner]``) and distils it into a Gaussian policy
``pi(a | s) = N(mu(s), diag(sigma(s)^2))``:

* every state the run visits is labelled by the planner with its final action
  distribution for that state: CEM's last elites' mean and std, MPPI's weighted mean
  and std (:attr:`~bayes_mbrl.planning.PlanResult.action_std`);
* in the first ``teacher_episodes`` planned episodes the planner acts (its own states
  are labelled: behaviour cloning); after them, with ``dagger = true``, the *student*
  acts and the planner labels the states the student visits, and the labelled set
  aggregates over episodes (DAgger, Ross et al. 2011); with ``dagger = false`` the
  planner keeps acting (behaviour cloning on the planner's states only);
* after every episode the dynamics model is refitted and the policy trained on all
  labels by the KL of the notes at temperature ``T`` (as for the dynamics,
  :mod:`bayes_mbrl.models.distill`), per action dimension::

      KL( N(m, T s^2) || N(mu, T sigma^2) ) = (s^2 / sigma^2 - 1 - log(s^2 / sigma^2)) / 2
                                              + (m - mu)^2 / (2 T sigma^2)

The distilled policy is :attr:`PolicyDistillLearner.policy`; :class:`PolicyAgent`
acts with its mean (clipped to the action bounds) and is what a user deploys.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    build_model,
    state_model_check,
)
from bayes_mbrl.algorithms.mpc import MPCAgent, _obs_tensor, build_evaluator
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FitReport, ProgressFn
from bayes_mbrl.models.ensemble import ACTIVATIONS
from bayes_mbrl.options import OptionError, Options, at_least, greater_than, option, positive_list
from bayes_mbrl.planning import PLANNERS

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "GaussianPolicy",
    "PolicyAgent",
    "PolicyDistillAlgorithm",
    "PolicyDistillLearner",
    "PolicyDistillOptions",
    "load_distilled_policy",
    "policy_kl",
]


@dataclass
class PolicyDistillOptions(Options):
    """Options of ``experiment.mode = "policy_distill"`` (the ``[policy_distill]`` section)."""

    teacher_episodes: int = option(
        2,
        at_least(0, "an integer"),
        "planned episodes in which the planner acts before the student does",
    )
    dagger: bool = option(
        True,
        None,
        "after teacher_episodes the student acts and the planner labels its states "
        "(DAgger); false: the planner keeps acting (behaviour cloning)",
    )
    guided: bool = option(
        False,
        None,
        "when the student acts, each plan starts from the student's own plan (its "
        "actions along the model's mean prediction, pulled a quarter towards the middle "
        "of the range): the planner refines the student's choice instead of switching "
        "between equally good ones",
    )
    common_noise: bool = option(
        False,
        None,
        "when the student acts, every label is planned from scratch with the same "
        "random numbers (CEM's samples and the model's function draws), so that the "
        "label is one function of the state: nearby states get the same choice",
    )
    student_prior: float = option(
        0.0,
        at_least(0.0),
        "lambda: when the student acts, the planner maximizes reward + lambda * "
        "log pi_student(a | s) along its imagined rollouts, so that it stays with the "
        "student's choice where that costs little reward (0: off)",
    )
    temperature: float = option(1.0, greater_than(0), "T: the mean term is scaled by 1/T")
    hidden_sizes: list[int] = option([64, 64], positive_list, "the policy's hidden widths")
    epochs: int = option(100, at_least(1, "an integer"), "passes over the labels per fit")
    batch_size: int = option(256, at_least(1, "an integer"), "minibatch size")
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    min_label_std: float = option(
        0.05,
        greater_than(0),
        "floor of the planner's action std, as a fraction of the half action range",
    )

    def validate(self) -> None:
        if self.guided and self.common_noise:
            raise OptionError(
                type(self).__name__,
                "common_noise",
                True,
                "false with guided = true (common_noise plans every label from scratch, "
                "so the student's warm start would be dropped); set one of them",
            )


def policy_kl(
    label_mean: Tensor, label_std: Tensor, mean: Tensor, log_std: Tensor, temperature: float
) -> Tensor:
    """``KL(N(m, T s^2) || N(mu, T sigma^2))`` per row, summed over action dimensions."""
    var_ratio = (label_std / log_std.exp()) ** 2
    mean_term = (label_mean - mean) ** 2 / (temperature * (2.0 * log_std).exp())
    return 0.5 * (var_ratio - 1.0 - var_ratio.log() + mean_term).sum(-1)


class GaussianPolicy(nn.Module):
    """``s -> (mu(s), log sigma(s))`` with inputs standardized by fixed statistics.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        hidden_sizes: hidden widths (SiLU).
    """

    obs_mean: Tensor
    obs_std: Tensor

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        sizes = [obs_dim, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], 2 * action_dim)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.action_dim = action_dim

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = (obs - self.obs_mean) / self.obs_std
        for layer in self.layers:
            x = ACTIVATIONS["silu"](layer(x))
        mean, log_std = self.head(x).split(self.action_dim, dim=-1)
        return mean, log_std.clamp(-7.0, 2.0)


class PolicyDistillLearner:
    """Refits the dynamics model and trains the policy on every label so far.

    Args:
        model: the teacher's dynamics model.
        policy: the student.
        options: :class:`PolicyDistillOptions`.
        action_low: the lower action bounds (labels are clipped to the bounds).
        action_high: the upper action bounds.
        seed: seeds the policy's minibatches.

    Attributes:
        labels: ``{"obs", "mean", "std"}`` tensors, one row per labelled state (read-only).
        episodes: planned episodes started so far (the agent counts them).
        last_policy_loss: the mean loss of the last policy epoch.
    """

    def __init__(
        self,
        model: DynamicsModel,
        policy: GaussianPolicy,
        options: PolicyDistillOptions,
        action_low: Tensor,
        action_high: Tensor,
        seed: int = 0,
    ) -> None:
        self.model, self.policy, self.options = model, policy, options
        self.low, self.high = action_low.float(), action_high.float()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=options.learning_rate)
        a = self.policy.action_dim
        # rows are appended to lists (one label per step) and joined when read
        self._labels: dict[str, list[Tensor]] = {
            "obs": [torch.zeros(0, model.obs_dim)],
            "mean": [torch.zeros(0, a)],
            "std": [torch.zeros(0, a)],
        }
        self.episodes = 0
        self.last_policy_loss = float("nan")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed + 31)

    def add_label(self, obs: Tensor, mean: Tensor, std: Tensor | None) -> None:
        """Label one state with the planner's action distribution (std floored)."""
        floor = self.options.min_label_std * (self.high - self.low) / 2
        std = floor if std is None else torch.maximum(std.float(), floor)
        mean = torch.minimum(torch.maximum(mean.float(), self.low), self.high)
        for key, row in (("obs", obs.float()), ("mean", mean), ("std", std)):
            self._labels[key].append(row.reshape(1, -1))

    @property
    def labels(self) -> dict[str, Tensor]:
        """Every label so far: ``obs``, ``mean``, ``std``, one row per labelled state."""
        for key, rows in self._labels.items():
            if len(rows) > 1:
                self._labels[key] = [torch.cat(rows)]
        return {key: rows[0] for key, rows in self._labels.items()}

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Refit the dynamics model on ``data``, then the policy on every label."""
        start = time.perf_counter()
        report = self.model.fit(data, generator, progress)
        n = len(self.labels["obs"])
        if n:
            self._fit_policy()
        report.wall_seconds = time.perf_counter() - start
        return report

    def _fit_policy(self) -> None:
        opts, lab = self.options, self.labels
        obs = lab["obs"]
        self.policy.obs_mean.copy_(obs.mean(0))
        self.policy.obs_std.copy_(obs.std(0, unbiased=False).clamp_min(1e-3))
        n, bs = len(obs), min(opts.batch_size, len(obs))
        for _ in range(opts.epochs):
            order = torch.randperm(n, generator=self._generator)
            total = 0.0
            for lo in range(0, n - bs + 1, bs):
                rows = order[lo : lo + bs]
                mean, log_std = self.policy(obs[rows])
                loss = policy_kl(
                    lab["mean"][rows], lab["std"][rows], mean, log_std, opts.temperature
                ).mean()
                if not bool(torch.isfinite(loss)):
                    raise ModelError(
                        "the distilled policy's loss is not finite; lower "
                        "policy_distill.learning_rate or check the planner's labels"
                    )
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(rows)
            self.last_policy_loss = total / (n // bs * bs)

    def progress_total(self) -> int | None:
        return self.model.progress_total()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "labels": dict(self.labels),
            "episodes": self.episodes,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._labels = {k: [v.clone()] for k, v in state["labels"].items()}
        self.episodes = int(state["episodes"])
        self._generator.set_state(state["generator"])


class PolicyAgent:
    """Acts with a Gaussian policy's mean, clipped to the bounds (the deployed student).

    Attributes:
        plan_seconds: wall time spent choosing actions since the last :meth:`reset`.
    """

    def __init__(self, policy: GaussianPolicy, action_low: Tensor, action_high: Tensor) -> None:
        self.policy = policy
        self.obs_dim = int(policy.obs_mean.shape[0])
        self.low, self.high = action_low.float(), action_high.float()
        self.plan_seconds = 0.0

    def reset(self) -> None:
        self.plan_seconds = 0.0

    @torch.no_grad()
    def action_distribution(self, obs: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """The policy's ``(mean, std)`` at ``obs`` (the mean clipped to the bounds)."""
        mean, log_std = self.policy(_obs_tensor(obs, self.obs_dim))
        return torch.minimum(torch.maximum(mean, self.low), self.high), log_std.exp()

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        start = time.perf_counter()
        o = _obs_tensor(obs, self.obs_dim)
        mean, _ = self.policy(o)
        action = torch.minimum(torch.maximum(mean, self.low), self.high)
        self.plan_seconds += time.perf_counter() - start
        return action


def load_distilled_policy(
    run_dir: str | Path, task: TaskSpec | None = None
) -> tuple[GaussianPolicy, dict[str, Tensor]]:
    """The distilled policy of a ``policy_distill`` run and the labels it was trained on.

    Reads the run's newest checkpoint. With ``task``, the policy must act on the same
    environment (its id, observation and action sizes).

    Raises:
        ConfigError: ``run_dir`` is not a run, not a ``policy_distill`` run, has no
            trained policy yet, or was run on another task than ``task``.
    """
    from bayes_mbrl.envs.custom import build_task
    from bayes_mbrl.runs import RunStore, read_run_config_of

    run_dir = Path(run_dir)
    config = read_run_config_of(run_dir, ["policy_distill"], "the distilled policy's run")
    own = build_task(config.env, check=False)  # your own env too (env.entry_point)
    if task is not None and (
        own.env_id != task.env_id
        or (own.obs_dim, own.action_dim) != (task.obs_dim, task.action_dim)
    ):
        raise ConfigError(
            f"{run_dir} distilled a policy for {own.env_id} (observations {own.obs_dim}, "
            f"actions {own.action_dim}), not for {task.env_id} (observations "
            f"{task.obs_dim}, actions {task.action_dim}); use a policy_distill run on "
            f"{task.env_id}"
        )
    state = RunStore(run_dir, own.obs_dim, own.action_dim).read_checkpoint()
    learner = None if state is None else state["model"]
    if learner is None or "policy" not in learner or len(learner["labels"]["obs"]) == 0:
        raise ConfigError(
            f"{run_dir} has no trained policy yet (no checkpoint after a planned "
            "episode); let the policy_distill run finish its planned episodes first"
        )
    opts = config.policy_distill
    policy = GaussianPolicy(own.obs_dim, own.action_dim, list(opts.hidden_sizes))
    policy.load_state_dict(learner["policy"])
    labels = {k: v.clone() for k, v in learner["labels"].items()}
    return policy, labels


class DAggerAgent:
    """The planner labels every state; the planner or the student acts (see the module).

    Args:
        teacher: the MPC agent whose plans are the labels.
        student: the policy agent.
        learner: where the labels go (and the episode count, checkpointed with it).
    """

    def __init__(
        self, teacher: MPCAgent, student: PolicyAgent, learner: PolicyDistillLearner
    ) -> None:
        self.teacher, self.student, self.learner = teacher, student, learner
        self.plan_seconds = 0.0

    @property
    def student_acts(self) -> bool:
        opts = self.learner.options
        return opts.dagger and self.learner.episodes > opts.teacher_episodes

    def reset(self) -> None:
        self.teacher.reset()
        self.student.reset()
        self.learner.episodes += 1
        self.plan_seconds = 0.0

    @torch.no_grad()
    def student_plan(self, obs: Tensor) -> Tensor:
        """The student's actions over the planner's horizon along the model's mean
        prediction from ``obs``, ``(horizon, action_dim)``."""
        planner, policy, model = self.teacher.planner, self.learner.policy, self.learner.model
        x, actions = obs.reshape(1, -1), []
        for _ in range(planner.horizon):
            mean, _ = policy(x)
            a = torch.minimum(torch.maximum(mean, self.learner.low), self.learner.high)
            actions.append(a[0])
            x = model.predict(x, a).mean
        return torch.stack(actions)

    def regularized_reward(self, reward_fn: Any, lam: float) -> Any:
        """``reward_fn + lam * log pi_student(a | s)`` (batched like ``reward_fn``)."""
        policy = self.learner.policy

        @torch.no_grad()
        def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
            mean, log_std = policy(obs.float())
            z = (action.float() - mean) / log_std.exp()
            log_prob = (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            return reward_fn(obs, action, next_obs) + lam * log_prob.to(obs.dtype)

        return reward

    def _plan_with_common_noise(self, obs: np.ndarray | Tensor) -> Tensor:
        """Plan from scratch with a generator seeded the same way at every state."""
        planner, evaluator = self.teacher.planner, self.teacher.evaluator
        saved = planner.generator, evaluator.generator
        common = torch.Generator().manual_seed(self.learner.seed + 7919)
        planner.generator = evaluator.generator = common
        planner.reset()
        try:
            return self.teacher.act(obs)
        finally:
            planner.generator, evaluator.generator = saved

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        o = _obs_tensor(obs, self.learner.model.obs_dim)
        if self.learner.options.guided and self.student_acts:
            mid = (self.learner.low + self.learner.high) / 2
            # a quarter towards the middle, so that CEM's spread (limited by the
            # distance to the bounds) can still move a saturated action
            self.teacher.planner.set_warm_start(mid + 0.75 * (self.student_plan(o) - mid))
        opts = self.learner.options
        plan_fn = self._plan_with_common_noise if opts.common_noise else self.teacher.act
        if not self.student_acts:
            action = self.teacher.act(obs)
        elif opts.student_prior > 0:
            evaluator = self.teacher.evaluator
            reward_fn = evaluator.reward_fn
            evaluator.reward_fn = self.regularized_reward(reward_fn, opts.student_prior)
            try:
                action = plan_fn(obs)
            finally:
                evaluator.reward_fn = reward_fn
        else:
            action = plan_fn(obs)
        plan = self.teacher.last_plan
        assert plan is not None
        std = None if plan.action_std is None else plan.action_std[0]
        self.learner.add_label(o, plan.actions[0], std)
        self.plan_seconds = self.teacher.plan_seconds
        if self.student_acts:
            return self.student.act(o)
        return action


class PolicyDistillAlgorithm(Algorithm):
    """MPC as the teacher, a Gaussian policy as the student (see the module)."""

    needs_reward_fn = True

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(config, "not a latent model")

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: PolicyDistillOptions = config.policy_distill
        model = build_model(config, task.obs_dim, task.action_dim)
        p = config.planner
        planner = PLANNERS[p.kind].from_config(p, task.action_low, task.action_high, generator)
        teacher = MPCAgent(planner, build_evaluator(config, model, task, generator), "mpc")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.experiment.seed)
            policy = GaussianPolicy(task.obs_dim, task.action_dim, list(opts.hidden_sizes))
        learner = PolicyDistillLearner(
            model, policy, opts, task.action_low, task.action_high, config.experiment.seed
        )
        student = PolicyAgent(policy, task.action_low, task.action_high)
        return AlgorithmParts(
            agent=DAggerAgent(teacher, student, learner),
            learner=learner,
            model=model,
            title=f"{config.model.kind} + {p.kind} -> policy ({'DAgger' if opts.dagger else 'BC'})",
        )


ALGORITHMS.add(
    "policy_distill",
    PolicyDistillAlgorithm,
    options=PolicyDistillOptions,
    summary="MPC distilled into a Gaussian policy on the planner's soft labels (DAgger or BC)",
)
