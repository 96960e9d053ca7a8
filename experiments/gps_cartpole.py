"""GPS-style trajectory optimization with local linear-Gaussian models on the cart-pole.

Levine and Abbeel (2014), "Learning Neural Network Policies with Guided Policy Search
under Unknown Dynamics" (its trajectory optimization; cbfinn/gps): a linear-Gaussian
controller improved under a KL trust region on local time-varying linear-Gaussian
models fitted to 5 rollouts per iteration, with and without the GMM prior, against
iLQR with the true (torch) dynamics from several starts.

Tasks on ``bayes_mbrl/CartPoleSwingUp-v0`` (PILCO's constants, dt = 0.1 s, 40 steps)
from a fixed start, quadratic cost ``1/2 (x - x*)' Q (x - x*) + 1/2 r u^2`` with
``Q = diag(1, 0.1, 1, 0.1)``, ``r = 0.1`` and ``10 Q`` on the final state:

* ``reach``: start at rest hanging down, ``x* = (1, 0, 0, 0)``: move the cart 1 m and
  stop it with the pole hanging still (the pole's swing couples in through the cart's
  acceleration);
* ``swingup``: the same start, ``x* = (0, 0, pi, 0)``.

The cost of a controller is the true cost of one noise-free rollout of its mean (an
evaluation rollout, not used for fitting); ``iterations`` updates use
``iterations * samples`` rollouts.

Run: ``python experiments/gps_cartpole.py --task reach --seeds 0 1 2 --out
experiments/gps_cartpole_reach.json --plot experiments/gps_cartpole_reach.png``
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bayes_mbrl.algorithms.gps import EnvSampler, GPSOptions, GuidedPolicySearch
from bayes_mbrl.envs import CartPoleSwingUpEnv, cartpole_swingup_step
from bayes_mbrl.planning.lqr import ilqr

DTYPE = torch.float64
HORIZON = 40
Q = torch.tensor([1.0, 0.1, 1.0, 0.1], dtype=DTYPE)
R = 0.1
TARGETS = {"reach": (1.0, 0.0, 0.0, 0.0), "swingup": (0.0, 0.0, math.pi, 0.0)}
START = (0.0, 0.0, 0.0, 0.0)


@dataclass
class Args:
    task: str = "reach"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    iterations: int = 10
    samples: int = 5
    kl_step: float = 1.0
    init_variance: float = 0.5
    ilqr_starts: int = 4
    ilqr_iterations: int = 100
    out: str = ""
    plot: str = ""


def make_costs(task: str):  # type: ignore[no-untyped-def]
    target = torch.tensor(TARGETS[task], dtype=DTYPE)

    def stage(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        d = x - target
        return 0.5 * (d * d * Q).sum(-1) + 0.5 * R * (u * u).sum(-1)

    def final(x: torch.Tensor) -> torch.Tensor:
        d = x - target
        return 0.5 * (d * d * 10 * Q).sum(-1)

    return stage, final


def ilqr_baseline(args: Args) -> dict[str, object]:
    """iLQR on the true dynamics from zero controls and ``ilqr_starts - 1`` random ones."""
    stage, final = make_costs(args.task)
    gen = torch.Generator().manual_seed(12345)
    x0 = torch.tensor([START], dtype=DTYPE)
    runs = []
    for i in range(args.ilqr_starts):
        init = (
            torch.zeros(HORIZON, 1, dtype=DTYPE)
            if i == 0
            else 0.5 * torch.randn(HORIZON, 1, generator=gen, dtype=DTYPE)
        )
        res = ilqr(
            cartpole_swingup_step,
            lambda x, u, xn: stage(x, u),
            x0,
            init,
            action_low=torch.tensor([-1.0], dtype=DTYPE),
            action_high=torch.tensor([1.0], dtype=DTYPE),
            terminal_cost=final,
            max_iterations=args.ilqr_iterations,
        )
        # the true cost of the returned actions in the env itself
        env = CartPoleSwingUpEnv()
        env.reset(options={"state": list(START)})
        xs = [torch.tensor(START, dtype=DTYPE)]
        for a in res.actions:
            env.step(a.float().numpy())
            xs.append(torch.as_tensor(env.state, dtype=DTYPE))
        states = torch.stack(xs)
        env_cost = float(stage(states[:-1], res.actions).sum() + final(states[-1]))
        runs.append(
            {
                "start": "zeros" if i == 0 else f"random {i}",
                "cost": res.cost,
                "env_cost": env_cost,
                "iterations": res.iterations,
                "converged": res.converged,
            }
        )
        print(f"iLQR start {i}: cost {res.cost:.4f} (env {env_cost:.4f}), {res.iterations} it")
    best = min(r["env_cost"] for r in runs)  # type: ignore[type-var]
    return {"runs": runs, "best": best}


def gps_run(args: Args, seed: int, prior: str) -> dict[str, object]:
    stage, final = make_costs(args.task)
    opts = GPSOptions(
        samples=args.samples, kl_step=args.kl_step, init_variance=args.init_variance, prior=prior
    )
    gps = GuidedPolicySearch(
        EnvSampler(CartPoleSwingUpEnv, START),
        stage,
        final,
        HORIZON,
        4,
        1,
        opts,
        torch.Generator().manual_seed(seed),
    )
    records = gps.run(args.iterations)
    mean_costs = [r.mean_cost for r in records] + [gps.final_mean_cost()]
    for r in records:
        print(
            f"  seed {seed} {prior} it {r.iteration}: mean cost {r.mean_cost:.4f} samples "
            f"{sum(r.sample_costs) / len(r.sample_costs):.4f} eps {r.epsilon:.2f} kl {r.kl:.2f} "
            f"eta {r.eta:.3g} dual {r.dual_iterations}"
        )
    return {
        "seed": seed,
        "prior": prior,
        "mean_cost_after_updates": mean_costs,
        "sample_cost_per_iteration": [sum(r.sample_costs) / len(r.sample_costs) for r in records],
        "epsilon": [r.epsilon for r in records],
        "kl": [r.kl for r in records],
        "kl_within_10pct": [abs(r.kl - r.epsilon) <= 0.1 * r.epsilon for r in records],
        "eta": [r.eta for r in records],
        "final": mean_costs[-1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = Args()
    p.add_argument("--task", choices=sorted(TARGETS), default=d.task)
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--samples", type=int, default=d.samples)
    p.add_argument("--kl-step", type=float, default=d.kl_step)
    p.add_argument("--init-variance", type=float, default=d.init_variance)
    p.add_argument("--ilqr-starts", type=int, default=d.ilqr_starts)
    p.add_argument("--ilqr-iterations", type=int, default=d.ilqr_iterations)
    p.add_argument("--out", default=d.out)
    p.add_argument("--plot", default=d.plot)
    ns = p.parse_args()
    args = Args(**{k: v for k, v in vars(ns).items()})
    torch.set_num_threads(1)

    baseline = ilqr_baseline(args)
    best = float(baseline["best"])  # type: ignore[arg-type]
    runs = [gps_run(args, s, prior) for prior in ("gmm", "none") for s in args.seeds]
    for run in runs:
        costs = run["mean_cost_after_updates"]
        assert isinstance(costs, list)
        within = [k for k, c in enumerate(costs) if c <= 1.1 * best]
        run["ratio_to_ilqr"] = costs[-1] / best
        run["first_update_within_10pct"] = within[0] if within else None
    print(f"\niLQR (true dynamics, best of {args.ilqr_starts} starts): {best:.4f}")
    print("prior seed  cost after 10 updates  ratio  first update within 10%  all KL within 10%")
    for run in runs:
        print(
            f"{run['prior']:5s} {run['seed']:4d}  {run['final']:.4f}  {run['ratio_to_ilqr']:.3f}  "
            f"{run['first_update_within_10pct']}  {all(run['kl_within_10pct'])}"  # type: ignore[arg-type]
        )
    result = {"args": asdict(args), "ilqr": baseline, "gps": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        colors = {"gmm": "C0", "none": "C3"}
        for run in runs:
            costs = run["mean_cost_after_updates"]
            assert isinstance(costs, list)
            label = f"GPS, {'GMM prior' if run['prior'] == 'gmm' else 'no prior'}"
            first = run["seed"] == args.seeds[0]
            ax.plot(range(len(costs)), costs, color=colors[str(run["prior"])], alpha=0.8,
                    label=label if first else None)  # fmt: skip
        ax.axhline(best, color="k", ls="--", label="iLQR, true dynamics")
        ax.axhline(1.1 * best, color="k", ls=":", label="+10%")
        ax.set_yscale("log")
        ax.set_xlabel(f"updates ({args.samples} rollouts each)")
        ax.set_ylabel("cost of the controller's mean (true)")
        ax.set_title(f"cart-pole {args.task}: seeds {args.seeds}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
