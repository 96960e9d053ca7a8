"""DQN and Dyna-DQN (stable-baselines3's DQN, real and imagined data) on discrete
actions in the runner."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import DYNA_DQN, assert_resumes_like_uninterrupted

from bayes_mbrl.algorithms.dqn import DQNLearner, DQNOptions, make_dqn
from bayes_mbrl.config import load_config
from bayes_mbrl.envs import TaskSpec
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import run_experiment


def test_dyna_dqn_run_resumes_like_the_uninterrupted_one(tmp_path: Path) -> None:
    ref = assert_resumes_like_uninterrupted(load_config(None, DYNA_DQN, seed=0), tmp_path)
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    assert rows[0]["policy"] == "random" and rows[1]["policy"] == "dyna_dqn"
    transitions = torch.from_numpy(np.fromfile(ref / "transitions.f32", dtype="float32"))
    transitions = transitions.view(-1, 4 + 2 + 1 + 4 + 3)  # obs, one-hot action, r, next, flags
    actions = transitions[:, 4:6]
    assert bool(((actions == 0) | (actions == 1)).all()) and bool((actions.sum(-1) == 1).all())


def test_plain_dqn_runs_and_the_modes_refuse_the_wrong_action_space(tmp_path: Path) -> None:
    dqn = [
        s.replace("dyna_dqn.", "dqn.")
        for s in DYNA_DQN
        if not s.startswith(("model.", "dyna_dqn.r"))
    ]
    dqn = [s.replace("mode=dyna_dqn", "mode=dqn") for s in dqn if "refit" not in s]
    result = run_experiment(load_config(None, dqn, seed=0), tmp_path / "dqn")
    assert len(result.returns) == 5
    with pytest.raises(
        ConfigError, match=r"experiment.mode = 'dqn' acts in discrete action spaces only"
    ):
        run_experiment(
            load_config(None, ["experiment.mode=dqn", "experiment.episodes=1"]), tmp_path / "x"
        )
    with pytest.raises(
        ConfigError,
        match=r"'CartPole-v1' has discrete actions \(Discrete\(2\)\); experiment.mode = 'mpc' .*"
        r"one of \['dqn', 'dyna_dqn', 'mcts'\]",
    ):
        run_experiment(
            load_config(None, ["env.id=CartPole-v1", "experiment.episodes=1"]), tmp_path / "y"
        )


def _chain() -> TaskSpec:
    # a 1-D chain: action 1 moves right by 1, action 0 stays; reward 1 on reaching x >= 3
    return TaskSpec(
        "Chain-v0", 1, 2, 0.0, 1.0,
        reward_fn=lambda o, a, n: (n[..., 0] >= 3).float(),
        termination_fn=lambda o, a, n: n[..., 0] >= 3,
        discrete_actions=True,
    )  # fmt: skip


def test_dqn_learner_fits_the_q_values_of_a_known_chain() -> None:
    from bayes_mbrl.data import ReplayBuffer

    task = _chain()
    buf = ReplayBuffer(1, 2, 64, task.action_low, task.action_high, discrete_actions=True)
    for x in range(3):
        for a in (0, 1):
            nxt = x + a
            buf.add([float(x)], a, float(nxt >= 3), [float(nxt)], nxt >= 3, False)
    opts = DQNOptions(hidden_sizes=[32], learning_rate=3e-3, batch_size=6, gamma=0.5,
                      updates_per_step=400, target_update_every=50)  # fmt: skip
    learner = DQNLearner(make_dqn(task, opts, 0), opts, 0)
    learner.fit(buf)
    q = learner.q_values(torch.tensor([[0.0], [1.0], [2.0]]))
    # Q*(x, right) = 0.5^(2 - x), Q*(x, stay) = 0.5 * Q*(x, right)
    expected = torch.tensor([[0.125, 0.25], [0.25, 0.5], [0.5, 1.0]])
    assert torch.allclose(q, expected, atol=0.05), q
    assert learner.updates == 2400


def test_a_budget_of_environment_steps_ends_the_run(tmp_path: Path) -> None:
    dqn = [s for s in DYNA_DQN if not s.startswith(("model.", "dyna_dqn."))]
    dqn = [
        s.replace("mode=dyna_dqn", "mode=dqn").replace("episodes=5", "episodes=500") for s in dqn
    ]
    result = run_experiment(
        load_config(None, [*dqn, "experiment.max_env_steps=100"]), tmp_path / "b"
    )
    steps = [int(r["env_steps"]) for r in result.metrics]
    assert steps[-2] < 100 <= steps[-1] and len(steps) < 500
