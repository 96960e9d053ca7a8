"""Does epistemic variance rank the real errors in a held-out region of Pendulum-v1?

Issue 20, second must-show. Data (per seed, gymnasium ``Pendulum-v1``; obs
``(cos th, sin th, thdot)``, action in ``[-2, 2]``):

* ``random_episodes`` episodes of ``episode_length`` steps of uniformly random torques
  from the default reset (``th`` in ``[-pi, pi]``, ``thdot`` in ``[-1, 1]``), and
* ``short_episodes`` short episodes of ``short_length`` random-torque steps, each from a
  start state drawn uniformly (``env.unwrapped.state = (th ~ U[-pi, pi], thdot ~ U[-8, 8])``
  after ``reset``), so the whole state space (``thdot`` in ``[-8, 8]``) is covered.

The held-out region is every transition whose current angular velocity lies in
``[region_low, region_high]`` (default ``thdot`` in ``[2.5, 5]``: 2.5 of the 16 rad/s of
the data's range, with data on both sides). It is removed from training and forms the
held-out test set; the remaining transitions are split at random into the training set and
an in-distribution test set (``num_test`` transitions).

Families, each through its own API (``fit(ReplayBuffer, generator)``, then
:func:`bayes_mbrl.uncertainty.decompose_model` over ``posterior_functions``): the bootstrap
ensemble (5 x ``[hidden, hidden]``), the same with randomized prior functions
(``prior_scale``), the mean-field BNN (SVI, learning rate 3e-3), SNGP (defaults) and the
exact GP (``max_train_points``). Per test transition:

* epistemic variance: variance over posterior functions of the predicted mean (law of total
  variance, ``decompose_model(...).predictive.epistemic_var``), summed over the 3 state
  dimensions;
* squared error: ``|mean - s'|^2`` of the predictive mean (the mean over the same functions)
  against the true (deterministic) next observation, summed over the 3 dimensions.

Reported per family and seed: Spearman's rho (``scipy.stats.spearmanr``) between the two on
the held-out region, on the in-distribution test set and on both pooled; the ratio of the
mean epistemic variance held-out / in-distribution and the same ratio of the mean squared
error; and (a diagnostic beyond the brief) the AUROC of epistemic variance for telling
held-out from in-distribution test points.

Pendulum-v1 clips the new angular velocity to ``[-8, 8]``, a kink in the dynamics reached
only near ``|thdot| = 8`` (never in the default region). The JSON also reports the
in-distribution figures without the test points where the clip was active
(``*_unclipped``), and the mean squared error on those points (``mse_indist_clipped``).

Run (from the repository root, one thread)::

    OMP_NUM_THREADS=1 MPLBACKEND=Agg SDL_VIDEODRIVER=dummy \\
        python experiments/heldout_region_pendulum.py --seeds 0 1 2 \\
        --out experiments/heldout_region_pendulum.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models import (
    BayesianNeuralNet,
    DynamicsModel,
    ExactGPDynamics,
    ProbabilisticEnsemble,
)
from bayes_mbrl.models.sngp import SNGPDynamics
from bayes_mbrl.uncertainty import decompose_model


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds of the data, the initializations and the fits"""
    out: str = "experiments/heldout_region_pendulum.json"
    """the results (JSON)"""
    random_episodes: int = 5
    """random-torque episodes from the default reset"""
    episode_length: int = 200
    short_episodes: int = 800
    """short random-torque episodes from uniformly drawn start states"""
    short_length: int = 5
    region_low: float = 2.5
    """the held-out region: thdot in [region_low, region_high]"""
    region_high: float = 5.0
    num_test: int = 1000
    """in-distribution test transitions (outside the region, not trained on)"""
    hidden: int = 64
    """width of the two hidden layers of the ensembles and the BNN"""
    num_members: int = 5
    prior_scale: float = 1.0
    """beta of the randomized prior functions"""
    max_epochs: int = 200
    patience: int = 15
    bnn_learning_rate: float = 3e-3
    gp_max_train_points: int = 2000
    num_functions: int = 100
    """function draws of the continuous posteriors (BNN, SNGP, GP)"""
    families: str = "ensemble,ensemble_prior,bnn,sngp,gp"
    """comma-separated subset"""


Data = tuple[Tensor, Tensor, Tensor]  # obs (N, 3), action (N, 1), next_obs (N, 3)


def collect(args: Args, seed: int) -> Data:
    """Every transition of one seed: random episodes plus short episodes from uniform starts."""
    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1")
    obs_l, act_l, next_l = [], [], []

    def rollout(obs: np.ndarray, steps: int) -> None:
        for _ in range(steps):
            action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
            next_obs, *_ = env.step(action)
            obs_l.append(obs)
            act_l.append(action)
            next_l.append(next_obs)
            obs = next_obs

    for e in range(args.random_episodes):
        obs, _ = env.reset(seed=seed * 1000 + e)
        rollout(obs, args.episode_length)
    env.reset(seed=seed * 1000 + 999)
    for _ in range(args.short_episodes):
        env.reset()  # restarts the TimeLimit counter
        th, thdot = rng.uniform(-math.pi, math.pi), rng.uniform(-8.0, 8.0)
        env.unwrapped.state = np.array([th, thdot])  # type: ignore[attr-defined]
        obs = env.unwrapped._get_obs()  # type: ignore[attr-defined]
        rollout(obs, args.short_length)
    env.close()

    def stack(xs: list[np.ndarray]) -> Tensor:
        return torch.as_tensor(np.stack(xs), dtype=torch.float32)

    return stack(obs_l), stack(act_l), stack(next_l)


def split(args: Args, data: Data, seed: int) -> tuple[Data, Data, Data]:
    """(train, in-distribution test, held-out region test)."""
    obs, act, nxt = data
    thdot = obs[:, 2]
    region = (thdot >= args.region_low) & (thdot <= args.region_high)
    outside = torch.nonzero(~region).squeeze(1)
    perm = outside[torch.randperm(len(outside), generator=torch.Generator().manual_seed(seed))]
    test_idx, train_idx = perm[: args.num_test], perm[args.num_test :]
    held_idx = torch.nonzero(region).squeeze(1)

    def take(idx: Tensor) -> Data:
        return obs[idx], act[idx], nxt[idx]

    return take(train_idx), take(test_idx), take(held_idx)


def buffer(data: Data) -> ReplayBuffer:
    obs, act, nxt = data
    n = len(obs)
    buf = ReplayBuffer(3, 1, n)
    buf.add(obs, act, torch.zeros(n), nxt, torch.zeros(n), torch.zeros(n))
    return buf


def build(name: str, args: Args, seed: int) -> tuple[DynamicsModel, int | None]:
    """A family's model and the functions its analysis draws (None: every member)."""
    hidden = [args.hidden, args.hidden]
    common = {"max_epochs": args.max_epochs, "patience": args.patience, "seed": seed}
    if name in ("ensemble", "ensemble_prior"):
        beta = args.prior_scale if name == "ensemble_prior" else 0.0
        ens = ProbabilisticEnsemble(
            3, 1, num_members=args.num_members, hidden_sizes=hidden, prior_scale=beta, **common
        )
        return ens, None
    if name == "bnn":
        bnn = BayesianNeuralNet(
            3, 1, hidden_sizes=hidden, learning_rate=args.bnn_learning_rate, **common
        )
        return bnn, args.num_functions
    if name == "sngp":
        return SNGPDynamics(3, 1, seed=seed), args.num_functions
    if name == "gp":
        gp = ExactGPDynamics(3, 1, max_train_points=args.gp_max_train_points, seed=seed)
        return gp, args.num_functions
    raise ValueError(f"unknown family {name!r}")


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    ranks = rankdata(np.concatenate([pos, neg]))
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(model: DynamicsModel, nf: int | None, data: Data, seed: int) -> tuple[Tensor, Tensor]:
    """Per transition: epistemic variance and squared error, each summed over the 3 dims."""
    obs, act, nxt = data
    dec = decompose_model(model, obs, act, nf, torch.Generator().manual_seed(seed), num_samples=1)
    p = dec.predictive
    return p.epistemic_var.sum(-1), (p.mean - nxt).square().sum(-1)


def speed_clipped(data: Data) -> Tensor:
    """``(N,)`` whether Pendulum-v1 clipped the new angular velocity to [-8, 8] (g = 10, m = l = 1,
    dt = 0.05): the dynamics' one non-smooth feature, reached only near ``|thdot| = 8``."""
    obs, act, _ = data
    th = torch.atan2(obs[:, 1], obs[:, 0])
    free = obs[:, 2] + (15.0 * torch.sin(th) + 3.0 * act[:, 0]) * 0.05
    return free.abs() > 8.0


def rho(x: Tensor, y: Tensor) -> float:
    return float(spearmanr(x.double().numpy(), y.double().numpy()).statistic)


def evaluate(
    model: DynamicsModel, nf: int | None, test: Data, held: Data, seed: int
) -> dict[str, float]:
    epi_in, err_in = scores(model, nf, test, seed)
    epi_out, err_out = scores(model, nf, held, seed)
    epi, err = torch.cat([epi_in, epi_out]), torch.cat([err_in, err_out])
    smooth = ~speed_clipped(test)
    epi_s, err_s = epi_in[smooth], err_in[smooth]
    return {
        "rho_heldout": rho(epi_out, err_out),
        "rho_indist": rho(epi_in, err_in),
        "rho_pooled": rho(epi, err),
        "epistemic_ratio": float(epi_out.mean() / epi_in.mean()),
        "error_ratio": float(err_out.mean() / err_in.mean()),
        "epistemic_indist": float(epi_in.mean()),
        "epistemic_heldout": float(epi_out.mean()),
        "mse_indist": float(err_in.mean()),
        "mse_heldout": float(err_out.mean()),
        "ood_auroc": auroc(epi_out.double().numpy(), epi_in.double().numpy()),
        # the same on the in-distribution test points where the speed was not clipped
        "clipped_indist": int((~smooth).sum()),
        "mse_indist_clipped": float(err_in[~smooth].mean()),
        "mse_indist_unclipped": float(err_s.mean()),
        "rho_indist_unclipped": rho(epi_s, err_s),
        "rho_pooled_unclipped": rho(torch.cat([epi_s, epi_out]), torch.cat([err_s, err_out])),
        "epistemic_ratio_unclipped": float(epi_out.mean() / epi_s.mean()),
        "error_ratio_unclipped": float(err_out.mean() / err_s.mean()),
    }


def run_seed(args: Args, seed: int) -> dict[str, Any]:
    """Every family on one seed's data."""
    torch.manual_seed(seed)
    train, test, held = split(args, collect(args, seed), seed)
    sizes = {"train": len(train[0]), "indist_test": len(test[0]), "heldout": len(held[0])}
    print(f"seed {seed}: {sizes}", flush=True)
    data = buffer(train)
    results: dict[str, Any] = {"sizes": sizes}
    for name in args.families.split(","):
        model, nf = build(name, args, seed)
        start = time.perf_counter()
        report = model.fit(data, torch.Generator().manual_seed(seed))
        fit_seconds = time.perf_counter() - start
        metrics: dict[str, Any] = evaluate(model, nf, test, held, seed)
        metrics.update(fit_seconds=fit_seconds, epochs=report.epochs)
        results[name] = metrics
        print(
            f"seed {seed} {name:>14}: rho held-out {metrics['rho_heldout']:+.3f} | in-dist "
            f"{metrics['rho_indist']:+.3f} | pooled {metrics['rho_pooled']:+.3f} | epistemic "
            f"ratio {metrics['epistemic_ratio']:7.2f} | error ratio {metrics['error_ratio']:7.2f}"
            f" | AUROC {metrics['ood_auroc']:.3f} | unclipped in-dist: rho "
            f"{metrics['rho_indist_unclipped']:+.3f}, epistemic ratio "
            f"{metrics['epistemic_ratio_unclipped']:.2f}, error ratio "
            f"{metrics['error_ratio_unclipped']:.2f} | {report.epochs} epochs, {fit_seconds:.1f} s",
            flush=True,
        )
    return results


KEYS = [
    "rho_heldout",
    "rho_indist",
    "rho_pooled",
    "epistemic_ratio",
    "error_ratio",
    "ood_auroc",
    "mse_indist",
    "mse_heldout",
    "mse_indist_clipped",
    "mse_indist_unclipped",
    "rho_indist_unclipped",
    "rho_pooled_unclipped",
    "epistemic_ratio_unclipped",
    "error_ratio_unclipped",
]


def summarize(args: Args, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for fam in args.families.split(","):
        rows = [per_seed[s][fam] for s in per_seed]
        summary[fam] = {
            k: {"per_seed": [r[k] for r in rows], "mean": float(np.mean([r[k] for r in rows]))}
            for k in KEYS
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Args()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, list):
            parser.add_argument(flag, type=int, nargs="+", default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    start = time.perf_counter()
    per_seed = {seed: run_seed(args, seed) for seed in args.seeds}
    summary = summarize(args, per_seed)
    print("mean over seeds:")
    for fam, s in summary.items():
        print(
            f"{fam:>14}: rho held-out {s['rho_heldout']['mean']:+.3f} | in-dist "
            f"{s['rho_indist']['mean']:+.3f} | pooled {s['rho_pooled']['mean']:+.3f} | "
            f"epistemic ratio {s['epistemic_ratio']['mean']:.2f} | error ratio "
            f"{s['error_ratio']['mean']:.2f} | AUROC {s['ood_auroc']['mean']:.3f} | unclipped "
            f"in-dist: rho {s['rho_indist_unclipped']['mean']:+.3f}, epistemic ratio "
            f"{s['epistemic_ratio_unclipped']['mean']:.2f}, error ratio "
            f"{s['error_ratio_unclipped']['mean']:.2f}"
        )
    out = {
        "args": asdict(args),
        "seeds": per_seed,
        "summary": summary,
        "wall_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
