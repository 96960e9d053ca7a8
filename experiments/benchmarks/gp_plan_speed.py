"""GP-MPC speed against the ensemble's: one iCEM plan and one hyperparameter fit, measured
side by side.

Workload: 600 random Pendulum-v1 transitions (3 episodes of uniform random actions,
seed 0). The GP is preset ``pendulum-gp-mpc`` (exact SE-ARD GP per output, 256 random
features, conditioned on at most 600 transitions, 100 Adam steps on 512 of them)
planning like the default run: iCEM population 100 x 3 iterations, horizon 30,
5 TS-inf particles, so each plan draws 5 posterior functions (Matheron paths) and
rolls them out. The ensemble is preset ``pendulum-ensemble-mpc`` (its default iCEM
plan and planning precision), fitted for a few epochs only: its plan's cost does not
depend on the fit.

Every measurement runs in a child process, so the code under test can be another
checkout (``--code old=/tmp/gp_old`` puts ``/tmp/gp_old`` first on ``PYTHONPATH``, e.g. a
``git worktree`` of an older commit; ``--code new=`` is this tree), and children run
alternately (round 1: each code's GP, then the ensemble; round 2: the same ...) so
every version sees the same machine. Reported per version: the fit's wall time, the
plan's and the function draw's times (best of ``--plans`` in a child, then best over
rounds), and the ratio of the GP's plan time to the ensemble's measured in the same
rounds.

Run::

    OMP_NUM_THREADS=1 python experiments/benchmarks/gp_plan_speed.py \\
        --code old=/tmp/gp_old --code new= --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

GP_OVERRIDES = ["planner.kind=icem", "planner.population=100", "planner.iterations=3"]


def child(what: str, plans: int) -> None:
    """Measure in this process and print one ``RESULT {json}`` line."""
    import gymnasium as gym
    import torch

    import bayes_mbrl
    from bayes_mbrl.algorithms.base import build_model
    from bayes_mbrl.config import load_config
    from bayes_mbrl.data import ReplayBuffer
    from bayes_mbrl.envs import get_task
    from bayes_mbrl.planning import PLANNERS, RolloutEvaluator

    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    buf = ReplayBuffer(3, 1, 600)
    obs, _ = env.reset(seed=0)
    for t in range(600):
        action = env.action_space.sample()
        nxt, reward, term, trunc, _ = env.step(action)
        buf.add(obs, action, float(reward), nxt, term, trunc)
        obs = nxt if (t + 1) % 200 else env.reset()[0]
    if what == "gp":
        cfg = load_config("pendulum-gp-mpc", GP_OVERRIDES)
    else:
        cfg = load_config("pendulum-ensemble-mpc", ["model.max_epochs=3"])
    task = get_task("Pendulum-v1")
    g = torch.Generator().manual_seed(0)
    model = build_model(cfg, 3, 1)
    start = time.perf_counter()
    model.fit(buf, g)
    fit_s = time.perf_counter() - start
    p = cfg.planner
    evaluator = RolloutEvaluator(
        model,
        task.reward_fn,
        p.horizon,
        p.particles,
        p.propagation,
        generator=g,
        precision=p.precision,
    )
    planner = PLANNERS[p.kind].from_config(p, task.action_low, task.action_high, g)
    start_obs = torch.tensor([1.0, 0.0, 0.0])

    def plan() -> None:
        planner.reset()
        planner.plan(evaluator.scorer(start_obs))

    plan_s, draw_s = [], []
    with torch.inference_mode():
        plan()
        for _ in range(plans):
            t0 = time.perf_counter()
            plan()
            plan_s.append(time.perf_counter() - t0)
            if what == "gp":
                t0 = time.perf_counter()
                model.sample_functions(p.particles, g)
                draw_s.append(time.perf_counter() - t0)
    result = {
        "code": os.path.dirname(os.path.dirname(bayes_mbrl.__file__)),
        "fit_s": fit_s,
        "plan_ms": 1e3 * min(plan_s),
        "draw_ms": 1e3 * min(draw_s) if draw_s else None,
        "threads": torch.get_num_threads(),
    }
    if what == "gp":
        result["hyperparameters"] = {k: v.tolist() for k, v in model.hyperparameters().items()}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(path: str, what: str, plans: int) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", what, "--plans", str(plans)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result: dict = json.loads(line[len("RESULT ") :])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", default=[], help="name=path ('' = this tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plans", type=int, default=10)
    parser.add_argument("--child", choices=["gp", "ensemble"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.plans)
        return
    codes = dict(c.split("=", 1) for c in args.code) or {"this": ""}
    best: dict[str, dict[str, float]] = {}
    seen: dict[str, dict] = {}
    for r in range(args.rounds):
        jobs = [(name, path, "gp") for name, path in codes.items()] + [("ensemble", "", "ensemble")]
        for name, path, what in jobs:
            res = run_child(path, what, args.plans)
            seen[name] = res
            print(
                f"round {r + 1} {name:>8}: "
                + json.dumps({k: v for k, v in res.items() if k != "hyperparameters"}),
                flush=True,
            )
            cell = best.setdefault(name, {})
            for key in ("fit_s", "plan_ms", "draw_ms"):
                if res.get(key) is not None:
                    cell[key] = min(cell.get(key, math.inf), res[key])
    ens = best["ensemble"]["plan_ms"]
    print(f"best of {args.rounds} rounds (threads {seen['ensemble']['threads']}):")
    for name, cell in best.items():
        ratio = cell["plan_ms"] / ens
        fit = f"fit {cell['fit_s']:6.2f} s | " if name != "ensemble" else ""
        draw = f" | draw {cell['draw_ms']:6.1f} ms" if cell.get("draw_ms") else ""
        print(f"  {name:>8}: {fit}plan {cell['plan_ms']:7.1f} ms ({ratio:4.2f}x ensemble){draw}")
    names = [n for n in codes]
    if len(names) > 1:
        hp = [seen[n]["hyperparameters"] for n in names]
        diff = max(
            abs(a - b) / max(abs(b), 1e-12)
            for k in hp[0]
            for ra, rb in zip(hp[0][k], hp[1][k], strict=True)
            for a, b in zip(
                ra if isinstance(ra, list) else [ra],
                rb if isinstance(rb, list) else [rb],
                strict=True,
            )
        )
        print(
            f"  fitted hyperparameters, {names[0]} vs {names[1]}: largest relative "
            f"difference {diff:.1e}"
        )


if __name__ == "__main__":
    main()
