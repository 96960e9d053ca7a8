"""Your own environment in the runner: ``env.entry_point``, the user's reward, termination
and expected-reward functions checked against the env, the learned reward model, and a
custom env (``tests/own_env/point_mass.py``, never shipped) run through the CLI, killed,
resumed to the uninterrupted result and analyzed."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import pytest
import torch
from test_experiment import SLOW_RUN  # the CLI, each MPC action 20 ms slower: time to kill it
from test_fault_injection import model_tensors  # a checkpoint's learner tensors by name

from bayes_mbrl.cli import main
from bayes_mbrl.config import EnvConfig, load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs.custom import NoRewardFunction, build_task, random_transitions
from bayes_mbrl.errors import ConfigError, DataError, EnvError
from bayes_mbrl.experiment import TransitionLog, load_run, run_experiment
from bayes_mbrl.models.ensemble import ProbabilisticEnsemble
from bayes_mbrl.models.reward import (
    LearnedRewardLearner,
    RewardModel,
    planning_reward,
    reward_model_scores,
)

FIXTURES = Path(__file__).resolve().parent / "own_env"
ENV_FILE = "point_mass.py"

TASK_TOML = """\
# a point mass on a table: an env bayes_mbrl does not ship, its reward learned
[experiment]
seed = 4
episodes = 3
seed_episodes = 1
threads = 1

[env]
id = "TestPointMass-v0"
entry_point = "point_mass.py:PointMassEnv"
episode_length = 30

[model]
num_members = 2
hidden_sizes = [16, 16]
max_epochs = 5

[planner]
horizon = 5
population = 20
iterations = 2
particles = 4
"""


def _env(env_id: str, **keys: str) -> EnvConfig:
    return EnvConfig(id=env_id, **keys)


def _fixture(name: str) -> str:
    return f"{FIXTURES / ENV_FILE}:{name}"


def _kill_once_logged(proc: subprocess.Popen[bytes], log: TransitionLog, rows: int) -> int:
    """SIGKILL ``proc`` once ``log`` holds ``rows`` transitions; the rows logged then."""
    deadline = time.monotonic() + 120
    try:
        while len(log.read()) < rows:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the run ended (or hung) before it was killed: {err}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return len(log.read())


def test_own_env_run_killed_resumed_equals_uninterrupted_then_analyzed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(FIXTURES / ENV_FILE, tmp_path / ENV_FILE)
    (tmp_path / "my_task.toml").write_text(TASK_TOML)
    monkeypatch.chdir(tmp_path)  # the TOML names the env file relative to the cwd
    assert main(["run", "my_task.toml", "--out", "ref", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reward: learned" in out
    ref = tmp_path / "ref"
    with open(ref / "metrics.csv") as f:
        steps = [int(line.split(",")[2]) for line in f.read().splitlines()[1:]]
    assert len(steps) == 3 and steps[1] > steps[0]
    # learned reward: the learner checkpoints the dynamics and the reward model
    assert any(name.startswith("model.reward.net") for name in model_tensors(ref))

    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, "run", "my_task.toml", "--out", "killed", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = TransitionLog(tmp_path / "killed" / "transitions.f32", 4, 2)
    # killed within the first planned episode
    logged = _kill_once_logged(proc, log, steps[0] + max(1, (steps[1] - steps[0]) // 2))
    assert steps[0] < logged < steps[-1], "killed after its first planned step, before the end"

    assert main(["resume", "killed", "--no-progress"]) == 0
    killed = tmp_path / "killed"
    for name in ("metrics.csv", "transitions.f32"):
        assert (killed / name).read_bytes() == (ref / name).read_bytes(), name
    ref_tensors, resumed = model_tensors(ref), model_tensors(killed)
    assert ref_tensors.keys() == resumed.keys()
    for name, value in ref_tensors.items():
        assert torch.equal(value, resumed[name]), name

    capsys.readouterr()
    assert main(["analyze", "killed"]) == 0
    out = capsys.readouterr().out
    assert "model: ensemble after 3 episodes" in out
    assert "learned reward on the held-out episode: MSE" in out
    scores = json.loads((killed / "analysis" / "reward_model.json").read_text())
    assert scores["n"] == steps[2] - steps[1]  # the last episode, which it never saw
    # the scores of the checkpointed reward model on that episode (a short run: its
    # quality is what it is; test_reward_scores_match_closed_forms checks the formulas)
    run = load_run(killed)
    assert run.reward_model is not None
    h = run.held_out
    mean, _ = run.reward_model.predict(h.obs, h.action, h.next_obs)
    assert scores["mse"] == pytest.approx(float((mean.double() - h.reward).square().mean()))
    assert 0.0 <= scores["coverage_90"] <= 1.0
    summary = (killed / "analysis" / "summary.csv").read_text()
    assert any(r.startswith("held_out,") and ",nll," in r for r in summary.splitlines())


def test_user_functions_are_loaded_checked_and_planned_with() -> None:
    task = build_task(
        _env(
            "TestPointMassFns-v0",
            entry_point=_fixture("PointMassEnv"),
            reward_fn=_fixture("reward"),
            termination_fn=_fixture("termination"),
            expected_reward_fn=_fixture("expected_reward"),
        )
    )
    assert (task.obs_dim, task.action_dim) == (4, 2)
    assert torch.equal(task.action_low, -torch.ones(2))
    assert task.reward_fn.__name__ == "reward" and task.termination_fn is not None
    model = ProbabilisticEnsemble(4, 2, num_members=2, hidden_sizes=[8])
    learner, reward_fn, note = planning_reward(model, task, _fixture("reward"))
    assert learner is model and reward_fn is task.reward_fn
    assert note == f"reward: env.reward_fn = {_fixture('reward')!r}"
    # a built-in task keeps its own spec, and says so
    pendulum = build_task(_env("Pendulum-v1"))
    assert planning_reward(model, pendulum)[2] == "reward: the built-in reward of Pendulum-v1"


def test_a_reward_fn_that_misses_the_env_is_refused_showing_both_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {"entry_point": _fixture("PointMassEnv"), "reward_fn": _fixture("reward_of_obs")}
    with pytest.raises(ConfigError) as info:
        build_task(_env("TestPointMassBad-v0", **keys))
    message = str(info.value)
    assert "does not reproduce the rewards of 'TestPointMassBad-v0'" in message
    assert "64 of 64 transitions" in message and 'env.reward_fn = ""' in message
    # each row shows the env's reward and the function's, and they are the real values
    row = message.splitlines()[1]
    env_value = float(row.split("env reward ")[1].split(",")[0])
    fn_value = float(row.split("reward_fn ")[1])
    obs = torch.tensor([float(v) for v in row.split("obs [")[1].split("]")[0].split(", ")])
    nxt = torch.tensor([float(v) for v in row.split("next_obs [")[1].split("]")[0].split(", ")])
    act = torch.tensor([float(v) for v in row.split("action [")[1].split("]")[0].split(", ")])
    cost = 0.1 * float(act.square().sum())
    assert fn_value == pytest.approx(-float(obs[:2].square().sum()) - cost, abs=1e-3)
    assert env_value == pytest.approx(-float(nxt[:2].square().sum()) - cost, abs=1e-3)
    # through the CLI: exit status 2, the same message, no run directory
    args = ["run", "--out", str(tmp_path / "run"), "--set", 'env.id="TestPointMassBad-v0"']
    for key, value in keys.items():
        args += ["--set", f'env.{key}="{value}"']
    assert main(args) == 2
    assert "does not reproduce the rewards" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_termination_fn_that_misses_the_env_is_refused() -> None:
    keys = {
        "entry_point": _fixture("PointMassEnv"),
        "termination_fn": _fixture("never_terminates"),
    }
    with pytest.raises(ConfigError, match="env terminated True, termination_fn False"):
        build_task(_env("TestPointMassTerm-v0", **keys))
    keys["termination_fn"] = _fixture("reward")
    with pytest.raises(
        ConfigError, match=re.escape("returned dtype torch.float32; expected torch.bool")
    ):
        build_task(_env("TestPointMassTerm-v0", **keys))


@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        ("missing_file.py:PointMassEnv", "file 'missing_file.py' not found"),
        (f"{FIXTURES / ENV_FILE}:PointMass", "has no class 'PointMass'; its gymnasium.Env "),
        (f"{FIXTURES / ENV_FILE}:NotAnEnv", "class 'NotAnEnv' is not a gymnasium.Env"),
        (f"{FIXTURES / ENV_FILE}:reward", "'reward' (function) is not a gymnasium.Env"),
        ("no_such_package.envs:MyEnv", "importing 'no_such_package.envs' failed"),
    ],
)
def test_entry_point_errors_name_the_problem(entry_point: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("env.entry_point")) as info:
        build_task(_env("TestPointMassErr-v0", entry_point=entry_point))
    assert message in str(info.value)


def test_entry_point_under_a_taken_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="is a built-in task"):
        build_task(_env("Pendulum-v1", entry_point=_fixture("PointMassEnv")))
    with pytest.raises(ConfigError, match="is registered already"):
        build_task(_env("Acrobot-v1", entry_point=_fixture("PointMassEnv")))
    with pytest.raises(ConfigError, match="Malformed environment ID"):
        build_task(_env("not an id", entry_point=_fixture("PointMassEnv")))
    with pytest.raises(
        ConfigError, match=re.escape("'path/to/file.py:Class' or 'package.module:Class'")
    ):
        load_config(None, ["env.entry_point=point_mass.py"])


def test_any_registered_env_and_module_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    # registered by the user's own code, run by id with functions from a module
    gymnasium.register(id="TestOwnRegistered/PointMass-v0", entry_point="point_mass:PointMassEnv")
    task = build_task(_env("TestOwnRegistered/PointMass-v0", reward_fn="point_mass:reward"))
    assert task.obs_dim == 4 and task.reward_fn.__module__ == "point_mass"
    # a package.module:Class entry point
    task = build_task(_env("TestPointMassModule-v0", entry_point="point_mass:PointMassEnv"))
    assert isinstance(task.reward_fn, NoRewardFunction)
    # an unknown id says how to register your own
    with pytest.raises(EnvError, match=re.escape("env.entry_point")):
        build_task(_env("TestNeverRegistered-v0"))


def test_without_a_reward_fn_other_modes_say_how_to_get_one() -> None:
    task = build_task(_env("TestPointMassNoReward-v0", entry_point=_fixture("PointMassEnv")))
    with pytest.raises(EnvError, match=re.escape("set env.reward_fn = 'path/to/file.py:function'")):
        task.reward_fn(torch.zeros(1, 4), torch.zeros(1, 2), torch.zeros(1, 4))
    model = ProbabilisticEnsemble(4, 2, num_members=2, hidden_sizes=[8])
    learner, reward_fn, note = planning_reward(model, task)
    assert isinstance(learner, LearnedRewardLearner) and reward_fn is learner.reward
    assert note.startswith("reward: learned")


@pytest.mark.parametrize("mode", ["mbpo", "mve", "mbpg", "policy_distill"])
def test_modes_that_need_a_reward_fn_refuse_an_env_without_one_before_the_run(
    mode: str, tmp_path: Path
) -> None:
    config = load_config(
        None,
        [
            'env.id="TestPointMassNoReward-v0"',
            f'env.entry_point="{_fixture("PointMassEnv")}"',
            f"experiment.mode={mode}",
        ],
    )
    with pytest.raises(ConfigError, match=rf"experiment.mode = '{mode}' scores imagined .*"
                       r"env\.reward_fn = 'path/to/file\.py:function'.*'mpc'"):  # fmt: skip
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_learned_reward_model_learns_the_reward_of_the_own_env() -> None:
    task = build_task(_env("TestPointMassLearn-v0", entry_point=_fixture("PointMassEnv")))
    obs, action, reward, nxt, done = random_transitions(task, 800, seed=0)
    reward = reward.float()
    buffer = ReplayBuffer(4, 2, capacity=600)
    buffer.add(obs[:600], action[:600], reward[:600], nxt[:600], done[:600], done[:600])
    model = RewardModel(4, 2, seed=0)
    model.fit(buffer, torch.Generator().manual_seed(0))
    mean, var = model.predict(obs[600:], action[600:], nxt[600:])
    held_out_mse = float((mean - reward[600:]).square().mean())
    # well below the rewards' own variance: it has learned the reward, not its mean
    assert held_out_mse < 0.05 * float(reward[600:].var())
    assert mean.shape == var.shape == (200,) and bool((var > 0).all())
    # broadcast leading dimensions, as planners call it
    assert model(obs[:3], action[:3], nxt[:3].expand(2, 3, 4)).shape == (2, 3)
    # a checkpoint round trip gives the same predictions
    copy = RewardModel(4, 2, seed=1)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy(obs[600:], action[600:], nxt[600:]), mean)


def test_reward_scores_match_closed_forms() -> None:
    """MSE, R^2, NLL and the 90% coverage of a Gaussian reward prediction, by hand."""
    reward = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mean = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64)  # one error of 2
    var = torch.full((4,), 1.0, dtype=torch.float64)
    s = reward_model_scores(mean, var, reward)
    assert s["n"] == 4 and s["mse"] == pytest.approx(1.0)
    assert s["reward_variance"] == pytest.approx(1.25) and s["r2"] == pytest.approx(0.2)
    # 3 errors of 0 and one of 2, unit variance: 0.5 log(2 pi) + mean(err^2) / 2
    assert s["nll"] == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)
    assert s["coverage_90"] == pytest.approx(0.75)  # |2| > 1.645: outside
    with pytest.raises(DataError, match="at least 2 rewards"):
        reward_model_scores(mean[:1], var[:1], reward[:1])
    with pytest.raises(DataError, match="rewards holds NaN"):
        reward_model_scores(mean, var, torch.tensor([0.0, float("nan"), 1.0, 2.0]).double())
    with pytest.raises(DataError, match="> 0"):
        reward_model_scores(mean, torch.zeros(4, dtype=torch.float64), reward)
