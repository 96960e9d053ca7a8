"""The outer loop of model-based RL: collect -> fit -> act, seeded and resumable.

:class:`Experiment` is the loop only. What it runs comes from the algorithm
registered for ``experiment.mode`` (:func:`~bayes_mbrl.algorithms.base.build_algorithm`:
an :class:`~bayes_mbrl.algorithms.base.Agent` that acts and a
:class:`~bayes_mbrl.algorithms.base.Learner` fitted between episodes); what it
writes goes through the run store (:class:`~bayes_mbrl.runs.RunStore`: config,
transition log, metrics, checksummed checkpoints); progress bars and the
learning-curve plot are callbacks (:mod:`bayes_mbrl.callbacks`).

:func:`resume_experiment` restores the newest readable checkpoint, reloads the
transitions it covers, and re-runs the interrupted episode from the restored RNG
state. Transitions of that episode already in the log are not written twice: each
regenerated transition is compared with the logged one, and if a logged transition
cannot be reproduced it is kept in the data anyway (with a warning), so nothing
collected is lost.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_mbrl.algorithms import RandomAgent
from bayes_mbrl.algorithms.base import Agent, build_algorithm, build_model
from bayes_mbrl.callbacks import Callback, LearningCurvePlot, ProgressBars
from bayes_mbrl.config import Config, dump_config
from bayes_mbrl.data import ReplayBuffer, validate_transitions
from bayes_mbrl.devices import check_device_support, resolve_device, state_to_cpu
from bayes_mbrl.envs import make_env
from bayes_mbrl.envs.custom import build_task
from bayes_mbrl.errors import CheckpointError, ConfigError, ModelError
from bayes_mbrl.evaluation import EVAL_START_SEED, evaluation_due, run_episodes
from bayes_mbrl.models import FitReport
from bayes_mbrl.runs import (
    CONFIG_FILE,
    LoadedRun,
    RunStore,
    TransitionLog,
    load_checkpoint,
    load_run,
    read_run_config,
    save_checkpoint,
)
from bayes_mbrl.user_code import load_user_function

__all__ = [
    "Callback",
    "Experiment",
    "LoadedRun",
    "RunResult",
    "TransitionLog",
    "apply_threads",
    "available_cores",
    "build_model",
    "load_checkpoint",
    "load_run",
    "load_user_function",
    "resume_experiment",
    "run_experiment",
    "save_checkpoint",
]


@dataclass
class RunResult:
    """What a finished (or stopped) run produced.

    Attributes:
        run_dir: the run directory.
        returns: return of every episode so far.
        metrics: the rows of ``metrics.csv``.
    """

    run_dir: Path
    returns: list[float]
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Experiment:
    """A seeded, resumable model-based RL run.

    Args:
        config: the resolved configuration.
        run_dir: where everything is written.
        callbacks: hooks called during the run, after the built-in ones (progress
            bars when ``experiment.progress``, and the learning-curve plot).

    Attributes:
        parts: the algorithm's agent, learner and dynamics model.
        store: the run directory.
        buffer: every transition collected so far.
        metrics: one row per finished episode.
    """

    def __init__(self, config: Config, run_dir: Path, callbacks: Sequence[Callback] = ()) -> None:
        exp = config.experiment
        check_device_support(torch.device(exp.device), exp.mode, config.model.kind)
        self.device = resolve_device(exp.device)
        self.config = config
        self.threads = apply_threads(config.experiment.threads)
        self.task = build_task(config.env)
        self.generator = torch.Generator().manual_seed(config.experiment.seed)
        self.parts = build_algorithm(config, self.task, self.generator)
        builtin: list[Callback] = [ProgressBars()] if config.experiment.progress else []
        self.callbacks: list[Callback] = [
            *builtin,
            LearningCurvePlot(),
            *self.parts.callbacks,
            *callbacks,
        ]
        self.random_agent = RandomAgent(
            self.task.action_low,
            self.task.action_high,
            self.generator,
            discrete=self.task.discrete_actions,
        )
        self.buffer = ReplayBuffer(
            self.task.obs_dim,
            self.task.action_dim,
            _capacity(config),
            self.task.action_low,
            self.task.action_high,
            discrete_actions=self.task.discrete_actions,
        )
        self.store = RunStore(
            Path(run_dir),
            self.task.obs_dim,
            self.task.action_dim,
            config.experiment.checkpoint_keep,
        )
        self.metrics: list[dict[str, Any]] = []
        self.episodes_done = 0
        self.last_fit: FitReport | None = None
        self._replay: np.ndarray = np.zeros((0, self.log.width), dtype=np.float32)

    @property
    def budget_spent(self) -> bool:
        """Whether ``experiment.max_env_steps`` environment steps are collected (the
        run starts no further episode)."""
        budget = self.config.experiment.max_env_steps
        return budget > 0 and len(self.buffer) >= budget

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.store.run_dir

    @property
    def log(self) -> TransitionLog:
        """The transition log of the run directory."""
        return self.store.log

    @property
    def model(self) -> Any:
        """The algorithm's dynamics model (None when it has none)."""
        return self.parts.model

    # ----------------------------------------------------------------- running
    def start(self) -> None:
        """Create the run directory and write the resolved config (new runs only)."""
        if (self.run_dir / "config.toml").exists():
            raise CheckpointError(
                f"{self.run_dir} already contains a run; resume it with "
                f"'bayes-mbrl resume {self.run_dir}' or choose another directory"
            )
        # probe the environment before anything is written, so a bad env id fails fast
        make_env(self.config.env.id, discrete_ok=self.task.discrete_actions).close()
        self.store.create(self.config)

    def run(self) -> RunResult:
        """Run the remaining episodes; returns when all are done or a callback stops it."""
        exp = self.config.experiment
        for cb in self.callbacks:
            cb.on_run_start(self)
        try:
            while self.episodes_done < exp.episodes and not self.budget_spent:
                row = self._run_episode(self.episodes_done)
                self.episodes_done += 1
                self.metrics.append(row)
                self.store.write_metrics(self.metrics)
                self._write_checkpoint()
                if not all([cb.on_episode_end(self, row) for cb in self.callbacks]):
                    break
        finally:
            self.log.close()
        return RunResult(self.run_dir, [float(r["return"]) for r in self.metrics], self.metrics)

    def _fit(self) -> FitReport:
        learner = self.parts.learner
        for cb in self.callbacks:
            cb.on_fit_start(self, learner.progress_total(), self.parts.fit_description)

        def progress(step: int, train: float, val: float) -> None:
            for cb in self.callbacks:
                cb.on_fit_progress(self, step, train, val)

        try:
            return learner.fit(self.buffer, self.generator, progress=progress)
        finally:
            for cb in self.callbacks:
                cb.on_fit_finish(self)

    def _run_episode(self, episode: int) -> dict[str, Any]:
        exp, task = self.config.experiment, self.task
        start = time.perf_counter()
        random_episode = episode < exp.seed_episodes
        policy = "random" if random_episode else exp.mode
        fit_report: FitReport | None = None
        if not random_episode and (self.parts.refits_each_episode or self.last_fit is None):
            try:
                fit_report = self._fit()
                self.last_fit = fit_report
            except ModelError as exc:
                if self.last_fit is None:
                    raise  # no earlier fit to fall back to
                # the model restored its last good parameters before raising
                warnings.warn(
                    f"episode {episode + 1}: refitting {self._learner_name()} failed "
                    f"({exc}); this episode runs with its last good parameters "
                    "(fit_epochs 0 in metrics.csv)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                fit_report = FitReport()
        evaluation = {} if random_episode else self._evaluate()
        agent: Agent = self.random_agent if random_episode else self.parts.agent
        agent.reset()
        env = make_env(
            self.config.env.id,
            max_episode_steps=self.config.env.episode_length,
            discrete_ok=task.discrete_actions,
        )
        expected = self._replay
        self._replay = np.zeros((0, self.log.width), dtype=np.float32)
        matching = True
        total_reward = 0.0
        for cb in self.callbacks:
            cb.on_episode_start(self, episode, policy)
        skipped = False
        try:
            obs, _ = env.reset(seed=exp.seed * 100_003 + episode)
            for step in range(self.config.env.episode_length):
                action = agent.act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(task.env_action(action))
                if not (np.isfinite(next_obs).all() and math.isfinite(float(reward))):
                    warnings.warn(
                        f"episode {episode + 1}, step {step + 1}: the environment "
                        f"{self.config.env.id} returned a non-finite observation or reward; "
                        "that transition is skipped and the episode ends here (everything "
                        "collected before it is kept)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    skipped = True
                    break
                truncated = truncated or step == self.config.env.episode_length - 1
                batch = validate_transitions(
                    obs, action, float(reward), next_obs, terminated, truncated,
                    obs_dim=task.obs_dim, action_dim=task.action_dim,
                    action_low=task.action_low, action_high=task.action_high,
                    discrete_actions=task.discrete_actions,
                )  # fmt: skip
                row = np.concatenate(
                    [
                        batch.obs[0].numpy(),
                        batch.action[0].numpy(),
                        batch.reward.numpy(),
                        batch.next_obs[0].numpy(),
                        [float(terminated), float(truncated), float(episode)],
                    ]
                ).astype(np.float32)
                if matching and step < len(expected) and np.array_equal(row, expected[step]):
                    pass  # already in the log from before the interruption
                else:
                    if matching and step < len(expected):
                        warnings.warn(
                            f"episode {episode + 1}: transition {step} differs from the one "
                            "logged before the interruption; the logged transitions are kept "
                            "as extra data",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        self._add_rows(expected[step:])
                        matching = False
                    self.log.append(row)
                self.buffer.add_batch(batch)
                total_reward += float(reward)
                obs = next_obs
                for cb in self.callbacks:
                    cb.on_step(self, step, float(reward), total_reward)
                if terminated or truncated:
                    break
        finally:
            env.close()
            for cb in self.callbacks:
                cb.on_episode_finish(self)
        steps_done = step if skipped else step + 1
        if matching and len(expected) > steps_done:
            self._add_rows(expected[steps_done:])
        return {
            "episode": episode + 1,
            "policy": policy,
            "env_steps": len(self.buffer),
            "return": total_reward,
            "plan_seconds": agent.plan_seconds,
            "fit_seconds": fit_report.wall_seconds if fit_report else 0.0,
            "fit_epochs": fit_report.epochs if fit_report else 0,
            "train_loss": fit_report.final_train_loss if fit_report else math.nan,
            "val_loss": fit_report.best_val_loss if fit_report else math.nan,
            **evaluation,
            "episode_seconds": time.perf_counter() - start,
            "threads": self.threads,
        }

    def _evaluate(self) -> dict[str, float]:
        """Evaluation episodes of the policy just fitted (see :mod:`bayes_mbrl.evaluation`),
        when ``experiment.eval_episodes`` asks for them and the run has passed a multiple
        of ``experiment.eval_every`` steps since the last fit: ``eval_return`` and
        ``eval_std`` of the policy fitted on the ``eval_at_steps = len(buffer)`` steps
        collected so far (the episode's own steps come after it)."""
        exp = self.config.experiment
        if exp.eval_episodes <= 0:
            return {}
        before = int(self.metrics[-2]["env_steps"]) if len(self.metrics) >= 2 else 0
        if len(self.metrics) > exp.seed_episodes and not evaluation_due(
            before, len(self.buffer), exp.eval_every
        ):
            return {}
        agent = self.parts.eval_agent or self.parts.agent
        starts = [EVAL_START_SEED + i for i in range(exp.eval_episodes)]
        returns = run_episodes(agent, self.task, self.config.env.episode_length, starts)
        return {
            "eval_at_steps": len(self.buffer),
            "eval_return": float(np.mean(returns)),
            "eval_std": float(np.std(returns)),
        }

    def _learner_name(self) -> str:
        if self.parts.learner is self.parts.model:
            return f"the {self.config.model.kind} model"
        return f"the {self.config.experiment.mode} learner"

    def _add_rows(self, rows: np.ndarray) -> None:
        """Add logged rows (not re-logging them) to the buffer."""
        if len(rows) == 0:
            return
        o, a, r, no, te, tr, _ = self.log.split_row(rows)
        self.buffer.add(o, a, r, no, te, tr)

    # ------------------------------------------------------------- checkpoints
    def _write_checkpoint(self) -> None:
        fitted = self.last_fit is not None
        self.store.write_checkpoint(
            self.episodes_done,
            {
                "episodes_done": self.episodes_done,
                "num_transitions": len(self.buffer),
                # on the CPU, so that a run started on a GPU resumes on a CPU and back
                "model": state_to_cpu(self.parts.learner.state_dict()) if fitted else {},
                "model_fitted_once": fitted,
                "rng_torch": self.generator.get_state(),
                "metrics": [dict(r) for r in self.metrics],
            },
        )

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's contents (see :meth:`RunStore.read_checkpoint`)."""
        return self.store.read_checkpoint()

    def restore(self) -> None:
        """Load the newest readable checkpoint and the transitions it covers."""
        state = self.store.read_checkpoint()
        rows = self.log.read()
        if state is None:
            # killed during the first episode: start over, replaying what was logged
            self._replay = rows
            self.log.open(keep_rows=len(rows))
            return
        n = int(state["num_transitions"])
        if len(rows) < n:
            raise CheckpointError(
                f"{self.log.path} has {len(rows)} transitions but the checkpoint expects {n}; "
                "the transition log was truncated or replaced"
            )
        self._add_rows(rows[:n])
        self._replay = rows[n:]
        if state["model_fitted_once"]:
            self.parts.learner.load_state_dict(state["model"])
            self.last_fit = FitReport()
        self.generator.set_state(state["rng_torch"])
        self.metrics = [dict(r) for r in state["metrics"]]
        self.episodes_done = int(state["episodes_done"])
        self.log.open(keep_rows=len(rows))


def _capacity(config: Config) -> int:
    """Transitions a run can collect: ``episodes * episode_length``, or with a budget of
    environment steps, the budget plus one episode (the last may pass it)."""
    exp, length = config.experiment, config.env.episode_length
    most = exp.episodes * length
    if exp.max_env_steps > 0:
        most = min(most, exp.max_env_steps + length)
    return most


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; the machine's count elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads: ``threads``, or (0) the cores available to the
    process. Returns the number set.

    Several runs on one machine must share its cores: each run spinning as many
    threads as there are cores slows all of them many times over (on 2 cores, two
    runs with 2 threads each took 10-60x longer per step than one alone). Give each
    run its share (``experiment.threads = 1`` for two runs on 2 cores).
    """
    n = threads if threads > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def run_experiment(
    config: Config, run_dir: Path | str, callbacks: Sequence[Callback] = ()
) -> RunResult:
    """Run a new experiment into ``run_dir`` (which must not hold a run yet).

    Args:
        config: the resolved configuration.
        run_dir: output directory, created if needed.
        callbacks: hooks called during the run.

    Returns:
        The episode returns and metrics.
    """
    experiment = Experiment(config, Path(run_dir), callbacks)
    experiment.start()
    return experiment.run()


def resume_experiment(
    run_dir: Path | str,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    episodes: int | None = None,
    device: str | None = None,
) -> RunResult:
    """Continue an interrupted run from its newest checkpoint, or extend a finished one.

    Args:
        run_dir: a directory written by :func:`run_experiment`.
        progress: override ``experiment.progress`` (None keeps the saved value).
        callbacks: hooks called during the run.
        episodes: a new total ``experiment.episodes`` (None keeps the saved one), at
            least the saved total: the run goes on to it as if it had been started with
            it (the random state, the data and every learner's state continue from the
            checkpoint), and the run directory's ``config.toml`` records the new total.
        device: go on on this ``experiment.device`` (None keeps the saved one), e.g. a
            run started on a GPU resumed on a CPU; ``config.toml`` records it.

    Raises:
        CheckpointError: the directory holds no run or its files are inconsistent.
        ConfigError: ``episodes`` is smaller than the run's total.
    """
    config = read_run_config(run_dir)
    if progress is not None:
        config.experiment.progress = progress
    if episodes is not None:
        saved = config.experiment.episodes
        if episodes < saved:
            raise ConfigError(
                f"{run_dir} is a run of {saved} episodes; it can be extended, not shortened "
                f"(got episodes = {episodes}); its first {episodes} episodes are already in "
                "metrics.csv"
            )
        config.experiment.episodes = episodes
    if device is not None:
        config.experiment.device = device
    experiment = Experiment(config, Path(run_dir), callbacks)
    experiment.restore()
    if episodes is not None or device is not None:
        stored = read_run_config(run_dir)
        if episodes is not None:
            stored.experiment.episodes = episodes
        if device is not None:
            stored.experiment.device = device
        dump_config(stored, Path(run_dir) / CONFIG_FILE)
    return experiment.run()
