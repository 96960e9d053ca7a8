"""The outer loop of model-based RL: collect -> fit -> plan -> act, seeded and resumable.

A run directory holds:

- ``config.toml``: the resolved configuration;
- ``transitions.f32``: every transition, appended and flushed as it is collected
  (raw float32 rows, see :class:`TransitionLog`), so a killed run loses none;
- ``metrics.csv``: one row per episode;
- ``learning_curve.png``: return per episode;
- ``timings.csv``: wall-clock seconds per episode (kept apart: they vary);
- ``checkpoints/ckpt_NNNN.pt``: after each episode, written atomically: model and
  optimizer state, RNG state, counters and the metrics so far, serialized by
  ``torch.save`` and wrapped with its SHA-256 (:func:`save_checkpoint`). Reading
  (:func:`load_checkpoint`) uses ``torch.load(weights_only=True)`` only, so a
  crafted file cannot run code (it is refused with :class:`UnsafeCheckpointError`),
  and a truncated or corrupted file fails its checksum; the run then falls back to
  the previous checkpoint with a warning.

:func:`resume_experiment` restores the newest readable checkpoint, reloads the
transitions it covers, and re-runs the interrupted episode from the restored RNG
state. Transitions of that episode already in the log are not written twice: each
regenerated transition is compared with the logged one, and if a logged transition
cannot be reproduced it is kept in the data anyway (with a warning), so nothing
collected is lost.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import io
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bayes_mbrl import __version__
from bayes_mbrl.algorithms import MPCAgent, RandomAgent
from bayes_mbrl.algorithms.pilco import PILCO, PILCO_TASKS, PILCOAgent
from bayes_mbrl.config import Config, dump_config, load_config
from bayes_mbrl.data import ReplayBuffer, TransitionBatch, validate_transitions
from bayes_mbrl.envs import TaskSpec, get_task, make_env
from bayes_mbrl.errors import CheckpointError, ConfigError, ModelError, UnsafeCheckpointError
from bayes_mbrl.models import DynamicsModel, FitReport, ProbabilisticEnsemble
from bayes_mbrl.planning import (
    CEMPlanner,
    MPPIPlanner,
    Planner,
    RandomShootingPlanner,
    RolloutEvaluator,
    make_objective,
)

__all__ = [
    "Callback",
    "Experiment",
    "LoadedRun",
    "RunResult",
    "TransitionLog",
    "build_model",
    "build_pilco",
    "build_planner",
    "load_checkpoint",
    "load_run",
    "load_user_function",
    "resume_experiment",
    "run_experiment",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 2
"""2: a SHA-256-checked payload (:func:`save_checkpoint`); format 1 (plain) is still read."""
_READABLE_FORMATS = (1, 2)
_CHECKPOINT_KEYS = (
    "num_transitions",
    "episodes_done",
    "model",
    "model_fitted_once",
    "rng_torch",
    "metrics",
)
METRIC_FIELDS = (
    "episode",
    "policy",
    "env_steps",
    "return",
    "fit_epochs",
    "train_loss",
    "val_loss",
)
"""Columns of ``metrics.csv``: deterministic given config and seed (byte-identical
across runs and resumes on CPU)."""
TIMING_FIELDS = ("episode", "plan_seconds", "fit_seconds", "episode_seconds")
"""Columns of ``timings.csv``: wall-clock seconds, which vary from run to run."""


# ----------------------------------------------------------------------------- builders
def build_model(config: Config, obs_dim: int, action_dim: int) -> DynamicsModel:
    """The dynamics model named by ``config.model``."""
    m = config.model
    if m.kind == "ensemble":
        return ProbabilisticEnsemble(
            obs_dim,
            action_dim,
            num_members=m.num_members,
            hidden_sizes=m.hidden_sizes,
            activation=m.activation,
            learning_rate=m.learning_rate,
            weight_decay=m.weight_decay,
            batch_size=m.batch_size,
            max_epochs=m.max_epochs,
            patience=m.patience,
            val_fraction=m.val_fraction,
            seed=config.experiment.seed,
        )
    if m.kind == "bnn":
        from bayes_mbrl.models.bnn import BayesianNeuralNet

        return BayesianNeuralNet(
            obs_dim,
            action_dim,
            hidden_sizes=m.hidden_sizes,
            activation=m.activation,
            prior_scale=m.prior_scale,
            noise=m.noise,
            learning_rate=m.learning_rate,
            batch_size=m.batch_size,
            max_epochs=m.max_epochs,
            patience=m.patience,
            val_fraction=m.val_fraction,
            inference=m.inference,
            num_samples=m.num_samples,
            warmup_steps=m.warmup_steps,
            num_chains=m.num_chains,
            seed=config.experiment.seed,
            max_tree_depth=m.max_tree_depth,
        )
    if m.kind == "pyro":
        from bayes_mbrl.models.pyro_dynamics import PyroDynamics

        return PyroDynamics(
            load_user_function(m.pyro_model, "model.pyro_model"),
            obs_dim,
            action_dim,
            inference=m.inference,
            guide=m.guide,
            num_steps=m.num_steps,
            learning_rate=m.learning_rate,
            num_samples=m.num_samples,
            warmup_steps=m.warmup_steps,
            num_chains=m.num_chains,
            max_tree_depth=m.max_tree_depth,
            seed=config.experiment.seed,
        )
    if m.kind == "gp":
        from bayes_mbrl.models.gp import ExactGPDynamics

        return ExactGPDynamics(
            obs_dim,
            action_dim,
            kernel=m.kernel,
            training_steps=m.num_steps,
            learning_rate=m.learning_rate,
            num_features=m.num_features,
            max_train_points=m.max_train_points or None,
            seed=config.experiment.seed,
        )
    if m.kind == "sparse_gp":
        from bayes_mbrl.models.gp import SparseGPDynamics

        return SparseGPDynamics(
            obs_dim,
            action_dim,
            kernel=m.kernel,
            num_inducing=m.num_inducing,
            batch_size=m.batch_size,
            epochs=m.max_epochs,
            learning_rate=m.learning_rate,
            num_features=m.num_features,
            seed=config.experiment.seed,
        )
    raise ConfigError(f"unknown model.kind {m.kind!r}")


def load_user_function(spec: str, key: str) -> Callable[..., Any]:
    """Import the function named by ``path/to/file.py:function`` or ``package.module:function``.

    A file path is taken relative to the working directory. Importing runs the
    file's top-level code: point configs only at code you trust.

    Args:
        spec: where the function is.
        key: the config key it came from (for error messages).

    Raises:
        ConfigError: the file or module cannot be found or imported, or has no such
            callable.
    """
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"{key} = {spec!r}: expected 'path/to/file.py:function'")
    try:
        if target.endswith(".py") or os.sep in target or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise ConfigError(
                    f"{key} = {spec!r}: file {str(path)!r} not found (relative paths are "
                    f"taken from the working directory {os.getcwd()!r}); run from the "
                    "directory the config expects or give an absolute path"
                )
            module_name = f"bayes_mbrl_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(module_name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(module_name, path)
                if module_spec is None or module_spec.loader is None:
                    raise ConfigError(f"{key} = {spec!r}: {str(path)!r} is not a Python file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{key} = {spec!r}: importing {target!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"{key} = {spec!r}: {target!r} has no function {name!r}; its functions are {found}"
        )
    return fn


def build_planner(config: Config, task: TaskSpec, generator: torch.Generator) -> Planner:
    """The planner named by ``config.planner``."""
    p = config.planner
    if p.kind == "cem":
        return CEMPlanner(
            task.action_low,
            task.action_high,
            p.horizon,
            p.population,
            p.iterations,
            p.elite_fraction,
            p.momentum,
            generator=generator,
        )
    if p.kind == "mppi":
        return MPPIPlanner(
            task.action_low,
            task.action_high,
            p.horizon,
            p.population,
            p.iterations,
            temperature=p.mppi_temperature,
            noise_std=p.mppi_noise_std,
            generator=generator,
        )
    if p.kind == "random_shooting":
        return RandomShootingPlanner(
            task.action_low, task.action_high, p.horizon, p.population, p.iterations, generator
        )
    raise ConfigError(f"unknown planner.kind {p.kind!r}")


def build_evaluator(
    config: Config, model: DynamicsModel, task: TaskSpec, generator: torch.Generator
) -> RolloutEvaluator:
    """The rollout evaluator named by ``config.planner``."""
    p = config.planner
    return RolloutEvaluator(
        model,
        task.reward_fn,
        p.horizon,
        particles=p.particles,
        propagation=p.propagation,
        objective=make_objective(p.objective, p.risk_beta, p.cvar_alpha),
        termination_fn=task.termination_fn,
        precision=p.precision,
        generator=generator,
        expected_reward_fn=task.expected_reward_fn,
    )


def build_pilco(config: Config, task: TaskSpec, generator: torch.Generator) -> PILCOAgent:
    """PILCO for ``config.env.id`` (``experiment.mode = "pilco"``).

    The prediction horizon is ``env.episode_length``; the GP settings come from the
    ``model`` section, the policy search's from the ``pilco`` section.

    Raises:
        ConfigError: PILCO has no task description for the environment.
    """
    if config.env.id not in PILCO_TASKS:
        raise ConfigError(
            f"experiment.mode = 'pilco' needs a PILCO task description (angles, start "
            f"distribution, saturating cost) for env.id = {config.env.id!r}; known: "
            f"{sorted(PILCO_TASKS)} (add one to bayes_mbrl.algorithms.pilco.PILCO_TASKS)"
        )
    m, p = config.model, config.pilco
    ptask = dataclasses.replace(PILCO_TASKS[config.env.id], horizon=config.env.episode_length)
    pilco = PILCO(
        ptask,
        task.action_low,
        task.action_high,
        policy=p.policy,
        num_basis=p.num_basis,
        gp_steps=m.num_steps,
        gp_learning_rate=m.learning_rate,
        max_points=m.max_train_points or None,
        opt_iterations=p.opt_iterations,
        generator=generator,
    )
    return PILCOAgent(pilco)


class _Learner(Protocol):
    """What the runner fits after each episode and checkpoints: a dynamics model
    (MPC modes) or a policy learner with its own model (PILCO)."""

    def fit(self, data: ReplayBuffer, generator: torch.Generator | None = None) -> FitReport: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ------------------------------------------------------------------------ persistence
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain containers) atomically with its SHA-256.

    The file is ``torch.save({"format_version", "sha256", "payload"})`` where
    ``payload`` is ``torch.save(state)`` as bytes: loadable with
    ``torch.load(weights_only=True)`` at both levels.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapper = {
        "format_version": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    out = io.BytesIO()
    torch.save(wrapper, out)
    _atomic_write_bytes(Path(path), out.getvalue())


def _safe_torch_load(data: bytes | Path, path: Path) -> Any:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return torch.load(source, weights_only=True)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler names the global a crafted file tries to import
        culprit = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if culprit:
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects that would run code when loaded "
                f"({culprit[0][:200]}); bayes_mbrl loads checkpoints with weights_only=True "
                "and refused it. Delete the file unless you trust and know its origin"
            ) from exc
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from exc
    except Exception as exc:  # torch raises RuntimeError / EOFError / zip errors
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or ['no message'])[0][:200]}); it is truncated or "
            "corrupted"
        ) from exc


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a format-1 file).

    Raises:
        UnsafeCheckpointError: the file would execute code when unpickled.
        CheckpointError: the file is truncated or corrupted (unreadable, or its
            SHA-256 does not match), or of an unknown format.
    """
    path = Path(path)
    outer = _safe_torch_load(path, path)
    if not isinstance(outer, dict) or outer.get("format_version") not in _READABLE_FORMATS:
        version = outer.get("format_version") if isinstance(outer, dict) else None
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this bayes_mbrl reads "
            f"{list(_READABLE_FORMATS)}"
        )
    if outer["format_version"] == 1:
        return dict(outer)
    payload = outer.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path} fails its SHA-256 check; the file is corrupted")
    state = _safe_torch_load(payload, path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    return state


class TransitionLog:
    """Append-only file of transitions, one float32 row each, flushed per row.

    Row layout: ``obs (obs_dim) | action (action_dim) | reward | next_obs (obs_dim) |
    terminated | truncated | episode``. A partly written last row (a kill during
    the write) is ignored on reading and cut off before appending.

    Args:
        path: the file.
        obs_dim: observation size.
        action_dim: action size.
    """

    def __init__(self, path: Path, obs_dim: int, action_dim: int) -> None:
        self.path, self.obs_dim, self.action_dim = path, obs_dim, action_dim
        self.width = 2 * obs_dim + action_dim + 4
        self._file: io.BufferedWriter | None = None

    def read(self) -> np.ndarray:
        """All complete rows, ``(rows, width)`` float32."""
        if not self.path.exists():
            return np.zeros((0, self.width), dtype=np.float32)
        raw = np.fromfile(self.path, dtype=np.float32)
        rows = raw.size // self.width
        return raw[: rows * self.width].reshape(rows, self.width)

    def open(self, keep_rows: int) -> None:
        """Open for appending after the first ``keep_rows`` complete rows."""
        size = keep_rows * self.width * 4
        mode = "r+b" if self.path.exists() else "wb"
        f = open(self.path, mode)  # kept open for the run
        f.truncate(size)
        f.seek(size)
        self._file = f  # type: ignore[assignment]

    def append(self, row: np.ndarray) -> None:
        """Write and flush one row."""
        assert self._file is not None, "TransitionLog.open() first"
        self._file.write(row.astype(np.float32).tobytes())
        self._file.flush()

    def close(self) -> None:
        """Close the file (fsync first)."""
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def split_row(self, row: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(obs, action, reward, next_obs, terminated, truncated, episode)`` of a row or rows."""
        d, a = self.obs_dim, self.action_dim
        return (
            row[..., :d],
            row[..., d : d + a],
            row[..., d + a],
            row[..., d + a + 1 : 2 * d + a + 1],
            row[..., 2 * d + a + 1] > 0.5,
            row[..., 2 * d + a + 2] > 0.5,
            row[..., 2 * d + a + 3],
        )


# --------------------------------------------------------------------------- callbacks
class Callback:
    """Hooks into the loop (SB3 style): public ``on_*`` call the private ``_on_*``.

    Return False from :meth:`_on_episode_end` to stop the run after that episode
    (it is checkpointed first, so ``resume`` continues from there).
    """

    def on_run_start(self, experiment: Experiment) -> None:
        """Called once before the first episode of this process."""
        self._on_run_start(experiment)

    def on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        """Called after each episode with its metrics row; False stops the run."""
        return self._on_episode_end(experiment, row)

    def _on_run_start(self, experiment: Experiment) -> None:
        return None

    def _on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        return True


class _Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


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


# -------------------------------------------------------------------------- experiment
class Experiment:
    """A seeded, resumable model-based RL run.

    Args:
        config: the resolved configuration.
        run_dir: where everything is written.
        callbacks: hooks called during the run.
    """

    def __init__(self, config: Config, run_dir: Path, callbacks: Sequence[Callback] = ()) -> None:
        if config.experiment.device != "cpu":
            raise ConfigError(
                f"experiment.device = {config.experiment.device!r} is not supported yet; "
                "set experiment.device = 'cpu'"
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.task = get_task(config.env.id)
        self.generator = torch.Generator().manual_seed(config.experiment.seed)
        self.model: DynamicsModel | None = None
        self.agent: MPCAgent | PILCOAgent
        self.learner: _Learner
        if config.experiment.mode == "pilco":
            self.agent = self.learner = build_pilco(config, self.task, self.generator)
        else:
            self.model = build_model(config, self.task.obs_dim, self.task.action_dim)
            self.planner = build_planner(config, self.task, self.generator)
            self.evaluator = build_evaluator(config, self.model, self.task, self.generator)
            self.agent = MPCAgent(self.planner, self.evaluator, config.experiment.mode)
            self.learner = self.model
        self.random_agent = RandomAgent(self.task.action_low, self.task.action_high, self.generator)
        capacity = config.experiment.episodes * config.env.episode_length
        self.buffer = ReplayBuffer(
            self.task.obs_dim,
            self.task.action_dim,
            capacity,
            self.task.action_low,
            self.task.action_high,
        )
        self.log = TransitionLog(
            self.run_dir / "transitions.f32", self.task.obs_dim, self.task.action_dim
        )
        self.metrics: list[dict[str, Any]] = []
        self.episodes_done = 0
        self.last_fit: FitReport | None = None
        self._replay: np.ndarray = np.zeros((0, self.log.width), dtype=np.float32)

    # ----------------------------------------------------------------- paths
    @property
    def checkpoint_dir(self) -> Path:
        """``run_dir/checkpoints``."""
        return self.run_dir / "checkpoints"

    def _checkpoint_path(self, episodes_done: int) -> Path:
        return self.checkpoint_dir / f"ckpt_{episodes_done:04d}.pt"

    # ----------------------------------------------------------------- running
    def start(self) -> None:
        """Create the run directory and write the resolved config (new runs only)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / "config.toml").exists():
            raise CheckpointError(
                f"{self.run_dir} already contains a run; resume it with "
                f"'bayes-mbrl resume {self.run_dir}' or choose another directory"
            )
        self.checkpoint_dir.mkdir(exist_ok=True)
        # probe the environment before anything is written, so a bad env id fails fast
        make_env(self.config.env.id).close()
        dump_config(self.config, self.run_dir / "config.toml")
        self.log.open(keep_rows=0)

    def run(self) -> RunResult:
        """Run the remaining episodes; returns when all are done or a callback stops it."""
        exp = self.config.experiment
        for cb in self.callbacks:
            cb.on_run_start(self)
        try:
            while self.episodes_done < exp.episodes:
                row = self._run_episode(self.episodes_done)
                self.episodes_done += 1
                self.metrics.append(row)
                self._write_outputs()
                if not all([cb.on_episode_end(self, row) for cb in self.callbacks]):
                    break
        finally:
            self.log.close()
        return RunResult(self.run_dir, [float(r["return"]) for r in self.metrics], self.metrics)

    def _fit(self) -> FitReport:
        m = self.config.model
        total = {"ensemble": m.max_epochs, "bnn": m.max_epochs, "gp": m.num_steps}.get(m.kind)
        if m.kind == "pyro" and m.inference == "svi":
            total = m.num_steps
        desc = "fit"
        if self.config.experiment.mode == "pilco":
            total, desc = self.config.pilco.opt_iterations, "policy search (expected cost)"
        bar = self._bar(total=total or 0, desc=desc, leave=False)

        def progress(epoch: int, train: float, val: float) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"train {train:.3f} val {val:.3f}", refresh=False)

        try:
            if "progress" in inspect.signature(self.learner.fit).parameters:
                fit: Callable[..., FitReport] = self.learner.fit
                return fit(self.buffer, self.generator, progress=progress)
            return self.learner.fit(self.buffer, self.generator)
        finally:
            if bar is not None:
                bar.close()

    def _bar(self, total: int, desc: str, leave: bool) -> _Progress | None:
        if not self.config.experiment.progress:
            return None
        from tqdm.auto import tqdm

        bar: _Progress = tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True)
        return bar

    def _run_episode(self, episode: int) -> dict[str, Any]:
        exp, task = self.config.experiment, self.task
        start = time.perf_counter()
        random_episode = episode < exp.seed_episodes
        policy = "random" if random_episode else exp.mode
        fit_report: FitReport | None = None
        if not random_episode and (self.agent.refits_each_episode or self.last_fit is None):
            try:
                fit_report = self._fit()
                self.last_fit = fit_report
            except ModelError as exc:
                if self.last_fit is None:
                    raise  # no earlier fit to fall back to
                # the model restored its last good parameters before raising
                warnings.warn(
                    f"episode {episode + 1}: refitting the {self.config.model.kind} model "
                    f"failed ({exc}); this episode runs with its last good parameters "
                    "(fit_epochs 0 in metrics.csv)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                fit_report = FitReport()
        agent: MPCAgent | PILCOAgent | RandomAgent = (
            self.random_agent if random_episode else self.agent
        )
        agent.reset()
        env = make_env(self.config.env.id, max_episode_steps=self.config.env.episode_length)
        expected = self._replay
        self._replay = np.zeros((0, self.log.width), dtype=np.float32)
        matching = True
        total_reward = 0.0
        bar = self._bar(
            total=self.config.env.episode_length,
            desc=f"episode {episode + 1}/{exp.episodes} ({policy})",
            leave=True,
        )
        skipped = False
        try:
            obs, _ = env.reset(seed=exp.seed * 100_003 + episode)
            for step in range(self.config.env.episode_length):
                action = agent.act(obs)
                action_np = action.numpy().astype(np.float32)
                next_obs, reward, terminated, truncated, _ = env.step(action_np)
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
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"return {total_reward:.1f}", refresh=False)
                if terminated or truncated:
                    break
        finally:
            env.close()
            if bar is not None:
                bar.close()
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
            "episode_seconds": time.perf_counter() - start,
        }

    def _add_rows(self, rows: np.ndarray) -> None:
        """Add logged rows (not re-logging them) to the buffer."""
        if len(rows) == 0:
            return
        o, a, r, no, te, tr, _ = self.log.split_row(rows)
        self.buffer.add(o, a, r, no, te, tr)

    # ------------------------------------------------------------- outputs
    def _write_outputs(self) -> None:
        self._write_metrics()
        self._write_checkpoint()
        self._plot()

    def _write_metrics(self) -> None:
        for name, fields in (("metrics.csv", METRIC_FIELDS), ("timings.csv", TIMING_FIELDS)):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for row in self.metrics:
                writer.writerow({k: _fmt(row[k]) for k in fields})
            _atomic_write_bytes(self.run_dir / name, buf.getvalue().encode())

    def _write_checkpoint(self) -> None:
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "bayes_mbrl_version": __version__,
            "torch_version": str(torch.__version__),
            "episodes_done": self.episodes_done,
            "num_transitions": len(self.buffer),
            "model": self.learner.state_dict() if self.last_fit is not None else {},
            "model_fitted_once": self.last_fit is not None,
            "rng_torch": self.generator.get_state(),
            "metrics": [dict(r) for r in self.metrics],
        }
        save_checkpoint(self._checkpoint_path(self.episodes_done), state)
        keep = self.config.experiment.checkpoint_keep
        for old in sorted(self.checkpoint_dir.glob("ckpt_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        episodes = [r["episode"] for r in self.metrics]
        returns = [r["return"] for r in self.metrics]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(episodes, returns, color="tab:blue", alpha=0.5)
        for random_policy, color, label in (
            (True, "tab:gray", "random"),
            (False, "tab:blue", "planned"),
        ):
            points = [
                (r["episode"], r["return"])
                for r in self.metrics
                if (r["policy"] == "random") == random_policy
            ]
            if points:
                ax.scatter(*zip(*points, strict=True), color=color, zorder=3, label=label)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("episode")
        ax.set_ylabel("return")
        method = f"{self.config.model.kind} + {self.config.planner.kind}"
        if self.config.experiment.mode == "pilco":
            method = f"GP + {self.config.pilco.policy} policy"
        ax.set_title(
            f"{self.config.env.id}, {method} ({self.config.experiment.mode}), "
            f"seed {self.config.experiment.seed}"
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        _atomic_write_bytes(self.run_dir / "learning_curve.png", buf.getvalue())

    # ------------------------------------------------------------- resuming
    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's contents (None when there is none).

        A truncated or corrupted checkpoint is skipped with a warning and the previous
        one is used.

        Raises:
            UnsafeCheckpointError: a checkpoint would run code when unpickled.
        """
        for path in sorted(self.checkpoint_dir.glob("ckpt_*.pt"), reverse=True):
            try:
                state = load_checkpoint(path)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as exc:
                warnings.warn(f"{exc}; using the previous checkpoint", RuntimeWarning, stacklevel=2)
                continue
            missing = [k for k in _CHECKPOINT_KEYS if k not in state]
            if missing:
                raise CheckpointError(
                    f"{path} is missing {missing}; it was not written by bayes_mbrl or is "
                    "damaged. Remove it to resume from the previous checkpoint"
                )
            return state
        return None

    def restore(self) -> None:
        """Load the newest readable checkpoint and the transitions it covers."""
        state = self.read_checkpoint()
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
            self.learner.load_state_dict(state["model"])
            self.last_fit = FitReport()
        self.generator.set_state(state["rng_torch"])
        self.metrics = [dict(r) for r in state["metrics"]]
        self.episodes_done = int(state["episodes_done"])
        self.log.open(keep_rows=len(rows))


@dataclass
class LoadedRun:
    """A run's fitted model and its data, for analysis (``bayes-mbrl analyze``).

    Attributes:
        config: the run's configuration.
        model: the model of the newest readable checkpoint.
        train: transitions of every episode before the last one.
        held_out: transitions of the last finished episode; the checkpointed
            model was fitted before it was collected, so they are unseen data.
        episodes_done: episodes finished at that checkpoint.
    """

    config: Config
    model: DynamicsModel
    train: TransitionBatch
    held_out: TransitionBatch
    episodes_done: int


def load_run(run_dir: Path | str) -> LoadedRun:
    """Load a run directory's newest fitted model and split its transitions for analysis.

    Args:
        run_dir: a directory written by :func:`run_experiment`.

    Raises:
        CheckpointError: not a run directory, no readable checkpoint, or no model
            fitted yet (only random episodes so far).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} has no config.toml; it is not a bayes_mbrl run directory")
    config = load_config(config_path)
    config.experiment.progress = False
    if config.experiment.mode == "pilco":
        raise CheckpointError(
            f"{run_dir} is a PILCO run: its GP models state deltas in PILCO's angle "
            "coordinates, not the observation-to-observation dynamics that analyze "
            "reports on; analyze runs of the MPC modes"
        )
    experiment = Experiment(config, run_dir)
    assert experiment.model is not None
    state = experiment.read_checkpoint()
    if state is None:
        raise CheckpointError(
            f"{run_dir} has no readable checkpoint yet; let the run finish an episode first"
        )
    if not state["model_fitted_once"]:
        raise CheckpointError(
            f"{run_dir}: no model has been fitted yet (only random episodes so far); "
            "analyze the run after its first planned episode"
        )
    model = experiment.model
    model.load_state_dict(state["model"])
    rows = experiment.log.read()[: int(state["num_transitions"])]
    o, a, r, no, te, tr, ep = experiment.log.split_row(rows)
    last = ep == ep.max()

    def batch(mask: np.ndarray) -> TransitionBatch:
        return TransitionBatch(
            torch.from_numpy(o[mask].copy()),
            torch.from_numpy(a[mask].copy()),
            torch.from_numpy(r[mask].copy()),
            torch.from_numpy(no[mask].copy()),
            torch.from_numpy(te[mask].copy()),
            torch.from_numpy(tr[mask].copy()),
        )

    return LoadedRun(config, model, batch(~last), batch(last), state["episodes_done"])


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


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
    run_dir: Path | str, progress: bool | None = None, callbacks: Sequence[Callback] = ()
) -> RunResult:
    """Continue an interrupted run from its newest checkpoint.

    Args:
        run_dir: a directory written by :func:`run_experiment`.
        progress: override ``experiment.progress`` (None keeps the saved value).
        callbacks: hooks called during the run.

    Raises:
        CheckpointError: the directory holds no run or its files are inconsistent.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} has no config.toml; it is not a bayes_mbrl run directory")
    config = load_config(config_path)
    if progress is not None:
        config.experiment.progress = progress
    experiment = Experiment(config, run_dir, callbacks)
    experiment.restore()
    return experiment.run()
