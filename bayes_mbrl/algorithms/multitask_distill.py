"""Multi-task distillation: the policies of several tasks' teachers into one student.

A *teacher* is any finished run of the runner whose agent acts on its task: a
distilled policy (``policy_distill``), SAC (``sac``), PILCO (``pilco``) or MPC
(``mpc``; every label is a plan, so slow). :func:`load_teacher` restores one and gives
its action distribution at a state (:meth:`Teacher.label`): the Gaussian of a
policy, CEM's elites, or a deterministic action with a floor as its spread.

The student :class:`MultiTaskPolicy` takes ``(observation, task)``: each task's
observation is standardized by that task's statistics and zero-padded to the widest
task, a one-hot task code is appended, and one shared network outputs the mean and
log-std of the widest action, in units of each task's half action range (each task
reads its first ``action_dim`` outputs). It is trained, as in policy distillation
(Rusu et al. 2016; the notes' "weighted log probability of the unified policy and
weights derived from different individual policies"), by the expected negative log
probability of the teachers' actions, weighted per task::

    L = sum_k w_k E_{s ~ D_k} E_{a ~ pi_k(.|s), T} [ -log pi(a | s, k) ] / sum_k w_k

which for Gaussian teachers at temperature T is the KL of
:func:`~bayes_mbrl.algorithms.policy_distill.policy_kl` plus the teachers' entropy
(a constant). Each minibatch holds ``batch_size`` labels of every task, so a task
with longer episodes does not outweigh the others.

States are gathered DAgger-style (Ross et al. 2011): in the first ``teacher_rounds``
rounds each teacher acts on its task; after them the student acts and the teachers
label the states it visits; the labels aggregate over rounds.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bayes_mbrl.algorithms.mpc import _obs_tensor
from bayes_mbrl.algorithms.policy_distill import policy_kl
from bayes_mbrl.envs import TaskSpec
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.evaluation import run_episodes
from bayes_mbrl.models.ensemble import ACTIVATIONS
from bayes_mbrl.options import OptionError, Options, at_least, greater_than, option, positive_list

__all__ = [
    "MultiTaskDistillOptions",
    "MultiTaskPolicy",
    "StudentAgent",
    "Teacher",
    "distill_tasks",
    "load_student",
    "load_teacher",
    "run_episodes",
    "write_report",
]


@dataclass
class MultiTaskDistillOptions(Options):
    """Options of :func:`distill_tasks` (``bayes-mbrl distill-tasks --set KEY=VALUE``)."""

    rounds: int = option(8, at_least(1, "an integer"), "rounds of data gathering and fitting")
    teacher_rounds: int = option(
        2, at_least(0, "an integer"), "first rounds in which the teachers act (then the student)"
    )
    episodes_per_round: int = option(
        2, at_least(1, "an integer"), "at least this many episodes per task and round"
    )
    labels_per_round: int = option(
        400,
        at_least(0, "an integer"),
        "each task runs more episodes in a round until it has added this many labels, "
        "so that tasks with short episodes get as many states as the others",
    )
    temperature: float = option(
        1.0, greater_than(0), "T: the teachers' spread is scaled by sqrt(T)"
    )
    hidden_sizes: list[int] = option([256, 256], positive_list, "the student's hidden widths")
    epochs: int = option(
        2000, at_least(1, "an integer"), "minibatch steps per round, per 1000 labels of a task"
    )
    batch_size: int = option(128, at_least(1, "an integer"), "labels of each task per minibatch")
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    min_label_std: float = option(
        0.05, greater_than(0), "floor of a teacher's action std, as a fraction of the half range"
    )
    task_weights: list[float] = option(
        [], None, "w_k per teacher, in the order given ([]: equal weights)"
    )
    eval_episodes: int = option(
        10, at_least(0, "an integer"), "evaluation episodes per task (fixed starts) at the end"
    )

    def validate(self) -> None:
        w = self.task_weights
        if any(not math.isfinite(x) or x < 0 for x in w) or (w and sum(w) <= 0):
            raise OptionError(type(self).__name__, "task_weights", w, "weights >= 0, not all 0")


# ------------------------------------------------------------------- teachers
class Teacher:
    """A finished run's agent on its task, as a source of soft labels.

    Attributes:
        run_dir: the run.
        task: its task.
        episode_length: its ``env.episode_length``.
        agent: the restored agent (its :meth:`act` is the teacher acting).
        env: the run's ``[env]`` section as a table (what builds the task again, your
            own env's entry point and functions included); empty when not known.
    """

    def __init__(
        self,
        run_dir: Path,
        task: TaskSpec,
        episode_length: int,
        agent: Any,
        env: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.task, self.episode_length, self.agent = (
            run_dir,
            task,
            episode_length,
            agent,
        )
        self.env = dict(env or {})
        self.mode = ""

    @property
    def plan_seconds(self) -> float:
        return float(getattr(self.agent, "plan_seconds", 0.0))

    def reset(self) -> None:
        self.agent.reset()

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """The teacher acting: the mean of :meth:`label`, clipped to the bounds."""
        mean, _ = self.label(_obs_tensor(obs, self.task.obs_dim))
        return torch.minimum(torch.maximum(mean, self.task.action_low), self.task.action_high)

    def label(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean, std)`` of the teacher's action at ``obs`` (std None: deterministic).

        For MPC this plans (the planner keeps its warm start along an episode).
        """
        dist = getattr(self.agent, "action_distribution", None)
        if dist is not None:
            mean, std = dist(obs)
            return mean, std
        action = self.agent.act(obs)
        plan = getattr(self.agent, "last_plan", None)
        std = None if plan is None or plan.action_std is None else plan.action_std[0]
        return action.float(), std


_TEACHER_MODES = ("policy_distill", "sac", "pilco", "mpc")


def load_teacher(run_dir: str | Path, threads: int = 1) -> Teacher:
    """Restore a finished run as a :class:`Teacher` (see the module for the modes).

    The run directory is read from a temporary copy, so nothing in it changes.

    Raises:
        ConfigError: not a run, a mode that cannot teach, or no checkpoint yet.
    """
    from bayes_mbrl.experiment import Experiment
    from bayes_mbrl.runs import read_run_config_of

    run_dir = Path(run_dir)
    config = read_run_config_of(run_dir, _TEACHER_MODES, "the teacher")
    mode = config.experiment.mode
    config.experiment.threads = threads
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run_dir, copy)
        exp = Experiment(config, copy)
        exp.restore()
        exp.log.close()
        if exp.last_fit is None:
            raise ConfigError(
                f"teacher {run_dir} has not fitted anything yet (no checkpoint after a "
                "planned episode); let the run finish first"
            )
    agent: Any = exp.parts.agent
    if mode == "policy_distill":
        agent = agent.student  # the distilled policy, not its planner
    elif mode == "sac":
        from bayes_mbrl.algorithms.sac import SACAgent

        agent = SACAgent(agent.learner, agent.obs_dim, deterministic=True)
    teacher = Teacher(run_dir, exp.task, config.env.episode_length, agent, asdict(config.env))
    teacher.mode = mode
    return teacher


# -------------------------------------------------------------------- student
class MultiTaskPolicy(nn.Module):
    """``(obs, task) -> (mean, log_std)`` in units of each task's half action range.

    Args:
        tasks: the tasks, in the order of their task index.
        hidden_sizes: hidden widths (SiLU).
    """

    obs_mean: Tensor
    obs_std: Tensor

    def __init__(self, tasks: list[TaskSpec], hidden_sizes: list[int]) -> None:
        super().__init__()
        self.tasks = tasks
        self.obs_width = max(t.obs_dim for t in tasks)
        self.action_width = max(t.action_dim for t in tasks)
        sizes = [self.obs_width + len(tasks), *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], 2 * self.action_width)
        self.register_buffer("obs_mean", torch.zeros(len(tasks), self.obs_width))
        self.register_buffer("obs_std", torch.ones(len(tasks), self.obs_width))

    def pad(self, obs: Tensor) -> Tensor:
        """``(..., obs_dim)`` -> ``(..., obs_width)`` with zeros."""
        return nn.functional.pad(obs, (0, self.obs_width - obs.shape[-1]))

    def forward(self, obs: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """``obs`` padded ``(N, obs_width)``, ``task`` indices ``(N,)``."""
        x = (obs - self.obs_mean[task]) / self.obs_std[task]
        x = torch.cat([x, nn.functional.one_hot(task, len(self.tasks)).to(x.dtype)], -1)
        for layer in self.layers:
            x = ACTIVATIONS["silu"](layer(x))
        mean, log_std = self.head(x).split(self.action_width, dim=-1)
        return mean, log_std.clamp(-7.0, 2.0)


class StudentAgent:
    """The student acting on one task: its mean, in env units, clipped to the bounds."""

    def __init__(self, policy: MultiTaskPolicy, index: int) -> None:
        self.policy, self.index = policy, index
        task = policy.tasks[index]
        self.task = task
        self.mid = (task.action_high + task.action_low) / 2
        self.half = (task.action_high - task.action_low) / 2
        self.plan_seconds = 0.0

    def reset(self) -> None:
        self.plan_seconds = 0.0

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        start = time.perf_counter()
        o = self.policy.pad(_obs_tensor(obs, self.task.obs_dim))[None]
        mean, _ = self.policy(o, torch.tensor([self.index]))
        action = self.mid + self.half * mean[0, : self.task.action_dim]
        self.plan_seconds += time.perf_counter() - start
        return torch.minimum(torch.maximum(action, self.task.action_low), self.task.action_high)


class _DAggerActor:
    """Labels every visited state with the teacher's distribution (in half-range
    units), then acts with the student or, without one, with the teacher's mean."""

    def __init__(self, teacher: Teacher, floor: float) -> None:
        self.teacher, self.floor = teacher, floor
        self.student: StudentAgent | None = None
        self.rows: dict[str, list[Tensor]] = {"obs": [], "mean": [], "std": []}
        task = teacher.task
        self.mid = (task.action_high + task.action_low) / 2
        self.half = (task.action_high - task.action_low) / 2
        self.plan_seconds = 0.0

    def reset(self) -> None:
        self.teacher.reset()
        if self.student is not None:
            self.student.reset()

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        task = self.teacher.task
        o = _obs_tensor(obs, task.obs_dim)
        mean, std = self.teacher.label(o)
        mean = torch.minimum(torch.maximum(mean.float(), task.action_low), task.action_high)
        floor = torch.full_like(mean, self.floor)
        s = floor if std is None else torch.maximum(std.float() / self.half, floor)
        self.rows["obs"].append(o.reshape(1, -1))
        self.rows["mean"].append(((mean - self.mid) / self.half).reshape(1, -1))
        self.rows["std"].append(s.reshape(1, -1))
        return mean if self.student is None else self.student.act(o)

    def tensors(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.rows.items()}


# ---------------------------------------------------------------- distilling
def distill_tasks(
    teachers: list[Teacher],
    options: MultiTaskDistillOptions | None = None,
    seed: int = 0,
    log: Any = None,
) -> tuple[MultiTaskPolicy, dict[str, Any]]:
    """Distil the teachers into one :class:`MultiTaskPolicy` (see the module).

    Returns:
        The student and a report: labels per task, the loss per round, the returns
        of the student's and the teachers' episodes per round, and (with
        ``eval_episodes``) both evaluated from the same fixed starts.

    Raises:
        ConfigError: fewer than one teacher, two teachers of one task, or a
            ``task_weights`` list of the wrong length.
    """
    opts = options or MultiTaskDistillOptions()
    if not teachers:
        raise ConfigError("distill_tasks needs at least one teacher run")
    ids = [t.task.env_id for t in teachers]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"two teachers of the same task ({ids}); give one teacher per task")
    weights = torch.tensor(opts.task_weights or [1.0] * len(teachers), dtype=torch.float32)
    if len(weights) != len(teachers):
        raise ConfigError(
            f"task_weights has {len(weights)} weights for {len(teachers)} teachers; give one "
            "per teacher, in the order of the teachers"
        )
    tasks = [t.task for t in teachers]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = MultiTaskPolicy(tasks, list(opts.hidden_sizes))
    optimizer = torch.optim.Adam(student.parameters(), lr=opts.learning_rate)
    actors = [_DAggerActor(t, opts.min_label_std) for t in teachers]
    report: dict[str, Any] = {"tasks": ids, "rounds": []}
    env_seed = 1_000_000 * seed
    data: list[dict[str, Tensor]] = []
    for rnd in range(opts.rounds):
        student_acts = rnd >= opts.teacher_rounds
        row: dict[str, Any] = {"round": rnd + 1, "actor": "student" if student_acts else "teacher"}
        for k, (teacher, actor) in enumerate(zip(teachers, actors, strict=True)):
            actor.student = StudentAgent(student, k) if student_acts else None
            start, returns = len(actor.rows["obs"]), list[float]()
            while (
                len(returns) < opts.episodes_per_round
                or len(actor.rows["obs"]) - start < opts.labels_per_round
            ):
                episode = run_episodes(actor, teacher.task, teacher.episode_length, [env_seed])
                returns += episode
                env_seed += 1
            row[f"return/{ids[k]}"] = [round(r, 1) for r in returns]
        data = [actor.tensors() for actor in actors]
        row["loss"] = _fit(student, optimizer, data, weights, opts, g)
        row["labels"] = [len(d["obs"]) for d in data]
        report["rounds"].append(row)
        if log is not None:
            log(json.dumps(row))
    report["labels"] = {ids[k]: len(d["obs"]) for k, d in enumerate(data)}
    if opts.eval_episodes:
        report["evaluation"] = evaluate(student, teachers, opts.eval_episodes)
    return student, report


def _fit(
    student: MultiTaskPolicy,
    optimizer: torch.optim.Optimizer,
    data: list[dict[str, Tensor]],
    weights: Tensor,
    opts: MultiTaskDistillOptions,
    g: torch.Generator,
) -> float:
    for k, d in enumerate(data):
        obs = d["obs"]
        width = obs.shape[-1]
        student.obs_mean[k, :width] = obs.mean(0)
        student.obs_std[k, :width] = obs.std(0, unbiased=False).clamp_min(1e-3)
    padded = [student.pad(d["obs"]) for d in data]
    largest = max(len(d["obs"]) for d in data)
    steps = max(1, round(opts.epochs * largest / 1000))
    total = 0.0
    for _ in range(steps):
        loss = torch.zeros(())
        for k, d in enumerate(data):
            rows = torch.randint(len(d["obs"]), (opts.batch_size,), generator=g)
            a = student.tasks[k].action_dim
            mean, log_std = student(padded[k][rows], torch.full((len(rows),), k))
            # the expected negative log probability of the teacher's actions at T is
            # this KL plus the teacher's entropy (a constant)
            kl = policy_kl(
                d["mean"][rows], d["std"][rows], mean[:, :a], log_std[:, :a], opts.temperature
            )
            loss = loss + weights[k] * kl.mean()
        loss = loss / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / steps


def evaluate(
    student: MultiTaskPolicy, teachers: list[Teacher], episodes: int, start_seed: int = 20_000
) -> dict[str, dict[str, Any]]:
    """Student and teacher from the same fixed starts, per task."""
    out = {}
    starts = list(range(start_seed, start_seed + episodes))
    for k, teacher in enumerate(teachers):
        task = teacher.task
        s = run_episodes(StudentAgent(student, k), task, teacher.episode_length, starts)
        t = run_episodes(teacher, task, teacher.episode_length, starts)
        sm, tm = float(np.mean(s)), float(np.mean(t))
        out[task.env_id] = {
            "student_returns": [round(r, 1) for r in s],
            "teacher_returns": [round(r, 1) for r in t],
            "student_mean": sm,
            "teacher_mean": tm,
            # within 10% of the teacher's return, for returns of either sign
            "within_10_percent": sm >= tm - 0.1 * abs(tm),
            "shortfall_fraction": (tm - sm) / abs(tm) if tm else math.nan,
        }
    return out


def write_report(
    out_dir: str | Path,
    student: MultiTaskPolicy,
    report: dict[str, Any],
    teachers: list[Teacher],
    options: MultiTaskDistillOptions,
    seed: int,
) -> None:
    """Write ``student.pt`` (weights, tasks, options), ``report.json`` and, with an
    evaluation, ``returns.png`` (student against teacher per task) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "tasks": [t.task.env_id for t in teachers],
        "envs": [t.env for t in teachers],
        "teachers": [str(t.run_dir) for t in teachers],
        "teacher_modes": [t.mode for t in teachers],
        "options": asdict(options),
        "seed": seed,
    }
    torch.save({"state_dict": student.state_dict(), **meta}, out / "student.pt")
    (out / "report.json").write_text(json.dumps({**meta, **report}, indent=1))
    evaluation = report.get("evaluation")
    if not evaluation:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(evaluation)
    fig, axes = plt.subplots(1, len(ids), figsize=(3.2 * len(ids), 3.2), squeeze=False)
    for ax, env_id in zip(axes[0], ids, strict=True):
        e = evaluation[env_id]
        ax.boxplot([e["teacher_returns"], e["student_returns"]])
        ax.set_xticks([1, 2], ["teacher", "student"])
        ax.set_title(env_id, fontsize=9)
    axes[0][0].set_ylabel("return per evaluation episode")
    fig.suptitle("multi-task student against each task's teacher (same starts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "returns.png", dpi=110)
    plt.close(fig)


def load_student(path: str | Path) -> MultiTaskPolicy:
    """The student saved by :func:`write_report` (``student.pt``).

    Each task is built from its teacher's ``[env]`` section, as the teacher's run built
    it (your own envs too: ``env.entry_point``); files written before the sections were
    saved name built-in tasks by id.
    """
    from bayes_mbrl.config import EnvConfig
    from bayes_mbrl.envs import get_task
    from bayes_mbrl.envs.custom import build_task

    state = torch.load(Path(path), weights_only=True)
    envs = state.get("envs") or [{} for _ in state["tasks"]]
    tasks = [
        build_task(EnvConfig(**env), check=False) if env else get_task(env_id)
        for env_id, env in zip(state["tasks"], envs, strict=True)
    ]
    student = MultiTaskPolicy(tasks, list(state["options"]["hidden_sizes"]))
    student.load_state_dict(state["state_dict"])
    return student
