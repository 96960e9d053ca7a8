"""MCTS agents: UCT over a learned model's posterior function draws, for discrete actions.

``experiment.mode = "mcts"`` runs :class:`~bayes_mbrl.planning.mcts.MCTSPlanner` in the
runner: the learner is the ``[model]`` dynamics model (any kind; the ensemble with
one-hot actions on CartPole-v1, ``presets/cartpole-mcts.toml``), refitted after every
episode, and the agent searches from every observation with the ``[mcts]`` settings
(:class:`~bayes_mbrl.planning.mcts.MCTSOptions`) and the task's reward and
termination functions.

:class:`TabularMCTSAgent` is the same search on a finite maze driven by
:func:`~bayes_mbrl.algorithms.dyna.run_episodes` (the Dyna maze is not a runner task:
its observations are cell indices): each run keeps a
:class:`~bayes_mbrl.models.tabular.TabularPosterior` (Dirichlet posterior over next
cells) updated after every real step and searches through tables drawn from it, with
the maze's known reward (1 on reaching the goal, which ends the episode).

Examples:
    >>> import torch
    >>> from bayes_mbrl.envs.dyna_maze import MazeDynamics
    >>> from bayes_mbrl.algorithms.dyna import run_episodes
    >>> from bayes_mbrl.algorithms.mcts import TabularMCTSAgent
    >>> maze = MazeDynamics("dyna")
    >>> gen = torch.Generator().manual_seed(0)
    >>> agent = TabularMCTSAgent.for_maze(maze, simulations=50, functions=1,
    ...                                   rollout_depth=10, generator=gen)
    >>> steps = run_episodes(agent, maze, episodes=1, generator=gen)
    >>> steps.shape
    torch.Size([1, 1])
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    build_model,
    state_model_check,
)
from bayes_mbrl.algorithms.mpc import _obs_tensor
from bayes_mbrl.envs.dyna_maze import MazeDynamics
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.models.base import FunctionSample
from bayes_mbrl.models.tabular import TabularFunctions, TabularPosterior
from bayes_mbrl.planning.mcts import MCTSOptions, MCTSPlanner, MCTSResult

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = ["GoalReached", "MCTSAgent", "MCTSAlgorithm", "MCTSOptions", "TabularMCTSAgent"]


class MCTSAgent:
    """Acts by an MCTS search from every observation (see the module).

    Args:
        planner: the search.
        generator: its randomness (function draws, outcomes, rollouts, tie-breaks).

    Attributes:
        plan_seconds: wall time spent searching since the last :meth:`reset`.
        last_result: the most recent :class:`~bayes_mbrl.planning.mcts.MCTSResult`.
    """

    def __init__(self, planner: MCTSPlanner, generator: torch.Generator | None = None) -> None:
        self.planner, self.generator = planner, generator
        self.plan_seconds = 0.0
        self.last_result: MCTSResult | None = None

    def reset(self) -> None:
        """Start of an episode (each search builds its trees afresh)."""
        self.plan_seconds = 0.0

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """One-hot action ``(A,)`` for the observation ``(obs_dim,)``."""
        start = time.perf_counter()
        self.last_result = self.planner.plan(_obs_tensor(obs, self.planner.obs_dim), self.generator)
        self.plan_seconds += time.perf_counter() - start
        return self.last_result.action


class MCTSAlgorithm(Algorithm):
    """MCTS through the ``[model]`` dynamics (refitted every episode) with the
    ``[mcts]`` settings, on discrete actions."""

    needs_reward_fn = True

    action_spaces = ("discrete",)

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(config, "MCTS searches from observed states")

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        model = build_model(config, task.obs_dim, task.action_dim)
        planner = MCTSPlanner.for_task(model, task, config.mcts)
        return AlgorithmParts(
            agent=MCTSAgent(planner, generator),
            learner=model,
            model=model,
            title=f"{config.model.kind} + MCTS",
        )


ALGORITHMS.add(
    "mcts",
    MCTSAlgorithm,
    options=MCTSOptions,
    summary="UCT over the model's posterior function draws, replanned every step "
    "(discrete actions)",
)


# ------------------------------------------------------------------ the tabular maze
class GoalReached:
    """A maze's reward and termination on one-hot cells: 1 (and the end) on entering
    ``goal``; batched ``(obs (..., S), action (..., A), next_obs (..., S)) -> (...)``.

    Args:
        goal: the goal cell.
        terminal: True: return the termination (bool), False: the reward (float).
    """

    def __init__(self, goal: int, terminal: bool = False) -> None:
        self.goal, self.terminal = goal, terminal

    def __call__(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        reached = next_obs.argmax(-1) == self.goal
        return reached if self.terminal else reached.to(next_obs.dtype)


class _PosteriorTables:
    """One run's Dirichlet posterior as a function source: drawn next-cell tables
    (the reward comes from the task, so the drawn mean rewards are zeros)."""

    def __init__(self, posterior: TabularPosterior) -> None:
        self.posterior = posterior
        self.obs_dim, self.action_dim = posterior.num_states, posterior.num_actions

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        tables = self.posterior.sample_transition(n, generator)
        return TabularFunctions(tables, torch.zeros(tables.shape[:-1], dtype=tables.dtype))


class TabularMCTSAgent:
    """MCTS on a finite maze with a learned tabular model, for ``num_runs`` runs driven
    by :func:`~bayes_mbrl.algorithms.dyna.run_episodes` (see the module).

    Each run searches through tables drawn from its own posterior (a loop over runs:
    each run's search is its own), so the drawn tables explore as posterior sampling
    does: an untried move leads, in a draw, wherever the prior allows.

    Args:
        num_runs: ``R``.
        num_states: ``S``.
        num_actions: ``A``.
        reward_fn: the maze's batched reward on one-hot cells (e.g. :class:`GoalReached`).
        termination_fn: the maze's batched termination on one-hot cells.
        prior_count: Dirichlet prior mass per pair, spread over ``prior_support``.
        prior_support: ``(S, A, S)`` bool, where each pair can lead a priori (e.g.
            :meth:`~bayes_mbrl.envs.dyna_maze.MazeDynamics.neighbours`); None: anywhere.
        generator: all randomness.
        **options: :class:`~bayes_mbrl.planning.mcts.MCTSOptions` of the search.

    Raises:
        ConfigError: ``num_runs < 1``; OptionError: a bad search setting.
    """

    def __init__(
        self,
        num_runs: int,
        num_states: int,
        num_actions: int,
        reward_fn: Any,
        termination_fn: Any,
        prior_count: float = 1.0,
        prior_support: Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        if num_runs < 1:
            raise ConfigError(f"TabularMCTSAgent: num_runs must be >= 1, got {num_runs}")
        self.num_runs, self.num_states, self.num_actions = num_runs, num_states, num_actions
        self.generator = generator
        self.models = [
            TabularPosterior(
                num_states, num_actions, prior_count=prior_count, prior_support=prior_support
            )
            for _ in range(num_runs)
        ]
        self.planners = [
            MCTSPlanner(_PosteriorTables(m), reward_fn, termination_fn, **options)
            for m in self.models
        ]

    @classmethod
    def for_maze(
        cls,
        maze: MazeDynamics,
        num_runs: int = 1,
        prior_count: float = 1.0,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> TabularMCTSAgent:
        """The agent for ``maze``: its goal as the known reward, a prior that knows
        moves are local (:meth:`MazeDynamics.neighbours`), and ``options`` for the
        search (unless given: ``gamma = 0.95``, the book's, and ``backup = "max"``,
        whose Bellman backups carry the goal's sparse reward back)."""
        options.setdefault("gamma", 0.95)
        options.setdefault("backup", "max")
        return cls(
            num_runs,
            maze.num_states,
            maze.num_actions,
            GoalReached(maze.goal),
            GoalReached(maze.goal, terminal=True),
            prior_count=prior_count,
            prior_support=maze.neighbours(),
            generator=generator,
            **options,
        )

    def begin_episode(self, starting: Tensor) -> None:
        """Nothing to do: every step searches afresh."""

    def act(self, state: Tensor) -> Tensor:
        """``(R,)`` long actions at ``(R,)`` long cells."""
        eye = torch.eye(self.num_states)
        return torch.stack(
            [
                planner.plan(eye[int(s)], self.generator).index
                for planner, s in zip(self.planners, state.tolist(), strict=True)
            ]
        )

    def learn(
        self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor, terminal: Tensor
    ) -> None:
        """Count every run's real step in its posterior."""
        for r, model in enumerate(self.models):
            model.update(state[r], action[r], reward[r], next_state[r])
