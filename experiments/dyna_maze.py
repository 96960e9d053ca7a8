"""Sutton & Barto's Dyna-maze figures, and posterior sampling on a slippery maze.

    python experiments/dyna_maze.py figure8_2 --runs 30 --out experiments/dyna_maze_fig8_2.json \
        --plot experiments/dyna_maze_fig8_2.png
    python experiments/dyna_maze.py blocking --runs 30 --out experiments/dyna_maze_blocking.json \
        --plot experiments/dyna_maze_blocking.png
    python experiments/dyna_maze.py shortcut --runs 30 ...
    python experiments/dyna_maze.py slippery --runs 30 --slip 0.2 ...

``figure8_2``: Dyna-Q with n = 0, 5, 50 planning steps on the Dyna maze (Example 8.1:
alpha 0.1, epsilon 0.1, gamma 0.95), 50 episodes, steps per episode averaged over the
runs, and the length of the greedy policy's path after each episode (14 is optimal).
``blocking`` / ``shortcut``: Dyna-Q and Dyna-Q+ (alpha 1; blocking n = 10, kappa 1e-4;
shortcut n = 50, kappa 1e-3, as the common reproductions of the book's figures use) on
the changing mazes of Examples 8.2 and 8.3, cumulative reward over 3000 / 6000 steps.
``slippery``: each move slips to a perpendicular
direction with probability ``--slip``; posterior sampling (a drawn table solved by
value iteration, redrawn every step; the prior knows moves reach neighbouring cells)
against epsilon-greedy
Dyna-Q with the empirical-frequency model (n = 5 and 50), 50 episodes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.algorithms.dyna import (
    PosteriorSamplingAgent,
    TabularDynaQ,
    greedy_path_length,
    run_episodes,
    run_steps,
    value_iteration,
)
from bayes_mbrl.envs.dyna_maze import MazeDynamics, shortest_path_length


def _episodes(
    make: Any, layout: str, runs: int, episodes: int, seed: int, slip: float = 0.0
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    maze = MazeDynamics(layout, slip)
    agent = make(maze, gen)
    greedy = torch.zeros(runs, episodes, dtype=torch.long)

    def record(ended: Tensor, index: Tensor) -> None:
        if hasattr(agent, "q") and slip == 0:
            lengths = greedy_path_length(agent.q, maze)
            greedy[ended, index[ended]] = lengths[ended]

    start = time.perf_counter()
    steps = run_episodes(agent, maze, episodes, gen, on_episode_end=record)
    out: dict[str, Any] = {
        "steps_per_episode_mean": steps.float().mean(0).tolist(),
        "steps_per_episode_sem": (steps.float().std(0) / runs**0.5).tolist(),
        "seconds": time.perf_counter() - start,
    }
    if slip == 0:
        out["greedy_path_mean"] = greedy.float().mean(0).tolist()
        out["greedy_optimal_fraction"] = (
            (greedy == shortest_path_length(maze.layout)).float().mean(0).tolist()
        )
    return out


def figure8_2(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for n in (0, 5, 50):

        def make(maze: MazeDynamics, gen: torch.Generator, n: int = n) -> TabularDynaQ:
            return TabularDynaQ(args.runs, maze.num_states, 4, planning_steps=n, generator=gen)

        results[f"n={n}"] = _episodes(make, "dyna", args.runs, args.episodes, args.seed)
        print(f"n={n}", _summary(results[f"n={n}"]), flush=True)
    return results


def _changing(
    args: argparse.Namespace, layout: str, steps: int, n: int, bonus: float
) -> dict[str, Any]:
    results = {}
    for name, kappa in (("Dyna-Q", 0.0), ("Dyna-Q+", bonus)):
        gen = torch.Generator().manual_seed(args.seed)
        maze = MazeDynamics(layout)
        agent = TabularDynaQ(
            args.runs, maze.num_states, 4, planning_steps=n, alpha=1.0, kappa=kappa, generator=gen
        )
        start = time.perf_counter()
        cum = run_steps(agent, maze, steps, gen)
        change = maze.layout.change_at
        results[name] = {
            "cumulative_reward_mean": cum.mean(0)[::10].tolist(),
            "every": 10,
            "at_change_mean": float(cum[:, change - 1].mean()),
            "final_mean": float(cum[:, -1].mean()),
            "final_sem": float(cum[:, -1].std() / args.runs**0.5),
            "after_change_mean": float((cum[:, -1] - cum[:, change - 1]).mean()),
            "after_change_sem": float((cum[:, -1] - cum[:, change - 1]).std() / args.runs**0.5),
            "seconds": time.perf_counter() - start,
        }
        print(name, {k: v for k, v in results[name].items() if "mean" in k and k[0] != "c"})
    return results


def _optimal_expected_steps(maze: MazeDynamics, gamma: float) -> float:
    """Expected steps from the start to the goal under the discounted-optimal policy
    of the true slippery maze."""
    s = maze.num_states
    p = maze.transition_probabilities()
    terminal = torch.zeros(s, dtype=torch.bool)
    terminal[maze.goal] = True
    reward = torch.einsum("sat,t->sa", p, terminal.double())
    q = value_iteration(p, reward, terminal, gamma, iterations=2000, tol=1e-12)
    policy = q.argmax(-1)
    pp = p[torch.arange(s), policy]  # (S, S)
    live = ~terminal
    for wall in maze.layout.walls:
        live[maze.layout.cell(wall)] = False
    # expected steps t: t = 1 + P_live t  on the live states
    m = torch.eye(int(live.sum()), dtype=torch.float64) - pp[live][:, live]
    t = torch.linalg.solve(m, torch.ones(int(live.sum()), dtype=torch.float64))
    index = int(live[: maze.start].sum())
    return float(t[index])


def slippery(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    maze = MazeDynamics("dyna", args.slip)
    optimum = _optimal_expected_steps(maze, 0.95)
    results["optimal_expected_steps"] = optimum

    def psrl(maze: MazeDynamics, gen: torch.Generator) -> PosteriorSamplingAgent:
        return PosteriorSamplingAgent(
            args.runs, maze.num_states, 4, prior_support=maze.neighbours(), generator=gen
        )

    makers: dict[str, Any] = {"Thompson sampling": psrl}
    for n in (5, 50):

        def dyna(maze: MazeDynamics, gen: torch.Generator, n: int = n) -> TabularDynaQ:
            return TabularDynaQ(
                args.runs, maze.num_states, 4, planning_steps=n, model_forget=0.0, generator=gen
            )

        makers[f"Dyna-Q n={n}"] = dyna
    for name, make in makers.items():
        r = _episodes(make, "dyna", args.runs, args.episodes, args.seed, slip=args.slip)
        mean = torch.tensor(r["steps_per_episode_mean"])
        for pct in (20, 50):
            close = (mean <= (1 + pct / 100) * optimum).nonzero()
            r[f"first_episode_within_{pct}pct"] = int(close[0]) + 1 if len(close) else None
        r["total_steps"] = float(mean.sum())
        r["last10_mean"] = float(mean[-10:].mean())
        results[name] = r
        print(name, _summary(r), flush=True)
    return results


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    m = r["steps_per_episode_mean"]
    out = {"ep1-5": [round(x, 1) for x in m[:5]], "last10": round(sum(m[-10:]) / 10, 1)}
    if "greedy_path_mean" in r:
        out["greedy ep1-5"] = [round(x, 1) for x in r["greedy_path_mean"][:5]]
        out["optimal frac ep3"] = r["greedy_optimal_fraction"][2]
    out["s"] = round(r["seconds"], 1)
    return out


def plot(kind: str, results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if kind in ("figure8_2", "slippery"):
        for name, r in results.items():
            if not isinstance(r, dict):
                continue
            m = r["steps_per_episode_mean"]
            ax.plot(range(2, len(m) + 1), m[1:], label=name)
        if kind == "slippery":
            ax.axhline(results["optimal_expected_steps"], color="k", ls=":", label="optimal")
        ax.set_xlabel("episode")
        ax.set_ylabel("steps per episode (mean over runs)")
        ax.set_ylim(0, 800 if kind == "figure8_2" else None)
    else:
        for name, r in results.items():
            y = r["cumulative_reward_mean"]
            ax.plot([i * r["every"] for i in range(len(y))], y, label=name)
        ax.set_xlabel("time steps")
        ax.set_ylabel("cumulative reward (mean over runs)")
    ax.legend()
    ax.set_title(f"Dyna maze: {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["figure8_2", "blocking", "shortcut", "slippery"])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--slip", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.kind == "figure8_2":
        results = figure8_2(args)
    elif args.kind == "blocking":
        results = _changing(args, "blocking", 3000, n=10, bonus=1e-4)
    elif args.kind == "shortcut":
        results = _changing(args, "shortcut", 6000, n=50, bonus=1e-3)
    else:
        results = slippery(args)
    payload = {"kind": args.kind, "runs": args.runs, "seed": args.seed, "results": results}
    if args.kind == "slippery":
        payload["slip"] = args.slip
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1))
    if args.plot:
        plot(args.kind, results, args.plot)


if __name__ == "__main__":
    main()
