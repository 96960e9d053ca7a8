"""PILCO on the cart-pole and pendulum swing-ups: trials and interaction time to solve.

Run ``python experiments/pilco_swingup.py --env cartpole --seed 0``. Per trial it
prints the GP fit time, the L-BFGS iterations/seconds of the policy optimization,
the predicted and the real cost of the rollout and whether it met the task's
criterion; at the first success it stops and evaluates the policy from
``--eval-starts`` fresh random starts. A JSON summary goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bayes_mbrl.algorithms.pilco import PILCO, PILCO_TASKS
from bayes_mbrl.envs import get_task, make_env

ENVS = {
    "cartpole": "bayes_mbrl/CartPoleSwingUp-v0",
    "pendulum": "bayes_mbrl/PendulumSwingUp-v0",
}


def rollout(env, policy, horizon: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:  # type: ignore[no-untyped-def]
    """One episode; returns observations (T+1, obs), actions (T, act) and the env return."""
    obs, _ = env.reset(seed=seed)
    observations, actions, total = [obs], [], 0.0
    for _ in range(horizon):
        u = policy(obs)
        obs, r, _, _, _ = env.step(u)
        observations.append(obs)
        actions.append(u)
        total += float(r)
    return np.asarray(observations), np.asarray(actions), total


def plot_prediction(pilco: PILCO, obs: np.ndarray, dt: float, path: Path, title: str) -> None:
    """The policy's propagated belief (mean +- 2 sd per state dimension) against the real
    rollout it produced, and the expected cost per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        traj = pilco.predict()
    mean = traj.state_mean.numpy()
    real = pilco.smap.to_state(torch.as_tensor(obs)).numpy()
    for k in pilco.smap.angle_index:  # atan2 wraps at +-pi; the belief's angle does not
        real[:, k] = np.unwrap(real[:, k])
        real[:, k] += 2 * np.pi * np.round((mean[0, k] - real[0, k]) / (2 * np.pi))
    sd = traj.state_cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().numpy()
    t = np.arange(len(mean)) * dt
    d = mean.shape[1]
    fig, axes = plt.subplots(1, d + 1, figsize=(3.2 * (d + 1), 3))
    for k in range(d):
        ax = axes[k]
        ax.fill_between(t, mean[:, k] - 2 * sd[:, k], mean[:, k] + 2 * sd[:, k], alpha=0.3)
        ax.plot(t, mean[:, k], label="predicted mean +- 2 sd")
        ax.plot(t[: len(real)], real[:, k], "k.", ms=3, label="real rollout")
        ax.set_title(f"state {k}" + (" (angle)" if k in pilco.smap.angle_index else ""))
        ax.set_xlabel("s")
    axes[0].legend(fontsize=7)
    axes[-1].plot(t[1:], traj.cost_mean.detach().numpy())
    axes[-1].set_title("expected cost")
    axes[-1].set_xlabel("s")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", choices=sorted(ENVS), default="cartpole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--opt-iterations", type=int, default=75)
    parser.add_argument("--num-basis", type=int, default=50)
    parser.add_argument("--policy", choices=["rbf", "linear"], default="rbf")
    parser.add_argument("--max-points", type=int, default=600)
    parser.add_argument("--eval-starts", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG: predicted belief vs the solving rollout"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    task = PILCO_TASKS[ENVS[args.env]]
    spec = get_task(task.env_id)
    env = make_env(task.env_id)
    pilco = PILCO(
        task, spec.action_low, spec.action_high, policy=args.policy, num_basis=args.num_basis,
        max_points=args.max_points, opt_iterations=args.opt_iterations, seed=args.seed,
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    low, high = spec.action_low.numpy(), spec.action_high.numpy()

    def random_policy(_: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)

    obs, act, ret = rollout(env, random_policy, task.horizon, seed=args.seed * 1000)
    pilco.add_rollout(obs, act)
    rollouts = 1
    trials: list[dict[str, float | int | bool]] = []
    solved_at = None
    start = time.perf_counter()
    for trial in range(1, args.trials + 1):
        fit_s = pilco.fit_model()
        rep = pilco.optimize_policy()
        predicted = float(pilco.predict().expected_return.detach())
        obs, act, ret = rollout(env, pilco.act, task.horizon, seed=args.seed * 1000 + trial)
        pilco.add_rollout(obs, act)
        rollouts += 1
        real_cost = float(task.horizon - ret) if args.env == "cartpole" else float("nan")
        success = task.success(obs)
        row = {
            "trial": trial, "fit_seconds": round(fit_s, 2), "lbfgs_iterations": rep.iterations,
            "evaluations": rep.evaluations, "opt_seconds": round(rep.seconds, 2),
            "predicted_cost": round(predicted, 3), "real_cost": round(real_cost, 3),
            "return": round(ret, 3), "success": success,
        }  # fmt: skip
        trials.append(row)
        print(json.dumps(row), flush=True)
        if success:
            solved_at = trial
            break
    summary: dict[str, object] = {
        "env": task.env_id,
        "seed": args.seed,
        "criterion": task.success_text,
        "solved_at_trial": solved_at,
        "rollouts": rollouts,
        "interaction_seconds": round(rollouts * task.horizon * task.dt, 2),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "trials": trials,
    }
    if solved_at is not None and args.plot is not None:
        plot_prediction(pilco, obs, task.dt, args.plot, f"{task.env_id}, seed {args.seed}")
    if solved_at is not None:
        wins = [
            task.success(rollout(env, pilco.act, task.horizon, seed=10_000 + k)[0])
            for k in range(args.eval_starts)
        ]
        summary["eval_success_rate"] = sum(wins) / len(wins)
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
