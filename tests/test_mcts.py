"""MCTS (UCT over posterior function draws): known values on small MDPs, the true and a
learned Dyna maze, one tree per function, errors, and the ``mcts`` mode in the runner."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import assert_resumes_like_uninterrupted
from torch import Tensor

from bayes_mbrl.algorithms.dyna import run_episodes, value_iteration
from bayes_mbrl.algorithms.mcts import GoalReached, TabularMCTSAgent
from bayes_mbrl.config import load_config
from bayes_mbrl.envs import get_task
from bayes_mbrl.envs.dyna_maze import MazeDynamics, MazeLayout, shortest_path_length
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.models.tabular import TabularFunctions
from bayes_mbrl.options import OptionError
from bayes_mbrl.planning.mcts import MCTSOptions, MCTSPlanner


class Tables:
    """Known tabular dynamics as a function source: ``p (F, S, A, S)``, one table per
    drawn function (every search draws exactly these ``F``)."""

    def __init__(self, p: Tensor) -> None:
        self.p = p.double()
        self.obs_dim, self.action_dim = p.shape[1], p.shape[2]

    def sample_functions(
        self, n: int, generator: torch.Generator | None = None
    ) -> TabularFunctions:
        assert n == self.p.shape[0], f"drew {n} functions, the test knows {self.p.shape[0]}"
        return TabularFunctions(self.p, torch.zeros(self.p.shape[:-1]))


def _one_hot(i: int, n: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), n).float()


def _chain(n: int = 5, success: float = 0.8) -> Tensor:
    """``(S, 2, S)``: action 1 moves right with probability ``success`` (else stays),
    action 0 moves left; the last state is the goal."""
    p = torch.zeros(n, 2, n, dtype=torch.float64)
    for s in range(n):
        p[s, 0, max(s - 1, 0)] = 1.0
        p[s, 1, min(s + 1, n - 1)] += success
        p[s, 1, s] += 1.0 - success
    return p


@pytest.mark.parametrize("backup", ["max", "mean"])
def test_root_values_approach_the_true_q_values_of_a_stochastic_chain(backup: str) -> None:
    n, gamma = 5, 0.9
    p = _chain(n)
    goal = GoalReached(n - 1), GoalReached(n - 1, terminal=True)
    terminal = torch.zeros(n, dtype=torch.bool)
    terminal[n - 1] = True
    q_true = value_iteration(p, p[:, :, n - 1], terminal, gamma, iterations=1000)[1]
    planner = MCTSPlanner(
        Tables(p[None]), *goal, functions=1, simulations=1500, gamma=gamma, outcomes=400,
        rollout_depth=5, max_depth=30, backup=backup, batch=1,
    )  # fmt: skip
    result = planner.plan(_one_hot(1, n), torch.Generator().manual_seed(0))
    if backup == "max":  # Bellman backups: every action's value
        torch.testing.assert_close(result.values.double(), q_true, atol=0.04, rtol=0)
    else:  # means of returns: the best action's (a rarely tried one's lags behind)
        assert abs(float(result.values[1]) - float(q_true[1])) < 0.04
        assert float(result.values[0]) < float(q_true[0]) + 0.04
    assert int(result.index) == 1  # right
    assert result.visits.shape == (1, 2) and float(result.visits[0, 1]) > float(result.visits[0, 0])


def test_outcomes_are_sampled_and_weighted_in_a_one_step_bandit() -> None:
    # from state 0, action 0 wins (state 1) with probability 0.3, action 1 with 0.6
    p = torch.zeros(3, 2, 3, dtype=torch.float64)
    p[:, 0, 1], p[:, 0, 2] = 0.3, 0.7
    p[:, 1, 1], p[:, 1, 2] = 0.6, 0.4
    win = GoalReached(1)

    def ends(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs.argmax(-1) >= 1

    planner = MCTSPlanner(
        Tables(p[None]), win, ends, functions=1, simulations=20, outcomes=1000, backup="max"
    )
    result = planner.plan(_one_hot(0, 3), torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.values, torch.tensor([0.3, 0.6]), atol=0.05, rtol=0)
    assert int(result.index) == 1


def test_each_function_has_its_own_tree_and_the_decision_averages_them() -> None:
    # state 0 -> goal (1) or trap (2); functions 0 and 2 say action 0 wins, function 1 says 1
    p = torch.zeros(3, 3, 2, 3, dtype=torch.float64)
    p[:, :, :, 2] = 1.0
    for f, winning in enumerate([0, 1, 0]):
        p[f, 0, winning] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    win = GoalReached(1)

    def ends(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs.argmax(-1) >= 1

    planner = MCTSPlanner(Tables(p), win, ends, functions=3, simulations=8)
    result = planner.plan(_one_hot(0, 3), torch.Generator().manual_seed(0))
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(result.function_values, expected)
    torch.testing.assert_close(result.values, torch.tensor([2 / 3, 1 / 3]))
    assert int(result.index) == 0 and result.action.tolist() == [1.0, 0.0]


def _true_maze(maze: MazeDynamics) -> Tables:
    return Tables(maze.transition_probabilities()[None])


def test_true_dyna_maze_is_walked_by_shortest_paths_from_cells_near_the_goal() -> None:
    maze, gamma = MazeDynamics("dyna"), 0.95
    p = maze.transition_probabilities()
    terminal = torch.zeros(maze.num_states, dtype=torch.bool)
    terminal[maze.goal] = True
    q = value_iteration(p, p[:, :, maze.goal], terminal, gamma, iterations=500)
    v = q.max(-1).values
    planner = MCTSPlanner(
        _true_maze(maze), GoalReached(maze.goal), GoalReached(maze.goal, terminal=True),
        functions=1, simulations=200, gamma=gamma, rollout_depth=10, exploration=2.0,
        backup="max",
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    walls = {maze.layout.cell(w) for w in maze.layout.walls}
    near = [s for s in range(maze.num_states) if s not in walls and gamma**5 < v[s] < 1.0]
    assert len(near) >= 10  # every cell within 5 steps
    for s in near:
        a = int(planner.plan(_one_hot(s, maze.num_states), gen).index)
        assert q[s, a] >= v[s] - 1e-9, f"cell {divmod(s, 9)}: action {a}, Q {q[s].tolist()}"
    # a walk from 7 steps away takes 7 steps
    cell = maze.layout.cell((3, 4))
    assert abs(float(v[cell]) - gamma**6) < 1e-9
    steps = 0
    while cell != maze.goal and steps < 20:
        cell = int(maze.table()[cell, planner.plan(_one_hot(cell, maze.num_states), gen).index])
        steps += 1
    assert steps == 7


def test_a_learned_tabular_model_finds_the_shortest_path_of_a_small_maze() -> None:
    layout = MazeLayout(3, 4, start=(2, 0), goal=(0, 3), walls=frozenset({(1, 1), (1, 2)}))
    maze = MazeDynamics(layout)
    gen = torch.Generator().manual_seed(0)
    agent = TabularMCTSAgent.for_maze(
        maze, num_runs=2, prior_count=0.1, simulations=100, functions=4, outcomes=4,
        rollout_depth=10, generator=gen,
    )  # fmt: skip
    steps = run_episodes(agent, maze, episodes=6, generator=gen)
    assert steps.shape == (2, 6)
    assert bool((steps[:, -2:] == shortest_path_length(layout)).all()), steps.tolist()
    # it learned the walls: the counts hold the real moves it made
    assert float(agent.models[0].counts.sum()) == float(steps[0].sum())


def test_searches_repeat_with_the_same_seed() -> None:
    maze = MazeDynamics("dyna", slip=0.2)
    planner = MCTSPlanner(
        _true_maze(maze), GoalReached(maze.goal), GoalReached(maze.goal, terminal=True),
        functions=1, simulations=40, outcomes=4, rollout_depth=5, backup="max",
    )  # fmt: skip
    obs = _one_hot(maze.start, maze.num_states)
    a = planner.plan(obs, torch.Generator().manual_seed(3))
    b = planner.plan(obs, torch.Generator().manual_seed(3))
    assert torch.equal(a.values, b.values) and torch.equal(a.visits, b.visits)


def test_bad_settings_and_inputs_raise_clear_errors() -> None:
    maze = MazeDynamics("dyna")
    source, win = _true_maze(maze), GoalReached(maze.goal)
    with pytest.raises(OptionError, match=r"MCTSPlanner: simulations = 0 .*an integer >= 1"):
        MCTSPlanner(source, win, simulations=0)
    with pytest.raises(OptionError, match=r"backup = 'maxx'.*did you mean 'max'"):
        MCTSPlanner(source, win, backup="maxx")
    with pytest.raises(OptionError, match=r"gamma = 0.0"):
        MCTSPlanner(source, win, gamma=0.0)
    with pytest.raises(ConfigError, match="sample_functions"):
        MCTSPlanner(object(), win)  # type: ignore[arg-type]
    planner = MCTSPlanner(source, win, functions=1, simulations=2)
    with pytest.raises(DataError, match=r"obs must be a \(54,\) tensor, got \(2, 54\)"):
        planner.plan(torch.zeros(2, 54))
    with pytest.raises(DataError, match="NaN"):
        planner.plan(torch.full((54,), float("nan")))
    pendulum = get_task("Pendulum-v1")
    with pytest.raises(ConfigError, match=r"continuous \(Box\) actions: use a continuous planner"):
        MCTSPlanner.for_task(source, pendulum, MCTSOptions())
    cartpole = get_task("CartPole-v1")
    with pytest.raises(ConfigError, match=r"model has \(obs_dim, action_dim\) = \(54, 4\)"):
        MCTSPlanner.for_task(source, cartpole, MCTSOptions())


MCTS_RUN = [
    "env.id=CartPole-v1",
    "experiment.mode=mcts",
    "experiment.episodes=3",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "env.episode_length=15",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "mcts.simulations=4",
    "mcts.rollout_depth=3",
    "mcts.batch=2",
]


def test_mcts_mode_runs_resumes_in_the_runner_and_refuses_continuous_actions(
    tmp_path: Path,
) -> None:
    run = assert_resumes_like_uninterrupted(load_config(None, MCTS_RUN, seed=0), tmp_path)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["policy"] for r in rows] == ["random", "mcts", "mcts"]
    log = np.fromfile(run / "transitions.f32", dtype="float32").reshape(-1, 14)
    actions = log[:, 4:6]  # obs, one-hot action, reward, next obs, flags
    assert ((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all()
    with pytest.raises(ConfigError, match=r"experiment.mode = 'mcts' acts in discrete action"):
        run_experiment(
            load_config(None, ["experiment.mode=mcts", "experiment.episodes=1"]), tmp_path / "x"
        )
