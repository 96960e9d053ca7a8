"""MCTS with a learned tabular model on the Dyna maze (Sutton & Barto, Example 8.1).

Each seed runs :class:`~bayes_mbrl.algorithms.mcts.TabularMCTSAgent`: a Dirichlet
posterior over next cells (a prior that knows moves are local, mass ``prior_count``),
updated after every real step, and at every step a UCT search (MaxUCT backups, one
tree per drawn table) with the maze's known goal reward, gamma = 0.95. The episode
lengths are written to a JSON file; the shortest path is 14 steps. ``--true-model 1``
searches through the maze's true table instead (the same search, no learning): the
search's own limit.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/mcts_maze.py --out experiments/mcts_maze.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch

from bayes_mbrl.algorithms.dyna import run_episodes
from bayes_mbrl.algorithms.mcts import TabularMCTSAgent
from bayes_mbrl.envs.dyna_maze import MazeDynamics, shortest_path_length
from bayes_mbrl.models.tabular import TabularFunctions
from bayes_mbrl.planning.mcts import MCTSPlanner


class TrueTable:
    """The maze's exact transition table as the only posterior draw."""

    def __init__(self, maze: MazeDynamics) -> None:
        self.maze, self.obs_dim, self.action_dim = maze, maze.num_states, 4

    def sample_functions(
        self, n: int, generator: torch.Generator | None = None
    ) -> TabularFunctions:
        p = self.maze.transition_probabilities().expand(n, -1, -1, -1)
        return TabularFunctions(p, torch.zeros(p.shape[:-1], dtype=p.dtype))


@dataclass
class Args:
    seeds: int = 3
    episodes: int = 15
    functions: int = 4
    simulations: int = 250
    outcomes: int = 4
    rollout_depth: int = 30
    max_depth: int = 30
    exploration: float = 4.0
    prior_count: float = 0.1
    last: int = 5  # episodes averaged at the end
    true_model: int = 0  # 1: search through the maze's true table (the search's own limit)
    out: str = "experiments/mcts_maze.json"


def main(args: Args) -> dict[str, object]:
    shortest = shortest_path_length(MazeDynamics("dyna").layout)
    runs = []
    for seed in range(args.seeds):
        maze = MazeDynamics("dyna")
        gen = torch.Generator().manual_seed(seed)
        agent = TabularMCTSAgent.for_maze(
            maze,
            prior_count=args.prior_count,
            generator=gen,
            functions=args.functions,
            simulations=args.simulations,
            outcomes=args.outcomes,
            rollout_depth=args.rollout_depth,
            max_depth=args.max_depth,
            exploration=args.exploration,
            backup="max",
        )
        if args.true_model:
            agent.planners = [
                MCTSPlanner(TrueTable(maze), p.reward_fn, p.termination_fn, **asdict(p.options))
                for p in agent.planners
            ]
        start = time.perf_counter()
        steps = run_episodes(agent, maze, episodes=args.episodes, generator=gen)[0].tolist()
        first = next((i + 1 for i, s in enumerate(steps) if s == shortest), None)
        runs.append({"seed": seed, "steps": steps, "first_shortest_episode": first,
                     "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        print(runs[-1], flush=True)
    tail = [s for r in runs for s in r["steps"][-args.last :]]  # type: ignore[index]
    result = {
        "args": asdict(args),
        "shortest_path": shortest,
        "runs": runs,
        "mean_steps_last_episodes": sum(tail) / len(tail),
        "fraction_shortest_last_episodes": sum(s == shortest for s in tail) / len(tail),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    main(Args(**vars(parser.parse_args())))
