"""Likelihood-ratio against pathwise policy gradients through a learned Pendulum model,
against the horizon H.

Loads the fitted ensemble of a finished Pendulum-v1 run (``bayes-mbrl run``; its model
after the last checkpoint) and a fresh policy of ``experiment.mode = "mbpg"``
(:class:`~bayes_mbrl.algorithms.mbpg.SquashedGaussianPolicy`, 2 x 64, its inputs
normalized by the run's states). For each H in ``--horizons``:

* the spread of each estimator: ``--repeats`` independent estimates, each from
  ``--rollouts`` model rollouts (start states drawn from the run's transitions, each
  rolled through the 5 members, TS-inf; discount ``--gamma``); reported: the norm of
  their mean, the total variance (trace of their covariance) and the signal-to-noise
  ratio ``|mean|^2 / trace``;
* the pathwise gradient's Jacobian product: ``d s_H / d s_0`` of the closed loop
  (model mean + policy mean, one member, no noise) at ``--jacobian-starts`` start
  states: the median of its spectral norm and of its condition number
  ``sigma_max / sigma_min``;
* the return each estimator reaches in a fixed budget: a fresh policy trained by Adam
  (``--lr``) for ``--updates`` steps of ``--rollouts`` rollouts, then 10 episodes on
  Pendulum-v1 from fixed starts (env seeds 20000–20009) with its mean action.

    python experiments/policy_gradients.py runs/pets_pendulum/ts_1-s0 \\
        --out experiments/policy_gradients.json --plot experiments/policy_gradients.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.mbpg import (
    PolicyAgent,
    SquashedGaussianPolicy,
    likelihood_ratio_surrogate,
    pathwise_returns,
)
from bayes_mbrl.envs import get_task
from bayes_mbrl.evaluation import EVAL_START_SEED, run_episodes
from bayes_mbrl.runs import load_run

ESTIMATORS = ("likelihood_ratio", "pathwise")


def fresh_policy(task: Any, states: Tensor, seed: int) -> SquashedGaussianPolicy:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = SquashedGaussianPolicy(task.obs_dim, task.action_low, task.action_high, [64, 64])
    policy.set_normalization(states)
    return policy


def estimate(
    estimator: str,
    model: Any,
    policy: SquashedGaussianPolicy,
    starts: Tensor,
    horizon: int,
    task: Any,
    gamma: float,
    generator: torch.Generator,
) -> tuple[Tensor, float]:
    """One gradient estimate (flattened, of the expected return) and the mean return."""
    policy.zero_grad()
    if estimator == "pathwise":
        returns = pathwise_returns(
            model, policy, starts, horizon, task.reward_fn, None, gamma, 5, generator
        )
        returns.mean().backward()
        mean_return = float(returns.detach().mean())
    else:
        surrogate, returns = likelihood_ratio_surrogate(
            model, policy, starts, horizon, task.reward_fn, None, gamma, 5, generator
        )
        surrogate.mean().backward()
        mean_return = float(returns.mean())
    grads = [p.grad.flatten() for p in policy.parameters() if p.grad is not None]
    return torch.cat(grads).detach().double(), mean_return


def jacobian_stats(
    model: Any, policy: SquashedGaussianPolicy, starts: Tensor, horizon: int
) -> dict[str, float]:
    """Median spectral norm and condition number of d s_H / d s_0 (closed loop, member
    0's mean, the policy's mean action)."""
    fs = model.sample_functions(5)

    def final_state(s0: Tensor) -> Tensor:
        s = s0[None, None]  # (1 function, 1 row, D)
        for _ in range(horizon):
            a = policy.mean_action(s[0])[None]
            s = fs.mean(s.expand(fs.n, -1, -1), a.expand(fs.n, -1, -1))[:1]
        return s[0, 0]

    norms, conds = [], []
    for s0 in starts:
        jac = torch.autograd.functional.jacobian(final_state, s0)
        sv = torch.linalg.svdvals(jac.double())
        norms.append(float(sv[0]))
        conds.append(float(sv[0] / sv[-1]) if float(sv[-1]) > 0 else math.inf)
    return {
        "jacobian_norm_median": float(np.median(norms)),
        "jacobian_cond_median": float(np.median(conds)),
        "jacobian_norm_max": float(np.max(norms)),
    }


def train_and_evaluate(
    estimator: str,
    model: Any,
    task: Any,
    states: Tensor,
    horizon: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    policy = fresh_policy(task, states, args.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    model_returns = []
    for _ in range(args.updates):
        rows = torch.randint(len(states), (args.rollouts // 5,), generator=g)
        _, mean_return = estimate(
            estimator, model, policy, states[rows], horizon, task, args.gamma, g
        )
        model_returns.append(mean_return)
        for p in policy.parameters():  # ascend the return: Adam steps on its negative
            if p.grad is not None:
                p.grad.neg_()
        optimizer.step()
    seconds = time.perf_counter() - start
    agent = PolicyAgent(policy, task.obs_dim, torch.Generator(), deterministic=True)
    starts = [EVAL_START_SEED + i for i in range(10)]
    returns = run_episodes(agent, task, 200, starts)
    return {
        "eval_returns": [round(r, 1) for r in returns],
        "eval_mean": float(np.mean(returns)),
        "model_return_first": model_returns[0],
        "model_return_last": model_returns[-1],
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished Pendulum-v1 run with an ensemble")
    parser.add_argument("--horizons", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=500)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--jacobian-starts", type=int, default=32)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_run(args.run)
    model, task = loaded.model, get_task(loaded.config.env.id)
    states = torch.cat([loaded.train.obs, loaded.held_out.obs])
    g = torch.Generator().manual_seed(args.seed)
    rows_out = []
    for h in args.horizons:
        row: dict[str, Any] = {"horizon": h}
        for estimator in ESTIMATORS:
            policy = fresh_policy(task, states, args.seed)
            grads = []
            for _ in range(args.repeats):
                idx = torch.randint(len(states), (args.rollouts // 5,), generator=g)
                grads.append(
                    estimate(estimator, model, policy, states[idx], h, task, args.gamma, g)[0]
                )
            est = torch.stack(grads)
            mean = est.mean(0)
            trace = float(est.var(0).sum())
            row[estimator] = {
                "grad_norm": float(mean.norm()),
                "variance_trace": trace,
                "snr": float(mean.norm() ** 2) / trace if trace > 0 else math.inf,
            }
            row[estimator]["trained"] = train_and_evaluate(estimator, model, task, states, h, args)
            print(h, estimator, json.dumps(row[estimator]), flush=True)
        jac_starts = states[torch.randint(len(states), (args.jacobian_starts,), generator=g)]
        row["pathwise"].update(
            jacobian_stats(model, fresh_policy(task, states, args.seed), jac_starts, h)
        )
        print(
            h,
            "jacobian",
            json.dumps({k: v for k, v in row["pathwise"].items() if k.startswith("jac")}),
            flush=True,
        )
        rows_out.append(row)
    args.out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows_out}, indent=1)
    )
    if args.plot:
        plot(rows_out, args.plot)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    hs = [r["horizon"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for est, style in zip(ESTIMATORS, ("o-", "s-"), strict=True):
        axes[0].semilogy(hs, [r[est]["variance_trace"] for r in rows], style, label=est)
        axes[1].semilogy(hs, [r[est]["snr"] for r in rows], style, label=est)
        axes[2].plot(hs, [r[est]["trained"]["eval_mean"] for r in rows], style, label=est)
    ax2 = axes[0].twinx()
    ax2.semilogy(
        hs, [r["pathwise"]["jacobian_cond_median"] for r in rows], "k:", label="cond(d s_H / d s_0)"
    )
    ax2.set_ylabel("pathwise Jacobian condition number (dotted)")
    axes[0].set(xlabel="horizon H", ylabel="trace of the estimate's covariance", title="variance")
    axes[1].set(xlabel="horizon H", ylabel="|mean|^2 / trace", title="signal-to-noise")
    axes[2].set(
        xlabel="horizon H",
        ylabel="Pendulum-v1 return (10 fixed starts)",
        title="after a fixed budget",
    )
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
