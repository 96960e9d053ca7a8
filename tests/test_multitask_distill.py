"""Multi-task distillation (:mod:`bayes_mbrl.algorithms.multitask_distill`).

* one student with a task input reproduces two teachers of different tasks (different
  observation sizes and action ranges) and, on MountainCarContinuous, the teacher's
  return from the same starts;
* the task input decides the action: the same observation gets each teacher's action;
* teachers restored from runs label with their own distributions (SAC's squashed
  Gaussian); the CLI writes a student that reloads to the same actions;
* bad input (a temperature <= 0, two teachers of one task, weights of the wrong
  length, a directory that is not a run) is a clear error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import SAC

from bayes_mbrl.algorithms.multitask_distill import (
    MultiTaskDistillOptions,
    MultiTaskPolicy,
    StudentAgent,
    Teacher,
    distill_tasks,
    load_student,
    load_teacher,
)
from bayes_mbrl.cli import main
from bayes_mbrl.config import load_config
from bayes_mbrl.envs import get_task
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.options import OptionError


class _Fixed:
    """A deterministic policy ``act(obs) = f(obs)``."""

    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self.f = f
        self.plan_seconds = 0.0

    def reset(self) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.f(obs)


def _pendulum_teacher() -> Teacher:
    # a smooth damping controller in [-2, 2]
    def f(o: torch.Tensor) -> torch.Tensor:
        return (2.0 * torch.tanh(-1.5 * o[..., 1:2] - 0.4 * o[..., 2:3])).reshape(1)

    return Teacher(Path("pendulum-teacher"), get_task("Pendulum-v1"), 60, _Fixed(f))


def _mountain_car_teacher() -> Teacher:
    # pump energy: push the way the car moves (reaches the flag in about 100 steps)
    def f(o: torch.Tensor) -> torch.Tensor:
        return torch.tanh(200.0 * o[..., 1:2]).reshape(1)

    return Teacher(Path("car-teacher"), get_task("MountainCarContinuous-v0"), 200, _Fixed(f))


@pytest.fixture(scope="module")
def distilled() -> tuple[object, dict[str, object], list[Teacher]]:
    torch.set_num_threads(1)
    teachers = [_pendulum_teacher(), _mountain_car_teacher()]
    opts = MultiTaskDistillOptions(
        rounds=3,
        teacher_rounds=1,
        episodes_per_round=2,
        labels_per_round=0,
        hidden_sizes=[64, 64],
        eval_episodes=3,
    )
    student, report = distill_tasks(teachers, opts, seed=0)
    return student, report, teachers


def test_student_reproduces_both_teachers(distilled) -> None:  # type: ignore[no-untyped-def]
    student, report, teachers = distilled
    assert report["labels"]["Pendulum-v1"] == 3 * 2 * 60
    # the teachers acted in round 1, the student in rounds 2-3 (DAgger)
    assert [r["actor"] for r in report["rounds"]] == ["teacher", "student", "student"]
    g = torch.Generator().manual_seed(5)
    for k, teacher in enumerate(teachers):
        task = teacher.task
        agent = StudentAgent(student, k)
        if k == 0:
            th = torch.rand(200, generator=g) * 2 * math.pi
            w = torch.randn(200, generator=g) * 2
            states = torch.stack([th.cos(), th.sin(), w], -1)
        else:
            pos = torch.rand(200, generator=g) * 1.0 - 1.0
            vel = (torch.rand(200, generator=g) - 0.5) * 0.1
            states = torch.stack([pos, vel], -1)
            states = states[vel.abs() > 0.01]  # away from the switch at v = 0
        err = torch.stack([agent.act(s) - teacher.act(s) for s in states]).abs()
        half = float((task.action_high - task.action_low)[0]) / 2
        assert float(err.median()) < 0.05 * half, (task.env_id, float(err.median()))
    car = report["evaluation"]["MountainCarContinuous-v0"]
    assert car["teacher_mean"] > 80 and car["within_10_percent"], car


def test_the_task_input_chooses_the_teacher(distilled) -> None:  # type: ignore[no-untyped-def]
    student, _, _ = distilled
    # a Pendulum state padded, read as both tasks: the two heads act differently
    obs = student.pad(torch.tensor([[0.0, 1.0, 0.0]]))
    with torch.no_grad():
        pend, _ = student(obs, torch.tensor([0]))
        car, _ = student(obs, torch.tensor([1]))
    assert pend[0, 0] < -0.8  # the pendulum teacher pushes -2 at sin(theta) = 1
    assert abs(float(pend[0, 0] - car[0, 0])) > 0.3


SAC_TINY = [*SAC, "experiment.episodes=3"]


def test_cli_distils_a_sac_run_and_the_student_reloads(tmp_path: Path) -> None:
    run_dir = tmp_path / "sac"
    run_experiment(load_config(None, SAC_TINY, seed=0), run_dir)
    teacher = load_teacher(run_dir)
    assert teacher.mode == "sac" and teacher.task.env_id == "Pendulum-v1"
    mean, std = teacher.label(torch.tensor([1.0, 0.0, 0.0]))
    assert mean.shape == (1,) and std is not None and bool((std > 0).all())
    assert bool((mean.abs() <= 2.0).all())
    out = tmp_path / "student"
    sets = ["rounds=2", "episodes_per_round=1", "eval_episodes=2", "hidden_sizes=[16]"]
    sets.append("labels_per_round=30")  # 25-step episodes: 2 per round
    args = [str(run_dir), "--out", str(out), *[x for s in sets for x in ("--set", s)]]
    assert main(["distill-tasks", *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == ["Pendulum-v1"] and report["teacher_modes"] == ["sac"]
    assert report["labels"]["Pendulum-v1"] == 2 * 2 * 25
    assert [len(r["return/Pendulum-v1"]) for r in report["rounds"]] == [2, 2]
    assert (out / "returns.png").stat().st_size > 0
    student = load_student(out / "student.pt")
    obs = torch.tensor([0.3, -0.9, 1.0])
    saved = torch.load(out / "student.pt", weights_only=True)
    assert saved["options"]["hidden_sizes"] == [16]
    assert saved["envs"][0]["id"] == "Pendulum-v1"  # the teacher's [env] section
    a = StudentAgent(student, 0).act(obs)
    assert np.isfinite(a.numpy()).all()


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="temperature"):
        MultiTaskDistillOptions(temperature=0.0)
    with pytest.raises(OptionError, match="task_weights"):
        MultiTaskDistillOptions(task_weights=[0.0, 0.0])
    p = _pendulum_teacher()
    with pytest.raises(ConfigError, match="two teachers of the same task"):
        distill_tasks([p, _pendulum_teacher()])
    with pytest.raises(ConfigError, match="task_weights has 1 weights for 2 teachers"):
        distill_tasks([p, _mountain_car_teacher()], MultiTaskDistillOptions(task_weights=[1.0]))
    with pytest.raises(ConfigError, match="not a run directory"):
        (tmp_path / "empty").mkdir()
        load_teacher(tmp_path / "empty")
    assert main(["distill-tasks", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["distill-tasks", "x", "--out", "o", "--set", "temperature=-1"]) == 2


def test_a_student_of_your_own_env_reloads_from_its_env_section(tmp_path: Path) -> None:
    """student.pt keeps each teacher's [env] section, so a task registered by
    env.entry_point is built again on load (not looked up among the built-in ids)."""
    import dataclasses

    from bayes_mbrl.config import EnvConfig
    from bayes_mbrl.envs.custom import build_task

    fixture = Path(__file__).parent / "own_env" / "point_mass.py"
    env = EnvConfig(
        id="TestPointMassStudent-v0",
        entry_point=f"{fixture}:PointMassEnv",
        reward_fn=f"{fixture}:reward",
    )
    tasks = [build_task(env, check=False), get_task("Pendulum-v1")]
    student = MultiTaskPolicy(tasks, [8])
    pendulum = dataclasses.asdict(EnvConfig(id="Pendulum-v1"))
    torch.save(
        {
            "state_dict": student.state_dict(),
            "tasks": [t.env_id for t in tasks],
            "envs": [dataclasses.asdict(env), pendulum],
            "options": {"hidden_sizes": [8]},
        },
        tmp_path / "student.pt",
    )
    loaded = load_student(tmp_path / "student.pt")
    assert [t.env_id for t in loaded.tasks] == ["TestPointMassStudent-v0", "Pendulum-v1"]
    assert loaded.tasks[0].obs_dim == tasks[0].obs_dim
    obs = torch.zeros(tasks[0].obs_dim)
    for a, b in zip(student.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.isfinite(StudentAgent(loaded, 0).act(obs).numpy()).all()
